"""`recgpt serve`: a finished run's recommendations over HTTP, with event ingestion and nearline refresh.

A thin front door over `recgpt.serving.app.create_app`: opens the store (the run's own SQLite file
unless `--store` names a database), builds the pipeline's refresher when `--workers nearline` asks
for the in-process worker, and runs uvicorn. Exit code 2 on a folder that is no finished run, a
store that cannot be opened, or a refresher the run cannot build.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recgpt.cli.errors import cli_errors
from recgpt.settings import SERVE_API_KEY_ENV as API_KEY_ENV

if TYPE_CHECKING:
    from recgpt.serving.worker import Refresher

LOOPBACK = ("127.0.0.1", "localhost")


class Workers(StrEnum):
    none = "none"
    nearline = "nearline"


def store_url(value: str | None) -> str | None:
    """The store URL to open: None (and "default") is the run's own SQLite file, runs/<name>/serving.db."""
    return None if value in (None, "", "default") else value


def refresher_for(run: Path, llm: str | None) -> Refresher:
    """The pipeline's per-user refresh for this run (RecGPT or SERAL, by the run's config)."""
    try:
        from recgpt.pipeline.refresh import make_refresher
    except ModuleNotFoundError as e:
        if e.name != "recgpt.pipeline.refresh":
            raise
        raise typer.BadParameter("this install has no nearline refresh (recgpt.pipeline.refresh)") from e

    return make_refresher(run, llm=llm)


def trusted_hosts(host: str, extra: list[str]) -> list[str] | None:
    """Host headers to accept: on loopback only the loopback names (a page on another site that rebinds
    its DNS name to 127.0.0.1 is refused), plus `extra`; None (any) on another address without `extra`."""
    if host in LOOPBACK or host == "::1":
        return [*LOOPBACK, *extra]
    return [host, *LOOPBACK, *extra] if extra else None


@cli_errors()
def serve(
    run: Annotated[Path, typer.Option("--run", "-r", help="A finished run folder, e.g. runs/quickstart.")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Database URL: sqlite:///path.db or postgresql://user@host/db "
            "(default: the run's own SQLite file, <run>/serving.db).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            show_default=False,
            help="Key that POST /v1/events requires (X-API-Key or Authorization: Bearer); without one, "
            "writes are refused. Prefer the environment variable: an option is visible on the process list.",
        ),
    ] = None,
    workers: Annotated[
        Workers,
        typer.Option("--workers", help="nearline: refresh users with new events in this process."),
    ] = Workers.none,
    llm: Annotated[
        str | None, typer.Option("--llm", help="LLM spec for nearline refreshes (default: the run's).")
    ] = None,
    max_staleness: Annotated[
        float,
        typer.Option(
            "--max-staleness",
            min=1.0,
            help="Seconds an event may wait for its user's refresh before /healthz reports 'degraded'.",
        ),
    ] = 60.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Host-header value to accept besides 127.0.0.1 and localhost (repeatable); on a non-loopback "
            "--host without it, any Host is accepted.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a run's lists (GET /v1/users/{id}/recommendations), take events (POST /v1/events), refresh."""
    import uvicorn

    from recgpt.serving import RecommendationService
    from recgpt.serving.app import create_app
    from recgpt.serving.store import Store

    service = RecommendationService.open(run)  # before anything is written next to it
    refresher = refresher_for(run, llm) if workers is Workers.nearline else None
    db = Store.open(store_url(store), run_dir=run)
    try:
        app = create_app(
            run,
            db,
            api_key=api_key or None,
            refresher=refresher,
            workers=refresher is not None,
            max_staleness_s=max_staleness,
            service=service,
            allowed_hosts=trusted_hosts(host, allowed_host or []),
        )
        if not api_key:
            typer.echo(
                f"note: no API key: POST /v1/events is refused; set --api-key or {API_KEY_ENV}", err=True
            )
        if host not in LOOPBACK:
            typer.echo(f"note: listening on {host}, reachable beyond this machine", err=True)
        typer.echo(
            f"serving {run} from store {db.masked_url} on http://{host}:{port}/ (Ctrl-C stops)", err=True
        )
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=log_level == "debug"
        )
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its graceful stop
            uvicorn.Server(config).run()
    finally:
        db.close()


__all__ = ["serve", "store_url", "trusted_hosts"]
