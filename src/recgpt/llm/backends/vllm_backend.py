"""vLLM's offline engine with structured outputs, for GPU machines.

The PyPI wheel of vLLM is CUDA-only; it does not run on this project's CPU machines
(docs/runtime.md §7), so this backend is optional (`pip install 'recgpt[vllm]'`) and imports vLLM
lazily. Structured outputs use `SamplingParams(structured_outputs=StructuredOutputsParams(json=...))`
(vLLM >= 0.11; the `guided_decoding=GuidedDecodingParams(json=...)` spelling was removed in 0.12)
and fall back to the old spelling on older versions. Every request in a call goes to one
`LLM.chat` call, which vLLM batches continuously; if that call fails, requests are retried one by
one so a single bad request fails alone.

Not verified on a GPU in this repository yet: no GPU machine was lent when it was written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recgpt.llm.types import Backend, GenerationInput, GenerationOutput

VLLM_MISSING = "vLLM runs on GPU machines; pip install 'recgpt[vllm]'"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(VLLM_MISSING) from exc
    return vllm


class VLLMBackend(Backend):
    """`vllm.LLM(model, **engine_kwargs)`; chat prompts; JSON-schema-constrained decoding."""

    name = "vllm"

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        vllm = _import_vllm()
        if not model:
            raise ValueError("VLLMBackend needs a model (HF id or local folder)")
        self._vllm = vllm
        self._structured_cls, self._structured_field = _structured_params_class()
        local = Path(model).expanduser()
        if local.is_dir():
            from recgpt.llm.backends.transformers_backend import folder_digest

            self._model_id = f"{local.resolve().name}@sha256:{folder_digest(local)}"
        else:  # a hub id: its revision is the best identity available without downloading twice
            self._model_id = f"{model}@{engine_kwargs.get('revision') or 'main'}"
        self.llm = vllm.LLM(model=str(local) if local.is_dir() else model, **engine_kwargs)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def parallelism(self) -> int:
        """vLLM batches continuously on the GPU: the engine may send it whole chunks (`llm.chunk_size`)."""
        return 1024

    def _params(self, inp: GenerationInput) -> Any:
        s = inp.sampling
        kwargs: dict[str, Any] = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
            "stop": list(s.stop) or None,
        }
        if inp.json_schema is not None:
            kwargs[self._structured_field] = self._structured_cls(json=inp.json_schema)
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        if not inputs:
            return []
        try:
            return self._chat(inputs)
        except Exception as exc:
            if len(inputs) == 1:
                return [
                    GenerationOutput(text="", finish_reason="error", error=f"{type(exc).__name__}: {exc}")
                ]
        return [out for inp in inputs for out in self.generate([inp])]

    def _chat(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        started = time.perf_counter()
        conversations = [[{"role": m.role, "content": m.content} for m in inp.messages] for inp in inputs]
        results = self.llm.chat(
            conversations, sampling_params=[self._params(i) for i in inputs], use_tqdm=False
        )
        per_row_s = (time.perf_counter() - started) / len(inputs)
        outputs = []
        for res in results:
            best = res.outputs[0]
            reason = best.finish_reason if best.finish_reason in ("stop", "length") else "error"
            error = None if reason != "error" else f"finish_reason={best.finish_reason}"
            out = GenerationOutput(
                text=best.text,
                finish_reason=reason,
                prompt_tokens=len(res.prompt_token_ids or []),
                completion_tokens=len(best.token_ids),
                latency_s=per_row_s,
                error=error,
            )
            outputs.append(out)
        return outputs

    def close(self) -> None:
        self.llm = None


def _structured_params_class() -> tuple[Any, str]:
    """(params class, SamplingParams field) for JSON constraints in the installed vLLM."""
    from vllm import sampling_params as sp

    if hasattr(sp, "StructuredOutputsParams"):
        return sp.StructuredOutputsParams, "structured_outputs"
    if hasattr(sp, "GuidedDecodingParams"):
        return sp.GuidedDecodingParams, "guided_decoding"
    raise ImportError(f"vLLM {getattr(sp, '__version__', '')} has no structured-output parameters")


__all__ = ["VLLM_MISSING", "VLLMBackend"]
