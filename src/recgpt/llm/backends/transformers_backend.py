"""Hugging Face transformers on CPU (or GPU): how fine-tuned models and PEFT adapters are served.

`model` is an HF model folder, a `.gguf` file, or a PEFT adapter folder (as `recgpt train sft`
writes: its `adapter_config.json` names the local base model, which is loaded first and the adapter
merged into it). A GGUF file is dequantized once (about 20 s for
SmolLM2-135M: the tokenizer is rebuilt from the GGUF vocab and every tensor dequantized) and the
result saved as a plain HF folder under `<cache>/hf-from-gguf/<sha256 prefix>/`, so every later load
takes well under a second. The folder is written to a temporary sibling and renamed into place,
so a killed conversion or two concurrent ones never leave a half-written model behind.

Constrained decoding: when `llguidance` is importable (a 3 MB wheel with no dependencies; xgrammar
was rejected because it pulls triton, about 1 GB, onto CPU machines), each row of a batch gets a
JSON-schema matcher whose token mask is applied to the logits at every step, so greedy output is
schema-shaped by construction. Without it (or with `constrained=False`) the model decodes freely
and the engine's validate-and-retry is the only guarantee. `constraint_library` says which is active.

Batches are left-padded and grouped by sampling parameters (one `generate` call cannot mix them).
With sampling (temperature > 0) the batch is seeded from its requests' seeds, so the output of one
request may depend on which others share its batch; greedy decoding does not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from recgpt.llm.backends import file_sha256
from recgpt.llm.types import Backend, GenerationInput, GenerationOutput, SamplingParams, TokenWindow
from recgpt.settings import settings

_DTYPES = ("float32", "bfloat16", "float16")
_MARKER = "recgpt-gguf-source.json"  # written last into a converted folder: its presence means complete
_HASH_SKIP_SUFFIXES = (".md", ".txt", ".lock")


def recgpt_cache_dir() -> Path:
    """`RECGPT_CACHE_DIR`, else `$XDG_CACHE_HOME/recgpt`, else `~/.cache/recgpt`."""
    return settings().cache_dir


def folder_digest(folder: str | os.PathLike[str]) -> str:
    """sha256 over the top-level files of a model/adapter folder (weights, config, tokenizer, template).

    Each file's hash is remembered by `file_sha256`, so hashing a multi-GB folder costs seconds once.
    """
    root = Path(folder)
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_HASH_SKIP_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(f"no files in model folder {root}")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def gguf_to_hf_folder(
    gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The dequantized HF folder for a GGUF file: converted on first use, then reused."""
    gguf = Path(gguf_path).resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    digest = file_sha256(gguf)
    root = Path(cache_dir) if cache_dir is not None else recgpt_cache_dir()
    final = root / "hf-from-gguf" / digest[:16]
    if (final / _MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=final.parent))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps({"gguf": gguf.name, "sha256": digest}))
        if final.exists():  # an incomplete leftover (no marker) or a concurrent winner
            if (final / _MARKER).is_file():
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_adapter_folder(path: Path) -> bool:
    """A PEFT adapter folder (adapter_config.json, no model config.json of its own)."""
    return path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def adapter_base(adapter: Path) -> Path:
    """The local base model an adapter was trained on (`base_model_name_or_path`: HF folder or .gguf)."""
    try:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable adapter_config.json in {adapter}: {e}") from e
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path")
    path = Path(base).expanduser()
    if not path.is_absolute():
        path = (adapter / path).resolve() if (adapter / path).exists() else path
    if not path.exists():
        raise FileNotFoundError(
            f"the base model of adapter {adapter} is not here: {base} (pass the base as the model and the "
            "adapter separately, or use the merged folder that `recgpt train sft` writes)"
        )
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it believes is still gguf-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


class _GrammarMask:
    """A `generate` logits processor: per-row llguidance matchers mask tokens the schema forbids.

    One instance serves exactly one `generate` call (matchers carry state). A matcher stops as soon
    as its JSON value is complete: from then on its row may only emit end-of-sequence (otherwise a
    sampled row would chatter on after the closing brace). Rows without a matcher are not masked.
    """

    def __init__(self, matchers: list[Any], eos_ids: list[int]) -> None:
        import llguidance.numpy as llnp

        self._llnp = llnp
        self.matchers = matchers
        self.eos_ids = eos_ids
        self.started = False
        self.bitmask: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        live = [m is not None and not m.is_stopped() and not m.is_error() for m in self.matchers]
        if self.started:
            for m, tok, ok in zip(self.matchers, input_ids[:, -1].tolist(), live, strict=True):
                if ok:
                    m.consume_token(tok)
        self.started = True
        vocab = scores.shape[1]
        if self.bitmask is None:
            self.bitmask = self._llnp.allocate_token_bitmask(len(self.matchers), vocab)
        rows, ended = [], []
        for i, m in enumerate(self.matchers):
            if m is None:
                continue
            if m.is_stopped() or m.is_error():
                ended.append(i)
            else:
                self._llnp.fill_next_token_bitmask(m, self.bitmask, i)
                rows.append(i)
        if rows:
            words = torch.from_numpy(self.bitmask[rows])
            bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
            allowed = bits.bool().reshape(len(rows), -1)[:, :vocab].to(scores.device)
            row_idx = torch.tensor(rows, device=scores.device)
            scores[row_idx] = scores[row_idx].masked_fill(~allowed, float("-inf"))
        if ended:
            row_idx = torch.tensor(ended, device=scores.device)
            keep = scores[row_idx][:, self.eos_ids]
            scores[row_idx] = float("-inf")
            scores[row_idx[:, None], torch.tensor(self.eos_ids, device=scores.device)] = keep
        return scores


class TransformersBackend(Backend):
    """Batched, left-padded `generate` on an HF causal LM (optionally with a PEFT adapter)."""

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str],
        adapter: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int = 1,
        batch_size: int = 4,
        constrained: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if batch_size < 1 or threads < 1:
            raise ValueError(f"batch_size and threads must be >= 1, got {batch_size} and {threads}")
        src = Path(model).expanduser()
        if not src.exists():
            raise FileNotFoundError(f"model not found: {src} (expected an HF model folder or a .gguf file)")
        if adapter is None and is_adapter_folder(src):  # `transformers:out/adapter` from `recgpt train sft`
            src, adapter = adapter_base(src), src
        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(threads)  # see runtime.md: oversubscribed torch is 10x slower on 2 cores
        self._torch = torch
        self.device = device
        self.batch_size = batch_size
        if src.is_file():
            if src.suffix.lower() != ".gguf":
                raise ValueError(f"model file must be a .gguf, got {src.name}")
            folder = gguf_to_hf_folder(src, cache_dir)
            ident = f"{src.name}@sha256:{file_sha256(src)}"
        else:
            folder = src
            ident = f"{src.resolve().name}@sha256:{folder_digest(src)}"
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{folder} has no chat template: an instruct/chat model is needed")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        net = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
        if adapter is not None:
            from peft import PeftModel

            apath = Path(adapter).expanduser()
            if not (apath / "adapter_config.json").is_file():
                raise FileNotFoundError(f"not a PEFT adapter folder (no adapter_config.json): {apath}")
            # Merged weights decode as fast as the base model; the adapter files stay untouched.
            net = PeftModel.from_pretrained(net, str(apath)).merge_and_unload()
            ident += f"+{apath.resolve().name}@sha256:{folder_digest(apath)}"
        self.model = net.to(device).eval()
        self._model_id = ident
        self._eos_ids = self._eos_token_ids()
        self._ll_tokenizer: Any = None
        self._grammars: dict[str, str] = {}
        self.constraint_library = (
            "llguidance" if constrained and importlib.util.find_spec("llguidance") else None
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    def _eos_token_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    # ------------------------------------------------------------------ Backend API

    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        outputs: list[GenerationOutput | None] = [None] * len(inputs)
        groups: dict[SamplingParams, list[int]] = defaultdict(list)
        for i, inp in enumerate(inputs):
            groups[inp.sampling].append(i)
        for idx in groups.values():
            rendered = {i: self._render(inputs[i]) for i in idx}
            idx.sort(key=lambda i: len(rendered[i]))  # similar lengths share a batch: less padding
            for start in range(0, len(idx), self.batch_size):
                batch = idx[start : start + self.batch_size]
                for i, out in zip(batch, self._generate_safe(inputs, rendered, batch), strict=True):
                    outputs[i] = out
        assert all(o is not None for o in outputs)
        return outputs  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
        self._ll_tokenizer = None

    def token_window(self) -> TokenWindow:
        """The model's tokenizer and chat template; the context is the model's position limit."""
        tok = self.tokenizer
        n_ctx = (
            getattr(self.model.config, "max_position_embeddings", None) if self.model is not None else None
        )

        def count(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0

        def count_messages(messages: Any) -> int:
            msgs = [{"role": m.role, "content": m.content} for m in messages]
            return len(
                tok(
                    tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False,
                )["input_ids"]
            )

        return TokenWindow(int(n_ctx) if n_ctx else None, count, count_messages, exact=True, counter="hf")

    # ------------------------------------------------------------------ internals

    def _render(self, inp: GenerationInput) -> str:
        msgs = [{"role": m.role, "content": m.content} for m in inp.messages]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def _generate_safe(
        self, inputs: list[GenerationInput], rendered: dict[int, str], batch: list[int]
    ) -> list[GenerationOutput]:
        """One batch; if it fails, each request alone, so one bad request fails only itself."""
        try:
            return self._generate_batch([inputs[i] for i in batch], [rendered[i] for i in batch])
        except Exception as exc:
            if len(batch) == 1:
                return [
                    GenerationOutput(text="", finish_reason="error", error=f"{type(exc).__name__}: {exc}")
                ]
        return [out for i in batch for out in self._generate_safe(inputs, rendered, [i])]

    def _matcher(self, schema: dict[str, Any] | None) -> Any:
        if schema is None or self.constraint_library is None:
            return None
        import llguidance
        import llguidance.hf

        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.model.config.vocab_size, eos_token=self._eos_ids
            )
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            # Compact JSON: free whitespace lets a small model pad a string of newlines until max_tokens.
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                key, defaults={"whitespace_flexible": False, "lenient": True}
            )
            self._grammars[key] = grammar
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"llguidance cannot compile the schema: {matcher.get_error()}")
        return matcher

    def _generate_batch(self, batch: list[GenerationInput], texts: list[str]) -> list[GenerationOutput]:
        torch = self._torch
        s = batch[0].sampling
        started = time.perf_counter()
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self._eos_ids,
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
            torch.manual_seed(s.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        matchers = [self._matcher(inp.json_schema) for inp in batch]
        if any(m is not None for m in matchers):
            kwargs["logits_processor"] = [_GrammarMask(matchers, self._eos_ids)]
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        per_row_s = (time.perf_counter() - started) / len(batch)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        return [
            self._decode(row, int(n_prompt), s, per_row_s)
            for row, n_prompt in zip(new_tokens, prompt_lens, strict=True)
        ]

    def _decode(self, row: list[int], n_prompt: int, s: SamplingParams, latency_s: float) -> GenerationOutput:
        end = next((k for k, t in enumerate(row) if t in self._eos_ids), None)
        if end is not None:
            tokens, reason = row[: end + 1], "stop"
        else:
            tokens = row
            reason = "length" if len(row) >= s.max_tokens else "stop"  # shorter: a stop string matched
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in s.stop:  # OpenAI semantics: the stop string is not part of the answer
            if stop and text.endswith(stop):
                text = text[: -len(stop)]
                break
        return GenerationOutput(
            text=text,
            finish_reason=reason,
            prompt_tokens=n_prompt,
            completion_tokens=len(tokens),
            latency_s=latency_s,
        )
