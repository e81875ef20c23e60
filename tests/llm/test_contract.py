"""One contract, every local backend, the real SmolLM2 model, through `LLMEngine`.

For `llamacpp` (embedded), `openai` (against a real llama.cpp server on 127.0.0.1) and
`transformers` (the GGUF dequantized to an HF folder): a 50-request batch comes back 100%
schema-valid; a rerun on the same cache makes zero backend calls; a batch killed after its first
chunks resumes with nothing lost and nothing generated twice. Below the suite: backend-specific
behaviour that the contract relies on (OpenAI retries and format fallback against a stub server,
vLLM's missing-dependency error), which needs no model.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel, Field

from recgpt.llm.backends import make_backend
from recgpt.llm.cache import LLMCache, cache_key
from recgpt.llm.engine import LLMEngine
from recgpt.llm.schema import schema_json_for
from recgpt.llm.types import (
    Backend,
    ChatMessage,
    GenerationInput,
    GenerationOutput,
    LLMRequest,
    SamplingParams,
)

BACKENDS = ("llamacpp", "openai", "transformers")


class Review(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    score: int = Field(ge=1, le=5)


SYSTEM = (
    "You classify product reviews. Reply with one JSON object with a sentiment label "
    '(positive, negative or neutral) and a score from 1 to 5. Example: {"label": "positive", "score": 5}'
)
PRODUCTS = (
    "phone",
    "blender",
    "tent",
    "novel",
    "headphones",
    "kettle",
    "jacket",
    "lamp",
    "drill",
    "backpack",
)
VERDICTS = (
    "works perfectly and I love it",
    "broke after two days",
    "is okay, nothing special",
    "arrived late and scratched",
    "exceeded every expectation",
)


def review_requests(n: int, salt: str = "") -> list[LLMRequest[Review]]:
    """`n` distinct, varied prompts with one worked example, greedy, at most 20 new tokens."""
    reqs = []
    for i in range(n):
        text = f"Review {salt}{i}: the {PRODUCTS[i % len(PRODUCTS)]} {VERDICTS[(i // 2) % len(VERDICTS)]}."
        msgs = (ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=text))
        reqs.append(
            LLMRequest(messages=msgs, output_model=Review, sampling=SamplingParams(max_tokens=20), key=str(i))
        )
    return reqs


class Killed(BaseException):
    """Like a SIGKILL for the engine: not an `Exception`, so nothing on the way may swallow it."""


class Counting(Backend):
    """Wraps a shared backend: counts calls and inputs; can die on a given call like a killed process."""

    def __init__(self, inner: Backend, die_on_call: int | None = None) -> None:
        self.inner, self.die_on_call = inner, die_on_call
        self.name = inner.name
        self.calls = 0
        self.inputs: list[GenerationInput] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, inputs: list[GenerationInput]) -> list[GenerationOutput]:
        self.calls += 1
        if self.die_on_call is not None and self.calls >= self.die_on_call:
            raise Killed(f"simulated kill on generate call {self.calls}")
        self.inputs.extend(inputs)
        return self.inner.generate(inputs)

    def close(self) -> None:  # the wrapped backend is shared by the module's tests
        pass


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, smollm2_gguf: Path) -> Iterator[Backend]:
    name = request.param
    if name == "llamacpp":
        from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend

        b: Backend = LlamaCppBackend(smollm2_gguf, n_threads=1)
    elif name == "openai":
        from recgpt.llm.backends.openai_backend import OpenAIBackend

        server = request.getfixturevalue("llama_server")
        b = OpenAIBackend(server.model, base_url=server.base_url, concurrency=2)
    else:
        request.getfixturevalue("hf_smollm2_folder")  # converts once, or skips without torch
        from recgpt.llm.backends.transformers_backend import TransformersBackend

        b = TransformersBackend(str(smollm2_gguf), threads=1, batch_size=8)
        assert b.constraint_library == "llguidance", (
            "constrained decoding needs llguidance: pip install llguidance"
        )
    yield b
    b.close()


def _keys(backend: Backend, reqs: list[LLMRequest[Review]]) -> list[str]:
    schema = schema_json_for(Review)
    return [
        cache_key(
            backend=backend.name,
            model_id=backend.model_id,
            template=r.template,
            messages=r.messages,
            schema_json=schema,
            sampling=r.sampling,
        )
        for r in reqs
    ]


def _first_attempts(inputs: list[GenerationInput], reqs: list[LLMRequest[Review]]) -> Counter[int]:
    """Which requests were sent as a first attempt (retries carry an extra repair message)."""
    index = {r.messages: i for i, r in enumerate(reqs)}
    return Counter(index[x.messages] for x in inputs if x.messages in index)


@pytest.mark.llm
def test_batch_of_50_is_schema_valid_and_rerun_is_free(backend: Backend, tmp_path: Path) -> None:
    reqs = review_requests(50)
    cache = LLMCache(tmp_path / "cache.sqlite")
    first = Counting(backend)
    engine = LLMEngine(first, cache=cache, max_retries=2, chunk_size=16)
    results = engine.run(reqs)
    failures = [(r.failure, r.raw_text) for r in results if not r.ok]
    assert not failures, f"{backend.name}: {len(failures)} invalid: {failures[:3]}"
    assert all(isinstance(r.value, Review) for r in results)
    stats = engine.ledger.stage("default")
    assert stats.requests == stats.ok == 50 and stats.schema_valid_rate == 1.0
    assert sum(_first_attempts(first.inputs, reqs).values()) == 50
    assert all(r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0 for r in results)
    assert len(cache) == 50

    again = Counting(backend)
    engine2 = LLMEngine(again, cache=cache)
    rerun = engine2.run(reqs)
    assert again.calls == 0 and engine2.ledger.stage("default").cache_hits == 50
    assert [r.value for r in rerun] == [r.value for r in results]
    assert all(r.usage.cached for r in rerun)
    cache.close()


@pytest.mark.llm
def test_killed_batch_resumes_without_loss_or_duplicates(backend: Backend, tmp_path: Path) -> None:
    reqs = review_requests(12, salt="k")
    path = tmp_path / "cache.sqlite"
    dying = Counting(backend, die_on_call=3)  # two chunks of 4 (or one chunk and a retry) get done
    with pytest.raises(Killed):
        LLMEngine(dying, cache=LLMCache(path), chunk_size=4).run(reqs)

    cache = LLMCache(path)  # a new process would open the file afresh
    keys = _keys(backend, reqs)
    done_before = set(cache.get_many(keys))
    assert 0 < len(done_before) < len(reqs), "the kill should land mid-batch"
    assert len(cache) == len(done_before)

    resumed = Counting(backend)
    engine = LLMEngine(resumed, cache=cache, chunk_size=4)
    results = engine.run(reqs)
    assert all(r.ok for r in results), [r.failure for r in results if not r.ok]
    sent = _first_attempts(resumed.inputs, reqs)
    assert max(sent.values()) == 1, "a request was generated twice in the resumed run"
    assert {keys[i] for i in sent} == set(keys) - done_before, "resume must send exactly the missing requests"
    assert engine.ledger.stage("default").cache_hits == len(done_before)
    assert len(cache) == len(reqs)
    cache.close()


# ---------------------------------------------------------------------- transformers specifics


@pytest.mark.llm
def test_transformers_gguf_copy_is_reused_and_adapters_change_identity(
    hf_smollm2_folder: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    from recgpt.llm.backends.transformers_backend import TransformersBackend, gguf_to_hf_folder

    assert (hf_smollm2_folder / "model.safetensors").is_file()
    assert gguf_to_hf_folder(smollm2_gguf) == hf_smollm2_folder  # cached: no second conversion

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(hf_smollm2_folder))
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "adapter")

    plain = make_backend(f"transformers:{hf_smollm2_folder}", batch_size=4)
    assert isinstance(plain, TransformersBackend)
    tuned = TransformersBackend(str(hf_smollm2_folder), adapter=str(tmp_path / "adapter"), batch_size=4)
    assert plain.model_id.startswith(f"{hf_smollm2_folder.name}@sha256:")
    assert tuned.model_id.startswith(plain.model_id + "+adapter@sha256:")
    schema = json.loads(schema_json_for(Review))
    msgs = review_requests(1)[0].messages
    inputs = [
        GenerationInput(messages=msgs, json_schema=schema, sampling=SamplingParams(max_tokens=20)),
        GenerationInput(messages=msgs, json_schema=None, sampling=SamplingParams(max_tokens=5)),
        GenerationInput(
            messages=msgs, json_schema=schema, sampling=SamplingParams(max_tokens=20, temperature=0.7)
        ),
    ]
    outs = plain.generate(inputs)  # mixed sampling and schema/no-schema: answered in order
    assert [Review.model_validate_json(outs[i].text) for i in (0, 2)]
    assert outs[1].completion_tokens <= 5
    with torch.no_grad():  # the random adapter really changes the weights that serve requests
        ids = plain.tokenizer("hello", return_tensors="pt")["input_ids"]
        assert not torch.allclose(plain.model(ids).logits, tuned.model(ids).logits)
    assert Review.model_validate_json(tuned.generate(inputs[:1])[0].text)
    plain.close()
    tuned.close()


# ---------------------------------------------------------------------- OpenAI backend vs a stub server


class _Stub(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions from a script of (status, body) pairs; records request bodies."""

    script: ClassVar[list[tuple[int, Any]]] = []
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        script = type(self).script
        status, payload = script.pop(0) if len(script) > 1 else script[0]
        if callable(payload):
            status, payload = payload(body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _ok(text: str = '{"label": "neutral", "score": 3}') -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_Stub]]]:
    pytest.importorskip("openai")
    from recgpt.llm.backends import openai_backend

    monkeypatch.setattr(openai_backend, "_backoff", lambda attempt, retry_after: 0.01)
    handler = type("Stub", (_Stub,), {"script": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
    server.server_close()


def _inp() -> GenerationInput:
    return GenerationInput(
        messages=(ChatMessage(role="user", content="hi"),),
        json_schema=json.loads(schema_json_for(Review)),
        sampling=SamplingParams(max_tokens=20),
    )


def test_openai_retries_transient_errors_then_succeeds(stub: tuple[str, type[_Stub]]) -> None:
    from recgpt.llm.backends.openai_backend import OpenAIBackend

    url, handler = stub
    handler.script = [
        (429, {"error": {"message": "slow down"}}),
        (503, {"error": {"message": "busy"}}),
        (200, _ok()),
    ]
    out = OpenAIBackend("m", base_url=url, max_retries=3, structured="json_schema").generate([_inp()])[0]
    assert out.finish_reason == "stop" and json.loads(out.text)["label"] == "neutral"
    assert (out.prompt_tokens, out.completion_tokens) == (7, 5)
    assert len(handler.seen) == 3


def test_openai_gives_an_error_output_not_an_exception(stub: tuple[str, type[_Stub]]) -> None:
    from recgpt.llm.backends.openai_backend import OpenAIBackend

    url, handler = stub
    handler.script = [(500, {"error": {"message": "model crashed"}})]
    outs = OpenAIBackend("m", base_url=url, max_retries=2, structured="json_schema").generate(
        [_inp(), _inp()]
    )
    assert [o.finish_reason for o in outs] == ["error", "error"]
    assert "500" in (outs[0].error or "") and "model crashed" in (outs[0].error or "")
    assert len(handler.seen) == 2 * 3  # each request: 1 try + 2 retries


def test_openai_falls_back_to_json_mode_once_and_remembers(stub: tuple[str, type[_Stub]]) -> None:
    from recgpt.llm.backends.openai_backend import OpenAIBackend

    def server(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body["response_format"]["type"] == "json_schema":  # like llama-cpp-python's server
            return 500, {
                "error": {"message": "response_format.type: Input should be 'text' or 'json_object'"}
            }
        return 200, _ok()

    url, handler = stub
    handler.script = [(0, server)]
    backend = OpenAIBackend("m", base_url=url, structured="auto")
    outs = backend.generate([_inp() for _ in range(4)])
    assert all(o.finish_reason == "stop" for o in outs)
    assert backend.structured_mode == "json_object+schema"
    formats = [b["response_format"]["type"] for b in handler.seen]
    assert formats == ["json_schema"] + ["json_object"] * 4, "the probe fails once, then never again"
    assert handler.seen[-1]["response_format"]["schema"]["properties"]["label"]["enum"] == [
        "positive",
        "negative",
        "neutral",
    ]


def test_openai_needs_a_key_for_remote_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    from recgpt.llm.backends.openai_backend import OpenAIBackend

    monkeypatch.delenv("RECGPT_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="RECGPT_TEST_NO_SUCH_KEY"):
        OpenAIBackend("m", base_url="https://api.example.com/v1", api_key_env="RECGPT_TEST_NO_SUCH_KEY")
    local = make_backend("openai:m@http://127.0.0.1:9/v1", api_key_env="RECGPT_TEST_NO_SUCH_KEY")
    assert isinstance(local, OpenAIBackend) and local.model_id == "openai:m@http://127.0.0.1:9/v1"


def test_vllm_missing_is_a_clear_error() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    from recgpt.llm.backends.vllm_backend import VLLMBackend

    with pytest.raises(ImportError, match=r"vLLM runs on GPU machines; pip install 'recgpt\[vllm\]'"):
        VLLMBackend("some/model")
