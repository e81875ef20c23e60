"""Killed writers and file modes (issue 10, items 8 and 14).

8: a writer killed mid-write leaves a recognisable temp; the next write into that folder (a dataset
save, a pipeline run) removes it, but never the temp of a writer that is still alive.
14: every atomic write (JSON, Parquet, text / HTML, dataset folders) gets the user's umask, like any
file the user makes, instead of mkstemp's private 0600.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from recgpt.cli.data import app
from recgpt.data import Dataset
from recgpt.data.atomic import (
    TEMP_PREFIX,
    clean_stale_temps,
    temp_sibling,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from tests.faults.test_import_faults import make_source

SRC = str(Path(__file__).resolve().parents[2] / "src")
# a writer that opens its temp exactly as the atomic helpers do, says so, and then hangs mid-write
HANG = """
import sys, time
from pathlib import Path
from recgpt.data import atomic
with atomic._atomic_file(Path(sys.argv[1])) as f:
    f.write(b"")
    print("writing", flush=True)
    time.sleep(60)
"""


def start_writer(target: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    return proc


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TEMP_PREFIX}*"))


# ---------------------------------------------------------------------------- 8. stale temp files
def test_killed_writer_temp_is_cleaned_live_one_kept(tmp_path: Path) -> None:
    killed, live = start_writer(tmp_path / "a.json"), start_writer(tmp_path / "b.json")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        (dead_temp,) = [p for p in temps(tmp_path) if f"-{killed.pid}-" in p.name]
        (live_temp,) = [p for p in temps(tmp_path) if f"-{live.pid}-" in p.name]
        assert dead_temp.stat().st_size == 0  # what the issue saw: a 0-byte temp left forever
        src = make_source(tmp_path / "src")
        assert (
            CliRunner().invoke(app, ["import", "generic", str(src), "--out", str(tmp_path / "ds")]).exit_code
            == 0
        )
        assert not dead_temp.exists() and live_temp.exists()
    finally:
        live.kill()
        live.wait()
    assert clean_stale_temps(tmp_path) == [live_temp] and temps(tmp_path) == []


def test_old_temps_are_cleaned_even_if_pid_lives(tmp_path: Path) -> None:
    t = tmp_path / f"{TEMP_PREFIX}1-abcd.report.html"  # pid 1 is alive (init) but the temp is 2 h old
    t.write_text("")
    os.utime(t, (time.time() - 7200, time.time() - 7200))
    mine = temp_sibling(tmp_path / "x.json")  # this process's own fresh temp: in use
    mine.write_text("")
    assert clean_stale_temps(tmp_path) == [t] and mine.exists()


def test_kill_between_the_two_renames_restores_the_previous_dataset(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    out = tmp_path / "data" / "ds"
    assert CliRunner().invoke(app, ["import", "generic", str(src), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    out.rename(
        out.with_name(f"{TEMP_PREFIX}{pid}-beef-old.ds")
    )  # killed after `out -> old`, before `tmp -> out`
    half = out.with_name(f"{TEMP_PREFIX}{pid}-cafe.ds")
    half.mkdir()
    (half / "items.parquet").write_bytes(b"")
    clean_stale_temps(out.parent)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]


def test_run_pipeline_cleans_stale_temps_in_the_run_folder(tmp_path: Path) -> None:
    from recgpt.pipeline.run import run_pipeline
    from tests.conftest import fast_config, slice_dataset

    data = tmp_path / "slice"
    slice_dataset(n_users=12, n_items=80).save(data)
    cfg = fast_config(data, tmp_path / "runs", users=4)
    run_pipeline(cfg, progress=False, until="split")
    run_dir = next((tmp_path / "runs").rglob("config.json")).parent
    stage_dir = next(p for p in run_dir.iterdir() if p.is_dir())
    killed = start_writer(stage_dir / "part.parquet")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (stale,) = temps(run_dir)
    run_pipeline(cfg, progress=False, until="split")
    assert not stale.exists() and temps(tmp_path) == []


# ------------------------------------------------------------------------------ 14. the user's umask
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(umask)
    try:
        written = [
            write_json_atomic(tmp_path / "results.json", {"hr": np.float32(0.5), "path": tmp_path}),
            write_json_atomic(tmp_path / "run" / "done.json", {"ok": True}),
            write_parquet_atomic(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet"),
            write_text_atomic(tmp_path / "report.html", "<html></html>"),
        ]
        src = make_source(tmp_path / "src")
        out = tmp_path / "ds"
        assert CliRunner().invoke(app, ["import", "generic", str(src), "--out", str(out)]).exit_code == 0
        written += list(out.iterdir())
    finally:
        os.umask(old)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        p.name: oct(file_mode) for p in written
    }
    assert oct(stat.S_IMODE(out.stat().st_mode)) == oct(dir_mode)
    assert Dataset.load(out).manifest.counts["events"] == 3
    assert '"hr": 0.5' in (tmp_path / "results.json").read_text()


def test_a_whole_run_folder_follows_the_umask(tmp_path: Path) -> None:
    """Every file of a finished chain run (tables, markers, results, report, ledger) gets the umask's mode."""
    from rich.console import Console

    from recgpt.pipeline.run import run_pipeline
    from tests.conftest import HashEncoder, fake_backend, fast_config, slice_dataset

    data = tmp_path / "slice"
    slice_dataset(n_users=12, n_items=80).save(data)
    old = os.umask(0o027)
    try:
        run_pipeline(
            fast_config(data, tmp_path / "runs", users=4),
            backend=fake_backend(),
            encoder=HashEncoder(),
            console=Console(quiet=True),
            progress=False,
        )
    finally:
        os.umask(old)
    run_dir = next((tmp_path / "runs").rglob("report.html")).parent
    files = [p for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"]
    assert {"report.html", "results.json", "ledger.json", "config.json", "done.json"} <= {
        p.name for p in files
    }
    wrong = {
        str(p.relative_to(run_dir)): oct(p.stat().st_mode & 0o777)
        for p in files
        if p.stat().st_mode & 0o777 != 0o640
    }
    assert wrong == {}
