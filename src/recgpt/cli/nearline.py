"""`recgpt nearline`: apply new events to a finished SERAL run and refresh only the affected users.

A thin front door over `recgpt.serendipity.nearline.refresh`: prints the accepted / rejected events
and, per refreshed user, the refresh latency, the profile versions before and after and the cache
rows written. Exit code 2 on a malformed events file (the error names the file, row and field) or a
folder that is not a finished SERAL run.
"""

from __future__ import annotations

import json
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
        Path,
        typer.Option(
            "--events", help="New events: CSV, Parquet or JSONL with user_id, item_id, timestamp, behavior."
        ),
    ],
    llm: Annotated[
        str | None, typer.Option("--llm", help="Override the run's LLM backend spec (e.g. fake).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Refresh the profiles, SerenGPT rankings and cache rows of the users the new events belong to."""
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
