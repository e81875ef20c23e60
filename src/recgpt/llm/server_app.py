"""The llama.cpp server process: llama-cpp-python's OpenAI-compatible app behind a safer front door.

`python -m recgpt.llm.server_app --model M.gguf --port P ...` is what `recgpt llm serve` becomes (by
exec) and what `LlamaServer` starts as its child. Compared with `python -m llama_cpp.server`:

- no CORS unless `--cors-origin` names origins: llama-cpp-python hard-codes `allow_origins=["*"]`
  with credentials, which lets any web page the user visits drive the model;
- a Host-header check (DNS-rebinding defence): a page on `evil.example` whose name is re-pointed at
  127.0.0.1 still sends `Host: evil.example`, and gets 400;
- an API key from `RECGPT_SERVER_API_KEY` (never from argv, where every user's `ps` would show it),
  enforced by llama-cpp-python on every /v1 route;
- the process dies with the process that started it (`lifeline`), and SIGTERM / SIGINT stop it
  (uvicorn's own handlers).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from recgpt.llm import lifeline
from recgpt.llm.credentials import is_loopback

API_KEY_ENV = "RECGPT_SERVER_API_KEY"
_WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host-header values the server answers: its bind address, loopback names, and `extra`.

    Bound to a wildcard address, the machine's own names and addresses are added too.
    """
    names = {host, "localhost", "127.0.0.1", "::1", *extra}
    if host in _WILDCARDS:
        try:
            hostname = socket.gethostname()
            names.update({hostname, socket.getfqdn()})
            names.update(socket.gethostbyname_ex(hostname)[2])
        except OSError:
            pass
    names |= {f"[{n.strip('[]')}]" for n in names if ":" in n}  # IPv6 literals come bracketed in Host
    return sorted(n for n in names if n)


def build_app(
    model: str,
    alias: str,
    *,
    host: str = "127.0.0.1",
    threads: int = 1,
    n_ctx: int = 2048,
    api_key: str | None = None,
    cors_origins: list[str] | tuple[str, ...] = (),
    extra_hosts: list[str] | tuple[str, ...] = (),
    verbose: bool = False,
) -> Any:
    """llama-cpp-python's ASGI app with recgpt's CORS, Host and API-key settings (loads the model)."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.middleware.cors import CORSMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    server_settings = ServerSettings(host=host, api_key=api_key or None)
    model_settings = ModelSettings(
        model=model,
        model_alias=alias,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=n_ctx,
        verbose=verbose,
    )
    app = create_app(server_settings=server_settings, model_settings=[model_settings])
    # The stack is built on the first request, so the wildcard CORS layer can still be taken out.
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host, extra_hosts))
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recgpt.llm.server_app", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--alias", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--cors-origin", action="append", default=[])
    p.add_argument("--allowed-host", action="append", default=[])
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--traceback", action="store_true", help="print the traceback of a failed start")
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM / SIGINT (or until the parent process dies); the exit code for the CLI."""
    lifeline.bind_from_env()
    args = _parser().parse_args(argv)
    api_key = os.environ.pop(API_KEY_ENV, "") or None
    try:
        app = build_app(
            args.model,
            args.alias,
            host=args.host,
            threads=args.threads,
            n_ctx=args.n_ctx,
            api_key=api_key,
            cors_origins=args.cors_origin,
            extra_hosts=args.allowed_host,
            verbose=args.verbose,
        )
    except Exception as exc:
        if args.traceback:
            import traceback

            traceback.print_exc()
        print(
            f"error: cannot start the llama.cpp server for {args.model}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    if not is_loopback(args.host) and api_key is None:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach this machine can use "
            f"the model (set {API_KEY_ENV})",
            file=sys.stderr,
            flush=True,
        )
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
