"""`LlamaServer` / `serve`: llama.cpp's OpenAI-compatible server as a managed child process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from recgpt.llm.server import LlamaServer, ServerError, free_port

pytestmark = pytest.mark.llm

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer"},
    },
    "required": ["color", "count"],
    "additionalProperties": False,
}


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _refuses(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except OSError:
        return True
    return False


def test_models_endpoint_lists_the_model(llama_server: LlamaServer, smollm2_gguf: Path) -> None:
    assert llama_server.running
    assert llama_server.base_url.startswith("http://127.0.0.1:")
    assert llama_server.list_models() == [smollm2_gguf.stem] == [llama_server.model]


def test_chat_completion_with_a_schema_returns_json(llama_server: LlamaServer) -> None:
    body = {
        "model": llama_server.model,
        "messages": [
            {"role": "user", "content": 'Three blue balls. Answer as JSON, e.g. {"color": "red", "count": 1}'}
        ],
        "max_tokens": 24,
        "temperature": 0,
        "response_format": {"type": "json_object", "schema": SCHEMA},
    }
    resp = _post(f"{llama_server.base_url}/chat/completions", body)
    obj = json.loads(resp["choices"][0]["message"]["content"])
    assert set(obj) == {"color", "count"} and obj["color"] in ("red", "green", "blue")
    assert isinstance(obj["count"], int)
    assert resp["usage"]["completion_tokens"] > 0


def test_openai_backend_settles_on_a_constrained_mode(llama_server: LlamaServer) -> None:
    """llama-cpp-python's server rejects `json_schema`: `auto` must land on the schema-carrying JSON mode."""
    pytest.importorskip("openai")
    from recgpt.llm.backends.openai_backend import OpenAIBackend
    from recgpt.llm.types import ChatMessage, GenerationInput, SamplingParams

    backend = OpenAIBackend(llama_server.model, base_url=llama_server.base_url)
    inp = GenerationInput(
        messages=(ChatMessage(role="user", content="Two red cars. Reply in JSON."),),
        json_schema=SCHEMA,
        sampling=SamplingParams(max_tokens=24),
    )
    out = backend.generate([inp])[0]
    backend.close()
    assert out.finish_reason == "stop", out.error
    assert backend.structured_mode in ("json_schema", "json_object+schema")
    assert set(json.loads(out.text)) == {"color", "count"}


def test_server_stops_on_exit(smollm2_gguf: Path) -> None:
    with LlamaServer(smollm2_gguf, n_threads=1, n_ctx=512) as server:
        url = f"{server.base_url}/models"
        proc = server._proc
        assert server.running and not _refuses(url)
    assert proc is not None and proc.poll() is not None
    assert not server.running and _refuses(url)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="GGUF model file not found"):
        LlamaServer(tmp_path / "nope.gguf")


def test_a_server_that_dies_reports_its_log(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file" * 100)
    server = LlamaServer(bad, startup_timeout_s=60)
    with pytest.raises(ServerError, match=r"exited with code .*broken\.gguf") as info:
        server.start()
    assert len(str(info.value).splitlines()) > 2, "the server's log tail belongs in the error"
    assert not server.running


def test_loopback_only_unless_asked(smollm2_gguf: Path) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        LlamaServer(smollm2_gguf, host="0.0.0.0")


def test_serve_runs_in_the_foreground_until_interrupted(smollm2_gguf: Path) -> None:
    port = free_port()
    code = f"from recgpt.llm.server import serve; raise SystemExit(serve({str(smollm2_gguf)!r}, port={port}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        deadline = time.monotonic() + 60
        while _refuses(url):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "serve() did not come up in 60 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C on the CLI
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _refuses(url)
