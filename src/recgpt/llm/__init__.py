"""The LLM layer: batches of requests in, validated objects (or typed failures) out.

    from recgpt.llm import LLMEngine, LLMCache, make_backend, make_request
    engine = LLMEngine(make_backend("llamacpp"), cache=LLMCache("runs/llm-cache.sqlite"))
    results = engine.run([make_request("smoke_interests", SmokeInterests, items=[...])])

A stage that turns answers into rows under rules (re-asks, failures, fallbacks) is an `LLMTask`
run by `run_task` (see `recgpt.llm.task`). The cache is any `AnswerCache`; `LLMCache.merge` and
`Ledger.merge` fold a worker's cache and counts into a run's.

Importing this package stays cheap: backends (llama.cpp, torch, vLLM, openai) load only when
`make_backend` builds one.
"""

from recgpt.llm.backends import BackendUnavailable, available_backends, make_backend
from recgpt.llm.cache import AnswerCache, LLMCache, MemoryCache, cache_key
from recgpt.llm.engine import LLMEngine
from recgpt.llm.ledger import Ledger, StageStats
from recgpt.llm.prompts import PromptError, make_request, render, template_id
from recgpt.llm.schema import SchemaError, json_schema_for
from recgpt.llm.task import LLMTask, TaskEngine, TaskFailure, TaskOutput, run_task
from recgpt.llm.types import (
    Backend,
    ChatMessage,
    FailureReason,
    GenerationInput,
    GenerationOutput,
    LLMFailure,
    LLMRequest,
    LLMResult,
    SamplingParams,
    Usage,
)

__all__ = [
    "AnswerCache",
    "Backend",
    "BackendUnavailable",
    "ChatMessage",
    "FailureReason",
    "GenerationInput",
    "GenerationOutput",
    "LLMCache",
    "LLMEngine",
    "LLMFailure",
    "LLMRequest",
    "LLMResult",
    "LLMTask",
    "Ledger",
    "MemoryCache",
    "PromptError",
    "SamplingParams",
    "SchemaError",
    "StageStats",
    "TaskEngine",
    "TaskFailure",
    "TaskOutput",
    "Usage",
    "available_backends",
    "cache_key",
    "json_schema_for",
    "make_backend",
    "make_request",
    "render",
    "run_task",
    "template_id",
]
