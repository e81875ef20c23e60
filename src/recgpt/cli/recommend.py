"""`recgpt recommend`: one user's list from a finished run, with channel, tag, interest and explanation per item.

A thin front door over `recgpt.serving.RecommendationService` (the report and the HTTP server use the
same service, so all three show the same list). Exit code 2 on bad input: an unknown user, a folder
that is not a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from recgpt.serving import Recommendation

DEFAULT_K = 10  # = recgpt.serving.DEFAULT_K, repeated so `--help` does not import the service


def _table(run: Path, user: str, recs: list[Recommendation], width: int) -> Table:
    """One row per item; the explanation notes which interest it speaks to (or that it is about the item only).

    The text columns share the terminal's width (explanation 36%, item 24%, tag and interest 20% each),
    so a long explanation stays readable at 80 columns.
    """
    channel = max([len("channel"), *(len(r.channel) for r in recs)])
    free = max(40, width - 4 - channel - 6 * 3 - 1)  # rank, channel, per column 2 padding + 1 border, edge
    item, tag = free * 24 // 100, free * 20 // 100
    t = Table(title=f"user {escape(user)}, run {escape(str(run))}: top {len(recs)} of the final list")
    t.add_column("rank", justify="right", width=4)
    t.add_column("item", width=item, overflow="fold")
    t.add_column("channel", width=channel, overflow="fold")
    t.add_column("tag", width=tag, overflow="fold")
    t.add_column("interest", width=tag, overflow="fold")
    t.add_column("explanation", width=free - item - 2 * tag, overflow="fold")
    for r in recs:
        note = ""
        if r.explanation is not None:
            about = "item only" if r.item_only else r.explained_interest
            badge = "" if r.explanation_source in (None, "llm") else "template, "
            note = escape(r.explanation) + (f" [dim]({badge}{escape(about)})[/dim]" if about else "")
        t.add_row(
            str(r.rank),
            escape(r.title or r.item_id),
            r.channel,
            escape(r.tag or "-"),
            escape(r.interest or "-"),
            note or "-",
        )
    return t


def recommend(
    run: Path = typer.Option(
        ...,
        "--run",
        "-r",
        help="A finished run folder, e.g. runs/quickstart (from `recgpt run` or quickstart).",
    ),
    user: str = typer.Option(..., "--user", "-u", help="A user id of that run (an unknown id lists a few)."),
    k: int = typer.Option(DEFAULT_K, "--k", "-k", min=1, help="How many items of the user's list to show."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (run, user_id, k, recommendations) instead of a table."
    ),
) -> None:
    """Show one user's recommendations from a finished run: item, channel, tag, interest and explanation."""
    from recgpt.serving import RecommendationService, ServingError

    try:
        recs = RecommendationService.open(run).recommend(user, k)
    except ServingError as e:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from e
    if as_json:
        payload = {
            "run": str(run),
            "user_id": user,
            "k": k,
            "recommendations": [r.model_dump(mode="json") for r in recs],
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    console = Console()
    console.print(_table(run, user, recs, console.width))
    shown = sum(r.explanation is not None for r in recs)
    console.print(
        f"[dim]{shown} of {len(recs)} items explained (the run explains the top of each list); "
        "tag and interest: what produced a RecGPT item[/dim]"
    )


__all__ = ["recommend"]
