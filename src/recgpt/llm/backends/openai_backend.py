"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, llama.cpp's server, hosted APIs).

Structured output, best first, detected once per backend and remembered:

1. `json_schema` — `response_format={"type": "json_schema", "json_schema": {..., "strict": True}}`
   (OpenAI, vLLM, SGLang, Ollama, recent llama.cpp `llama-server`);
2. `json_object+schema` — `{"type": "json_object", "schema": ...}`, the extension that
   llama-cpp-python's server (and Anyscale-style servers) turn into a grammar: still constrained;
3. `json_object` — plain JSON mode: the server only promises some JSON, the engine validates.

llama-cpp-python's server rejects (1) with HTTP 500 ("Input should be 'text' or 'json_object'"),
so the first request probes alone and the answer picks the mode for the rest. Retries with
exponential backoff (honouring Retry-After) on 429, 408/409, 5xx, timeouts and dropped connections
are done here rather than by the client, so that a format rejection is never retried as if it were
a transient 500. One bad request never raises: it becomes an output with `finish_reason="error"`.

The API key (`$OPENAI_API_KEY`) is sent only over HTTPS or to a loopback host; to a plain-HTTP
host elsewhere it is withheld, with one warning, unless `RECGPT_ALLOW_INSECURE_KEY=1`
(`recgpt.llm.credentials`). Credentials written into the URL are the user's explicit choice and are
used as given, but `model_id` and error texts carry them redacted.

Token window (the intent prompts' history budget): a llama.cpp server's own `/tokenize` and `/props`
(its `n_ctx`) when the server has them, probed once; else the `n_ctx` option (None: unknown) and an
approximate count (`recgpt.llm.types.approx_tokens`), which the window marks as not exact.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import parse_qsl, urlparse, urlsplit, urlunsplit

from recgpt.llm.backends.streaming import completed
from recgpt.llm.credentials import INSECURE_KEY_ENV, is_loopback, is_redacted, key_may_travel, redact
from recgpt.llm.types import (
    APPROX_WINDOW,
    Backend,
    GenerationInput,
    GenerationOutput,
    TokenWindow,
    messages_tokens,
)
from recgpt.settings import api_key, settings

StructuredMode = Literal["json_schema", "json_object", "auto"]
_LADDERS: dict[str, tuple[str, ...]] = {
    "auto": ("json_schema", "json_object+schema", "json_object"),
    "json_schema": ("json_schema",),
    "json_object": ("json_object+schema", "json_object"),
}
_RETRY_STATUS = frozenset({408, 409, 429})
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema")
_MAX_BACKOFF_S = 30.0
_DUMMY_KEY = "sk-no-key-required"
_DEFAULT_URL = "https://api.openai.com/v1"
_WARNED: set[str] = set()


def _is_local(url: str) -> bool:
    return is_loopback(urlparse(url).hostname or "")


def choose_api_key(base_url: str | None, api_key_env: str = "OPENAI_API_KEY") -> str:
    """The key to send to `base_url`: "" means no Authorization header at all.

    A key from the environment is sent over HTTPS or to loopback, or anywhere with
    `RECGPT_ALLOW_INSECURE_KEY=1`; to a plain-HTTP host elsewhere it is withheld (one warning per
    URL): refusing would break the common case of a shell-wide key and a key-less server on the
    LAN, and a server that does need the key answers 401, which the warning has explained.
    """
    url = base_url or _DEFAULT_URL
    key = api_key(api_key_env)
    if key and not key_may_travel(url):
        shown = redact(url)
        if shown not in _WARNED:
            _WARNED.add(shown)
            print(
                f"warning: ${api_key_env} is not sent to {shown}: plain HTTP to a host that is not this "
                f"machine would expose it; use https://, or set {INSECURE_KEY_ENV}=1 to send it anyway",
                file=sys.stderr,
                flush=True,
            )
        return ""
    if key:
        return key
    if _is_local(url):
        return _DUMMY_KEY  # local servers ignore the key, but a header does no harm there
    if urlparse(url).scheme.lower() == "https":
        raise ValueError(f"no API key: set ${api_key_env} (any value works for a server that needs none)")
    return ""  # plain HTTP elsewhere: nothing to send, nothing to leak


def response_format(mode: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `response_format` body for one structured-output mode (None: unconstrained)."""
    if schema is None:
        return None
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}
    if mode == "json_object+schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    raise ValueError(f"unknown structured-output mode {mode!r}")


class OpenAIBackend(Backend):
    """Chat completions through the `openai` client, `concurrency` requests in flight."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout_s: float = 120,
        max_retries: int = 3,
        structured: StructuredMode = "auto",
        n_ctx: int | None = None,
    ) -> None:
        import openai

        if not model:
            raise ValueError("OpenAIBackend needs a model name")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if structured not in _LADDERS:
            raise ValueError(f"structured must be one of {sorted(_LADDERS)}, got {structured!r}")
        base_url = base_url or settings().openai_base_url
        if base_url and is_redacted(base_url):
            raise ValueError(
                f"the URL {base_url} holds a redacted credential (a spec read back from a run folder, where "
                "secrets are never stored): pass the spec with its real credentials again, e.g. --llm"
            )
        api_key = choose_api_key(base_url, api_key_env)
        query: dict[str, str] | None = None
        if (
            base_url and urlsplit(base_url).query
        ):  # `...?api_key=K`: sent with every request, not glued to the path
            parts = urlsplit(base_url)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            base_url = urlunsplit(parts._replace(query=""))
        self._openai = openai
        # No key: the client still insists on one, so it gets a placeholder and every request omits the header.
        self._extra_headers: dict[str, Any] | None = None if api_key else {"Authorization": openai.Omit()}
        # The client's own retries are off: `_call` retries, knowing a format rejection from an outage.
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or _DUMMY_KEY,
            timeout=timeout_s,
            max_retries=0,
            default_query=query,
        )
        self.model = model
        self.base_url = redact(str(self._client.base_url).rstrip("/"))
        self.concurrency = concurrency
        self.max_retries = max_retries
        self._ladder = _LADDERS[structured]
        self._mode_index = 0
        self._mode_settled = len(self._ladder) == 1
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.n_ctx = n_ctx
        self._window: TokenWindow | None = None
        self._timeout_s = timeout_s

    @property
    def model_id(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    @property
    def structured_mode(self) -> str:
        """The structured-output mode in use (settled after the first schema request)."""
        return self._ladder[self._mode_index]

    # ------------------------------------------------------------------ Backend API

    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        if not inputs:
            return []
        outputs: list[GenerationOutput] = []
        rest = list(inputs)
        # Until the server has told us which response_format it takes, probe with one request alone.
        while rest and not self._mode_settled and rest[0].json_schema is not None:
            outputs.append(self._one(rest.pop(0)))
        if len(rest) <= 1 or self.concurrency == 1:
            return outputs + [self._one(x) for x in rest]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="recgpt-openai")
        return outputs + list(self._pool.map(self._one, rest))

    streams = True

    def generate_iter(self, inputs: list[GenerationInput]) -> Iterator[tuple[int, GenerationOutput]]:
        """Each answer as soon as its request returns (the engine caches it at once)."""
        rest = list(enumerate(inputs))
        while rest and not self._mode_settled and rest[0][1].json_schema is not None:
            i, inp = rest.pop(0)  # the structured-output mode is probed with one request alone
            yield i, self._one(inp)
        if len(rest) <= 1 or self.concurrency == 1:
            for i, inp in rest:
                yield i, self._one(inp)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="recgpt-openai")
        for j, out in completed(self._pool, self._one, [inp for _, inp in rest]):
            yield rest[j][0], out

    def _server_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET/POST `path` at the server root (the base URL without `/v1`); the llama.cpp server extras."""
        root = str(self._client.base_url).rstrip("/").removesuffix("/v1")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(root + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=min(self._timeout_s, 10)) as resp:
            return json.loads(resp.read())

    def _server_counter(self) -> tuple[Callable[[str], int], str] | None:
        """A token counter by the server's own tokenizer: llama.cpp's `/tokenize`, or llama-cpp-python's
        `/extras/tokenize/count` (which adds a BOS token: measured on "" and taken off). None: neither."""
        try:
            self._server_json("/tokenize", {"content": "probe"})["tokens"]

            def llamacpp(text: str) -> int:
                return len(self._server_json("/tokenize", {"content": text})["tokens"]) if text else 0

            return llamacpp, "server:/tokenize"
        except Exception:
            pass
        try:
            bos = int(self._server_json("/extras/tokenize/count", {"input": ""})["count"])

            def python_server(text: str) -> int:
                return (
                    int(self._server_json("/extras/tokenize/count", {"input": text})["count"]) - bos
                    if text
                    else 0
                )

            return python_server, "server:/extras/tokenize"
        except Exception:
            return None

    def token_window(self) -> TokenWindow:
        """The server's tokenizer (and llama.cpp's `/props` n_ctx) when it has one, else an approximation;
        the `n_ctx` option fills in a context the server does not report."""
        if self._window is not None:
            return self._window
        found = self._server_counter()
        if found is None:
            self._window = TokenWindow(self.n_ctx, APPROX_WINDOW.count, APPROX_WINDOW.count_messages)
            return self._window
        count, name = found
        n_ctx = self.n_ctx
        try:
            props = self._server_json("/props")
            n_ctx = int((props.get("default_generation_settings") or {}).get("n_ctx") or 0) or n_ctx
        except Exception:
            pass  # llama-cpp-python's server has no /props: the n_ctx option stands
        self._window = TokenWindow(n_ctx, count, lambda ms: messages_tokens(count, ms), counter=name)
        return self._window

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._client.close()

    # ------------------------------------------------------------------ one request

    def _one(self, inp: GenerationInput) -> GenerationOutput:
        """One chat completion; on a format rejection, try the next structured-output mode.

        A lower mode is adopted only once a request succeeds with it, so a request that is bad
        for another reason (too long, say) cannot push the backend down the ladder.
        """
        started = time.perf_counter()
        start_index = index = self._mode_index
        first_error: str | None = None
        while True:
            try:
                out = self._call(inp, self._ladder[index], started)
            except self._openai.APIStatusError as exc:
                detail = f"HTTP {exc.status_code}: {_message(exc)}"
                first_error = first_error or detail
                may_step = (
                    inp.json_schema is not None and not self._mode_settled and self._rejects_format(exc)
                )
                if may_step and index + 1 < len(self._ladder):
                    index += 1
                    continue
                return self._error(first_error, started)
            except Exception as exc:  # never raise for one request
                kind = "timeout" if isinstance(exc, self._openai.APITimeoutError) else type(exc).__name__
                return self._error(f"{kind}: {exc}", started)
            if inp.json_schema is not None:
                with self._lock:
                    if not self._mode_settled and self._mode_index == start_index:
                        self._mode_index = index
                    self._mode_settled = True
            return out

    def _rejects_format(self, exc: Any) -> bool:
        """A 400/422 (or a 5xx that names the field) on a schema request: maybe the mode is unsupported."""
        if exc.status_code in (400, 422):
            return True
        text = _message(exc).lower()
        return exc.status_code >= 500 and any(w in text for w in _FORMAT_WORDS)

    def _call(self, inp: GenerationInput, mode: str, started: float) -> GenerationOutput:
        """POST with retries on transient failures; APIStatusError for the others."""
        s = inp.sampling
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in inp.messages],
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
        }
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if self._extra_headers:
            kwargs["extra_headers"] = self._extra_headers
        fmt = response_format(mode, inp.json_schema)
        if fmt is not None:
            kwargs["response_format"] = fmt
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(**kwargs)
                break
            except (self._openai.APITimeoutError, self._openai.APIConnectionError):
                if attempt == self.max_retries:
                    raise
                time.sleep(_backoff(attempt, None))
            except self._openai.APIStatusError as exc:
                transient = exc.status_code in _RETRY_STATUS or exc.status_code >= 500
                if not transient or self._rejects_format(exc) or attempt == self.max_retries:
                    raise
                time.sleep(_backoff(attempt, exc.response.headers.get("retry-after")))
        if not resp.choices:
            return self._error("server returned no choices", started)
        choice = resp.choices[0]
        usage = resp.usage
        return GenerationOutput(
            text=choice.message.content or "",
            finish_reason=_finish_reason(choice.finish_reason),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=time.perf_counter() - started,
        )

    @staticmethod
    def _error(detail: str, started: float) -> GenerationOutput:
        return GenerationOutput(
            text="", finish_reason="error", latency_s=time.perf_counter() - started, error=redact(detail)
        )


def _finish_reason(reason: str | None) -> str:
    """Map the server's finish reason onto the contract's "stop" | "length" | "error"."""
    if reason == "length":
        return "length"
    return "stop" if reason in (None, "stop", "eos", "stop_sequence", "end_turn") else str(reason)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
    return str(getattr(exc, "message", exc))[:500]


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with jitter (0.5 s, 1 s, 2 s, ...), or the server's Retry-After."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), _MAX_BACKOFF_S)
        except ValueError:
            pass
    return min(0.5 * 2**attempt, _MAX_BACKOFF_S) * (0.5 + random.random() / 2)
