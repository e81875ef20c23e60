"""`recgpt nearline`: refresh only the users that new events belong to, off the request path.

Two modes:

- `--run DIR --events FILE`: apply an events file to a finished SERAL run, a thin front door over
  `recgpt.serendipity.nearline.refresh`: prints the accepted / rejected events and, per refreshed
  user, the refresh latency, the profile versions before and after and the cache rows written.
- `--run DIR --store URL [--once]`: the serving store's refresh worker as its own process
  (`recgpt.serving.worker.run_forever`): takes users with new events (posted to `recgpt serve`) off
  the store's queue and writes their new lists, which the server picks up. Several may run at once.

Exit code 2 on a malformed events file (the error names the file, row and field), a folder that is
not a finished run, or a store that cannot be opened.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recgpt.cli.errors import cli_errors


@cli_errors()
def nearline(
    run: Annotated[Path, typer.Option("--run", help="A finished SERAL run folder (runs/<name>-seral).")],
    events: Annotated[
        Path | None,
        typer.Option(
            "--events", help="New events: CSV, Parquet or JSONL with user_id, item_id, timestamp, behavior."
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Run as the serving store's refresh worker: the database URL `recgpt serve` uses "
            "('default': the run's own <run>/serving.db).",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="With --store: refresh the users queued now, then exit.")
    ] = False,
    llm: Annotated[
        str | None, typer.Option("--llm", help="Override the run's LLM backend spec (e.g. fake).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Refresh the users new events belong to: from an events file (SERAL) or the serving store's queue."""
    if (events is None) == (store is None):
        raise typer.BadParameter(
            "give either --events FILE (a SERAL run) or --store URL (the serving worker)"
        )
    if store is not None:
        _store_worker(run, store, llm=llm, once=once)
        return
    from recgpt.serendipity.nearline import refresh

    backend = None
    if llm is not None:
        from recgpt.llm import make_backend

        backend = make_backend(llm)
    report = refresh(run, events, backend=backend, model=llm)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    console = Console()
    console.print(
        f"{report.accepted} event(s) applied, {len(report.rejected)} rejected, "
        f"{len(report.users)} user(s) refreshed in {report.wall_s:.1f} s"
    )
    for r in report.rejected:
        console.print(
            f"  rejected row {r['row']} ({escape(r['user_id'])}, {escape(r['item_id'])}): {r['reason']}"
        )
    t = Table(title="nearline refresh per user (profile -> candidates -> SerenGPT -> cache)")
    for c in ("user", "events", "seconds", "profile before", "profile after", "cache rows", "SerenGPT"):
        t.add_column(c, justify="left" if c in ("user", "SerenGPT") else "right")
    for u in report.users:
        t.add_row(
            escape(u.user_id),
            str(u.events),
            f"{u.seconds:.2f}",
            u.profile_before,
            u.profile_after,
            str(u.cache_rows),
            u.seren_source,
        )
    console.print(t)
    lat = report.latency()
    console.print(f"latency per user: mean {lat['mean_s']:.2f} s, max {lat['max_s']:.2f} s")
    if report.files:
        console.print(f"serving cache: {report.files.get('cache')}")


def _store_worker(run: Path, store: str, *, llm: str | None, once: bool) -> None:
    """The serving store's refresh loop in this process; one line per landed or failed refresh."""
    from recgpt.cli.serve import refresher_for, store_url
    from recgpt.serving.store import Store
    from recgpt.serving.worker import run_forever

    refresher = refresher_for(run, llm)
    db = Store.open(store_url(store), run_dir=run)
    console = Console(highlight=False, soft_wrap=True)  # one line per refresh: logs are grepped
    console.print(
        f"nearline worker on {db.masked_url}" + (" (until the queue is empty)" if once else " (Ctrl-C stops)")
    )
    stop = threading.Event()  # SIGTERM (a service manager's stop) ends the loop between refreshes
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        worker = run_forever(
            db,
            refresher,
            once=once,
            stop=stop,
            on_refreshed=lambda stored, done: console.print(
                f"user {escape(done.user_id)}: list version {done.version} in {done.seconds:.2f} s, "
                f"lag {done.lag_s:.2f} s"
            ),
            on_failed=lambda user, e: console.print(
                f"user {escape(user)}: refresh failed: {escape(repr(e))}"
            ),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        db.close()
    console.print(f"{worker.refreshed} user(s) refreshed, {worker.failed} failed")
