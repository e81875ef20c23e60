"""Events posted to the serving API: the dataset contract's event shape, checked at the door.

`EventIn` mirrors `recgpt.data.schema.EVENT_SCHEMA` so an event posted live reads exactly like one in
a dataset; the refresh path then treats both the same. Validation happens here, before anything is
written, so a bad batch is refused whole with a message that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recgpt.data.schema import EVENT_SCHEMA, Behavior

MAX_BATCH = 1000
MAX_ID_CHARS = 128
MAX_BEHAVIOR_CHARS = 32
MAX_QUERY_CHARS = 500
MAX_TEXT_CHARS = 2000
MAX_INT64 = 2**63 - 1  # event_id and timestamp are stored as 64-bit integers

SEARCH = Behavior.SEARCH.value


class EventIn(BaseModel):
    """One user event; `event_id` is chosen by the client and makes a repeated post harmless."""

    model_config = ConfigDict(extra="forbid")

    event_id: Annotated[int, Field(ge=0, le=MAX_INT64)]
    user_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    item_id: Annotated[str | None, Field(min_length=1, max_length=MAX_ID_CHARS)] = None
    query: Annotated[str | None, Field(min_length=1, max_length=MAX_QUERY_CHARS)] = None
    behavior: Annotated[str, Field(min_length=1, max_length=MAX_BEHAVIOR_CHARS)]
    timestamp: Annotated[int, Field(ge=0, le=MAX_INT64)]
    value: float | None = None
    text: Annotated[str | None, Field(max_length=MAX_TEXT_CHARS)] = None

    @field_validator("user_id", "item_id", "behavior")
    @classmethod
    def _no_blank_ids(cls, v: str | None) -> str | None:
        """Ids are matched exactly against the run's tables: surrounding blanks would never match."""
        if v is not None and v.strip() != v:
            raise ValueError("must not start or end with whitespace")
        return v

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        """NaN and infinity are not valid JSON and would poison averages downstream."""
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _item_or_query(self) -> EventIn:
        """A search carries its text in `query`; every other behaviour is about one item."""
        if self.behavior == SEARCH:
            if self.query is None:
                raise ValueError(f"query is required when behavior is '{SEARCH}'")
            if self.item_id is not None:
                raise ValueError(
                    f"item_id must be empty when behavior is '{SEARCH}' (the text goes in query)"
                )
        else:
            if self.item_id is None:
                raise ValueError(f"item_id is required unless behavior is '{SEARCH}'")
            if self.query is not None:
                raise ValueError(f"query is only allowed when behavior is '{SEARCH}'")
        return self


class EventBatch(BaseModel):
    """The body of `POST /v1/events`: 1 to 1000 events, stored in one transaction."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]


def event_rows(events: Sequence[EventIn], received_at: float) -> list[dict[str, Any]]:
    """Store rows for `events`: the EVENT_SCHEMA columns plus when the server received them.

    One row per event_id: a batch that repeats an id keeps its first occurrence, as the store would.
    """
    rows: dict[int, dict[str, Any]] = {}
    for ev in events:
        if ev.event_id not in rows:
            row = {col: getattr(ev, col) for col in EVENT_SCHEMA}
            row["received_at"] = received_at
            rows[ev.event_id] = row
    return list(rows.values())
