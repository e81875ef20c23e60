"""The command line's conventions, for every command: one name per concept, help text on every option,
help readable at 80 columns, `--version`, one exit status per error class, progress lines in logs."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from recgpt.cli.app import app
from recgpt.cli.errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_LEAKAGE, EXIT_STAGE_FAILED, classify, cli_errors
from recgpt.cli.options import THREADS_HELP
from recgpt.progress import LineProgress, make_progress

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def commands() -> dict[str, Any]:
    """Every leaf command of `recgpt` by its full name ('data import', 'run', ...)."""
    found: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = cmd

    walk(typer.main.get_command(app), "")
    return found


COMMANDS = commands()


def is_option(p: Any) -> bool:
    return p.param_type_name == "option"


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("recgpt ") and r.output.split()[1][0].isdigit()


def test_every_option_has_help_and_help_fits_80_columns() -> None:
    assert {"run", "evaluate", "data import", "llm check", "judge run", "train sft"} <= set(COMMANDS)
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if is_option(p) and not p.hidden:
                assert p.help, f"recgpt {name}: {p.opts} has no help text"
        r = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert r.exit_code == 0, r.output
        for line in r.output.splitlines():
            assert len(line) <= 80, f"recgpt {name} --help: {line!r}"
        for p in cmd.params:
            if is_option(p) and not p.hidden:
                for opt in p.opts + p.secondary_opts:
                    assert opt in r.output, f"recgpt {name} --help lacks {opt}"
        assert "…" not in r.output, name  # nothing truncated


def test_one_name_per_concept() -> None:
    takes_llm = {
        "run",
        "quickstart",
        "llm check",
        "judge run",
        "judge calibrate",
        "train self-train",
        "train incremental",
    }
    for name, cmd in COMMANDS.items():
        visible = {o for p in cmd.params if is_option(p) and not p.hidden for o in p.opts}
        assert not visible & {"--backend", "--judge"}, name
        if name in takes_llm:
            assert "--llm" in visible, name
        threads = [p for p in cmd.params if "--threads" in getattr(p, "opts", [])]
        for p in threads:
            assert p.help == THREADS_HELP, name  # the same meaning everywhere


def test_deprecated_spellings_still_work(tmp_path: Path) -> None:
    r = runner.invoke(app, ["llm", "check", "--backend", "nosuch"])
    assert r.exit_code == EXIT_BAD_INPUT, r.output
    assert "--backend is deprecated, use --llm" in r.output and "'nosuch'" in r.output
    r = runner.invoke(
        app, ["train", "self-train", str(tmp_path), "-d", str(tmp_path / "nope"), "--judge", "fake"]
    )
    assert r.exit_code == EXIT_BAD_INPUT and "--judge is deprecated, use --llm" in r.output
    r = runner.invoke(
        app,
        ["train", "incremental", str(tmp_path), "-d", str(tmp_path / "nope"), "--judge", "x", "--llm", "y"],
    )
    assert r.exit_code == 2 and "disagree" in r.output


def test_exit_status_per_error_class() -> None:
    from recgpt.data.errors import DataError
    from recgpt.data.split import LeakageError
    from recgpt.folders import FolderBusy, FolderError
    from recgpt.pipeline.preflight import PreflightError
    from recgpt.pipeline.stages import StageFailed

    assert classify(DataError("x")) == (EXIT_BAD_INPUT, "error")
    assert classify(FolderError("x")) == (EXIT_BAD_INPUT, "error")
    assert classify(PreflightError("x")) == (EXIT_BAD_INPUT, "error")
    assert classify(FolderBusy("x")) == (EXIT_BUSY, "busy")
    assert classify(LeakageError("x")) == (EXIT_LEAKAGE, "leakage")
    assert classify(StageFailed("x")) == (EXIT_STAGE_FAILED, "stage failed")
    assert classify(RuntimeError("a bug")) is None  # a bug keeps its traceback
    assert classify(ValueError("x"), (ValueError,)) == (EXIT_BAD_INPUT, "error")

    def boom(exc: Exception) -> typer.Typer:
        t = typer.Typer()

        @t.command()
        @cli_errors()
        def go() -> None:
            raise exc

        return t

    for exc, code in (
        (DataError("bad row"), 2),
        (LeakageError("held out"), 3),
        (FolderBusy("in use"), 4),
        (StageFailed("tags"), 5),
    ):
        r = runner.invoke(boom(exc), [])
        assert r.exit_code == code and str(exc) in r.output and "Traceback" not in r.output
    r = runner.invoke(boom(KeyError("bug")), [])
    assert isinstance(r.exception, KeyError)


def test_data_errors_exit_2_in_every_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    for args in (
        ["data", "info", missing],
        ["evaluate", "-d", missing, "--models", "mostpop"],
        ["compress", "-d", missing, "--tokenizer", "regex"],
        ["train", "sft", "--task", "tags", "-d", missing],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "manifest.json" in r.output and "Traceback" not in r.output, args


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from recgpt.cli.app import app; app(['--help'], standalone_mode=False); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().endswith("False"), out.stdout


def test_data_import_help_documents_the_mapping() -> None:
    r = runner.invoke(app, ["data", "import", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    flat = " ".join(r.output.split())
    for needle in (
        "[events]",
        "[items.columns]",
        'title = "name"',
        "title is required",
        "timestamp_format",
        "--create-missing-items",
        "stem of SRC",
        "epoch seconds",
        "list_separator",
    ):
        assert needle in flat, needle
    assert "    [events.columns]" in r.output  # the example keeps its layout


def test_readme_carries_the_mapping_doc() -> None:
    from recgpt.data.importers.generic import MAPPING_DOC

    assert MAPPING_DOC in (ROOT / "README.md").read_text()


def test_the_documented_example_imports(tmp_path: Path) -> None:
    from recgpt.data.importers.generic import MAPPING_DOC

    example = "\n".join(line[4:] for line in MAPPING_DOC.splitlines() if line.startswith("    "))
    shop = tmp_path / "shop"
    shop.mkdir()
    (tmp_path / "shop.toml").write_text(example)
    (shop / "orders.csv").write_text(
        "customer,sku,ordered_at\nc1,s1,2024-01-05T10:00:00\nc2,s2,2024-01-06T11:00:00\n"
    )
    (shop / "products.csv").write_text(
        "sku,name,path,color,size\ns1,Desk lamp,Home>Lighting,red,S\ns2,Chair,Home,oak,L\n"
    )
    (shop / "customers.csv").write_text("customer\nc1\nc2\n")
    r = runner.invoke(
        app,
        [
            "data",
            "import",
            "generic",
            str(shop),
            "--mapping",
            str(tmp_path / "shop.toml"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert r.exit_code == 0, r.output
    from recgpt.data import Dataset

    ds = Dataset.load(tmp_path / "out")
    assert ds.items["categories"].to_list()[0] == ["Home", "Lighting"] and ds.manifest.behaviors == {
        "purchase": 2
    }


def test_hints_use_the_flag_names(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user_id,item_id,behavior,timestamp\nu1,i1,click,1600000000\n")
    r = runner.invoke(
        app, ["data", "import", "generic", str(tmp_path / "events.csv"), "--out", str(tmp_path / "o")]
    )
    assert (
        r.exit_code == 2 and "--create-missing-items" in r.output and "create_missing_items" not in r.output
    )
    r = runner.invoke(
        app,
        [
            "data",
            "import",
            "generic",
            str(tmp_path / "events.csv"),
            "--out",
            str(tmp_path / "o"),
            "--create-missing-items",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "events" in r.output  # the default name: the events file's stem
    r = runner.invoke(app, ["data", "import", "unisrec", str(tmp_path), "--out", str(tmp_path / "u")])
    assert r.exit_code == 2 and "--prefix" in r.output


def test_progress_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    bar = make_progress(console, True, every=0.05)
    assert isinstance(bar, LineProgress)
    with bar:
        task = bar.add_task("fit itemknn", total=4)
        bar.advance(task)
        time.sleep(0.2)  # the ticker prints while nothing advances
        bar.update(task, description="fit itemknn: done", completed=4)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[progress] fit itemknn: 0/4 (0:00:00)"
    assert any(line.startswith("[progress] fit itemknn: 1/4 (") for line in lines[1:-1])
    assert lines[-1].startswith("[progress] fit itemknn: done: 4/4 (")
    quiet = io.StringIO()
    with make_progress(Console(file=quiet, force_terminal=False), False) as bar:
        bar.advance(bar.add_task("x", total=1))
    assert quiet.getvalue() == ""
    terminal = make_progress(Console(file=io.StringIO(), force_terminal=True), True)
    assert not isinstance(terminal, LineProgress)


def test_evaluate_prints_progress_lines_into_a_log(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["evaluate", "--models", "mostpop", "--no-tune", "--ks", "5,10", "--out", str(tmp_path / "res")]
    )
    assert r.exit_code == 0, r.output
    assert "[progress] " in r.output


@pytest.mark.parametrize("cmd", ["run", "quickstart", "judge run"])
def test_llm_option_help_names_the_specs(cmd: str) -> None:
    r = runner.invoke(app, [*cmd.split(), "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert "openai:MODEL@URL" in " ".join(r.output.split())


def test_settings_read_the_environment_in_one_place(tmp_path: Path) -> None:
    from recgpt.settings import Settings, SettingsError

    s = Settings.from_env({"RECGPT_CACHE_DIR": str(tmp_path), "RECGPT_LLM_THREADS": "3"})
    assert s.cache_dir == tmp_path and s.llm_threads == 3 and s.embed_threads == 1
    assert not s.allow_insecure_key and s.openai_base_url is None
    assert Settings.from_env({"XDG_CACHE_HOME": str(tmp_path)}).cache_dir == tmp_path / "recgpt"
    assert Settings.from_env({"RECGPT_ALLOW_INSECURE_KEY": "Yes"}).allow_insecure_key
    with pytest.raises(SettingsError, match="RECGPT_EMBED_THREADS must be >= 1"):
        Settings.from_env({"RECGPT_EMBED_THREADS": "0"})
    with pytest.raises(SettingsError, match="RECGPT_LLM_THREADS must be an integer"):
        Settings.from_env({"RECGPT_LLM_THREADS": "two"})
