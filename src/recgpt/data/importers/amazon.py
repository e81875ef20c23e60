"""UniSRec-format Amazon folders (`<P>.text`, `<P>.item2index`, `<P>.user2index`, `<P>.{train,valid,test}.inter`).

Sequences: UniSRec stores, per user, one train row per prefix (history truncated to the last 50
items, written longest first), then one valid row and one test row. We rebuild each user's **full**
ordered sequence by chaining the prefixes, checking that every row agrees with the sequence built so
far (a mismatch is a `DataError` naming the row), then append the valid and the test target.

Behaviour: every interaction is an Amazon review, and a review implies a purchase, so the events are
`review` events (`value` null: UniSRec keeps neither stars nor review text).

Timestamps: the files hold only the order. We synthesize `SYNTH_EPOCH + position * 1 day` per user,
so the order is exact but wall-clock time is not: cross-user comparisons (global time cut-off
splits) are meaningless; the manifest says `synthetic_timestamps = true`.

Text: each `.text` row is `title. category words. brand. ` (UniSRec joined the fields with ". ").
Titles and brands may themselves contain ". ", so we anchor on the category path, which always
starts with the shared top level "Industrial & Scientific" (or is empty, giving ". . "). Rows
without either anchor fall back to "the last two parts are category / brand" and are counted as
ambiguous in the manifest. UniSRec flattened the category *path* into words, so its level
boundaries are lost (a word trie splits "Lab & Scientific Products Lab Instruments" wrongly); we
therefore store `categories = [the flattened path without the shared top level]`, a single
leaf-level category string, and keep the raw text as attribute `unisrec_text`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import polars as pl

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.errors import DataError
from recgpt.data.importers._io import LINE, as_str, attributes, check_unique, read_delimited, with_time_range
from recgpt.data.schema import Behavior

TOP_LEVEL = "Industrial & Scientific"
SYNTH_EPOCH = 946_684_800  # 2000-01-01T00:00:00Z, an obviously artificial origin
DAY = 86_400


def detect_prefix(src: Path) -> str:
    """The single `<prefix>.text` in `src`; several or none is an error that lists what was found."""
    found = sorted(p.name.removesuffix(".text") for p in Path(src).glob("*.text"))
    if len(found) != 1:
        what = f"several: {found}" if found else "none"
        raise DataError(
            f"need exactly one '<prefix>.text' file ({what}); pass --prefix", file=src, field="prefix"
        )
    return found[0]


def split_text(text: str, top_level: str = TOP_LEVEL) -> tuple[str, str, str | None, bool]:
    """`title. category words. brand. ` -> (title, category words, brand, ambiguous)."""
    body = text.strip()
    body = body[:-1] if body.endswith(".") else body
    anchor = body.rfind(". " + top_level)
    if anchor >= 0 or body.startswith(top_level):
        title = body[:anchor] if anchor >= 0 else ""
        rest = body[anchor + 2 :] if anchor >= 0 else body
        cat, _, brand = rest.partition(". ")
        return title, cat, brand or None, False
    empty_cat = body.rfind(". . ")
    if empty_cat >= 0:
        return body[:empty_cat], "", body[empty_cat + 4 :] or None, False
    if body.endswith(". ."):  # title, empty category, no brand
        return body[:-3], "", None, False
    parts = body.split(". ")
    if len(parts) >= 3:
        return ". ".join(parts[:-2]), parts[-2], parts[-1], True
    return parts[0], "", (parts[1] if len(parts) == 2 else None), True


def _read_index(path: Path, key: str) -> dict[int, str]:
    """`<id>\t<index>` rows -> {index: id}; duplicate ids or indices are errors."""
    df = read_delimited(path, sep="\t", names=[key, "index"], quoting=False)
    check_unique(df.with_columns(as_str(df, key, path, required=True)), key, path)
    idx = df["index"].str.strip_chars().cast(pl.Int64(), strict=False)
    bad = idx.is_null()
    if bad.any():
        i = int(bad.arg_max())  # type: ignore[arg-type]
        raise DataError(
            f"cannot read {df['index'][i]!r} as an integer", file=path, line=int(df[LINE][i]), field="index"
        )
    check_unique(df.with_columns(idx), "index", path)
    return dict(zip(idx.to_list(), df[key].to_list(), strict=True))


def _ints(value: str, path: Path, line: int, field: str) -> list[int]:
    try:
        return [int(x) for x in value.split()]
    except ValueError:
        raise DataError(
            f"expected integer indices, found {value!r}", file=path, line=line, field=field
        ) from None


def _read_inter(path: Path) -> list[tuple[int, int, list[int], int]]:
    """`.inter` rows as (line, user index, history indices, target index)."""
    cols = ("user_id:token", "item_id_list:token_seq", "item_id:token")
    df = read_delimited(path, sep="\t", quoting=False, required=cols)
    rows = []
    for line, *values in zip(df[LINE], *(df[c] for c in cols), strict=True):
        u, hist, target = (_ints(v, path, line, c) for v, c in zip(values, cols, strict=True))
        for v, c in ((u, cols[0]), (target, cols[2])):
            if len(v) != 1:
                raise DataError(f"expected one integer index, found {len(v)}", file=path, line=line, field=c)
        rows.append((line, u[0], hist, target[0]))
    return rows


def rebuild_sequences(train: Path, valid: Path, test: Path) -> dict[int, list[int]]:
    """Each user's full item-index sequence (train prefixes + valid target + test target), verified."""
    by_user: dict[int, list[tuple[int, list[int], int]]] = defaultdict(list)
    train_rows = _read_inter(train)
    for line, u, hist, t in train_rows:
        by_user[u].append((line, hist, t))
    tail: dict[Path, dict[int, tuple[int, list[int], int]]] = {}
    for f in (valid, test):
        tail[f] = {}
        for line, u, hist, t in _read_inter(f):
            if u in tail[f]:
                raise DataError(
                    f"user index {u} has a second row (first on line {tail[f][u][0]})",
                    file=f,
                    line=line,
                    field="user_id:token",
                )
            tail[f][u] = (line, hist, t)
    all_rows = [r[2] for r in train_rows] + [r[1] for f in tail for r in tail[f].values()]
    max_len = max((len(h) for h in all_rows), default=0)
    seqs: dict[int, list[int]] = {}
    for u in sorted(set(by_user) | set(tail[valid]) | set(tail[test])):
        rows = by_user.get(u, [])
        if len(rows) > 1 and len(rows[0][1]) > len(rows[-1][1]):
            rows = rows[::-1]  # UniSRec writes the longest prefix first
        chain = [(train, r) for r in rows]
        for f in (valid, test):
            if u not in tail[f]:
                raise DataError(f"user index {u} has no row in this file", file=f, field="user_id:token")
            chain.append((f, tail[f][u]))
        seq: list[int] = list(chain[0][1][1])
        for f, (line, hist, target) in chain:
            expected = seq[-max_len:] if max_len else []
            if hist != expected:
                raise DataError(
                    f"user index {u}: history {hist[-5:]}... disagrees with the sequence rebuilt from the "
                    f"earlier prefixes ({expected[-5:]}...)",
                    file=f,
                    line=line,
                    field="item_id_list:token_seq",
                )
            seq.append(target)
        seqs[u] = seq
    return seqs


def import_unisrec(
    src: Path, *, name: str | None = None, prefix: str | None = None, top_level: str = TOP_LEVEL
) -> Dataset:
    """A UniSRec-format folder (default: the Amazon *Scientific* release) -> a Dataset."""
    src = Path(src)
    prefix = prefix or detect_prefix(src)
    f = {
        k: src / f"{prefix}.{k}"
        for k in ("text", "item2index", "user2index", "train.inter", "valid.inter", "test.inter")
    }

    raw = read_delimited(f["text"], sep="\t", quoting=False, required=("item_id:token", "text:token_seq"))
    raw = raw.with_columns(as_str(raw, "item_id:token", f["text"], required=True))
    check_unique(raw, "item_id:token", f["text"])
    parsed = [split_text(t, top_level) for t in raw["text:token_seq"].fill_null("").to_list()]
    cats = [c.removeprefix(top_level).strip() for _, c, _, _ in parsed]
    items = pl.DataFrame(
        {
            "item_id": raw["item_id:token"],
            "title": [p[0].strip() or None for p in parsed],
            "categories": [[c] if c else [] for c in cats],
            "brand": [p[2] for p in parsed],
            "attributes": attributes(
                raw.with_columns(pl.col("text:token_seq").str.strip_chars()),
                {"unisrec_text": "text:token_seq"},
            ),
            LINE: raw[LINE],
        },
        schema_overrides={"categories": pl.List(pl.String())},
    )
    # UniSRec blanks any field over 2,000 characters, so a title can be empty: fall back to the raw text
    items = items.with_columns(pl.col("title").fill_null(raw["text:token_seq"].str.strip_chars()))
    naive_clean = sum(
        len(t.strip().removesuffix(".").split(". ")) == 3 for t in raw["text:token_seq"].fill_null("")
    )
    ambiguous = sum(p[3] for p in parsed)

    item_of = _read_index(f["item2index"], "item_id")
    user_of = _read_index(f["user2index"], "user_id")
    known = set(items["item_id"].to_list())
    for index, asin in item_of.items():
        if asin not in known:
            raise DataError(
                f"item {asin!r} (index {index}) has no row in {f['text'].name}",
                file=f["item2index"],
                field="item_id",
            )

    seqs = rebuild_sequences(f["train.inter"], f["valid.inter"], f["test.inter"])
    for u, seq in seqs.items():
        if u not in user_of:
            raise DataError(
                f"user index {u} is not in {f['user2index'].name}",
                file=f["test.inter"],
                field="user_id:token",
            )
        unknown = [i for i in seq if i not in item_of]
        if unknown:
            raise DataError(
                f"item index {unknown[0]} of user index {u} is not in {f['item2index'].name}",
                file=f["test.inter"],
                field="item_id:token",
            )
    users = pl.DataFrame({"user_id": [user_of[u] for u in sorted(user_of)]})
    missing = set(user_of) - set(seqs)
    if missing:
        raise DataError(
            f"{len(missing)} users have no interactions, e.g. index {min(missing)}",
            file=f["user2index"],
            field="user_id",
        )

    user_col, item_col, ts_col = [], [], []
    for u in sorted(seqs):
        seq = seqs[u]
        user_col += [user_of[u]] * len(seq)
        item_col += [item_of[i] for i in seq]
        ts_col += [SYNTH_EPOCH + k * DAY for k in range(len(seq))]
    events = pl.DataFrame(
        {
            "event_id": pl.int_range(0, len(user_col), dtype=pl.Int64(), eager=True),
            "user_id": user_col,
            "item_id": item_col,
            "behavior": [Behavior.REVIEW.value] * len(user_col),
            "timestamp": ts_col,
        }
    )

    manifest = Manifest(
        name=name or f"amazon-{prefix.lower()}",
        source=f"Amazon Review Data 2018, UniSRec processing ({prefix}): {src}",
        synthetic_timestamps=True,
        notes=[
            "No timestamps in the source: timestamp = 2000-01-01 + (position in the user's sequence) days. "
            "Per-user order is exact; cross-user time (global cut-off splits) is meaningless.",
            "Each interaction is an Amazon review, which implies a purchase -> behavior 'review', value null.",
            "Sequences rebuilt from train prefixes + valid target + test target, each prefix verified.",
            f"categories = [the flattened category path minus the top level {top_level!r}] (UniSRec lost the "
            "level boundaries); attributes.unisrec_text = the raw UniSRec text.",
        ],
        extra={
            "format": "unisrec",
            "prefix": prefix,
            "category_structure": "path",  # one flattened leaf string: a path of depth 1
            "text_split": {
                "rows": raw.height,
                "naive_three_parts": naive_clean,
                "ambiguous": ambiguous,
                "empty_category": sum(not c for c in cats),
            },
            "max_sequence_length": max(len(s) for s in seqs.values()) if seqs else 0,
        },
    )
    ds = Dataset.build(
        items,
        users,
        events,
        manifest,
        source_files={"items": str(f["text"]), "users": str(f["user2index"]), "events": str(f["test.inter"])},
    )
    return with_time_range(ds)
