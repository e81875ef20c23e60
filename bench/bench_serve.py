"""Benchmark `recgpt serve` on loopback: reads against a trivial FastAPI endpoint, writes into SQLite and
PostgreSQL, and the nearline refresh lag.

Side by side in one run:
  1. reads   - `GET /v1/users/{id}/recommendations` for the run's users vs a trivial FastAPI endpoint
               (`GET /ping` -> {"ok": true}), both one uvicorn process with the same settings: p50 / p99
               at a fixed offered rate, and the highest offered rate held with p99 < 20 ms (aim: 500/s).
               The client is open-loop (requests leave on a fixed schedule; latency counts from the
               scheduled time, so a slow server cannot slow the load down and hide its queue).
  2. writes  - `POST /v1/events` events/s into SQLite (the run's default) and PostgreSQL (a private
               durable cluster, fsync on, when Debian's PostgreSQL is installed; or `--pg URL`),
               batches of 1 and of 100 events, 8 clients in a closed loop.
  3. refresh - nearline refresh lag (event acknowledged -> the user's new list version is served) with
               `--workers nearline` and `--llm` (default: the run's LLM).

    .venv/bin/python bench/bench_serve.py --run runs/quickstart
    .venv/bin/python bench/bench_serve.py --run runs/quickstart --llm llamacpp --json results/bench_serve.json

Timings are wall-clock and meaningless while other jobs share the cores: the client shares the
machine with the server, which is why the trivial endpoint runs under the same client as the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
P99_LIMIT_MS = 20.0
TRIVIAL = """
import sys, fastapi, uvicorn
app = fastapi.FastAPI()
@app.get("/ping")
async def ping() -> dict:
    return {"ok": True}
@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}
uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)).run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(cmd: list[str], port: int, log: Path, ready_s: float = 180.0) -> Iterator[str]:
    """A server process on 127.0.0.1:`port`, up once /healthz answers; stopped with SIGTERM after."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {ready_s:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def recgpt_serve(run: Path, store: str, port: int, *extra: str) -> list[str]:
    cmd = [sys.executable, "-c", "from recgpt.cli.app import main; main()", "serve", "--run", str(run)]
    return [*cmd, "--store", store, "--port", str(port), "--api-key", KEY, "--log-level", "warning", *extra]


def quantiles_ms(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(latencies) * 1000.0, [50, 99])
    return float(p50), float(p99)


# ---------------------------------------------------------------------------------------------- reads


class RawHttp:
    """A minimal HTTP/1.1 keep-alive GET client on asyncio streams: a fraction of httpx's cost per request,
    so on a 2-core machine the load generator leaves the server its core (the bench measures the server)."""

    def __init__(self, url: str) -> None:
        host_port = url.removeprefix("http://").split("/")[0]
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> int:
        """GET `path`; the status code (the body is read and dropped)."""
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        self.idle.append(conn)
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def fixed_rate(url: str, path_of: Callable[[int], str], rate: float, seconds: float) -> dict[str, Any]:
    """Offer `rate` GETs/s for `seconds` on a fixed schedule; latency from each request's scheduled time."""
    n = max(1, int(rate * seconds))
    lat: list[float] = []
    errors = 0
    client = RawHttp(url)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            if await client.get(path_of(i)) != 200:
                errors += 1
                return
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            return
        lat.append(loop.time() - due)

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = loop.time() - start
    client.close()
    p50, p99 = quantiles_ms(lat)
    return {"offered": rate, "achieved": len(lat) / wall, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def step_rates(url: str, path_of: Callable[[int], str], rates: list[float], seconds: float) -> dict[str, Any]:
    """Step the offered rate up until p99 reaches the limit (or requests fail or fall behind); a step that
    misses is tried once more, so one burst of another process's load does not end the climb."""
    asyncio.run(fixed_rate(url, path_of, 50, 1.0))  # warm-up: connections, caches
    steps, held = [], 0.0
    for rate in rates:
        for attempt in ("", " (again)"):
            got = asyncio.run(fixed_rate(url, path_of, rate, seconds))
            steps.append(got)
            ok = got["p99_ms"] < P99_LIMIT_MS and got["errors"] == 0 and got["achieved"] >= 0.95 * rate
            print(
                f"    {rate:6.0f}/s offered{attempt}: p50 {got['p50_ms']:6.2f} ms  p99 {got['p99_ms']:7.2f} ms  "
                f"{'held' if ok else 'NOT held'}",
                flush=True,
            )
            if ok:
                break
        if not ok:
            break
        held = rate
    return {"steps": steps, "held_rate": held}


def bench_reads(run: Path, users: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    out: dict[str, Any] = {}
    port = free_port()
    with server(recgpt_serve(run, f"sqlite:///{tmp / 'reads.db'}", port), port, tmp / "reads.log") as url:
        print("  recgpt GET recommendations", flush=True)
        out["recgpt"] = step_rates(
            url, lambda i: f"/v1/users/{users[i % len(users)]}/recommendations?k=10", rates, args.seconds
        )
    port = free_port()
    with server([sys.executable, "-c", TRIVIAL, str(port)], port, tmp / "trivial.log") as url:
        print("  trivial FastAPI GET /ping", flush=True)
        out["trivial"] = step_rates(url, lambda i: "/ping", rates, args.seconds)
    return out


# ---------------------------------------------------------------------------------------------- writes


async def post_closed_loop(
    url: str, batch: int, seconds: float, clients: int, first_id: int
) -> dict[str, Any]:
    """`clients` loops posting batches of `batch` new events for `seconds`; events/s acknowledged."""
    lat: list[float] = []
    counter = iter(range(first_id, 1 << 62, batch))
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=30.0) as client:

        async def loop() -> None:
            while time.perf_counter() < deadline:
                first = next(counter)
                events = [
                    {
                        "event_id": first + j,
                        "user_id": f"b{(first + j) % 997}",
                        "item_id": str(1 + (first + j) % 400),
                        "behavior": "click",
                        "timestamp": 1_900_000_000,
                    }
                    for j in range(batch)
                ]
                t0 = time.perf_counter()
                r = await client.post("/v1/events", json={"events": events})
                if r.status_code != 202:
                    raise RuntimeError(f"POST /v1/events: {r.status_code} {r.text[:300]}")
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        wall = time.perf_counter() - t0
    p50, p99 = quantiles_ms(lat)
    return {
        "batch": batch,
        "requests_s": len(lat) / wall,
        "events_s": len(lat) * batch / wall,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def bench_writes(
    run: Path, store: str, name: str, args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    port = free_port()
    out = []
    with server(recgpt_serve(run, store, port), port, tmp / f"writes-{name}.log") as url:
        for i, batch in enumerate((1, 100)):
            got = asyncio.run(post_closed_loop(url, batch, args.seconds, 8, first_id=i * 10**9))
            print(
                f"  {name} batch {batch:3d}: {got['events_s']:8.0f} events/s ({got['requests_s']:.0f} requests/s, "
                f"p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms)",
                flush=True,
            )
            out.append({"store": name, **got})
    return out


@contextmanager
def durable_postgres(tmp: Path) -> Iterator[str | None]:
    """A private PostgreSQL cluster with its durable defaults (fsync, synchronous_commit on), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    bin_dir = found[-1].parent if found else None
    if bin_dir is None:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="recgpt-bench-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(tool: str, *a: str) -> None:
        subprocess.run(
            [*as_user, str(bin_dir / tool), *a], cwd=root, check=True, capture_output=True, timeout=120
        )

    pg("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(
        "pg_ctl",
        "start",
        "-w",
        "-D",
        str(root / "data"),
        "-l",
        str(root / "log"),
        "-o",
        f"-k {root} -c listen_addresses=127.0.0.1 -p {port}",
    )
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "bench")
        yield f"postgresql://postgres@127.0.0.1:{port}/bench"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-D", str(root / "data")],
            cwd=root,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- refresh


def bench_refresh(run: Path, users: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Post one event for each of `args.refresh_users` users; time until each one's new version is served."""
    port = free_port()
    extra = ["--workers", "nearline", *(["--llm", args.llm] if args.llm else [])]
    lags: list[float] = []
    with server(
        recgpt_serve(run, f"sqlite:///{tmp / 'refresh.db'}", port, *extra), port, tmp / "refresh.log"
    ) as url:
        chosen = users[: args.refresh_users]
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30.0) as client:
            other = client.get(f"/v1/users/{users[-1]}/recommendations").json()["items"]
            acked: dict[str, float] = {}
            for i, user in enumerate(chosen):
                event = {
                    "event_id": 5_000_000 + i,
                    "user_id": user,
                    "item_id": other[i % len(other)]["item_id"],
                    "behavior": "click",
                    "timestamp": 1_900_000_000,
                }
                assert client.post("/v1/events", json={"events": [event]}).status_code == 202
                acked[user] = time.perf_counter()
            deadline = time.perf_counter() + args.refresh_timeout
            while acked and time.perf_counter() < deadline:
                for user in list(acked):
                    if client.get(f"/v1/users/{user}/recommendations").json()["version"] > 1:
                        lags.append(time.perf_counter() - acked.pop(user))
                time.sleep(0.05)
    p50 = float(np.median(lags)) if lags else float("nan")
    print(
        f"  {len(lags)} of {args.refresh_users} users refreshed; lag p50 {p50:.2f} s, "
        f"max {max(lags, default=float('nan')):.2f} s",
        flush=True,
    )
    return {
        "users": args.refresh_users,
        "refreshed": len(lags),
        "lag_p50_s": p50,
        "lag_max_s": max(lags, default=float("nan")),
        "llm": args.llm or "the run's",
    }


# ---------------------------------------------------------------------------------------------- main


def table(result: dict[str, Any]) -> str:
    rows = ["| measure | recgpt | trivial FastAPI | ratio |", "| --- | ---: | ---: | ---: |"]
    reads = result.get("reads")
    if reads:
        ours, ref = reads["recgpt"], reads["trivial"]
        first_o, first_r = ours["steps"][0], ref["steps"][0]
        for key, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")):
            rows.append(
                f"| GET at {first_o['offered']:.0f}/s: {label} | {first_o[key]:.2f} | {first_r[key]:.2f} | "
                f"{first_o[key] / first_r[key]:.2f} |"
            )
        h_o, h_r = ours["held_rate"], ref["held_rate"]
        ratio = f"{h_o / h_r:.2f}" if h_r else "-"
        rows.append(
            f"| highest rate held, p99 < {P99_LIMIT_MS:.0f} ms (req/s) | {h_o:.0f} | {h_r:.0f} | {ratio} |"
        )
    for w in result.get("writes", []):
        rows.append(
            f"| POST /v1/events {w['store']}, batch {w['batch']}: events/s (request p99 ms) | "
            f"{w['events_s']:.0f} ({w['p99_ms']:.0f}) | | |"
        )
    r = result.get("refresh")
    if r:
        rows.append(
            f"| nearline lag ({r['llm']} LLM, {r['refreshed']}/{r['users']} users): p50 / max s | "
            f"{r['lag_p50_s']:.2f} / {r['lag_max_s']:.2f} | | |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished RecGPT run folder")
    ap.add_argument("--parts", default="reads,writes,refresh", help="comma list of reads, writes, refresh")
    ap.add_argument(
        "--rates",
        default="100,250,500,750,1000,1250,1500,2000,2500,3000",
        help="offered GET rates to step through",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each load step")
    ap.add_argument("--pg", help="PostgreSQL URL for the write bench (default: a private durable cluster)")
    ap.add_argument("--llm", help="LLM spec of the nearline refresh (default: the run's)")
    ap.add_argument("--refresh-users", type=int, default=5)
    ap.add_argument("--refresh-timeout", type=float, default=600.0)
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    sys.path.insert(0, str(ROOT / "src"))
    from recgpt.serving import RecommendationService

    users = RecommendationService.open(args.run).users()
    result: dict[str, Any] = {"run": str(args.run), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="recgpt-bench-serve-") as t:
        tmp = Path(t)
        if "reads" in parts:
            print("reads (open-loop, fixed rate):", flush=True)
            result["reads"] = bench_reads(args.run, users, args, tmp)
        if "writes" in parts:
            print("writes (8 clients, closed loop):", flush=True)
            result["writes"] = bench_writes(args.run, f"sqlite:///{tmp / 'writes.db'}", "SQLite", args, tmp)
            with durable_postgres(tmp) if args.pg is None else _given(args.pg) as pg:
                if pg is None:
                    print("  PostgreSQL: not installed, skipped", flush=True)
                else:
                    result["writes"] += bench_writes(args.run, pg, "PostgreSQL", args, tmp)
        if "refresh" in parts:
            print("nearline refresh:", flush=True)
            result["refresh"] = bench_refresh(args.run, users, args, tmp)
    result["load_after"] = os.getloadavg()
    print()
    print(table(result))
    print(
        f"\nload average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f} "
        f"({result['cpus']} cpus)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
