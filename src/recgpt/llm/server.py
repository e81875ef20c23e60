"""llama.cpp's OpenAI-compatible server for a GGUF model, as a managed child process.

`LlamaServer` is what tests and scripts use to get a real OpenAI-compatible endpoint on loopback
(`with LlamaServer(path) as srv: OpenAIBackend(srv.model, base_url=srv.base_url)`); `serve` is the
foreground variant behind `recgpt llm serve`. Both run `python -m recgpt.llm.server_app`,
llama-cpp-python's server (the `llama-cpp-python[server]` extra: uvicorn, fastapi, sse-starlette,
starlette-context, pydantic-settings) without its wildcard CORS, with a Host-header check and an
optional API key. `LlamaServer` runs it as a child process that dies with its parent, so a crash
or a hung model never takes the caller down; `serve` becomes it (exec), so SIGTERM / SIGINT reach
the server itself and nothing is left listening.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from recgpt.llm import lifeline
from recgpt.llm.credentials import is_loopback
from recgpt.llm.server_app import API_KEY_ENV

_SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_STDERR_TAIL_CHARS = 3000


class ServerError(RuntimeError):
    """The server could not be started, or died while starting."""


def _check_server_deps() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServerError("llama-cpp-python is not installed: pip install 'recgpt[llm]'")
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ServerError(
            f"llama.cpp's server needs {', '.join(missing)}: pip install 'recgpt[llm]' "
            "(or pip install 'llama-cpp-python[server]')"
        )


def _resolve_model(model: str | os.PathLike[str] | None) -> Path:
    if model is None:
        from recgpt.llm.backends.llamacpp_backend import default_model_path

        return Path(default_model_path())
    path = Path(model).expanduser()
    if not path.is_file():
        raise ServerError(f"GGUF model file not found: {path}")
    return path.resolve()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (the OS picks it); the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(
    model: Path,
    host: str,
    port: int,
    threads: int,
    n_ctx: int,
    alias: str,
    verbose: bool = False,
    cors_origins: list[str] | tuple[str, ...] = (),
    allowed_hosts: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The argv that starts the server (both thread pools pinned to `threads`); never the API key."""
    cmd = [
        sys.executable,
        "-m",
        "recgpt.llm.server_app",
        "--model",
        str(model),
        "--alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--n-ctx",
        str(n_ctx),
    ]
    for origin in cors_origins:
        cmd += ["--cors-origin", origin]
    for name in allowed_hosts:
        cmd += ["--allowed-host", name]
    return [*cmd, "--verbose"] if verbose else cmd


def _server_env(threads: int, api_key: str | None) -> dict[str, str]:
    """The server's environment: thread count, parent to die with, and the API key (not argv)."""
    env = lifeline.child_env()
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop(API_KEY_ENV, None)
    if api_key:
        env[API_KEY_ENV] = api_key
    return env


class LlamaServer:
    """Start llama.cpp's OpenAI-compatible server; wait until it answers; stop it on exit.

    Loopback only unless `allow_remote=True`. `api_key` makes every /v1 route need
    `Authorization: Bearer <key>`; `cors_origins` lets those web origins call it from a browser (none
    by default); `allowed_hosts` adds Host-header values to the bound host and the loopback names.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        n_threads: int = 1,
        n_ctx: int = 2048,
        alias: str | None = None,
        startup_timeout_s: float = 60.0,
        allow_remote: bool = False,
        api_key: str | None = None,
        cors_origins: list[str] | tuple[str, ...] = (),
        allowed_hosts: list[str] | tuple[str, ...] = (),
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"host {host!r} is not a loopback address; pass allow_remote=True to expose it")
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.model_path = _resolve_model(model)
        self.host = host
        self.port = port
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.model = alias or self.model_path.stem
        self.startup_timeout_s = startup_timeout_s
        self.api_key = api_key
        self.cors_origins = tuple(cors_origins)
        self.allowed_hosts = tuple(allowed_hosts)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Process id of the server child (None when not started)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LlamaServer:
        """Spawn the server and block until `/v1/models` answers, or raise `ServerError`."""
        if self._proc is not None:
            raise ServerError("server already started")
        _check_server_deps()
        if self.port == 0:
            self.port = free_port(self.host)
        cmd = server_command(
            self.model_path,
            self.host,
            self.port,
            self.n_threads,
            self.n_ctx,
            self.model,
            cors_origins=self.cors_origins,
            allowed_hosts=self.allowed_hosts,
        )
        self._log = tempfile.NamedTemporaryFile(prefix="recgpt-llama-server-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [*cmd, "--traceback"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_server_env(self.n_threads, self.api_key),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerError(
                    f"llama.cpp server exited with code {code} while starting "
                    f"(model {self.model_path}):\n{self.log_tail()}"
                )
            try:
                ids = self.list_models(timeout_s=2.0)
                if ids:
                    return
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerError(
                    f"llama.cpp server did not answer on {self.base_url} within {self.startup_timeout_s:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def list_models(self, timeout_s: float = 5.0) -> list[str]:
        """Model ids the server reports on `/v1/models`."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        req = urllib.request.Request(f"{self.base_url}/models", headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            data = json.loads(resp.read())
        return [m["id"] for m in data.get("data", [])]

    def log_tail(self, chars: int = _STDERR_TAIL_CHARS) -> str:
        """The end of the server's combined stdout/stderr (for error messages)."""
        if self._log is None:
            return ""
        try:
            text = Path(self._log.name).read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return text[-chars:]

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # a forgotten server must not outlive its owner
        if getattr(self, "_proc", None) is not None:
            self.stop(timeout_s=2.0)


def serve(
    model: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int = 1,
    n_ctx: int = 2048,
    allow_remote: bool = False,
    api_key: str | None = None,
    cors_origins: list[str] | tuple[str, ...] = (),
    allowed_hosts: list[str] | tuple[str, ...] = (),
) -> int:
    """Run the server in the foreground until Ctrl-C / SIGTERM; returns its exit code (for the CLI).

    On POSIX this process becomes the server (exec): the signals reach uvicorn itself, and there is
    no child that could outlive a killed parent. The API key travels in the environment, so it is
    not on the process list.
    """
    if not allow_remote and not is_loopback(host):
        raise ValueError(f"host {host!r} is not a loopback address; pass allow_remote=True to expose it")
    _check_server_deps()
    path = _resolve_model(model)
    cmd = server_command(
        path, host, port, threads, n_ctx, path.stem, cors_origins=cors_origins, allowed_hosts=allowed_hosts
    )
    env = _server_env(threads, api_key)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {path.name} as model {path.stem!r} on http://{shown}:{port}/v1 "
        f"({'API key required' if api_key else 'no API key'}; Ctrl-C to stop)",
        flush=True,
    )
    if os.name == "posix":
        sys.stderr.flush()
        env.pop(lifeline.PARENT_PID_ENV, None)  # exec: there is no parent of ours to bind to
        os.execve(sys.executable, cmd, env)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
