"""Backend-facing JSON schemas, the backend registry and the model-file hash sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from recgpt.llm.backends import (
    BackendUnavailable,
    available_backends,
    file_sha256,
    make_backend,
    parse_spec,
)
from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.schema import SchemaError, json_schema_for


class Tag(BaseModel):
    title: str = Field(max_length=20, pattern="^[a-z]+$", description="a tag")
    weight: float | None = None


class Answer(BaseModel):
    tags: list[Tag] = Field(min_length=1, max_length=4)
    best: Tag
    kind: Literal["a", "b"] = "a"
    extra: dict[str, int] = {}


def walk(node: object) -> list[dict]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for v in node.values():
            found.extend(walk(v))
    elif isinstance(node, list):
        for v in node:
            found.extend(walk(v))
    return found


def test_schema_is_self_contained_closed_and_grammar_friendly() -> None:
    schema = json_schema_for(Answer)
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    assert "maxLength" not in text and "pattern" not in text
    nodes = walk(schema)
    objects = [n for n in nodes if n.get("type") == "object" and "properties" in n]
    assert len(objects) == 3  # Answer, Tag in the list, Tag as `best`
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert schema["properties"]["tags"]["minItems"] == 1 and schema["properties"]["tags"]["maxItems"] == 4
    assert schema["properties"]["kind"]["enum"] == ["a", "b"]
    assert schema["properties"]["extra"]["additionalProperties"] == {"type": "integer"}  # a dict stays a dict
    assert (
        schema["properties"]["best"]["properties"]["title"]["description"] == "a tag"
    )  # a field named title survives
    # The dropped constraints still hold at validation time, through pydantic.
    with pytest.raises(ValueError):
        Answer.model_validate({"tags": [{"title": "UPPER"}], "best": {"title": "ok"}})


def test_schema_copies_are_independent() -> None:
    json_schema_for(Answer)["properties"].clear()
    assert json_schema_for(Answer)["properties"]


def test_unsupported_models_raise() -> None:
    class Node(BaseModel):
        children: list[Node] = []

    with pytest.raises(SchemaError, match="recursive"):
        json_schema_for(Node)
    with pytest.raises(SchemaError, match="BaseModel"):
        json_schema_for(dict)  # type: ignore[arg-type]


def test_parse_spec() -> None:
    assert parse_spec("llamacpp") == ("llamacpp", {})
    assert parse_spec("llamacpp:/m/x.gguf") == ("llamacpp", {"model_path": "/m/x.gguf"})
    assert parse_spec("openai:SmolLM2@http://127.0.0.1:8080/v1") == (
        "openai",
        {"model": "SmolLM2", "base_url": "http://127.0.0.1:8080/v1"},
    )
    assert parse_spec("openai:gpt-4o-mini") == ("openai", {"model": "gpt-4o-mini"})
    assert parse_spec("openai:me@corp/model") == ("openai", {"model": "me@corp/model"})
    assert parse_spec("transformers:/models/smol") == ("transformers", {"model": "/models/smol"})
    assert parse_spec("vllm:Qwen/Qwen2.5-1.5B-Instruct") == ("vllm", {"model": "Qwen/Qwen2.5-1.5B-Instruct"})
    for bad in ("", "nope", "openai", "fake:x", "openai:@http://x/v1"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_make_backend_and_availability() -> None:
    backend = make_backend("fake", script=['{"a": 1}'])
    assert isinstance(backend, FakeBackend)
    report = available_backends()
    assert set(report) == {"fake", "llamacpp", "openai", "transformers", "vllm"}
    assert report["fake"] is None
    for name, problem in report.items():
        if problem is not None:
            assert "pip install 'recgpt[" in problem
            with pytest.raises(BackendUnavailable, match="pip install"):
                make_backend(f"{name}:x" if name != "llamacpp" else name)


def test_file_hash_sidecar_tracks_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGPT_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    first = file_sha256(f)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (sidecar,) = (tmp_path / "cache" / "file-hashes").glob("*.json")
    saved = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**saved, "sha256": "f" * 64}))
    assert file_sha256(f) == "f" * 64  # served from the sidecar, not recomputed
    f.write_bytes(b"abcd")
    os.utime(f, ns=(saved["mtime_ns"] + 10**9, saved["mtime_ns"] + 10**9))
    assert file_sha256(f) == "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"


def test_property_order_is_declaration_order() -> None:
    # The grammar makes the model write fields in this order (e.g. a reason before a verdict).
    class Verdict(BaseModel):
        reasoning: str
        score: int
        accept: bool

    schema = json_schema_for(Verdict)
    assert list(schema["properties"]) == ["reasoning", "score", "accept"] == schema["required"]
