"""Item-level compression: cleaned names, core attributes, and the cached summariser hook."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recgpt.behavior import ItemCompressor, ItemConfig, clean_title, item_text


@pytest.mark.parametrize(
    ("raw", "brand", "clean"),
    [
        ("American President, The (1995)", None, "The American President (1995)"),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            None,
            "The City of Lost Children (Cité des enfants perdus, La) (1995)",
        ),
        ("Good, The Bad and The Ugly, The (1966)", None, "The Good, The Bad and The Ugly (1966)"),
        ("Avventura, L' (1960)", None, "L'Avventura (1960)"),
        ("Crow, The: City of Angels (1996)", None, "Crow, The: City of Angels (1996)"),
        ("THX 1138 (1971)", None, "THX 1138 (1971)"),
        (
            "PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll",
            "PORTER-CABLE",
            "4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll",
        ),
        ("Tom &amp; Jerry |  the\nmovie", None, "Tom & Jerry / the movie"),
    ],
)
def test_clean_title(raw: str, brand: str | None, clean: str) -> None:
    assert clean_title(raw, brand) == clean


def test_long_names_are_cut_at_a_word_boundary() -> None:
    name = clean_title("word " * 40, config=ItemConfig(max_name_chars=23))
    assert name == "word word word word"


def test_item_text_core_attributes() -> None:
    rec = {
        "title": "Acme Steel Lock Nut",
        "categories": ["Fasteners", "Nuts", "Locknuts"],
        "brand": "Acme",
        "attributes": [{"key": "size", "value": "M3"}, {"key": "color", "value": "gray"}],
    }
    assert item_text(rec) == "Steel Lock Nut [Fasteners/Nuts/Locknuts; brand: Acme]"
    cfg = ItemConfig(categories="leaf", feature_keys=("color", "size"), max_features=1)
    assert item_text(rec, cfg) == "Steel Lock Nut [Locknuts; brand: Acme; color: gray]"
    assert item_text(rec, ItemConfig(categories="none", brand=False)) == "Steel Lock Nut"
    assert item_text({"title": "Heat (1995)", "categories": []}) == "Heat (1995)"


def _items() -> pl.DataFrame:
    return pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alpha one", "Bravo two", "Charlie three"]})


def test_summariser_is_batched_cached_and_keyed(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def summarise(records: list[dict]) -> list[str]:
        calls.append([r["item_id"] for r in records])
        return [f"LLM {r['deterministic']} |x" for r in records]

    cache = tmp_path / "items.parquet"
    comp = ItemCompressor(_items(), summarizer=summarise, summarizer_id="m1", cache_path=cache)
    comp.prepare(["a", "b", "a"])
    assert comp.text("a") == "LLM Alpha one /x"
    assert comp.text("c") == "LLM Charlie three /x"
    assert calls == [["a", "b"], ["c"]]
    # a new process with the same summariser id reads the cache instead of calling
    again = ItemCompressor(_items(), summarizer=summarise, summarizer_id="m1", cache_path=cache)
    assert again.text("b") == "LLM Bravo two /x" and len(calls) == 2
    # another summariser id never reuses those texts, and keeps m1's rows in the file
    other = ItemCompressor(
        _items(), summarizer=lambda rs: ["short"] * len(rs), summarizer_id="m2", cache_path=cache
    )
    assert other.text("b") == "short"
    assert set(pl.read_parquet(cache)["summarizer_id"].to_list()) == {"m1", "m2"}


def test_deterministic_default_and_errors() -> None:
    comp = ItemCompressor(_items())
    assert comp.text("b") == "Bravo two"
    with pytest.raises(KeyError, match="'zz'"):
        comp.text("zz")
    bad = ItemCompressor(_items(), summarizer=lambda rs: [], summarizer_id="bad")
    with pytest.raises(ValueError, match="returned 0 texts for 1 items"):
        bad.text("a")
    with pytest.raises(ValueError, match="item_id"):
        ItemCompressor(pl.DataFrame({"id": ["a"]}))
