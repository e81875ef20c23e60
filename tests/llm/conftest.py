"""Session fixtures for the LLM tests: a llama.cpp server and the HF copy of the shipped SmolLM2 GGUF
(`smollm2_gguf` itself is in tests/conftest.py).

Each fixture skips (with the install command) when its optional dependency is missing, so a
`recgpt[dev]`-only install still runs the unit tests. Everything runs single-threaded: a server, a
llama.cpp model and torch share two cores here, and oversubscription makes them 10x slower.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path) -> Iterator[object]:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1 (free port, 1 thread), for the session."""
    from recgpt.llm.server import _SERVER_MODULES, LlamaServer

    missing = [m for m in ("llama_cpp", *_SERVER_MODULES) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"llama.cpp's server needs {', '.join(missing)}: pip install 'recgpt[llm]'")
    with LlamaServer(smollm2_gguf, n_threads=1, n_ctx=2048) as server:
        yield server


@pytest.fixture(scope="session")
def hf_smollm2_folder(smollm2_gguf: Path) -> Path:
    """The dequantized HF folder of the GGUF, converted once (~20 s) into the user cache and reused.

    The cache is the same one the transformers backend uses (`RECGPT_CACHE_DIR` or ~/.cache/recgpt),
    so only the first session on a machine pays for the conversion.
    """
    for mod in ("torch", "transformers", "gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the transformers backend needs {mod!r}: pip install 'recgpt[train]'")
    from recgpt.llm.backends.transformers_backend import gguf_to_hf_folder

    return gguf_to_hf_folder(smollm2_gguf)
