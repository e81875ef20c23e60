"""The LLM layer's contract: requests in, validated objects (or typed failures) out.

Stages build `LLMRequest`s (chat messages + a pydantic output model + sampling parameters) and hand
a batch to `recgpt.llm.engine.LLMEngine`, which consults the cache, calls a `Backend` for what is
missing, validates every answer against the output model, retries a bounded number of times, and
returns one `LLMResult` per request, in order. A backend only turns prompts into raw text; all
guarantees (validation, retries, caching, accounting) live in the engine, once.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T", bound=BaseModel)


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    """Decoding settings; part of the cache key."""

    model_config = ConfigDict(frozen=True)
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class LLMRequest(Generic[T]):
    """A chat prompt plus the pydantic model its answer must validate against."""

    messages: tuple[ChatMessage, ...]
    output_model: type[T]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stage: str = "default"  # ledger bucket, e.g. "interests", "tags", "judge"
    template: str | None = None  # "name@version" of the prompt template that rendered it
    key: str | None = None  # caller's id for the request (user id, item id, ...), for lineage


class Usage(BaseModel):
    """Token and time accounting of one answer (summed over retries)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False


class FailureReason(StrEnum):
    """Why a request produced no valid object."""

    TRUNCATED = "truncated"  # hit max_tokens (finish_reason == "length")
    INVALID_JSON = "invalid_json"
    SCHEMA_MISMATCH = "schema_mismatch"
    BACKEND_ERROR = "backend_error"
    TIMEOUT = "timeout"


TRANSPORT_FAILURES = frozenset({FailureReason.BACKEND_ERROR, FailureReason.TIMEOUT})
"""The backend did not answer: never cached, never retried by the engine, never a finished stage."""


class LLMFailure(BaseModel):
    """A typed failure record: never a silent None."""

    reason: FailureReason
    detail: str
    last_text: str | None = None


class LLMResult(BaseModel, Generic[T]):
    """Exactly one of `value` / `failure` is set."""

    value: T | None = None
    failure: LLMFailure | None = None
    usage: Usage = Field(default_factory=Usage)
    raw_text: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class GenerationInput:
    """What a backend receives: rendered messages, the JSON schema to constrain to, sampling."""

    messages: tuple[ChatMessage, ...]
    json_schema: dict[str, Any] | None
    sampling: SamplingParams


@dataclass(frozen=True)
class GenerationOutput:
    """What a backend returns for one input: raw text, why it stopped, token counts, time."""

    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 8  # tokens a chat template adds around one message (role markers), when not measured


def approx_tokens(text: str) -> int:
    """Words and single punctuation marks: a model-free token count (BPE gives ~1.1-1.5x more)."""
    return len(_APPROX_TOKEN.findall(text))


@dataclass(frozen=True)
class TokenWindow:
    """What a backend's context holds and how it counts: the budget the intent prompts are fitted to.

    `n_ctx` = context length in tokens (None: unknown, so no model budget, only a user cap applies);
    `count(text)` = tokens of a text; `count_messages(messages)` = tokens of the whole rendered chat
    prompt (template markers included); `exact` = both come from the serving model's own tokenizer and
    chat template, else they are an approximation (`counter` says which).
    """

    n_ctx: int | None
    count: Callable[[str], int]
    count_messages: Callable[[Sequence[ChatMessage]], int]
    exact: bool = False
    counter: str = "approx"


def messages_tokens(count: Callable[[str], int], messages: Sequence[ChatMessage]) -> int:
    """Tokens of a chat prompt counted per message, plus `MESSAGE_OVERHEAD` each and the answer's opener."""
    return sum(count(m.content) + MESSAGE_OVERHEAD for m in messages) + MESSAGE_OVERHEAD


APPROX_WINDOW = TokenWindow(None, approx_tokens, lambda ms: messages_tokens(approx_tokens, ms))


class Backend(ABC):
    """Turns prompts into raw text. Implementations: llamacpp, openai, transformers, vllm, fake."""

    name: str

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Stable identity of the weights (name + content hash where a file is local): a cache-key part."""

    @abstractmethod
    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        """Generate one output per input, in order. May batch or parallelise internally.

        Must not raise for a single bad request: return an output with finish_reason="error".
        """

    @property
    def parallelism(self) -> int:
        """Requests this backend generates at the same time (worker processes, connections, batch).

        The engine sends batches of this size, so every answer reaches the cache as soon as it
        exists and a kill loses only what was in flight. A backend may override it; the default
        reads the usual knobs (`n_workers`, `concurrency`, `batch_size`), else 1.
        """
        for attr in ("n_workers", "concurrency", "batch_size"):
            value = getattr(self, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
        return 1

    #: True when `generate_iter` yields each answer as soon as it completes (worker pools, servers):
    #: the engine then sends whole chunks and still caches every answer the moment it exists.
    streams: bool = False

    def generate_iter(self, inputs: list[GenerationInput]) -> Iterator[tuple[int, GenerationOutput]]:
        """(position in `inputs`, output) pairs, in completion order. Default: one `generate` call."""
        yield from enumerate(self.generate(inputs))

    def token_window(self) -> TokenWindow:
        """The context length and token counter of the serving model (default: unknown length, an
        approximate count). Backends that know their model override it."""
        return APPROX_WINDOW

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release model memory / connections."""
