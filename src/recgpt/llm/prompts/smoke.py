"""Output model and request builder of the `smoke_interests` template (check command, tests, bench)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from recgpt.llm.prompts import make_request
from recgpt.llm.types import LLMRequest, SamplingParams

TEMPLATE = "smoke_interests"

# A few shopping baskets for smoke runs and benchmarks (invented, no real catalogue).
BASKETS: tuple[tuple[str, ...], ...] = (
    ("Hiking boots", "Rain jacket", "Camping stove"),
    ("Yoga mat", "Foam roller", "Water bottle"),
    ("Mechanical keyboard", "Gaming mouse", "Monitor stand"),
    ("Baby diapers", "Baby wipes", "Stroller"),
    ("Potting soil", "Tomato seeds", "Watering can"),
    ("French press", "Ground coffee", "Milk frother"),
    ("Running shoes", "Sports watch", "Energy gels"),
    ("Watercolor paints", "Sketchbook", "Brush set"),
    ("Dog leash", "Dog food", "Chew toys"),
    ("Cookbook", "Chef knife", "Cutting board"),
)


class Interest(BaseModel):
    name: str = Field(description="1 to 4 words")
    reason: str = Field(description="at most 12 words")


class SmokeInterests(BaseModel):
    interests: list[Interest] = Field(min_length=3, max_length=3)


def smoke_request(
    items: Sequence[str], *, max_tokens: int = 128, seed: int = 0, key: str | None = None
) -> LLMRequest[SmokeInterests]:
    """One `smoke_interests` request at temperature 0 (the setting that gave 10/10 valid in runtime.md)."""
    return make_request(
        TEMPLATE,
        SmokeInterests,
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed),
        key=key,
        items=list(items),
    )
