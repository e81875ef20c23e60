"""A scripted backend for unit tests of the engine's parsing and control flow (no model involved).

It answers from a list of texts (consumed in order, across calls) or from a function of the input,
records every input it saw, and can be told to crash on a given `generate` call to simulate a
process dying mid-batch. Its token window is `n_ctx` tokens (None: unbounded) counted by
`approx_tokens` (words and punctuation marks): small enough to test the history budget with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from recgpt.llm.types import (
    Backend,
    GenerationInput,
    GenerationOutput,
    TokenWindow,
    approx_tokens,
    messages_tokens,
)

Answer = str | GenerationOutput
Script = Sequence[Answer] | Callable[[GenerationInput], Answer]


class FakeBackendCrash(RuntimeError):
    """Raised by `FakeBackend` on its `crash_on_call`-th generate call."""


class FakeBackend(Backend):
    """Returns scripted answers; plain strings become `finish_reason="stop"` outputs."""

    name = "fake"

    def __init__(
        self,
        script: Script | None = None,
        *,
        model: str = "fake-model",
        crash_on_call: int | None = None,
        n_ctx: int | None = 4096,
    ) -> None:
        self._script = script if script is not None else (lambda _inp: "{}")
        self._pos = 0
        self._model = model
        self.crash_on_call = crash_on_call  # 1-based index of the generate() call that raises
        self.generate_calls = 0
        self.inputs: list[GenerationInput] = []
        self.closed = False
        self.n_ctx = n_ctx

    def token_window(self) -> TokenWindow:
        return TokenWindow(
            self.n_ctx, approx_tokens, lambda ms: messages_tokens(approx_tokens, ms), counter="approx"
        )

    @property
    def model_id(self) -> str:
        return self._model

    def _next(self, inp: GenerationInput) -> Answer:
        if callable(self._script):
            return self._script(inp)
        if self._pos >= len(self._script):
            return GenerationOutput(text="", finish_reason="error", error="fake script exhausted")
        answer = self._script[self._pos]
        self._pos += 1
        return answer

    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        self.generate_calls += 1
        if self.crash_on_call is not None and self.generate_calls == self.crash_on_call:
            raise FakeBackendCrash(f"simulated crash on generate call {self.generate_calls}")
        outputs = []
        for inp in inputs:
            self.inputs.append(inp)
            answer = self._next(inp)
            if isinstance(answer, str):
                prompt_tokens = sum(len(m.content.split()) for m in inp.messages)
                answer = GenerationOutput(
                    text=answer,
                    finish_reason="stop",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=max(1, len(answer.split())),
                    latency_s=0.001,
                )
            outputs.append(answer)
        return outputs

    def close(self) -> None:
        self.closed = True
