"""Deterministic rules, the sample table, and samples rebuilt from a finished run folder."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from recgpt.judge.rules import RulesConfig, apply_rules, rule_results
from recgpt.judge.samples import (
    SAMPLES_SCHEMA,
    make_samples,
    open_run,
    sample_id,
    samples_from_run,
    samples_from_state,
)
from tests.judge.conftest import PROFILE


def _tag(output: str, recent: tuple[str, ...] = ("Gladiator (2000)", "Heat (1995)")) -> dict[str, object]:
    return make_samples(
        "tags", [{**PROFILE, "output": output, "interest": "Sci-fi", "recent": list(recent)}], source="t"
    ).row(0, named=True)


def _expl(output: str, title: str = "Star Wars (1977)") -> dict[str, object]:
    return make_samples(
        "explanations",
        [{"output": output, "interest": "Space", "item": f"{title} [Sci-Fi]", "item_title": title}],
        source="t",
    ).row(0, named=True)


@pytest.mark.parametrize(
    ("tag", "broken"),
    [
        ("retro space opera films", []),
        ("films", ["words"]),
        ("very long winding retro space opera films", ["words"]),
        ("smart sci-fi films", ["vague"]),
        ("sci-fi movie set", ["vague"]),
        ("gladiator sequel box set", ["vague", "fresh"]),  # names the recently seen "Gladiator"
        ("alien sequel box", []),  # Alien is not among the recent items
        ("heat gun", []),  # a short one-word title must match the whole tag
        ("lightweight trail running jacket", ["example"]),
    ],
)
def test_tag_rules(tag: str, broken: list[str]) -> None:
    assert [n for n, ok in rule_results(_tag(tag)) if not ok] == broken


def test_tag_freshness_needs_facts() -> None:
    row = _tag("gladiator sequel box")
    assert [n for n, ok in rule_results(row) if not ok] == ["fresh"]
    assert [n for n, _ in rule_results({**row, "facts": None})] == ["words", "vague", "example"]


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        (
            "Starships for your weekend sci-fi fix",
            [
                ("empty", True),
                ("prohibited", True),
                ("example", True),
                ("label", True),
                ("title", True),
                ("length", True),
            ],
        ),
        ("A perfect galaxy night", [("empty", True), ("prohibited", False)]),
        ("Dry feet for your muddy trail miles", [("empty", True), ("prohibited", True), ("example", False)]),
        (
            "Star Wars for space fans",
            [("empty", True), ("prohibited", True), ("example", True), ("label", True), ("title", False)],
        ),
        (
            "one two three four five six seven eight nine ten eleven twelve thirteen",
            [
                ("empty", True),
                ("prohibited", True),
                ("example", True),
                ("label", True),
                ("title", True),
                ("length", False),
            ],
        ),
    ],
)
def test_explanation_rules_follow_the_chain(text: str, rows: list[tuple[str, bool]]) -> None:
    assert rule_results(_expl(text)) == rows


def test_interest_rules_and_rule_rows() -> None:
    s = make_samples(
        "interests",
        [
            {**PROFILE, "output": "Space adventure"},
            {**PROFILE, "output": "Home baking"},
            {**PROFILE, "output": "one two three four five six seven"},
        ],
        source="t",
    )
    v = apply_rules(s)
    assert v.filter(~pl.col("passed"))["criterion"].to_list() == ["rule:example", "rule:words"]
    assert set(v["verdict"]) == {"Yes", "No"}
    assert apply_rules(s, RulesConfig(interest_max_words=7)).filter(~pl.col("passed")).height == 1


def test_make_samples_contract() -> None:
    rows = [
        {
            **PROFILE,
            "user_id": "u1",
            "output": "epic space battle films",
            "interest": "Sci-fi",
            "recent": ["Alien (1979)"],
        }
    ]
    s = make_samples("tags", rows + rows, source="distill", created_at=5)
    assert s.height == 1 and s.schema == pl.Schema(SAMPLES_SCHEMA)
    r = s.row(0, named=True)
    assert r["sample_id"] == sample_id(
        "tags", "u1", PROFILE["as_of"], "Sci-fi", None, "epic space battle films"
    )
    assert r["source"] == "distill" and r["created_at"] == 5
    for part in (
        "Profile: age 30, gender F",
        "Date: 2023-11-14 (November, autumn)",
        "Alien (1979) [Horror/Sci-Fi]",
        "Recently engaged items: Alien (1979)",
        "Linked interest: Sci-fi",
    ):
        assert part in r["context"]
    assert json.loads(r["facts"]) == {
        "recent": ["Alien (1979)"],
        "item_title": None,
        "as_of": PROFILE["as_of"],
    }
    interest = make_samples(
        "interests", [{**PROFILE, "output": "Sci-fi", "recent": ["Alien (1979)"]}], source="t"
    )
    assert "Recently engaged" not in interest["context"][0]  # LLM_UI never saw a recent-items list
    with pytest.raises(ValueError, match="unknown field"):
        make_samples("tags", [{**rows[0], "colour": "red"}], source="t")
    with pytest.raises(ValueError, match="needs its linked 'interest'"):
        make_samples("tags", [{"output": "x y"}], source="t")
    with pytest.raises(ValueError, match="non-empty string"):
        make_samples("interests", [{"output": " "}], source="t")
    with pytest.raises(ValueError, match="unknown judge task"):
        make_samples("images", rows, source="t")


def test_samples_from_a_finished_run_never_show_held_out_items(finished_run: Path) -> None:
    """Judge samples of a finished run (built by tests/conftest.py, not a local runs/quickstart)."""
    from recgpt.datasets import load_dataset

    s = samples_from_run(finished_run)
    counts = dict(s.group_by("task").len().rows())
    assert set(counts) == {"interests", "tags", "explanations"} and min(counts.values()) > 0
    assert s["sample_id"].n_unique() == s.height
    tags = pl.read_parquet(next(finished_run.glob("*_tags/tags.parquet")))
    assert (
        counts["tags"] == tags.filter(~pl.col("rationale").str.starts_with("fallback")).height
    )  # LLM tags only
    assert (
        len(samples_from_run(finished_run, ["tags"], llm_only=False))
        >= tags.select("user_id", "tag").n_unique()
    )
    users = pl.read_parquet(finished_run / "00_split" / "users.parquet")
    titles = dict(
        zip(
            *load_dataset(json.loads((finished_run / "config.json").read_text())["dataset"]).items.select(
                "item_id", "title"
            ),
            strict=True,
        )
    )
    held = {u: titles[t] for u, t in users.select("user_id", "target_item_id").iter_rows() if t}
    for u, ctx in s.filter(pl.col("user_id").is_not_null()).select("user_id", "context").iter_rows():
        assert held[u].lower() not in ctx.lower()
        assert "Date: " in ctx and "Behaviour history" in ctx


def test_samples_from_a_fresh_run_use_its_stored_tables_and_never_show_held_out_items(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A small run of the chain (fake LLM), judged through `RunStore` and `config.json` alone."""
    from recgpt.pipeline import run_pipeline
    from tests.conftest import HashEncoder, fake_backend, fast_config, slice_dataset

    data = tmp_path_factory.mktemp("data") / "mls-slice"
    slice_dataset().save(data)
    run = run_pipeline(
        fast_config(data, tmp_path),
        backend=fake_backend(),
        encoder=HashEncoder(),
        console=Console(quiet=True),
        progress=False,
    ).run_dir
    opened = open_run(run, llm={"spec": "fake"})
    assert opened.users == pl.read_parquet(run / "00_split/users.parquet")["user_id"].to_list()
    s = samples_from_state(opened)
    counts = dict(s.group_by("task").len().rows())
    assert set(counts) == {"interests", "tags", "explanations"} and s["sample_id"].n_unique() == s.height
    assert counts["tags"] == pl.read_parquet(run / "04_tags/tags.parquet").height
    compressed = dict(
        pl.read_parquet(run / "01_compress/compressed.parquet").select("user_id", "text").iter_rows()
    )
    targets = pl.read_parquet(run / "00_split/users.parquet").select("user_id", "target_item_id").iter_rows()
    titles = dict(opened.dataset.items.select("item_id", "title").iter_rows())
    held = {u: titles[t] for u, t in targets if t}
    for u, ctx in s.filter(pl.col("task") == "interests").select("user_id", "context").iter_rows():
        assert compressed[u][-60:] in ctx  # the end of the stored B_u (the judge shows its tail)
        assert held[u].lower() not in ctx.lower()
    assert opened.llm_spec == "fake"
    opened.close()


def test_the_judge_never_imports_the_pipeline() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "recgpt" / "judge"
    offenders = [p.name for p in root.rglob("*.py") if "recgpt.pipeline" in p.read_text()]
    assert offenders == []
