"""Faults of `recgpt run` / `recgpt evaluate` (issue 10, items 2, 7, 12): hostile dataset names never
reach outside `--runs-dir` / `results/`, a held run folder fails fast naming its holder, and every bad
option is one clear line with a non-zero exit, before anything is written.

Data: a tiny generic dataset (20 users x 12 items) imported with `recgpt data import generic`; its
manifest name is then rewritten to a hostile one, as a downloaded dataset could carry.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from recgpt.cli.app import app
from recgpt.folders import slug

N_USERS, N_ITEMS = 20, 12
SMALL_K = ["--set", "ks=[5,10]", "--set", "fusion.k=10"]  # fits the 12-item catalogue
ROOT = Path(__file__).resolve().parents[2]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(app, args)


def one_line_error(r: Result, *needles: str) -> None:
    """A non-zero exit, no traceback, and the message names what was wrong."""
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    flat = " ".join(re.sub("[│╭╮╰╯─]", " ", r.output).split())  # typer's error box wraps at 80 columns
    for n in needles:
        assert n in flat, (n, r.output)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (a snapshot to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def import_tiny(root: Path, categories: bool = True) -> Path:
    """20 users x 12 items, 6 clicks each, imported with `recgpt data import generic`."""
    src = root / "src"
    src.mkdir()
    rows = ["user_id,item_id,timestamp,behavior"]
    for u in range(N_USERS):
        for j in range(6):
            rows.append(f"u{u},i{(u + j * 5) % N_ITEMS},{1_700_000_000 + u * 100 + j},click")
    (src / "events.csv").write_text("\n".join(rows) + "\n")
    genres = ("Drama", "Comedy", "Action")
    head = "item_id,title" + (",categories" if categories else "")
    lines = [f"i{i},Item {i}" + (f",{genres[i % 3]}" if categories else "") for i in range(N_ITEMS)]
    (src / "items.csv").write_text("\n".join([head, *lines]) + "\n")
    out = root / "tiny"
    r = invoke(["data", "import", "generic", str(src), "--out", str(out), "--name", "tiny"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_tiny(tmp_path_factory.mktemp("data"))


def hostile(dataset: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the dataset whose manifest name is `name`."""
    import shutil

    copy = tmp_path / "hostile-ds"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["name"] = name
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def victim(folder: Path) -> dict[str, bytes]:
    """An outside folder that looks like a run folder (a stage reset there would rmtree it)."""
    (folder / "00_split").mkdir(parents=True)
    (folder / "00_split" / "keep.txt").write_text("precious")
    (folder / "config.json").write_text('{"mine": true}')
    (folder / "results.json").write_text('{"mine": true}')
    return tree(folder)


def run_args(ds: Path, runs: Path, *extra: str) -> list[str]:
    return ["run", "-d", str(ds), "--runs-dir", str(runs), "--llm", "fake", "--no-progress", *SMALL_K, *extra]


# ------------------------------------------------------------------------------- 2: path escape


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_run_with_hostile_name_stays_inside_runs_dir(dataset: Path, tmp_path: Path, kind: str) -> None:
    runs = tmp_path / "a" / "b" / "runs"
    target = tmp_path / "a" / "escape" if kind == "relative" else tmp_path / "abs-target"
    name = "../../escape" if kind == "relative" else str(target)
    before = victim(target)
    ds = hostile(dataset, tmp_path, name)
    for _ in range(2):  # the second run resets nothing outside either
        r = invoke(run_args(ds, runs, "--until", "split"))
        assert r.exit_code == 0, r.output
    assert tree(target) == before
    assert [p.name for p in runs.iterdir()] == [slug(name)]
    assert (runs / slug(name) / "00_split" / "done.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a", "hostile-ds", *(["abs-target"] * (kind == "absolute"))]
    )


def test_run_name_option_is_slugged(dataset: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    r = invoke(run_args(dataset, runs, "--until", "split", "--name", "../x y/../../z"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in runs.iterdir()] == ["x-y-..-..-z"]
    one_line_error(
        invoke(run_args(dataset, runs, "--until", "split", "--name", "../..")), "no usable characters"
    )


def test_symlinked_run_or_stage_folder_is_refused(dataset: Path, tmp_path: Path) -> None:
    """A run or stage folder that resolves outside (a planted symlink) is never written or rmtree'd."""
    outside = tmp_path / "outside"
    before = victim(outside)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tiny").symlink_to(outside)
    one_line_error(invoke(run_args(dataset, runs, "--until", "split")), "outside its root")
    (runs / "tiny").unlink()
    (runs / "tiny").mkdir()
    (runs / "tiny" / "00_split").symlink_to(outside / "00_split")
    one_line_error(invoke(run_args(dataset, runs, "--until", "split")), "outside its root")
    assert tree(outside) == before


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_evaluate_with_hostile_name_stays_inside_results(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    target = tmp_path / "a" / "escape" if kind == "relative" else tmp_path / "abs-target"
    before = victim(target)
    ds = hostile(dataset, tmp_path, "../../escape" if kind == "relative" else str(target))
    monkeypatch.chdir(work)
    r = invoke(["evaluate", "-d", str(ds), "--models", "mostpop", "--no-tune", "--ks", "5,10"])
    assert r.exit_code == 0, r.output
    assert tree(target) == before
    (made,) = (work / "results").iterdir()
    assert {"results.json", "report.html"} <= {p.name for p in made.iterdir()}
    assert sorted(p.name for p in work.iterdir()) == ["results"]


# -------------------------------------------------------------------------------- 7: run lock

HOLDER = """
import sys, time
from pathlib import Path
from recgpt.folders import FolderLock
lock = FolderLock(Path(sys.argv[1]), "run folder").acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold(folder: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), "--holder-marker"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_run_fails_fast_naming_the_holder_and_a_killed_holder_frees_it(
    dataset: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    holder = hold(runs / "tiny")
    try:
        t0 = time.perf_counter()
        r = invoke(run_args(dataset, runs, "--until", "split"))
        assert time.perf_counter() - t0 < 30  # fails at once, never waits for the holder
        one_line_error(r, "is in use by", f"pid {holder.pid}", "--holder-marker", "since")
        assert r.exit_code == 4
        assert not (runs / "tiny" / "00_split").exists() and not (runs / "tiny" / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crashed holder: the OS drops its fcntl lock
        holder.wait()
    r = invoke(run_args(dataset, runs, "--until", "split"))
    assert r.exit_code == 0, r.output
    assert not (runs / "tiny" / ".lock.holder.json").exists()  # released with the run


def test_evaluate_results_folder_is_locked(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    holder = hold(out)
    try:
        r = invoke(
            [
                "evaluate",
                "-d",
                str(dataset),
                "--models",
                "mostpop",
                "--no-tune",
                "--ks",
                "5,10",
                "-o",
                str(out),
            ]
        )
        one_line_error(r, "results folder", f"pid {holder.pid}")
        assert not (out / "results.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# ---------------------------------------------------------------------- 12: clear option errors


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--ks", "0,-1"], ["--ks", "positive"]),
        (["--ks", "5,x"], ["--ks", "integers"]),
        (["--ks", "5,20"], ["--ks", "include 10"]),
        (["--params", '{"mostpop": {"nosuch": 1}}'], ["--params", "'nosuch'", "'mostpop'", "valid:"]),
        (
            ["--models", "itemknn", "--params", '{"itemknn": {"nosuch": 1}}'],
            ["--params", "'itemknn'", "valid:"],
        ),
        (["--params", '{"markov": {}}'], ["--params", "'markov'", "not among the models"]),
        (["--params", "{bad json"], ["--params", "not valid JSON"]),
        (["--split", "nosuch"], ["--split", "'nosuch' is not one of", "loo"]),
        (["--models", ""], ["--models", "no model given"]),
        (["--models", " , "], ["--models", "no model given"]),
        (["--ks", "5,10,50"], ["K=50", "catalogue (12 items)"]),
    ],
)
def test_evaluate_bad_options(dataset: Path, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    out = tmp_path / "res"
    base = {"--models": "mostpop", "--ks": "5,10"}
    for opt, value in zip(args[::2], args[1::2], strict=True):
        base[opt] = value
    r = invoke(
        ["evaluate", "-d", str(dataset), "--no-tune", "-o", str(out), *[x for kv in base.items() for x in kv]]
    )
    one_line_error(r, *needles)
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "ks=0,-1"], ["ks", "positive"]),
        (["--set", "ks=[0,-1]"], ["ks", "positive"]),
        (["--set", "split.kind=nosuch"], ["split.kind", "'loo'"]),
        (["--until", "bogus"], ["--until 'bogus'", "not a stage"]),
        (["--llm", "nosuch"], ["--llm 'nosuch'", "unknown backend"]),
        (["--llm", "llamacpp:/no/such.gguf"], ["--llm 'llamacpp:/no/such.gguf'", "not found"]),
        (["--llm", "openai:m@notaurl"], ["--llm 'openai:m@notaurl'", "notaurl", "not an http(s) URL"]),
        (["--llm", "openai:m@http://[::1"], ["--llm", "not well-formed"]),
        (["--stage-llm", "tags=transformers:/no/such/model"], ["--stage-llm tags", "not found"]),
        (["--set", "ks=[5,10,50]"], ["ks", "K=50", "catalogue (12 items)"]),
        (["--set", "fusion.k=40"], ["fusion.k", "K=40", "catalogue (12 items)"]),
    ],
)
def test_run_bad_options_fail_before_stage_00(
    dataset: Path, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    runs = tmp_path / "runs"
    t0 = time.perf_counter()
    r = invoke([*run_args(dataset, runs), *args])
    one_line_error(r, *needles)
    assert time.perf_counter() - t0 < 30
    assert not runs.exists()  # nothing ran, nothing written


def test_run_default_ks_on_a_small_catalogue_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    r = invoke(
        ["run", "-d", str(dataset), "--runs-dir", str(tmp_path / "runs"), "--llm", "fake", "--no-progress"]
    )
    one_line_error(r, "K=50", "12 items")
    assert not (tmp_path / "runs").exists()


def test_run_without_categories_fails_before_stage_00(tmp_path: Path) -> None:
    """φ needs item categories: without any, the run stopped with a traceback after five stages."""
    bare = import_tiny(tmp_path, categories=False)
    r = invoke(run_args(bare, tmp_path / "runs"))
    one_line_error(r, "no item has a category", "--until tags")
    assert not (tmp_path / "runs").exists()
    r = invoke(run_args(bare, tmp_path / "runs", "--until", "split"))
    assert r.exit_code == 0, r.output


def test_llm_spec_errors_never_print_url_credentials(dataset: Path, tmp_path: Path) -> None:
    for spec in ("openai:m@ftp://user:s3cret@host/v1", "openai:m@http://user:s3cret@[::1/v1"):
        r = invoke([*run_args(dataset, tmp_path / "runs"), "--llm", spec])
        one_line_error(r, "--llm", "***@")
        assert "s3cret" not in r.output
    assert not (tmp_path / "runs").exists()
