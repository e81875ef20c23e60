"""Atomic writes (temp sibling, then rename) and the clean-up of temps a killed writer left behind.

Every temp is named `.tmp-recgpt-<pid>-<token>.<target name>` so that `clean_stale_temps` can tell
one of ours from a user's file and knows which process owns it. Files and folders are created with
mode 0o666 / 0o777 and the process umask applied by the OS (like `open()` and `mkdir`), never the
0o600 / 0o700 of `tempfile.mkstemp` / `mkdtemp`: outputs get the same mode as any file the user makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

TEMP_PREFIX = ".tmp-recgpt-"
OLD_TAG = "old"  # `.tmp-recgpt-<pid>-<token>-old.<name>`: the previous version during a folder swap
STALE_AFTER_S = 3600.0  # a temp untouched this long is stale even if its pid is (re)used by a live process
_TEMP_RE = re.compile(r"^\.tmp-recgpt-(?P<pid>\d+)-(?P<token>[0-9a-f]+)(?P<old>-old)?\.(?P<name>.+)$")


def temp_sibling(target: Path, *, old: bool = False) -> Path:
    """A fresh recognisable temp path next to `target` (same folder, so the final rename is atomic)."""
    tag = f"-{OLD_TAG}" if old else ""
    return target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{tag}.{target.name}")


def is_temp(path: Path) -> bool:
    """True for a name made by `temp_sibling`."""
    return _TEMP_RE.match(path.name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """Latest mtime in a temp file / folder: a folder still being filled keeps getting newer files."""
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return time.time()
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, sub.lstat().st_mtime)
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(
    folder: str | Path, *, recursive: bool = False, max_age_s: float = STALE_AFTER_S
) -> list[Path]:
    """Remove temps whose writer is gone (pid not alive) or that are older than `max_age_s`; return them.

    A temp of this process or of another live process that is still fresh is left alone. A stale
    `-old` folder whose target is missing (a kill between the two renames of a folder swap) is
    renamed back to the target instead of being deleted, so the previous version is never lost.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed: list[Path] = []
    entries = folder.rglob(f"{TEMP_PREFIX}*") if recursive else folder.glob(f"{TEMP_PREFIX}*")
    for path in sorted(entries, key=lambda p: len(p.parts)):
        m = _TEMP_RE.match(path.name)
        if m is None or any(is_temp(Path(p)) for p in path.relative_to(folder).parts[:-1]):
            continue  # not ours, or inside a temp folder that is handled as a whole
        pid = int(m["pid"])
        live = pid == os.getpid() or _pid_alive(pid)
        if live and now - _newest_mtime(path) < max_age_s:
            continue
        target = path.with_name(m["name"])
        if m["old"] and not target.exists() and not target.is_symlink():
            with contextlib.suppress(OSError):  # if even this fails, keep it: it may be the only copy
                os.replace(path, target)
            continue
        _remove(path)
        removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------ writes
@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Any]:
    """A binary file object on a temp sibling; on success it is synced and renamed onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    path = Path(path)
    with _atomic_file(path) as f:
        f.write(data)
    return path


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (no newline translation)."""
    return write_bytes_atomic(path, text.encode(encoding))


def jsonable(o: Any) -> Any:
    """`json.dump` default: numpy scalars / arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: str | Path, payload: Any, *, default: Callable[[Any], Any] = jsonable) -> Path:
    """Write `payload` as indented JSON via a temp file + rename, so a crash never leaves half a file."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=default) + "\n")


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    """Write `df` as Parquet next to the target and rename, so readers never see half a file."""
    path = Path(path)
    with _atomic_file(path) as f:
        df.write_parquet(f)
    return path


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temp folder to fill; on success it replaces `out` (a folder or nothing) by renames.

    Whatever `out` was is kept under a recognisable `-old` temp name until the new folder is in place,
    so a kill between the two renames loses nothing: `clean_stale_temps` renames it back.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    os.mkdir(tmp, 0o777)  # the umask applies, as for mkdir
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            old = temp_sibling(out, old=True)
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


__all__ = [
    "TEMP_PREFIX",
    "atomic_dir",
    "clean_stale_temps",
    "is_temp",
    "jsonable",
    "temp_sibling",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_text_atomic",
]
