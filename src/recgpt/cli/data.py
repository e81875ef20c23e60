"""`recgpt data ...`: import a dataset into the recgpt contracts, inspect a saved one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recgpt.cli.errors import cli_errors
from recgpt.data.dataset import Manifest, check_target, read_manifest, verify_tables
from recgpt.data.importers import IMPORTERS, import_dataset
from recgpt.data.importers.generic import MAPPING_DOC
from recgpt.data.untrusted import UntrustedText

app = typer.Typer(
    help="Import datasets into the recgpt format and inspect them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console()


def summary_table(manifest: Manifest, title: str) -> Table:
    """Users / items / events / behaviours / time range of a dataset, from its manifest."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    counts = manifest.counts
    table.add_row("name", escape(manifest.name))
    table.add_row("source", escape(manifest.source))
    for key in ("users", "items", "events"):
        table.add_row(key, f"{counts.get(key, 0):,}")
    behaviors = ", ".join(f"{b} {n:,}" for b, n in manifest.behaviors.items())
    table.add_row("behaviours", escape(behaviors) or "-")
    tr = manifest.extra.get("time_range") or {}
    span = f"{tr.get('first')} … {tr.get('last')}" if tr else "-"
    if manifest.synthetic_timestamps:
        span += " [yellow](synthetic: order only)[/yellow]"
    table.add_row("time range", span)
    return table


def _print_notes(manifest: Manifest) -> None:
    for note in manifest.notes:
        console.print(f"  • {escape(note)}")


def _sources(src: Path, mapping: Path | None) -> list[Path]:
    """What an import reads: never to be replaced by its output (a file's folder counts too)."""
    paths = [src, mapping] if mapping is not None else [src]
    return [q for p in paths for q in ((p, p.parent) if p.is_file() else (p,))]


def _keep_layout(text: str) -> str:
    """Mark indented paragraphs (the example) so click's help formatter does not re-wrap them."""
    return "\n\n".join("\b\n" + p if p.startswith("    ") else p for p in text.split("\n\n"))


IMPORT_HELP = f"""Import FORMAT from SRC into --out and print what was imported.

FORMAT: {", ".join(IMPORTERS)}. The movielens formats read a GroupLens
folder, amazon-scientific (unisrec) a UniSRec folder, and generic your own
files, described by a mapping:

{_keep_layout(MAPPING_DOC)}"""


@app.command("import", help=IMPORT_HELP)
@cli_errors()
def import_cmd(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="The source's format (listed above).")],
    src: Annotated[Path, typer.Argument(help="Source folder (generic: the events file, or a folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (replaced atomically).")],
    name: Annotated[
        str | None,
        typer.Option(
            help="Dataset name in the manifest and in run folders (default: generic: the stem of SRC, "
            "e.g. 'orders' for orders.csv; the others: the dataset's own name)."
        ),
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option(help="generic: the mapping file (.toml or .json), format above.")
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="unisrec: file prefix (default: the one *.text).")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="movielens: text encoding of the source files.")
    ] = None,
    create_missing_items: Annotated[
        bool,
        typer.Option(
            "--create-missing-items",
            help="generic: add the items events name that no items file lists (title = id).",
        ),
    ] = False,
    create_missing_users: Annotated[
        bool,
        typer.Option(
            "--create-missing-users", help="generic: add the users events name that the users file lacks."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace --out even if it is not a recgpt dataset (never the source)."),
    ] = False,
) -> None:
    fmt_name = fmt
    opts: dict[str, Any] = {"name": name}
    for key, value in (("mapping", mapping), ("prefix", prefix), ("encoding", encoding)):
        if value is not None:
            opts[key] = value
    for key, flag in (
        ("create_missing_items", create_missing_items),
        ("create_missing_users", create_missing_users),
    ):
        if flag:
            opts[key] = True
    check_target(out, force=force, protect=_sources(src, mapping))  # before the (long) import
    with console.status(f"importing {escape(str(src))} as {escape(fmt_name)}…"):
        ds = import_dataset(fmt_name, src, **opts)
        ds.manifest.extra["untrusted_texts"] = UntrustedText.of(ds).flagged  # shown by `data info`
    with console.status(f"writing {escape(str(out))}…"):
        ds.save(out, force=force, protect=_sources(src, mapping))
    console.print(summary_table(ds.manifest, f"imported {fmt_name} → {out}"))
    _print_notes(ds.manifest)


@app.command("info")
@cli_errors()
def info_cmd(
    path: Annotated[Path, typer.Argument(help="A dataset folder written by `recgpt data import`.")],
) -> None:
    """Print a saved dataset's manifest: counts, behaviours, time range, notes."""
    manifest = read_manifest(path)
    verify_tables(path, manifest)  # the counts shown must be the tables' own
    table = summary_table(manifest, str(path))
    table.add_row("schema version", str(manifest.schema_version))
    table.add_row("created", manifest.created_at)
    for key, value in manifest.extra.items():
        if key != "time_range":
            table.add_row(escape(key), escape(json.dumps(value, ensure_ascii=False)))
    console.print(table)
    _print_notes(manifest)


__all__ = ["app"]
