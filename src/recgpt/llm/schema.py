"""Pydantic output model -> a JSON schema that grammar-constrained decoders handle well.

llama.cpp turns a JSON schema into a GBNF grammar. Some schema features make that grammar huge or
slow (`maxLength` on strings made decoding 4x slower, see docs/runtime.md; regex `pattern`s are
only partly supported), and `$ref`s are resolved differently by every backend. So the schema sent
to a backend is a simplified, self-contained one: refs inlined, every object closed
(`additionalProperties: false`) with all its properties required. The final word stays with
pydantic: the engine validates every answer against the original model, including the
constraints dropped here.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

# Keywords removed from the backend schema: grammar blow-ups (string length bounds, regexes, formats)
# and pure annotations that only cost prompt tokens on servers that render the schema.
_DROPPED_KEYWORDS = frozenset(
    {"maxLength", "minLength", "pattern", "format", "title", "default", "examples", "discriminator"}
)
# Keywords whose value is one sub-schema / a list of sub-schemas / a name->sub-schema mapping.
_SUBSCHEMA = ("items", "additionalProperties", "not", "contains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties")


class SchemaError(ValueError):
    """The output model cannot be expressed as a finite, self-contained JSON schema."""


def json_schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The backend-facing JSON schema of `model` (a fresh copy: callers may mutate it)."""
    return json.loads(schema_json_for(model))


@lru_cache(maxsize=256)
def schema_json_for(model: type[BaseModel]) -> str:
    """Compact JSON text of the backend schema; cached per model because every request needs it."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise SchemaError(f"output_model must be a pydantic BaseModel subclass, got {model!r}")
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})
    simplified = _simplify(raw, defs, stack=())
    if simplified.get("type") != "object":
        raise SchemaError(f"{model.__name__}: the top-level output must be a JSON object")
    # Not key-sorted: property order is the order the grammar makes the model write the fields in
    # (e.g. a reason before a verdict), so it must stay the model's declaration order.
    return json.dumps(simplified, separators=(",", ":"), ensure_ascii=False)


def _resolve(ref: str, defs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaError(f"unsupported or dangling $ref {ref!r}")
    name = ref[len(prefix) :]
    return name, defs[name]


def _simplify(node: Any, defs: dict[str, Any], stack: tuple[str, ...]) -> Any:
    """Recursively inline refs, drop grammar-hostile keywords, close objects."""
    if not isinstance(node, dict):
        return node
    node = copy.copy(node)
    if "$ref" in node:
        name, target = _resolve(node.pop("$ref"), defs)
        if name in stack:
            raise SchemaError(f"recursive model {name!r}: a grammar needs a finite schema")
        inlined = _simplify(target, defs, (*stack, name))
        # Sibling keywords next to a $ref (e.g. a field description) refine the referenced schema.
        rest = _simplify(node, defs, stack)
        return {**inlined, **{k: v for k, v in rest.items() if k not in inlined}}
    if "allOf" in node and len(node["allOf"]) == 1:  # pydantic's wrapper for a described $ref
        only = node.pop("allOf")[0]
        return _simplify({**only, **node}, defs, stack)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key in _SUBSCHEMA:
            out[key] = _simplify(value, defs, stack) if isinstance(value, dict) else value
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [_simplify(v, defs, stack) for v in value]
        elif key in _SUBSCHEMA_MAPS:
            out[key] = {name: _simplify(v, defs, stack) for name, v in value.items()}
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out["required"] = list(out["properties"])
        if not isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = False
    return out
