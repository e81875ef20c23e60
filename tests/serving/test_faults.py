"""kill -9 of `recgpt serve` while events are being posted: after a restart on the same store every
acknowledged (202) event is stored, none twice; re-posting everything stores each event exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recgpt.serving.store import Store

KEY = "fault-key"
BATCH = 5
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`recgpt serve` as a real process on a loopback port."""

    def __init__(self, run: Path, store_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, "-c", "from recgpt.cli.app import main; main()", "serve", "--run", str(run)]
        cmd += ["--store", store_url, "--port", str(self.port), "--api-key", KEY, "--log-level", "warning"]
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise AssertionError(f"server did not come up: {log.read_text()[-3000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def batch(n: int) -> dict:
    return {
        "events": [
            {
                "event_id": n * BATCH + j,
                "user_id": f"u{(n + j) % 7}",
                "item_id": str(1 + (n * BATCH + j) % 50),
                "behavior": "click",
                "timestamp": 1_900_000_000 + n,
            }
            for j in range(BATCH)
        ]
    }


def post_until_refused(url: str, acked: list[int], sent: list[int], stop: threading.Event) -> None:
    """Post batch after batch; a batch counts as acknowledged only when its 202 came back."""
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=5.0) as client:
        n = 0
        while not stop.is_set():
            sent.append(n)
            try:
                got = client.post("/v1/events", json=batch(n))
            except httpx.HTTPError:
                return
            if got.status_code == 202:
                acked.append(n)
            n += 1


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def stored_ids(store_url: str) -> list[int]:
    with Store.open(store_url) as store:
        return [e["event_id"] for u in range(7) for e in store.user_events(f"u{u}")]


def test_kill9_while_posting_loses_no_acknowledged_event(
    finished_run: Path, store_url: str, servers: list[Server], tmp_path: Path
) -> None:
    servers.append(Server(finished_run, store_url, tmp_path / "server.log"))
    acked: list[int] = []
    sent: list[int] = []
    stop = threading.Event()
    poster = threading.Thread(target=post_until_refused, args=(servers[0].url, acked, sent, stop))
    poster.start()
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    servers[0].kill9()
    poster.join(15)
    stop.set()
    assert len(acked) >= 40, f"only {len(acked)} batches acknowledged before the kill"

    ids = stored_ids(store_url)  # the store, opened cold after the crash
    assert len(ids) == len(set(ids)), "an event was stored twice"
    want = {n * BATCH + j for n in acked for j in range(BATCH)}
    assert want <= set(ids), f"lost acknowledged events: {sorted(want - set(ids))[:10]}"
    assert set(ids) <= {n * BATCH + j for n in sent for j in range(BATCH)}

    servers.append(Server(finished_run, store_url, tmp_path / "server.log"))
    with httpx.Client(base_url=servers[1].url, headers={"X-API-Key": KEY}, timeout=10.0) as client:
        duplicates = 0
        for n in sent:  # the client retries everything it sent; acknowledged batches come back as duplicates
            got = client.post("/v1/events", json=batch(n))
            assert got.status_code == 202, got.text
            duplicates += got.json()["duplicates"]
        assert client.get("/v1/users/u1/recommendations").json()["fallback"] is True
    assert duplicates >= len(acked) * BATCH
    ids = stored_ids(store_url)
    assert sorted(ids) == sorted(n * BATCH + j for n in sent for j in range(BATCH))
    assert servers[1].stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful stop
    assert "Traceback" not in (tmp_path / "server.log").read_text()
