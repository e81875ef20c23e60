"""Categories at one level (`recgpt.data.categories`): paths, sets, auto, the manifest flag."""

from __future__ import annotations

import polars as pl
import pytest

from recgpt.data.categories import (
    AUTO_MIN_ITEMS,
    categories_at_level,
    category_structure,
    infer_structure,
    parse_level,
)
from recgpt.data.dataset import Dataset, Manifest


def _items(cats: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(len(cats))],
            "title": [f"Item {n}" for n in range(len(cats))],
            "categories": cats,
        },
        schema={"item_id": pl.String(), "title": pl.String(), "categories": pl.List(pl.String())},
    )


PATHS = [
    ["Home", "Lighting", "Lamps"],
    ["Home", "Lighting", "Bulbs"],
    ["Home", "Kitchen"],
    ["Garden", "Tools", "Hoses"],
    [],
]
GENRES = [["Action", "Sci-Fi"], ["Sci-Fi"], ["Comedy", "Action"], ["Drama"]]


def test_path_levels() -> None:
    items = _items(PATHS)
    leaf = categories_at_level(items, "leaf")
    assert leaf.name == "leaf" and leaf.structure == "path"
    assert leaf.categories == [["Lamps"], ["Bulbs"], ["Kitchen"], ["Hoses"], []]
    root = categories_at_level(items, 0)
    assert root.name == "depth 0" and root.vocabulary == ["Garden", "Home"]
    # depth 1 takes the leaf of a shorter path
    assert categories_at_level(items, "depth 2").categories[2] == ["Kitchen"]
    assert categories_at_level(items, 1).categories == [
        ["Lighting"],
        ["Lighting"],
        ["Kitchen"],
        ["Tools"],
        [],
    ]
    every = categories_at_level(items, "all")
    assert every.name == "all" and every.categories[0] == ["Home", "Lighting", "Lamps"]


def test_set_levels() -> None:
    items = _items(GENRES)
    assert infer_structure(items["categories"].to_list()) == "set"  # Action is first and second
    for level in ("auto", "leaf"):
        out = categories_at_level(items, level)
        assert out.name == "set" and out.categories[0] == ["Action", "Sci-Fi"]
    with pytest.raises(ValueError, match="needs category paths"):
        categories_at_level(items, 1)


def test_auto_picks_the_finest_level_with_enough_items() -> None:
    # every leaf has one item: too few; depth 1 ("Lighting") holds them all
    many = [["Home", "Lighting", f"Lamp {n}"] for n in range(AUTO_MIN_ITEMS + 1)]
    assert categories_at_level(_items(many), "auto").name == "depth 1"
    # leaves with enough items: the leaf
    big = [["Home", "Lighting", leaf] for leaf in ("Lamps", "Bulbs") for _ in range(AUTO_MIN_ITEMS)]
    assert categories_at_level(_items(big), "auto").name == "leaf"
    # nothing is big enough: the root
    assert categories_at_level(_items(PATHS), "auto").name == "depth 0"
    # one-element paths (the Amazon importer's flattened leaf): the leaf
    assert categories_at_level(_items([["A"], ["B"]]), "auto").name == "leaf"


def test_structure_from_the_manifest_flag_or_inferred() -> None:
    items = _items(GENRES)
    users = pl.DataFrame({"user_id": ["u"]})
    events = pl.DataFrame(
        {
            "event_id": [0],
            "user_id": ["u"],
            "item_id": ["i0"],
            "behavior": ["rating"],
            "timestamp": [946_684_800],
        }
    )
    inferred = Dataset.build(items, users, events, Manifest(name="x", source="t"))
    assert category_structure(inferred) == "set"
    flagged = Dataset.build(
        items, users, events, Manifest(name="x", source="t", extra={"category_structure": "path"})
    )
    assert category_structure(flagged) == "path"
    assert categories_at_level(flagged, "leaf").categories[0] == ["Sci-Fi"]
    assert categories_at_level(inferred, "leaf", structure="path").name == "leaf"
    bad = Dataset.build(
        items, users, events, Manifest(name="x", source="t", extra={"category_structure": "tree"})
    )
    with pytest.raises(ValueError, match="category_structure of dataset 'x'"):
        category_structure(bad)
    assert infer_structure(PATHS) == "path"
    assert infer_structure([["A"], ["B"], []]) == "path"


def test_parse_level_and_items_table() -> None:
    assert [parse_level(v) for v in ("auto", "LEAF", "all", "2", "depth 1", 0)] == [
        "auto",
        "leaf",
        "all",
        2,
        1,
        0,
    ]
    for bad in ("deep", -1, True, 1.5):
        with pytest.raises(ValueError, match="category level"):
            parse_level(bad)
    items = _items(PATHS)
    table = categories_at_level(items, "leaf").items_table(items)
    assert table["categories"].to_list()[0] == ["Lamps"] and table.columns == items.columns
