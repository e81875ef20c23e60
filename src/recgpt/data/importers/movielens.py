"""MovieLens importers: the 100K release (`u.*` files) and the "latest small" CSV release.

Ratings become `rating` events with `value` = the stars; ml-latest-small's free-text tags become
`tag` events (the tag in `text`, the tagged movie in `item_id`). Genres go into `categories` as a
multi-label list of genre names (MovieLens has no category path). Titles keep the "(year)" suffix.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recgpt.data.dataset import Dataset, Manifest
from recgpt.data.errors import DataError
from recgpt.data.importers._io import (
    LINE,
    as_list,
    as_number,
    as_str,
    as_timestamp,
    attributes,
    check_known,
    check_unique,
    read_delimited,
    require_file,
    with_time_range,
)
from recgpt.data.schema import Behavior

NO_GENRES = "(no genres listed)"
RATING_NOTE = "MovieLens ratings -> behavior 'rating', value = stars; no implicit purchase/click is invented."


def _events(
    df: pl.DataFrame,
    file: Path,
    behavior: str,
    *,
    user: str,
    item: str,
    value: str | None = None,
    text: str | None = None,
) -> pl.DataFrame:
    """One file's events in contract columns (event_id is assigned once all files are read)."""
    return pl.DataFrame(
        {
            "user_id": as_str(df, user, file, required=True),
            "item_id": as_str(df, item, file, required=True),
            "behavior": pl.Series([behavior] * df.height, dtype=pl.String()),
            "timestamp": as_timestamp(df, "timestamp", file, "epoch_s"),
            "value": as_number(df, value, file, pl.Float64(), required=True) if value else None,
            "text": as_str(df, text, file) if text else None,
            LINE: df[LINE],
        }
    ).with_columns(pl.col("value").cast(pl.Float64()), pl.col("text").cast(pl.String()))


def _with_event_ids(*frames: pl.DataFrame) -> pl.DataFrame:
    events = pl.concat(frames, how="vertical")
    return events.with_columns(pl.int_range(0, events.height, dtype=pl.Int64()).alias("event_id"))


def import_movielens_100k(src: Path, *, name: str | None = None, encoding: str = "latin-1") -> Dataset:
    """`u.data` (tab: user, item, rating, ts), latin-1 `u.item` + `u.genre`, `u.user` -> a Dataset."""
    src = Path(src)
    f_genre, f_item, f_user, f_data = (
        require_file(src / n) for n in ("u.genre", "u.item", "u.user", "u.data")
    )

    genre_df = read_delimited(f_genre, sep="|", names=["genre", "index"], quoting=False, encoding=encoding)
    idx = as_number(genre_df, "index", f_genre, pl.Int64(), required=True)
    genres = [g for _, g in sorted(zip(idx.to_list(), genre_df["genre"].to_list(), strict=True))]
    if sorted(idx.to_list()) != list(range(len(genres))):
        raise DataError("genre indices must be 0..n-1", file=f_genre, field="index")

    base = ["movie_id", "title", "release_date", "video_release_date", "imdb_url"]
    raw = read_delimited(f_item, sep="|", names=base + genres, quoting=False, encoding=encoding)
    for g in genres:
        flag = as_number(raw, g, f_item, pl.Int8(), required=True)
        if not flag.is_in([0, 1]).all():
            raise DataError(
                f"genre flag must be 0 or 1, found {flag.filter(~flag.is_in([0, 1]))[0]}",
                file=f_item,
                line=int(raw[LINE].filter(~flag.is_in([0, 1]))[0]),
                field=g,
            )
    items = pl.DataFrame(
        {
            "item_id": as_str(raw, "movie_id", f_item, required=True),
            "title": as_str(raw, "title", f_item, required=True),
            "categories": raw.select(
                pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in genres]).list.drop_nulls()
            ).to_series(),
            "attributes": attributes(raw, {c: c for c in base[2:]}),
            LINE: raw[LINE],
        }
    )
    check_unique(items, "item_id", f_item, field="movie_id")

    raw = read_delimited(
        f_user,
        sep="|",
        names=["user_id", "age", "gender", "occupation", "zip"],
        quoting=False,
        encoding=encoding,
    )
    users = pl.DataFrame(
        {
            "user_id": as_str(raw, "user_id", f_user, required=True),
            "age": as_number(raw, "age", f_user, pl.Int32()),
            "gender": as_str(raw, "gender", f_user),
            "occupation": as_str(raw, "occupation", f_user),
            "location": as_str(raw, "zip", f_user),
            LINE: raw[LINE],
        }
    )
    check_unique(users, "user_id", f_user)

    raw = read_delimited(
        f_data,
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        quoting=False,
        encoding=encoding,
    )
    events = _with_event_ids(
        _events(raw, f_data, Behavior.RATING, user="user_id", item="item_id", value="rating")
    )
    check_known(events, "item_id", items["item_id"], f_data, what="item (not in u.item)")
    check_known(events, "user_id", users["user_id"], f_data, what="user (not in u.user)")

    manifest = Manifest(
        name=name or "ml-100k",
        source=f"MovieLens 100K (GroupLens): {src}",
        notes=[
            RATING_NOTE + " Scale 1-5.",
            "categories = genre names from the 19 u.item flags (multi-label, in u.genre order).",
        ],
        extra={"format": "movielens-100k", "category_structure": "set"},
    )
    ds = Dataset.build(
        items,
        users,
        events,
        manifest,
        source_files={"items": str(f_item), "users": str(f_user), "events": str(f_data)},
    )
    return with_time_range(ds)


def import_movielens_latest_small(src: Path, *, name: str | None = None, encoding: str = "utf-8") -> Dataset:
    """`ratings.csv` + `tags.csv` events, `movies.csv` (+ optional `links.csv`) items -> a Dataset."""
    src = Path(src)
    f_movies, f_ratings = require_file(src / "movies.csv"), require_file(src / "ratings.csv")
    f_tags, f_links = src / "tags.csv", src / "links.csv"

    raw = read_delimited(f_movies, sep=",", encoding=encoding, required=("movieId", "title", "genres"))
    genres = as_list(raw, "genres", f_movies, "|").list.eval(pl.element().filter(pl.element() != NO_GENRES))
    items = pl.DataFrame(
        {
            "item_id": as_str(raw, "movieId", f_movies, required=True),
            "title": as_str(raw, "title", f_movies, required=True),
            "categories": genres,
            LINE: raw[LINE],
        }
    )
    check_unique(items, "item_id", f_movies, field="movieId")
    if f_links.is_file():
        links = read_delimited(f_links, sep=",", encoding=encoding, required=("movieId", "imdbId", "tmdbId"))
        links = links.with_columns(as_str(links, "movieId", f_links, required=True).alias("item_id"))
        check_unique(links, "item_id", f_links, field="movieId")
        check_known(
            links, "item_id", items["item_id"], f_links, field="movieId", what="movie (not in movies.csv)"
        )
        attrs = links.select("item_id", attributes(links, {"imdb_id": "imdbId", "tmdb_id": "tmdbId"}))
        items = items.join(attrs, on="item_id", how="left", maintain_order="left")

    frames = []
    for f, behavior, text in ((f_ratings, Behavior.RATING, None), (f_tags, Behavior.TAG, "tag")):
        if not f.is_file():  # tags.csv is optional
            continue
        cols = ("userId", "movieId", text or "rating", "timestamp")
        raw = read_delimited(f, sep=",", encoding=encoding, required=cols)
        ev = _events(
            raw, f, behavior, user="userId", item="movieId", value=None if text else "rating", text=text
        )
        check_known(ev, "item_id", items["item_id"], f, field="movieId", what="movie (not in movies.csv)")
        frames.append(ev)
    events = _with_event_ids(*frames)

    ids = events["user_id"].unique()
    users = pl.DataFrame({"user_id": ids}).sort(
        pl.col("user_id").cast(pl.Int64(), strict=False), pl.col("user_id"), nulls_last=True
    )

    manifest = Manifest(
        name=name or "ml-latest-small",
        source=f"MovieLens latest-small (GroupLens): {src}",
        notes=[
            RATING_NOTE + " Scale 0.5-5.",
            "tags.csv rows -> behavior 'tag', the tag in `text`; event_id numbers ratings.csv rows first, "
            "then tags.csv rows, each in file order.",
            f"categories = the '|'-separated genres; {NO_GENRES!r} -> [].",
            "users = the distinct userIds of ratings.csv and tags.csv (no user attributes exist).",
        ],
        extra={"format": "movielens-latest-small", "category_structure": "set"},
    )
    ds = Dataset.build(
        items,
        users,
        events,
        manifest,
        source_files={"items": str(f_movies), "events": f"{f_ratings} + {f_tags.name}"},
    )
    return with_time_range(ds)
