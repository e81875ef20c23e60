"""`recgpt`: one command line, a sub-command group per pipeline room.

Importing this module (and `recgpt --help`) must stay fast and torch-free: command modules import
their heavy dependencies inside the command functions.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

from recgpt.cli import compress as compress_cli
from recgpt.cli import data as data_cli
from recgpt.cli import evaluate as evaluate_cli
from recgpt.cli import judge as judge_cli
from recgpt.cli import llm as llm_cli
from recgpt.cli import nearline as nearline_cli
from recgpt.cli import recommend as recommend_cli
from recgpt.cli import run as run_cli
from recgpt.cli import serve as serve_cli
from recgpt.cli import train as train_cli

app = typer.Typer(
    name="recgpt",
    help="Intent-centric recommendation with LLMs (RecGPT and SERAL), measured against classic recommenders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain click help: readable at 80 columns, option names never truncated
)
app.add_typer(data_cli.app, name="data", help="Import and inspect datasets.")
app.add_typer(llm_cli.app, name="llm", help="Check and serve LLM backends.")
app.add_typer(
    judge_cli.judge_app, name="judge", help="LLM judge of a run's outputs, and its agreement with humans."
)
app.add_typer(
    judge_cli.label_app,
    name="label",
    help="Export samples for people to label (judge samples; SERAL serendipity lists); import the labels.",
)
app.add_typer(
    train_cli.train_app,
    name="train",
    help="Align the LLMs: curriculum SFT, self-training, incremental, SerenGPT (SFT + IPO).",
)
app.command("evaluate")(evaluate_cli.evaluate)
app.command("compress")(compress_cli.compress)
app.command("run")(run_cli.run)
app.command("quickstart")(run_cli.quickstart)
app.command("recommend")(recommend_cli.recommend)
app.command("nearline")(nearline_cli.nearline)
app.command("serve")(serve_cli.serve)


def recgpt_version() -> str:
    """The installed distribution's version (the package's own when running from a source tree)."""
    try:
        return package_version("recgpt")
    except PackageNotFoundError:
        import recgpt

        return recgpt.__version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"recgpt {recgpt_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """Intent-centric recommendation with LLMs (RecGPT and SERAL), measured against classic recommenders."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
