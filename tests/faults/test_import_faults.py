"""Faults of `recgpt data import` / `data info` / dataset files (issue 10, items 1, 8, 12, 13, 14).

Each case asserts what the user gets: exit status 2 with one line naming the file / line / field,
and nothing lost: the source and any unrelated folder stay byte for byte, no half-written output.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recgpt.cli.data import app
from recgpt.data import DataError, Dataset

EVENTS = "user_id,item_id,behavior,timestamp\nu1,i1,click,1600000000\nu1,i2,click,1600000100\nu2,i1,purchase,1600000200\n"
ITEMS = "item_id,title\ni1,Desk lamp\ni2,Oak chair\n"
runner = CliRunner()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (to assert that nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_source(root: Path, events: str = EVENTS, items: str = ITEMS) -> Path:
    src = root / "shop"
    src.mkdir(parents=True)
    (src / "events.csv").write_text(events)
    (src / "items.csv").write_text(items)
    return src


def data(*args: str | Path) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # never a traceback
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_source(tmp_path)


# --------------------------------------------------------------------- 1. --out never destroys data
def test_out_unrelated_folder_is_refused(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    before = snapshot(tmp_path)
    code, msg = data("import", "generic", src, "--out", out)
    assert code == 2 and str(out) in msg and "not a recgpt dataset" in msg and "holiday.jpg" in msg
    assert "--force" in msg and snapshot(tmp_path) == before


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("target", ["source", "parent", "events-file"])
def test_out_never_replaces_the_source_even_with_force(
    src: Path, tmp_path: Path, target: str, force: bool
) -> None:
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"events": {"file": "events.csv"}}))
    out = {"source": src, "parent": tmp_path, "events-file": src / "events.csv"}[target]
    what = src / "events.csv" if target == "events-file" else src
    before = snapshot(tmp_path)
    code, msg = data(
        "import", "generic", what, "--mapping", mapping, "--out", out, *(["--force"] if force else [])
    )
    assert code == 2 and str(out) in msg and "import source" in msg
    assert snapshot(tmp_path) == before


def test_out_plain_file_needs_force(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    code, msg = data("import", "generic", src, "--out", out)
    assert code == 2 and str(out) in msg and "not a folder" in msg and out.read_text() == "my notes\n"
    code, msg = data("import", "generic", src, "--out", out, "--force")
    assert code == 0, msg
    assert Dataset.load(out).manifest.counts["events"] == 3


def test_out_force_replaces_a_non_dataset_folder(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "scratch"
    out.mkdir()
    (out / "junk.txt").write_text("x")
    assert data("import", "generic", src, "--out", out, "--force")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "events.parquet",
        "items.parquet",
        "manifest.json",
        "users.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "shop"]  # no temp left beside it


def test_out_dataset_or_empty_is_replaced_but_not_with_extra_files(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()  # empty: fine
    assert data("import", "generic", src, "--out", out)[0] == 0
    assert data("import", "generic", src, "--out", out)[0] == 0  # a dataset: replaced
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 0}))
    assert data("import", "generic", src, "--out", out)[0] == 0  # a dataset of an older schema: replaced too
    (out / "my-analysis.ipynb").write_text("{}")  # the user's own file inside a dataset folder
    code, msg = data("import", "generic", src, "--out", out)
    assert code == 2 and "my-analysis.ipynb" in msg and (out / "my-analysis.ipynb").exists()


def test_out_invalid_manifest_is_not_a_dataset(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "fake"
    out.mkdir()
    (out / "manifest.json").write_text('{"hello": 1}')
    code, msg = data("import", "generic", src, "--out", out)
    assert code == 2 and "invalid manifest" in msg and (out / "manifest.json").read_text() == '{"hello": 1}'


def test_library_save_refuses_too(tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recgpt.data.importers import import_dataset

    ds = import_dataset("generic", src)
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="import source"):
        ds.save(src, force=True, protect=[src])
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work)
    for out in (work, tmp_path):  # the working directory and a folder above it
        with pytest.raises(DataError, match="working directory"):
            ds.save(out, force=True)
    assert snapshot(tmp_path) == {**before, "work/thesis.tex": b"years of work"}


# ------------------------------------------------------------------------- 12. clear errors (data)
@pytest.mark.parametrize("ts", ["1e12", "1e17", "1e20", "-1", "1000000000000"])
def test_generic_timestamp_out_of_range(tmp_path: Path, ts: str) -> None:
    src = make_source(tmp_path, EVENTS.replace("1600000100", ts))
    out = tmp_path / "out"
    code, msg = data("import", "generic", src, "--out", out)
    assert code == 2 and "events.csv, line 3, field 'timestamp'" in msg and "out of range" in msg
    assert ("milliseconds" in msg) == (ts in ("1e12", "1000000000000"))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["shop"]


def test_generic_epoch_ms_and_iso_out_of_range(tmp_path: Path) -> None:
    src = make_source(tmp_path, EVENTS.replace("1600000100", "1e20"))
    (tmp_path / "ms.json").write_text(json.dumps({"events": {"timestamp_format": "epoch_ms"}}))
    code, msg = data("import", "generic", src, "--mapping", tmp_path / "ms.json", "--out", tmp_path / "o")
    assert code == 2 and "line 3" in msg and "out of range" in msg
    iso = make_source(
        tmp_path / "iso",
        EVENTS.replace("1600000000", "2150-01-01T00:00:00")
        .replace("1600000100", "2020-01-01")
        .replace("1600000200", "2020-01-02"),
    )
    (tmp_path / "iso.json").write_text(json.dumps({"events": {"timestamp_format": "iso8601"}}))
    code, msg = data("import", "generic", iso, "--mapping", tmp_path / "iso.json", "--out", tmp_path / "o")
    assert code == 2 and "line 2, field 'timestamp'" in msg and "out of range" in msg


def ml100k(root: Path, data_rows: str) -> Path:
    d = root / "ml"
    d.mkdir()
    (d / "u.genre").write_text("unknown|0\nAction|1\n")
    (d / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x/1|0|1\n2|Heat (1995)|01-Jan-1995||u|0|1\n"
    )
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (d / "u.data").write_text(data_rows)
    return d


@pytest.mark.parametrize("ts", ["1e12", "1e17", "1e20", "-5"])
def test_movielens_timestamp_out_of_range(tmp_path: Path, ts: str) -> None:
    src = ml100k(tmp_path, f"1\t1\t5\t881250949\n2\t2\t3\t{ts}\n")
    code, msg = data("import", "movielens-100k", src, "--out", tmp_path / "o")
    assert code == 2 and "u.data, line 2, field 'timestamp'" in msg and "out of range" in msg
    small = tmp_path / "small"
    small.mkdir()
    (small / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (small / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,1,3.0,{ts}\n")
    code, msg = data("import", "ml-latest-small", small, "--out", tmp_path / "o")
    assert code == 2 and "ratings.csv, line 3, field 'timestamp'" in msg and "out of range" in msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("table", "text", "where"),
    [
        ("events", EVENTS.replace("u2,", "u\x002,"), "events.csv, line 4, field 'user_id'"),
        ("items", ITEMS.replace("Oak chair", "Oak\x00chair"), "items.csv, line 3, field 'title'"),
        ("items", ITEMS.replace("i2,", "i\x002,"), "items.csv, line 3, field 'item_id'"),
    ],
)
def test_nul_byte_in_id_or_title(tmp_path: Path, table: str, text: str, where: str) -> None:
    src = make_source(tmp_path, **{table: text})
    code, msg = data("import", "generic", src, "--out", tmp_path / "o")
    assert code == 2 and where in msg and "NUL" in msg and not (tmp_path / "o").exists()


def test_nul_byte_in_movielens_title(tmp_path: Path) -> None:
    src = ml100k(tmp_path, "1\t1\t5\t881250949\n")
    (src / "u.item").write_text("1|Toy\x00Story (1995)|01-Jan-1995||http://x/1|0|1\n")
    code, msg = data("import", "movielens-100k", src, "--out", tmp_path / "o")
    assert code == 2 and "u.item, line 1, field 'title'" in msg and "NUL" in msg


def test_header_without_rows_is_refused(tmp_path: Path) -> None:
    src = make_source(tmp_path, "user_id,item_id,behavior,timestamp\n")
    code, msg = data("import", "generic", src, "--out", tmp_path / "o")
    assert code == 2 and "events.csv" in msg and "no events" in msg and not (tmp_path / "o").exists()
    ml = ml100k(tmp_path, "")
    code, msg = data("import", "movielens-100k", ml, "--out", tmp_path / "o")
    assert code == 2 and "u.data" in msg and "no events" in msg


@pytest.fixture
def saved(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    assert data("import", "generic", src, "--out", out)[0] == 0
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_broken_parquet_table_is_named(saved: Path, damage: str) -> None:
    f = saved / "events.parquet"
    raw = f.read_bytes()
    f.write_bytes(
        {"truncate": raw[: len(raw) // 2], "garbage": b"not parquet at all" * 10, "empty": b""}[damage]
    )
    with pytest.raises(DataError, match="cannot read the table") as err:
        Dataset.load(saved)
    assert err.value.file == str(f)
    code, msg = data("info", saved)
    assert code == 2 and "events.parquet: cannot read the table" in msg and str(saved) in msg


def test_dropped_column_is_named(saved: Path) -> None:
    f = saved / "items.parquet"
    pl.read_parquet(f).drop("title").write_parquet(f)
    with pytest.raises(DataError, match="column 'title' is missing") as err:
        Dataset.load(saved)
    assert err.value.file == str(f)
    code, msg = data("info", saved)
    assert code == 2 and "items.parquet: column 'title' is missing" in msg


def test_info_checks_tables_against_manifest(saved: Path) -> None:
    code, msg = data("info", saved)
    assert code == 0 and "events" in msg
    f = saved / "events.parquet"
    pl.read_parquet(f).head(2).write_parquet(f)
    (saved / "users.parquet").unlink()
    code, msg = data("info", saved)
    assert (
        code == 2 and "events.parquet: 2 rows, the manifest says 3" in msg and "users.parquet: missing" in msg
    )
    with pytest.raises(DataError, match="missing table"):
        Dataset.load(saved)


# ------------------------------------------------------------------- 13. the manifest tells the truth
def test_events_argument_and_mapping_file_conflict(src: Path, tmp_path: Path) -> None:
    (src / "other.csv").write_text(EVENTS.replace("u2", "u3"))
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"events": {"file": "other.csv"}}))
    code, msg = data("import", "generic", src / "events.csv", "--mapping", mapping, "--out", tmp_path / "o")
    assert code == 2 and "events.csv" in msg and "other.csv" in msg and "differ" in msg
    assert "field 'events.file'" in msg and not (tmp_path / "o").exists()
    # the same file named both ways is no conflict, and a folder source records the file read
    mapping.write_text(json.dumps({"events": {"file": "events.csv"}, "items": {"file": "items.csv"}}))
    assert (
        data("import", "generic", src / "events.csv", "--mapping", mapping, "--out", tmp_path / "o")[0] == 0
    )
    mapping.write_text(json.dumps({"events": {"file": "other.csv"}}))
    assert data("import", "generic", src, "--mapping", mapping, "--out", tmp_path / "o")[0] == 0
    manifest = Dataset.load(tmp_path / "o").manifest
    assert manifest.source.endswith("other.csv") and "u3" in Dataset.load(tmp_path / "o").users["user_id"]
