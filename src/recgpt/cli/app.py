"""`recgpt`: one command line, a sub-command group per pipeline room."""

from __future__ import annotations

import typer

from recgpt.cli import compress as compress_cli
from recgpt.cli import data as data_cli
from recgpt.cli import evaluate as evaluate_cli
from recgpt.cli import judge as judge_cli
from recgpt.cli import llm as llm_cli
from recgpt.cli import recommend as recommend_cli
from recgpt.cli import run as run_cli
from recgpt.cli import train as train_cli

app = typer.Typer(
    name="recgpt",
    help="Intent-centric recommendation with LLMs (RecGPT; SERAL planned), measured against classic recommenders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_cli.app, name="data", help="Import and inspect datasets.")
app.add_typer(llm_cli.app, name="llm", help="Check and serve LLM backends.")
app.add_typer(judge_cli.judge_app, name="judge", help="LLM judge of a run's outputs, and its agreement with humans.")
app.add_typer(judge_cli.label_app, name="label", help="Export judge samples for people to label; import the labels.")
app.add_typer(train_cli.train_app, name="train", help="Align the chain's LLMs: curriculum SFT, self-training, incremental.")
app.command("evaluate")(evaluate_cli.evaluate)
app.command("compress")(compress_cli.compress)
app.command("run")(run_cli.run)
app.command("quickstart")(run_cli.quickstart)
app.command("recommend")(recommend_cli.recommend)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        import recgpt

        typer.echo(recgpt.__version__)
        raise typer.Exit()


def main() -> None:
    """Console-script entry point."""
    app()
