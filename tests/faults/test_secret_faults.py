"""Credentials (issue 10, item 10): an API key travels only where it is safe, and a secret written into
a backend URL is never recorded or printed.

Before: the OpenAI-compatible backend sent `$OPENAI_API_KEY` as a Bearer token over plain HTTP to
any host, and `openai:m@http://user:pass@host/v1` went verbatim into config.json, done.json, the
ledger/cache, results, the report and the terminal. After: the key goes only over HTTPS or to
loopback (`RECGPT_ALLOW_INSECURE_KEY=1` opts in), otherwise no Authorization header and one
warning; every recorded / printed spec is redacted (`user:***@`, `api_key=***`), and stage hashes
carry a digest of the secret instead.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recgpt.llm.credentials import INSECURE_KEY_ENV, is_redacted, key_may_travel, redact, secret_digest
from recgpt.llm.types import ChatMessage, GenerationInput, SamplingParams
from recgpt.pipeline.config import LLMSettings, RunConfig
from tests.conftest import fake_answer, fast_config, slice_dataset

PASSWORD = "S3CRET-pw-1"
QUERY_KEY = "QK3Y-query-2"
STAGE_PASSWORD = "T4G-pw-3"
ENV_KEY = "sk-ENV-4"
SECRETS = (PASSWORD, QUERY_KEY, STAGE_PASSWORD, ENV_KEY)


class _Recorder(http.server.ThreadingHTTPServer):
    """A fake OpenAI-compatible server (also usable as an HTTP proxy) that records every request's headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self.server.requests.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        )
        fmt = body.get("response_format") or {}
        schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
        inp = GenerationInput(
            messages=tuple(
                ChatMessage(role=m["role"], content=m["content"]) for m in body.get("messages", [])
            ),
            json_schema=schema,
            sampling=SamplingParams(),
        )
        text = fake_answer(inp) if schema else "{}"
        answer = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "m"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mls-slice"
    slice_dataset().save(path)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OPENAI_BASE_URL", INSECURE_KEY_ENV, "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    return monkeypatch


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("openai:m@http://user:pw@host/v1", "openai:m@http://user:***@host/v1"),
        ("openai:m@http://user:p@ss@host:8/v1", "openai:m@http://user:***@host:8/v1"),
        ("openai:m@https://TOKEN@host/v1", "openai:m@https://***@host/v1"),
        ("openai:m@http://host/v1?api_key=K&x=1", "openai:m@http://host/v1?api_key=***&x=1"),
        ("openai:m@http://host/v1?x=1&access_token=T", "openai:m@http://host/v1?x=1&access_token=***"),
        ("openai:m@http://127.0.0.1:8080/v1", "openai:m@http://127.0.0.1:8080/v1"),
        ("llamacpp", "llamacpp"),
    ],
)
def test_redact_hides_url_credentials(spec: str, shown: str) -> None:
    assert redact(spec) == shown
    assert redact(shown) == shown
    assert is_redacted(shown) == (shown != spec)


def test_config_json_and_stage_identity_never_hold_the_secret() -> None:
    spec = f"openai:m@http://user:{PASSWORD}@10.0.0.9/v1?api_key={QUERY_KEY}"
    cfg = RunConfig.model_validate({"llm": {"spec": spec, "stages": {"tags": spec}}})
    dumped = cfg.model_dump_json()
    assert PASSWORD not in dumped and QUERY_KEY not in dumped and "user:***@" in dumped
    for stage in (None, "interests", "tags"):
        ident = json.dumps(cfg.llm.identity(stage))
        assert PASSWORD not in ident and QUERY_KEY not in ident
        assert cfg.llm.identity(stage)["credentials_sha256"] == secret_digest(spec)
    assert PASSWORD not in cfg.llm.shown_spec() and cfg.llm.spec == spec  # the run itself still has it
    other = LLMSettings(spec=spec.replace(PASSWORD, "another-password"))
    assert other.identity() != cfg.llm.identity(), "a changed password must not silently reuse answers"
    assert LLMSettings(spec="llamacpp").identity() == {
        "spec": "llamacpp",
        "n_ctx": 4096,
        "max_retries": 1,
        "max_tokens_growth": 2.0,
    }


def test_a_url_with_credentials_is_parsed_as_one_url() -> None:
    """Before: `rpartition("@")` split inside the URL, and the request went to api.openai.com with the
    password in the *model name*."""
    from recgpt.llm.backends import parse_spec

    url = f"http://user:{PASSWORD}@10.0.0.9:8000/v1"
    assert parse_spec(f"openai:org/m@{url}") == ("openai", {"model": "org/m", "base_url": url})
    with pytest.raises(ValueError) as info:
        parse_spec(f"openai:@{url}")
    assert PASSWORD not in str(info.value)


def test_a_redacted_spec_read_back_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    from recgpt.llm.backends.openai_backend import OpenAIBackend

    with pytest.raises(ValueError, match="redacted credential"):
        OpenAIBackend("m", base_url="http://user:***@127.0.0.1:9/v1")


# ------------------------------------------------------------------ where a key may travel


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1", True),
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.9.9.9/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://10.0.0.5:8000/v1", False),
        ("http://gpu-box.lan/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),
        ("http://localhost.evil.example/v1", False),
    ],
)
def test_key_travels_only_over_https_or_to_loopback(
    clean_env: pytest.MonkeyPatch, url: str, allowed: bool
) -> None:
    assert key_may_travel(url) is allowed
    clean_env.setenv(INSECURE_KEY_ENV, "1")
    assert key_may_travel(url) is True


def test_plain_http_elsewhere_withholds_the_key_with_one_warning(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from recgpt.llm.backends.openai_backend import choose_api_key

    url = "http://user:pw@gpu-box-warn.lan/v1"
    assert choose_api_key(url) == ""
    assert choose_api_key(url) == ""
    err = capsys.readouterr().err
    assert (
        err.count("warning:") == 1 and INSECURE_KEY_ENV in err and "user:***@" in err and ENV_KEY not in err
    )
    clean_env.setenv(INSECURE_KEY_ENV, "1")
    assert choose_api_key(url) == ENV_KEY


def _one_request(base_url: str) -> None:
    from recgpt.llm.backends.openai_backend import OpenAIBackend

    backend = OpenAIBackend("m", base_url=base_url, max_retries=0)
    inp = GenerationInput(
        messages=(ChatMessage(role="user", content="hi"),), json_schema=None, sampling=SamplingParams()
    )
    out = backend.generate([inp])[0]
    backend.close()
    assert out.finish_reason == "stop", out.error


def test_the_real_client_sends_no_key_to_a_plain_http_host(
    recorder: _Recorder, clean_env: pytest.MonkeyPatch
) -> None:
    """A non-loopback host through the recorder as HTTP proxy: what would go over the wire."""
    pytest.importorskip("openai")
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{recorder.port}")
    _one_request("http://gpu-box.lan/v1")
    assert recorder.requests[-1]["path"].startswith("http://gpu-box.lan/")
    assert "authorization" not in recorder.requests[-1]["headers"]
    clean_env.setenv(INSECURE_KEY_ENV, "1")  # the explicit opt-in
    _one_request("http://gpu-box.lan/v1")
    assert recorder.requests[-1]["headers"]["authorization"] == f"Bearer {ENV_KEY}"


def test_the_real_client_sends_the_key_to_loopback(
    recorder: _Recorder, clean_env: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openai")
    _one_request(f"http://127.0.0.1:{recorder.port}/v1")
    assert recorder.requests[-1]["headers"]["authorization"] == f"Bearer {ENV_KEY}"


# ------------------------------------------------------------------ a whole run


@pytest.mark.slow
def test_recgpt_run_records_and_prints_no_secret(
    recorder: _Recorder, clean_env: pytest.MonkeyPatch, tmp_path: Path, small_dataset: Path
) -> None:
    """`recgpt run` with credentials in the main and a per-stage spec: grep every file and the terminal."""
    pytest.importorskip("openai")
    base = f"127.0.0.1:{recorder.port}/v1"
    spec = f"openai:m@http://user:{PASSWORD}@{base}?api_key={QUERY_KEY}"
    cfg = fast_config(small_dataset, tmp_path / "runs", llm={"spec": "fake"})
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())
    argv = [sys.executable, "-c", "from recgpt.cli.app import main; main()", "run", "--config", str(config)]
    argv += [
        "--llm",
        spec,
        "--stage-llm",
        f"tags=openai:m@http://tagger:{STAGE_PASSWORD}@{base}",
        "--no-progress",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=None)
    terminal = proc.stdout + proc.stderr
    assert len(recorder.requests) > 0, terminal  # the LLM stages did reach the server
    assert "user:***@" in terminal, terminal
    run_dir = tmp_path / "runs" / "t"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert (run_dir / "config.json") in files and any(p.name == "done.json" for p in files)
    for secret in SECRETS:
        assert secret not in terminal, f"{secret!r} printed"
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert leaks == [], f"{secret!r} written to {leaks}"
