"""The model half of SFT: the base model, merging a LoRA adapter into it, and exporting a GGUF.

Kept apart from the training loop (`recgpt.training.sft`) so each stays small; `sft` re-exports these
names. The GGUF converter is llama.cpp's `convert_hf_to_gguf.py`, run as a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def resolve_base(base: str | os.PathLike[str] | None) -> Path:
    """The base model as a local HF folder (a GGUF file is dequantized once, then cached)."""
    from recgpt.llm.backends.transformers_backend import gguf_to_hf_folder

    if base is None:
        from recgpt.llm.models import default_model_path

        return gguf_to_hf_folder(default_model_path())
    p = Path(base).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return gguf_to_hf_folder(p)
    if p.is_dir() and (p / "config.json").is_file():
        return p.resolve()
    raise FileNotFoundError(
        f"base model {base!r} is neither a .gguf file nor an HF model folder (config.json)"
    )


def merge_adapter(base: Path, adapter: Path, out: Path, dtype: str = "float32") -> Path:
    """base + LoRA merged into plain weights, saved with the tokenizer (written to a temp sibling)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.hf_quantizer = None  # runtime.md §2: a GGUF-born model refuses to save otherwise
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(tmp)
    return replace_dir(tmp, out)


def replace_dir(tmp: Path, dest: Path) -> Path:
    """Put a fully written folder in place (readers never see half a model)."""
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def export_gguf(merged: Path, out_file: Path | None = None, outtype: str = "q8_0") -> Path:
    """The merged model as one GGUF file for llama.cpp (`recgpt run --llm llamacpp:FILE`).

    With llama.cpp's own `convert_hf_to_gguf.py`: the llama-cpp-python wheel lacks it, the sdist of the
    same version vendors it (fetched once by pip, 77 MB; the converter, `conversion/` and `gguf-py/`
    kept in `<recgpt cache>/llama-cpp-convert/<version>/`). It also needs `sentencepiece`.
    """
    from recgpt.llm.backends.transformers_backend import recgpt_cache_dir

    if importlib.util.find_spec("sentencepiece") is None:
        raise RuntimeError("llama.cpp's converter needs sentencepiece: pip install sentencepiece")
    version = importlib.metadata.version("llama-cpp-python")
    tools = recgpt_cache_dir() / "llama-cpp-convert" / version
    if not (tools / "convert_hf_to_gguf.py").is_file():
        tools.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tools.parent) as tmp:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    f"llama-cpp-python=={version}",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--quiet",
                    "-d",
                    tmp,
                ],
                "pip download of the llama-cpp-python sdist",
            )
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
            with tarfile.open(sdist) as tar:
                keep = [
                    m
                    for m in tar.getmembers()
                    if m.name.startswith(prefix)
                    and m.name[len(prefix) :].startswith(("convert_hf_to_gguf.py", "conversion/", "gguf-py/"))
                ]
                for m in keep:
                    m.name = m.name[len(prefix) :]
                tar.extractall(Path(tmp) / "tools", members=keep, filter="data")
            shutil.rmtree(tools, ignore_errors=True)
            (Path(tmp) / "tools").rename(tools)
    out_file = out_file or merged.parent / f"model-{outtype}.gguf"
    env = {**os.environ, "PYTHONPATH": str(tools / "gguf-py"), "OMP_NUM_THREADS": "1"}
    _run(
        [
            sys.executable,
            str(tools / "convert_hf_to_gguf.py"),
            str(merged),
            "--outfile",
            str(out_file),
            "--outtype",
            outtype,
        ],
        "llama.cpp's convert_hf_to_gguf.py",
        env,
    )
    return out_file


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{(done.stderr or done.stdout)[-2000:]}")


__all__ = ["export_gguf", "merge_adapter", "replace_dir", "resolve_base"]
