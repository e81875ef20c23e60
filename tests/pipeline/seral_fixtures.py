"""The scripted SERAL run the SERAL tests share: a schema-driven fake LLM and a seconds-fast config.

`seral_answer` answers every SERAL prompt from the request's own JSON schema: short-term profiles
(`interests`), long-term profiles (`stable_interests`) and SerenGPT (`ranking` + `rest`: the list in
reverse order, so a test can tell SerenGPT's order from the candidates'). `seral_config` runs the
whole SERAL pipeline on the bundled-data slice (`tests.conftest.slice_path`) in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.types import GenerationInput
from recgpt.pipeline.seral_config import SeralConfig
from tests.conftest import scripted_config

SHORT = ["space opera adventures", "courtroom dramas", "animated musicals"]
LONG = ["character driven dramas", "science fiction worlds"]


def _ids(schema: dict[str, Any]) -> list[int]:
    items = schema["properties"]["ranking"]["items"]
    for d in [items, *schema.get("$defs", {}).values()]:
        if enum := d.get("properties", {}).get("id", {}).get("enum"):
            return list(enum)
    raise AssertionError("a SerenGPT schema without candidate ids")


def seral_answer(inp: GenerationInput) -> str:
    """A schema-valid answer to any SERAL prompt (module docstring)."""
    schema = inp.json_schema or {}
    props = schema.get("properties", {})
    if "ranking" in props:
        order = list(reversed(_ids(schema)))
        top = props["ranking"]["minItems"]
        ranking = [
            {"id": i, "relevance": 4, "unexpected": 5, "reason": "a new direction that fits the profile"}
            for i in order[:top]
        ]
        return json.dumps({"ranking": ranking, "rest": order[top:]})
    if "stable_interests" in props:
        return json.dumps({"reasoning": "the windows agree on these", "stable_interests": LONG})
    if "interests" in props:
        return json.dumps({"reasoning": "most films of the window", "interests": SHORT})
    raise AssertionError(f"unexpected prompt schema: {sorted(props)}")


def seral_backend(**kwargs: Any) -> FakeBackend:
    return FakeBackend(seral_answer, **kwargs)


def seral_config(slice_path: Path, runs_dir: Path, **overrides: Any) -> SeralConfig:
    """The SERAL pipeline in seconds: fake LLM, regex tokens, small profiles, ItemKNN as the classic channel."""
    settings: dict[str, Any] = {
        "baselines": ["itemknn"],
        "profiles": {"windows": 2, "window_events": 10},
        # MovieLens users have seen most genres: 'either' (new genre or far in embedding space) keeps lists
        "candidates": {"rule": "either"},
        "labels": {"rule": "either"},
    }
    return scripted_config(SeralConfig, slice_path, runs_dir, settings, overrides)
