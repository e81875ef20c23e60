"""Every environment variable recgpt reads, in one place.

Why one module: a setting read in five files is documented in none and parsed five ways. Here each
variable has one name constant, one parser and one error message; `settings()` reads the environment
afresh on every call (cheap), so tests that set a variable with `monkeypatch.setenv` see it at once.

Variables that are a private channel between a parent and the child process it starts
(`RECGPT_PARENT_PID`, `RECGPT_PDEATHSIG`, the server's `RECGPT_SERVER_API_KEY` hand-over) are
named here too, but are *popped* by the child where they arrive, so that they do not leak further.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR_ENV = "RECGPT_CACHE_DIR"  # user cache (model-hash sidecars, dequantised GGUFs)
LLM_THREADS_ENV = "RECGPT_LLM_THREADS"  # llama.cpp threads per model process (default 1)
EMBED_THREADS_ENV = "RECGPT_EMBED_THREADS"  # torch threads of the sentence encoder (default 1)
SERVER_API_KEY_ENV = "RECGPT_SERVER_API_KEY"  # key `recgpt llm serve` requires (never on argv)
SERVE_API_KEY_ENV = "RECGPT_API_KEY"  # key `recgpt serve` requires for writes (POST /v1/events)
INSECURE_KEY_ENV = "RECGPT_ALLOW_INSECURE_KEY"  # send OPENAI_API_KEY over plain HTTP to a remote host
PARENT_PID_ENV = "RECGPT_PARENT_PID"  # lifeline: the parent a child process dies with
PDEATHSIG_ENV = "RECGPT_PDEATHSIG"  # lifeline: whether PR_SET_PDEATHSIG is safe in the child
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
XDG_CACHE_HOME_ENV = "XDG_CACHE_HOME"
OMP_NUM_THREADS_ENV = "OMP_NUM_THREADS"
HF_HUB_OFFLINE_ENV = "HF_HUB_OFFLINE"

TRUE_WORDS = ("1", "true", "yes")


class SettingsError(ValueError):
    """An environment variable holds a value recgpt cannot use (the message names the variable)."""


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if n < 1:
        raise SettingsError(f"{name} must be >= 1, got {n}")
    return n


@dataclass(frozen=True)
class Settings:
    """The environment as recgpt uses it; build one with `settings()`."""

    cache_dir: Path
    llm_threads: int
    embed_threads: int
    allow_insecure_key: bool
    openai_base_url: str | None
    omp_num_threads: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse `env`; a bad value raises `SettingsError` naming the variable."""
        cache_home = env.get(XDG_CACHE_HOME_ENV) or os.path.expanduser("~/.cache")
        return cls(
            cache_dir=Path(env.get(CACHE_DIR_ENV) or os.path.join(cache_home, "recgpt")),
            llm_threads=_positive_int(env, LLM_THREADS_ENV, 1),
            embed_threads=_positive_int(env, EMBED_THREADS_ENV, 1),
            allow_insecure_key=env.get(INSECURE_KEY_ENV, "").strip().lower() in TRUE_WORDS,
            openai_base_url=env.get(OPENAI_BASE_URL_ENV) or None,
            omp_num_threads=env.get(OMP_NUM_THREADS_ENV),
        )


def settings() -> Settings:
    """The current process environment as `Settings` (read now, not cached)."""
    return Settings.from_env(os.environ)


def api_key(name: str = OPENAI_API_KEY_ENV) -> str | None:
    """A secret from the environment by name (kept out of `Settings`, so it is never printed with it)."""
    return os.environ.get(name) or None


def limit_native_threads(n: int = 1) -> None:
    """OpenMP threads of torch / faiss / llama.cpp unless the user set them: on a few shared cores their
    spin-waiting threads make every job up to 10x slower (runtime.md)."""
    os.environ.setdefault(OMP_NUM_THREADS_ENV, str(n))


__all__ = [
    "CACHE_DIR_ENV",
    "EMBED_THREADS_ENV",
    "HF_HUB_OFFLINE_ENV",
    "INSECURE_KEY_ENV",
    "LLM_THREADS_ENV",
    "OMP_NUM_THREADS_ENV",
    "OPENAI_API_KEY_ENV",
    "OPENAI_BASE_URL_ENV",
    "PARENT_PID_ENV",
    "PDEATHSIG_ENV",
    "SERVER_API_KEY_ENV",
    "Settings",
    "SettingsError",
    "api_key",
    "limit_native_threads",
    "settings",
]
