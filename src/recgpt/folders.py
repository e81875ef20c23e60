"""Run and results folders built from untrusted names: slug them, confine writes to a root, lock them.

A dataset's manifest `name` (or `--name`) becomes a folder under `--runs-dir` or `results/`. A
hostile or careless name (`../../x`, `/abs/dir`) must never make recgpt write, overwrite or delete
outside that root, and two processes must never interleave their writes in one folder:

* `slug(name)`: one path component. Keeps `[A-Za-z0-9._-]`, collapses every other run of
  characters to `-`, drops leading dots and dashes (no `..`, no hidden folders), caps the length.
* `inside(root, path)`: `path` resolved (symlinks followed) must lie inside `root` resolved, else
  `PathEscape`. Every folder recgpt deletes or writes from an untrusted name goes through it.
* `FolderLock`: an exclusive, non-blocking `filelock` lock on `<folder>/.lock` for the whole run;
  a sidecar `.lock.holder.json` names the holder (pid, host, start time, command). The lock is an
  OS file lock (fcntl), so a holder killed with -9 releases it; its stale sidecar is overwritten.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from recgpt.data.atomic import write_json_atomic

SLUG_MAX = 100
LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.holder.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FolderError(ValueError):
    """A run or results folder cannot be used (bad name, path escape, or held by another process)."""


class PathEscape(FolderError):
    """A path built from an untrusted name resolves outside its root."""


class FolderBusy(FolderError):
    """Another process holds the folder's lock."""


def slug(name: str) -> str:
    """`name` as one safe path component: `../../x y` -> `x-y`, `/tmp/abs` -> `tmp-abs`.

    Raises `FolderError` when nothing usable is left (e.g. `..` or `///`).
    """
    out = _UNSAFE.sub("-", str(name)).lstrip(".-")[:SLUG_MAX].rstrip("-")
    if not out:
        raise FolderError(
            f"name {name!r} has no usable characters for a folder name (allowed: A-Z a-z 0-9 . _ -)"
        )
    return out


def inside(root: Path, path: Path) -> Path:
    """`path`, after checking that it resolves inside `root` (symlinks followed); else `PathEscape`."""
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target != base and not target.is_relative_to(base):
        raise PathEscape(
            f"{path} resolves to {target}, outside its root {base}; refusing to write or delete there"
        )
    return Path(path)


def _holder_text(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {when}: {info.get('command', '?')}"
    )


class FolderLock:
    """Exclusive lock on a folder for one process; acquiring a held lock fails at once with `FolderBusy`.

    Use as a context manager or with `acquire()` / `release()`.
    """

    def __init__(self, folder: Path, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._lock = FileLock(str(self.folder / LOCK_NAME), timeout=0)
        self._holder = self.folder / HOLDER_NAME

    def holder(self) -> dict[str, Any] | None:
        """What the holder wrote beside the lock (None when unreadable)."""
        try:
            info = json.loads(self._holder.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def acquire(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:  # a TimeoutError, so an OSError: first
            info = self.holder()
            who = _holder_text(info) if info else "another process (holder unknown)"
            raise FolderBusy(
                f"{self.what} {self.folder} is in use by {who}; wait for it to finish or use another folder"
            ) from None
        except OSError as e:
            raise FolderError(f"cannot use {self.what} {self.folder}: {e.strerror or e}") from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv),
        }
        write_json_atomic(self._holder, info)  # a temp the next run's clean-up recognises
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._holder.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["FolderBusy", "FolderError", "FolderLock", "PathEscape", "inside", "slug"]
