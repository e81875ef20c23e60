"""Importers: real-data counts, sequence rebuild, generic round trips, and malformed input -> DataError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recgpt.cli.data import app
from recgpt.data import DataError, Dataset
from recgpt.data.importers import IMPORTERS, import_dataset
from recgpt.data.importers.amazon import split_text

# the shared data sits beside the checkout (../shared/data), as on developer machines and in CI
SHARED = Path(os.environ.get("RECGPT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
ML100K, MLSMALL, AMAZON = SHARED / "ml-100k", SHARED / "ml-latest-small", SHARED / "amazon-scientific"
GENRES = ["unknown", "Action", "Comedy"]


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def where(err: pytest.ExceptionInfo[DataError]) -> tuple[str | None, int | None, str | None]:
    e = err.value
    return (Path(e.file).name if e.file else None), e.line, e.field


# ------------------------------------------------------------------------------- synthetic sources
@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    """A tiny folder in the ml-100k layout (latin-1 title included)."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    (d / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x/1|0|0|1\n"
        "2|Misérables, Les (1995)|01-Jan-1995||http://x/2|0|1|1\n".encode("latin-1")
    )
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (d / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250949\n")
    return d


def write_unisrec(d: Path, seqs: dict[str, list[str]], max_len: int = 3) -> Path:
    """Write sequences exactly as UniSRec lays them out (prefixes longest first, truncated)."""
    d.mkdir(parents=True, exist_ok=True)
    items = sorted({i for s in seqs.values() for i in s})
    idx = {a: n for n, a in enumerate(items)}
    (d / "P.text").write_text(
        "item_id:token\ttext:token_seq\n"
        + "".join(f"{a}\tThing {a}. Industrial & Scientific Lab Supplies. Acme. \n" for a in items)
    )
    (d / "P.item2index").write_text("".join(f"{a}\t{n}\n" for a, n in idx.items()))
    (d / "P.user2index").write_text("".join(f"{u}\t{n}\n" for n, u in enumerate(seqs)))
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    rows = {"train": [], "valid": [], "test": []}
    for u, s in enumerate(seqs.values()):
        ids = [idx[a] for a in s]
        for k in range(len(ids) - 3, 0, -1):
            rows["train"].append(f"{u}\t{' '.join(map(str, ids[:k][-max_len:]))}\t{ids[k]}\n")
        for split, k in (("valid", len(ids) - 2), ("test", len(ids) - 1)):
            rows[split].append(f"{u}\t{' '.join(map(str, ids[:k][-max_len:]))}\t{ids[k]}\n")
    for split, r in rows.items():
        (d / f"P.{split}.inter").write_text(head + "".join(r))
    return d


# ----------------------------------------------------------------------------------- real datasets
def test_movielens_100k_real_counts() -> None:
    ds = import_dataset("movielens-100k", need(ML100K))
    assert ds.manifest.counts["users"] == 943
    assert ds.manifest.counts["items"] == 1682
    assert ds.manifest.counts["events"] == 100_000
    assert ds.manifest.behaviors == {"rating": 100_000}
    toy = ds.items.row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert {"key": "release_date", "value": "01-Jan-1995"} in toy["attributes"]
    u1 = ds.users.filter(pl.col("user_id") == "1").row(0, named=True)
    assert (u1["age"], u1["gender"], u1["occupation"], u1["location"]) == (24, "M", "technician", "85711")
    assert ds.events["value"].min() == 1 and ds.events["value"].max() == 5
    assert ds.manifest.extra["time_range"] == {"first": "1997-09-20", "last": "1998-04-22"}


def test_movielens_latest_small_real_counts() -> None:
    ds = import_dataset("ml-latest-small", need(MLSMALL))
    assert ds.manifest.counts["users"] == 610
    assert ds.manifest.counts["items"] == 9742
    assert ds.manifest.behaviors == {"rating": 100_836, "tag": 3_683}
    tags = ds.events.filter(pl.col("behavior") == "tag")
    assert tags["text"].null_count() == 0 and tags["value"].null_count() == tags.height
    no_genre = ds.items.filter(pl.col("categories").list.len() == 0)
    assert no_genre.height == 34  # movies.csv rows with "(no genres listed)"
    toy = ds.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert {"key": "imdb_id", "value": "0114709"} in toy["attributes"]


def test_amazon_real_counts_and_sequences() -> None:
    src = need(AMAZON)
    ds = import_dataset("amazon-scientific", src)
    assert (ds.manifest.counts["users"], ds.manifest.counts["items"], ds.manifest.counts["events"]) == (
        8442,
        4385,
        59_427,
    )
    assert ds.manifest.synthetic_timestamps and ds.manifest.behaviors == {"review": 59_427}
    assert ds.manifest.extra["text_split"]["ambiguous"] == 0
    assert ds.manifest.extra["max_sequence_length"] == 80
    # every user's synthetic clock strictly increases along the rebuilt order
    gaps = ds.events.select(pl.col("timestamp").diff().over("user_id").alias("d"))["d"].drop_nulls()
    assert gaps.min() > 0
    item_of = dict(
        line.split("\t") for line in (src / "Scientific.item2index").read_text().split("\n") if line
    )
    user_of = dict(
        line.split("\t") for line in (src / "Scientific.user2index").read_text().split("\n") if line
    )
    asin = {int(v): k for k, v in item_of.items()}
    reviewer = {int(v): k for k, v in user_of.items()}
    seqs = {u: g["item_id"].to_list() for (u,), g in ds.events.group_by("user_id")}
    test_rows = (src / "Scientific.test.inter").read_text().split("\n")[1:]
    long_row = next(r for r in test_rows if r.startswith("247\t"))  # 80 items, history truncated to 50
    for row in [*test_rows[:5], long_row]:
        u, hist, target = row.split("\t")
        seq = seqs[reviewer[int(u)]]
        assert seq[-1] == asin[int(target)]
        assert seq[:-1][-50:] == [asin[int(i)] for i in hist.split()]
    assert len(seqs[reviewer[247]]) == 80
    item = ds.items.filter(pl.col("item_id") == "B0000223SI").row(0, named=True)
    assert item["title"].startswith("PORTER-CABLE 740000801")
    assert item["categories"] == ["Abrasive & Finishing Products Manual Sanding Products Sanding Rolls"]
    assert item["brand"] == "PORTER-CABLE"


def test_cli_import_prints_counts(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["import", "movielens-100k", str(need(ML100K)), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert "943" in res.output and "1,682" in res.output and "100,000" in res.output
    res = CliRunner().invoke(app, ["info", str(tmp_path / "o")])
    assert res.exit_code == 0 and "1,682" in res.output and "1997-09-20" in res.output


# ---------------------------------------------------------------------------------- unit behaviour
def test_movielens_100k_synthetic(ml100k: Path) -> None:
    ds = import_dataset("ml-100k", ml100k)
    assert ds.items["title"].to_list() == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert ds.items["categories"].to_list() == [["Comedy"], ["Action", "Comedy"]]
    # equal timestamps keep file order via event_id
    assert ds.events.filter(pl.col("user_id") == "1")["item_id"].to_list() == ["1", "2"]
    assert ds.events["event_id"].to_list() == [0, 1, 2]
    assert ds.manifest.extra["category_structure"] == "set"  # genres: every one a leaf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "A b. Industrial & Scientific Lab Gear. Acme. ",
            ("A b", "Industrial & Scientific Lab Gear", "Acme", False),
        ),
        (
            "Mr. Heater 3 in. x 5. Industrial & Scientific Fittings. J.V. Converting. ",
            ("Mr. Heater 3 in. x 5", "Industrial & Scientific Fittings", "J.V. Converting", False),
        ),
        ("Ideal Crimp (Pack of 100). . Ideal. ", ("Ideal Crimp (Pack of 100)", "", "Ideal", False)),
        ("Thing. Other Cat. Brand. ", ("Thing", "Other Cat", "Brand", True)),
        ("Only a title. ", ("Only a title", "", None, True)),
    ],
)
def test_split_text(text: str, expected: tuple[str, str, str | None, bool]) -> None:
    assert split_text(text) == expected


def test_unisrec_rebuild_with_truncation(tmp_path: Path) -> None:
    seqs = {"U1": ["a", "b", "c", "d", "e", "f", "g"], "U2": ["c", "a", "c", "b", "e"]}
    ds = import_dataset("unisrec", write_unisrec(tmp_path / "u", seqs, max_len=3))
    got = {u: g["item_id"].to_list() for (u,), g in ds.events.group_by("user_id")}
    assert got == seqs
    assert ds.manifest.name == "amazon-p" and ds.items["categories"][0].to_list() == ["Lab Supplies"]
    assert ds.manifest.extra["category_structure"] == "path"  # one flattened leaf: a path of depth 1


# ----------------------------------------------------------------------------------------- generic
EVENTS = [
    {"uid": "u1", "sku": "i1", "ts": "2024-01-02T10:00:00+00:00", "act": "click", "stars": None},
    {"uid": "u1", "sku": "i2", "ts": "2024-01-02T10:00:00Z", "act": "purchase", "stars": 4.5},
    {"uid": "u2", "sku": "i1", "ts": "2024-01-01T00:00:00", "act": "click", "stars": None},
]
ITEMS = [
    {"sku": "i1", "name": "Red mug", "path": "Home|Kitchen", "price": 3.5, "color": "red"},
    {"sku": "i2", "name": "Tea", "path": "Food", "price": None, "color": ""},
]
MAPPING = {
    "events": {
        "file": "events.FMT",
        "timestamp_format": "iso8601",
        "columns": {
            "user_id": "uid",
            "item_id": "sku",
            "timestamp": "ts",
            "behavior": "act",
            "value": "stars",
        },
    },
    "items": {
        "file": "items.FMT",
        "columns": {"item_id": "sku", "title": "name", "categories": "path"},
        "attributes": ["color"],
    },
}


def write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    df = pl.DataFrame(rows)
    if fmt == "csv":
        df.write_csv(path)
    elif fmt == "parquet":
        df.write_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mapping_for(fmt: str) -> dict:
    return json.loads(json.dumps(MAPPING).replace("FMT", fmt))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_generic_round_trip(tmp_path: Path, fmt: str) -> None:
    write_rows(tmp_path / f"events.{fmt}", EVENTS, fmt)
    write_rows(tmp_path / f"items.{fmt}", ITEMS, fmt)
    ds = import_dataset("generic", tmp_path, mapping=mapping_for(fmt), name="shop")
    ds.save(tmp_path / "out")
    back = Dataset.load(tmp_path / "out")
    assert back.manifest.counts == {"users": 2, "items": 2, "events": 3, "item_events": 3}
    ev = back.events
    assert ev.columns[:3] == ["event_id", "user_id", "item_id"] and "_line" not in ev.columns
    assert ev["user_id"].to_list() == ["u1", "u1", "u2"]
    assert ev["event_id"].to_list() == [0, 1, 2]
    assert ev["timestamp"].to_list() == [1704189600, 1704189600, 1704067200]
    assert ev["behavior"].to_list() == ["click", "purchase", "click"]
    assert ev["value"].to_list() == [None, 4.5, None]
    it = back.items.sort("item_id")
    assert it["categories"].to_list() == [["Home", "Kitchen"], ["Food"]]
    assert it["price"].to_list() == [3.5, None]
    assert it["attributes"].to_list() == [[{"key": "color", "value": "red"}], []]
    assert back.manifest.extra["category_structure"] == "path"  # the mapping's default
    as_set = mapping_for(fmt)
    as_set["items"]["category_structure"] = "set"
    labels = import_dataset("generic", tmp_path, mapping=as_set, name="shop")
    assert labels.manifest.extra["category_structure"] == "set"
    as_set["items"]["category_structure"] = "tree"
    with pytest.raises(DataError, match="category_structure"):
        import_dataset("generic", tmp_path, mapping=as_set, name="shop")


def test_generic_toml_epoch_ms_constant_behavior_and_missing_items(tmp_path: Path) -> None:
    (tmp_path / "ev.tsv").write_text("user\titem\tms\nA\tx\t1700000000999\nB\ty\t1700000001000\n")
    (tmp_path / "m.toml").write_text(
        '[events]\ntimestamp_format = "epoch_ms"\nbehavior = "purchase"\n'
        '[events.columns]\nuser_id = "user"\nitem_id = "item"\ntimestamp = "ms"\n'
    )
    with pytest.raises(DataError) as err:
        import_dataset("generic", tmp_path / "ev.tsv", mapping=tmp_path / "m.toml")
    assert where(err) == ("ev.tsv", 2, "item") and "--create-missing-items" in str(err.value)
    ds = import_dataset(
        "generic", tmp_path / "ev.tsv", mapping=tmp_path / "m.toml", create_missing_items=True
    )
    assert ds.events["timestamp"].to_list() == [1700000000, 1700000001]
    assert ds.manifest.behaviors == {"purchase": 2}
    assert ds.items["title"].to_list() == ["x", "y"]
    res = CliRunner().invoke(
        app,
        [
            "import",
            "generic",
            str(tmp_path / "ev.tsv"),
            "--out",
            str(tmp_path / "o"),
            "--mapping",
            str(tmp_path / "m.toml"),
            "--create-missing-items",
        ],
    )
    assert res.exit_code == 0, res.output
    assert Dataset.load(tmp_path / "o").manifest.counts["events"] == 2


def test_generic_defaults_from_folder(tmp_path: Path) -> None:
    """No mapping: events.<suffix> in the folder, same-named columns, epoch seconds."""
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,behavior\nA,x,10,click\nA,,11,click\n")
    with pytest.raises(DataError) as err:
        import_dataset("generic", tmp_path, create_missing_items=True)
    assert where(err) == ("events.csv", 3, "item_id")  # neither an item nor a query
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,behavior\nA,x,10,click\n")
    ds = import_dataset("generic", tmp_path, create_missing_items=True)
    assert ds.events.select("user_id", "item_id", "timestamp").row(0) == ("A", "x", 10)
    (tmp_path / "users.jsonl").write_text('{"user_id": "A", "age": "old"}\n')
    with pytest.raises(DataError) as err:
        import_dataset("generic", tmp_path, create_missing_items=True)
    assert where(err) == ("users.jsonl", 1, "age")


# --------------------------------------------------------------------------------- malformed input
def test_bad_timestamp_names_file_line_field(ml100k: Path) -> None:
    (ml100k / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\tabc\n")
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k)
    assert where(err) == ("u.data", 2, "timestamp") and "'abc'" in str(err.value)


def test_bad_rating_and_field_count(ml100k: Path) -> None:
    (ml100k / "u.data").write_text("1\t1\tfive\t881250949\n")
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k)
    assert where(err) == ("u.data", 1, "rating")
    (ml100k / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\n")
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k)
    assert where(err) == ("u.data", 2, "timestamp")


def test_duplicate_item_id(ml100k: Path) -> None:
    with (ml100k / "u.item").open("a", encoding="latin-1") as f:
        f.write("1|Toy Story again (1995)|01-Jan-1995||http://x/1|0|0|1\n")
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k)
    assert where(err) == ("u.item", 3, "movie_id") and "first seen on line 1" in str(err.value)


def test_event_for_unknown_item(ml100k: Path) -> None:
    with (ml100k / "u.data").open("a") as f:
        f.write("2\t99\t4\t881250999\n")
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k)
    assert where(err) == ("u.data", 4, "item_id") and "'99'" in str(err.value)


def test_decode_error_and_unknown_encoding(ml100k: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k, encoding="utf-8")  # u.item line 2 is latin-1
    assert where(err) == ("u.item", 2, "encoding") and "0xe9" in str(err.value)
    with pytest.raises(DataError) as err:
        import_dataset("movielens-100k", ml100k, encoding="klingon")
    assert where(err)[2] == "encoding" and "unknown encoding" in str(err.value)


def test_missing_column(tmp_path: Path) -> None:
    d = tmp_path / "small"
    d.mkdir()
    (d / "movies.csv").write_text('movieId,title,genres\n1,"Heat, The (1995)",Action|Crime\n')
    (d / "ratings.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    with pytest.raises(DataError) as err:
        import_dataset("ml-latest-small", d)
    assert where(err) == ("ratings.csv", 1, "timestamp")
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,1,4.0,abc\n")
    with pytest.raises(DataError) as err:
        import_dataset("ml-latest-small", d)
    assert where(err) == ("ratings.csv", 3, "timestamp")


def test_generic_mapped_column_missing_and_bad_mapping(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("uid,sku\nA,x\n")
    mapping = {
        "events": {"behavior": "click", "columns": {"user_id": "uid", "item_id": "sku", "timestamp": "ts"}}
    }
    with pytest.raises(DataError) as err:
        import_dataset("generic", tmp_path / "e.csv", mapping=mapping, create_missing_items=True)
    assert where(err) == ("e.csv", 1, "ts")
    with pytest.raises(DataError) as err:
        import_dataset("generic", tmp_path / "e.csv", mapping={"events": {"columns": {"colour": "x"}}})
    assert err.value.field == "events" and "unknown target column" in str(err.value)
    (tmp_path / "bad.jsonl").write_text('{"uid": "A", "sku": "x", "ts": 1}\n{"uid": "B", "sku": \n')
    mapping["events"]["file"] = "bad.jsonl"
    with pytest.raises(DataError) as err:
        import_dataset("generic", tmp_path, mapping=mapping, create_missing_items=True)
    assert where(err) == ("bad.jsonl", 2, None)


def test_generic_duplicate_items(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,behavior\nA,x,1,click\n")
    (tmp_path / "items.csv").write_text("item_id,title\nx,X\ny,Y\nx,X2\n")
    with pytest.raises(DataError) as err:
        import_dataset(
            "generic", tmp_path, mapping={"items": {"file": "items.csv"}, "events": {"file": "events.csv"}}
        )
    assert where(err) == ("items.csv", 4, "item_id")


def test_unisrec_inconsistent_prefix(tmp_path: Path) -> None:
    d = write_unisrec(tmp_path / "u", {"U1": ["a", "b", "c", "d", "e", "f"], "U2": ["a", "c", "d", "e", "f"]})
    lines = (d / "P.train.inter").read_text().split("\n")
    assert lines[2].startswith("0\t")  # U1's second-longest prefix: history "0 1 2" -> corrupt it
    user, hist, target = lines[2].split("\t")
    lines[2] = f"{user}\t{hist[:-1]}4\t{target}"
    (d / "P.train.inter").write_text("\n".join(lines))
    with pytest.raises(DataError) as err:
        import_dataset("unisrec", d)
    assert where(err) == ("P.train.inter", 3, "item_id_list:token_seq")


def test_unknown_format_lists_formats(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"known formats: .*movielens-100k"):
        import_dataset("netflix", tmp_path)
    assert {"movielens-100k", "ml-latest-small", "amazon-scientific", "generic"} <= set(IMPORTERS)


# ------------------------------------------------------------------------------------ atomic writes
def test_failed_import_leaves_nothing_and_keeps_previous(ml100k: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "datasets" / "ml"
    (ml100k / "u.data").rename(ml100k / "u.data.good")
    (ml100k / "u.data").write_text("1\t1\t5\tnot-a-time\n")
    res = runner.invoke(app, ["import", "movielens-100k", str(ml100k), "--out", str(out)])
    assert res.exit_code == 2 and "u.data" in res.output and "line 1" in res.output
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))  # no temp folders left either

    (ml100k / "u.data.good").replace(ml100k / "u.data")
    assert runner.invoke(app, ["import", "movielens-100k", str(ml100k), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (ml100k / "u.item").write_text("1|Toy Story (1995)|x||y|0|0|7\n")  # bad genre flag
    res = runner.invoke(app, ["import", "movielens-100k", str(ml100k), "--out", str(out)])
    assert res.exit_code == 2 and "u.item" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["ml"]
    assert Dataset.load(out).manifest.counts["events"] == 3
