"""The one place where LLM answers become validated objects.

`LLMEngine.run(requests)` returns one `LLMResult` per request, in order: a pydantic object that
validated, or a typed `LLMFailure`. Steps: look every request up in the cache; send the misses to
the backend in chunks (`chunk_size` to a backend that streams answers as they complete, else batches
of its `parallelism`); parse and validate each answer;
retry a truncated answer with a doubled token budget (up to `max_tokens_growth` times the request's)
before anything else,
then retry invalid ones a bounded number of times with a new seed and a repair hint; write every
valid answer to the cache as soon as the backend hands it over (so a killed run loses at most what was in
flight and a rerun repeats no finished call); account everything in the ledger. Transport failures
(backend error, timeout) are never cached. Backends stay dumb: this is the only copy of these
guarantees.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from recgpt.llm.cache import AnswerCache, CacheEntry, cache_key
from recgpt.llm.ledger import Ledger
from recgpt.llm.schema import schema_json_for
from recgpt.llm.types import (
    TRANSPORT_FAILURES,
    Backend,
    ChatMessage,
    FailureReason,
    GenerationInput,
    GenerationOutput,
    LLMFailure,
    LLMRequest,
    LLMResult,
    TokenWindow,
    Usage,
)

_SEED_STEP = 1_000_003  # retry seeds: seed + attempt * step (a prime, so retries never collide)
_DETAIL_CHARS = 300  # how much of a parse/validation error goes into a repair hint


@dataclass
class _Job:
    """One distinct prompt being generated (identical requests in a batch share a job)."""

    key: str
    request: LLMRequest[Any]
    schema: dict[str, Any]
    indices: list[int]
    usage: Usage = field(default_factory=Usage)
    value: BaseModel | None = None
    failure: LLMFailure | None = None
    raw_text: str | None = None
    max_tokens: int = 0  # current token budget (grows on truncation)
    repairs: int = 0  # retries with a new seed and a repair hint so far
    hint: str | None = None  # the repair hint of the current retry


def _extract_json(text: str) -> Any:
    """Parse the JSON object in `text`, tolerating code fences and trailing chatter.

    Grammar-constrained backends return bare JSON; unconstrained ones (JSON mode, plain generation)
    may wrap it in ```json fences or add prose after it. Only the first complete object counts.
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as first_error:
        start = stripped.find("{")
        if start < 0:
            raise first_error from None
        try:
            obj, _ = json.JSONDecoder().raw_decode(stripped, start)
        except json.JSONDecodeError:
            raise first_error from None
        return obj


def _check(output: GenerationOutput, model: type[BaseModel]) -> BaseModel | LLMFailure:
    """Turn one raw backend output into a validated object or a typed failure."""
    if output.finish_reason == "error" or output.error:
        detail = output.error or "backend reported an error"
        is_timeout = output.finish_reason == "timeout" or detail.lower().startswith(("timeout", "timed out"))
        reason = FailureReason.TIMEOUT if is_timeout else FailureReason.BACKEND_ERROR
        return LLMFailure(reason=reason, detail=detail, last_text=output.text or None)
    try:
        data = _extract_json(output.text)
    except json.JSONDecodeError as exc:
        # Hitting max_tokens is the usual cause of unparseable grammar-constrained output.
        if output.finish_reason == "length":
            return LLMFailure(
                reason=FailureReason.TRUNCATED,
                detail="hit max_tokens before the JSON closed",
                last_text=output.text,
            )
        return LLMFailure(reason=FailureReason.INVALID_JSON, detail=str(exc), last_text=output.text)
    try:
        # A complete, valid object is accepted even if generation stopped at max_tokens.
        return model.model_validate(data)
    except ValidationError as exc:
        reason = (
            FailureReason.TRUNCATED if output.finish_reason == "length" else FailureReason.SCHEMA_MISMATCH
        )
        return LLMFailure(reason=reason, detail=str(exc), last_text=output.text)


def engine_window(engine: Any) -> TokenWindow | None:
    """The token window of the backend behind `engine`: an `LLMEngine`, or a wrapper that holds one as
    `.engine` (a prompt guard); None when there is no backend to ask (a test double)."""
    for _ in range(4):  # wrappers of wrappers, bounded
        backend = getattr(engine, "backend", None)
        if isinstance(backend, Backend):
            return backend.token_window()
        engine = getattr(engine, "engine", None)
        if engine is None:
            return None
    return None


def _repair_hint(failure: LLMFailure) -> str:
    if failure.reason == FailureReason.TRUNCATED:
        why = "it was cut off before the JSON object was complete. Keep every string short."
    elif failure.reason == FailureReason.INVALID_JSON:
        why = f"it was not valid JSON ({failure.detail[:_DETAIL_CHARS]})."
    else:
        why = f"it did not match the required format ({failure.detail[:_DETAIL_CHARS]})."
    return f"Your previous answer was rejected: {why} Reply again with only one JSON object in the required format."


class LLMEngine:
    """Cache + backend + validation + retries + ledger, behind `run(requests)`.

    `cache` is any `AnswerCache` (the run's `LLMCache` file, a worker's `MemoryCache`) and `ledger`
    any `Ledger` the caller wants the counts in; both can be merged into the run's afterwards.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        cache: AnswerCache | None = None,
        ledger: Ledger | None = None,
        max_retries: int = 2,
        chunk_size: int = 16,
        retry_temperature: float = 0.3,
        max_tokens_growth: float = 2.0,
        progress: bool = False,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if max_tokens_growth < 1:
            raise ValueError(f"max_tokens_growth must be >= 1, got {max_tokens_growth}")
        self.backend = backend
        self.cache = cache
        self.ledger = ledger if ledger is not None else Ledger()
        self.max_retries = max_retries
        self.chunk_size = chunk_size
        # A truncated answer is retried with twice the tokens, up to this multiple of its own budget: a
        # model that loops inside a string never closes it, so more growth costs time and buys nothing.
        self.max_tokens_growth = max_tokens_growth
        # Greedy decoding ignores the seed, so a retry at temperature 0 would repeat itself.
        self.retry_temperature = retry_temperature
        self.progress = progress

    # ------------------------------------------------------------------ public API

    def run(self, requests: Sequence[LLMRequest[Any]]) -> list[LLMResult[Any]]:
        """One result per request, in order; each valid answer is cached as soon as its batch returns."""
        started = time.perf_counter()
        jobs = self._plan(requests)
        results: list[LLMResult[Any] | None] = [None] * len(requests)
        stages = [r.stage for r in requests]
        try:
            misses = self._serve_cached(jobs, results, stages)
            with self._progress_bar(len(misses)) as advance:
                self._generate(misses, results, stages, advance)
        finally:
            self._account_wall(stages, time.perf_counter() - started)
        done = [r for r in results if r is not None]
        if len(done) != len(requests):
            raise RuntimeError(f"internal error: {len(requests) - len(done)} requests got no result")
        return done

    @property
    def batch_size(self) -> int:
        """Requests per backend call: `chunk_size` for a backend that streams its answers (each is
        cached as it completes, and its workers stay busy), else its parallelism, at most `chunk_size`.

        For a backend that returns a batch at once, larger batches only delay the moment an answer
        reaches the cache (a kill loses the batch).
        """
        if getattr(self.backend, "streams", False):
            return self.chunk_size
        return max(1, min(self.chunk_size, int(getattr(self.backend, "parallelism", 1) or 1)))

    def run_one(self, request: LLMRequest[Any]) -> LLMResult[Any]:
        return self.run([request])[0]

    def close(self) -> None:
        """Close the backend and the cache (the engine owns both once built with them)."""
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ steps

    def _plan(self, requests: Sequence[LLMRequest[Any]]) -> list[_Job]:
        """Key every request; identical requests in one batch become one job."""
        by_key: dict[str, _Job] = {}
        schemas: dict[str, dict[str, Any]] = {}  # one parsed schema per output model, shared read-only
        backend_name, model_id = self.backend.name, self.backend.model_id
        for i, req in enumerate(requests):
            if not isinstance(req, LLMRequest):
                raise TypeError(f"request {i} is a {type(req).__name__}, expected LLMRequest")
            if not req.messages:
                raise ValueError(f"request {i} (key={req.key!r}) has no messages")
            schema_text = schema_json_for(req.output_model)
            key = cache_key(
                backend=backend_name,
                model_id=model_id,
                template=req.template,
                messages=req.messages,
                schema_json=schema_text,
                sampling=req.sampling,
            )
            job = by_key.get(key)
            if job is None:
                schema = schemas.setdefault(schema_text, json.loads(schema_text))
                by_key[key] = _Job(key=key, request=req, schema=schema, indices=[i])
            else:
                job.indices.append(i)
        return list(by_key.values())

    def _serve_cached(
        self, jobs: list[_Job], results: list[LLMResult[Any] | None], stages: list[str]
    ) -> list[_Job]:
        """Fill results from the cache; return the jobs still to generate."""
        if self.cache is None:
            return jobs
        found = self.cache.get_many(j.key for j in jobs)
        misses = []
        for job in jobs:
            entry = found.get(job.key)
            value = None
            if entry is not None:
                try:
                    value = job.request.output_model.model_validate_json(entry.value_json)
                except ValidationError:
                    value = None  # stricter model than when cached: regenerate
            if value is None:
                misses.append(job)
                continue
            usage = Usage(
                prompt_tokens=entry.prompt_tokens,
                completion_tokens=entry.completion_tokens,
                latency_s=entry.latency_s,
                attempts=entry.attempts,
                cached=True,
            )
            for i in job.indices:
                results[i] = LLMResult(value=value, usage=usage, raw_text=entry.value_json)
                stats = self.ledger.stage(stages[i])
                stats.requests += 1
                stats.cache_hits += 1
                stats.ok += 1
        return misses

    def _attempt_input(self, job: _Job) -> GenerationInput:
        req = job.request
        update: dict[str, Any] = {}
        if job.max_tokens != req.sampling.max_tokens:
            update["max_tokens"] = job.max_tokens
        if job.repairs:
            update["seed"] = req.sampling.seed + job.repairs * _SEED_STEP
            update["temperature"] = max(req.sampling.temperature, self.retry_temperature)
        sampling = req.sampling.model_copy(update=update) if update else req.sampling
        messages = req.messages
        if job.hint is not None:
            messages = (*messages, ChatMessage(role="user", content=job.hint))
        return GenerationInput(messages=messages, json_schema=job.schema, sampling=sampling)

    def _retry(self, job: _Job, failure: LLMFailure) -> bool:
        """Set `job` up for another attempt after `failure`; False when it is final.

        Truncation first gets a larger token budget with the same prompt and seed (the same answer,
        allowed to close); anything else but a transport failure gets a new seed and a repair hint,
        `max_retries` times. A transport failure is final here: a new seed cannot bring a backend
        back, backends retry transient errors themselves, and the stage then fails loudly.
        """
        stats = self.ledger.stage(job.request.stage)
        cap = int(job.request.sampling.max_tokens * self.max_tokens_growth)
        if failure.reason == FailureReason.TRUNCATED and job.max_tokens < cap:
            job.max_tokens = min(cap, job.max_tokens * 2)
            stats.budget_retries += 1
            return True
        if failure.reason in TRANSPORT_FAILURES or job.repairs >= self.max_retries:
            return False
        job.repairs += 1
        job.hint = _repair_hint(failure)
        return True

    def _generate(
        self,
        misses: list[_Job],
        results: list[LLMResult[Any] | None],
        stages: list[str],
        advance: Callable[[int], None],
    ) -> None:
        """Generate until every job has a value or a final failure; publish each as soon as it is final."""
        queue = deque(misses)
        for job in misses:
            job.max_tokens = job.request.sampling.max_tokens
        size = self.batch_size
        while queue:
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            again: list[_Job] = []
            seen: set[int] = set()
            for pos, out in self.backend.generate_iter([self._attempt_input(job) for job in batch]):
                if pos in seen or not 0 <= pos < len(batch):
                    raise RuntimeError(
                        f"backend {self.backend.name!r} answered input {pos} of {len(batch)} twice or out of range"
                    )
                seen.add(pos)
                job = batch[pos]
                job.usage.prompt_tokens += out.prompt_tokens
                job.usage.completion_tokens += out.completion_tokens
                job.usage.latency_s += out.latency_s
                job.usage.attempts += 1
                job.raw_text = out.text
                checked = _check(out, job.request.output_model)
                stats = self.ledger.stage(job.request.stage)
                stats.calls += 1
                stats.prompt_tokens += out.prompt_tokens
                stats.completion_tokens += out.completion_tokens
                stats.backend_s += out.latency_s
                if isinstance(checked, LLMFailure):
                    job.failure = checked
                    if self._retry(job, checked):
                        again.append(job)
                        continue
                else:
                    stats.valid_calls += 1
                    job.value, job.failure = checked, None
                self._finish([job], results, stages)  # cached the moment it is final
                advance(1)
            if len(seen) != len(batch):
                raise RuntimeError(
                    f"backend {self.backend.name!r} returned {len(seen)} outputs for {len(batch)} inputs"
                )
            queue.extendleft(reversed(again))  # retries first

    def _finish(self, jobs: list[_Job], results: list[LLMResult[Any] | None], stages: list[str]) -> None:
        """Persist the valid answers (one cheap WAL commit), then publish results and ledger counts."""
        if self.cache is not None:
            self.cache.put_many(
                CacheEntry(
                    key=job.key,
                    value_json=job.value.model_dump_json(),
                    backend=self.backend.name,
                    model_id=self.backend.model_id,
                    template=job.request.template,
                    stage=job.request.stage,
                    prompt_tokens=job.usage.prompt_tokens,
                    completion_tokens=job.usage.completion_tokens,
                    latency_s=job.usage.latency_s,
                    attempts=job.usage.attempts,
                )
                for job in jobs
                if job.value is not None
            )
        for job in jobs:
            for i in job.indices:
                stats = self.ledger.stage(stages[i])
                stats.requests += 1
                if job.value is not None:
                    stats.ok += 1
                    results[i] = LLMResult(value=job.value, usage=job.usage, raw_text=job.raw_text)
                else:
                    assert job.failure is not None
                    stats.failures[str(job.failure.reason)] += 1
                    if job.failure.reason in TRANSPORT_FAILURES and not stats.first_error:
                        stats.first_error = f"{job.failure.reason}: {job.failure.detail}"[:200]
                    results[i] = LLMResult(failure=job.failure, usage=job.usage, raw_text=job.raw_text)

    # ------------------------------------------------------------------ helpers

    def _account_wall(self, stages: list[str], wall_s: float) -> None:
        """Split a run's wall time over its stages in proportion to their request counts."""
        for stage, n in Counter(stages).items():
            self.ledger.stage(stage).wall_s += wall_s * n / len(stages)

    @contextmanager
    def _progress_bar(self, total: int) -> Iterator[Any]:
        if not self.progress or total == 0:
            yield lambda _n: None
            return
        from rich.console import Console

        from recgpt.progress import make_progress

        with make_progress(Console()) as bar:  # plain lines every 30 s when output is redirected
            task = bar.add_task(f"LLM {self.backend.name}", total=total)
            yield lambda n: bar.advance(task, n)
