"""Count the recgpt files and functions a run crosses, from `run_pipeline` to the explanations table.

    PYTHONPATH=src:. python bench/trace_chain.py

Runs the scripted-LLM chain of the tests (`fast_config`, fake LLM, hash encoder) under `sys.setprofile`
and lists every distinct recgpt function called (module:function), grouped by file: the issue-11 measure
of how far one user's way from `recgpt run` to its explanation spreads over the code base.
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from tests.conftest import HashEncoder, fake_backend, fast_config, slice_dataset


def main() -> None:
    from recgpt.pipeline import run_pipeline

    calls: dict[str, set[str]] = defaultdict(set)
    src = str(Path(__import__("recgpt").__file__).parent)

    def prof(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            f = frame.f_code.co_filename
            if f.startswith(src) and not frame.f_code.co_name.startswith("<"):
                calls[f[len(src) + 1 :]].add(frame.f_code.co_name)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mls-slice"
        slice_dataset().save(data)
        cfg = fast_config(data, Path(tmp) / "runs")
        sys.setprofile(prof)
        try:
            run_pipeline(
                cfg,
                backend=fake_backend(),
                encoder=HashEncoder(),
                console=Console(quiet=True),
                progress=False,
                until="explanations",
            )
        finally:
            sys.setprofile(None)
    n = sum(len(v) for v in calls.values())
    for f in sorted(calls):
        print(f"{f}: {len(calls[f])}")
    print(f"{len(calls)} files, {n} functions")


if __name__ == "__main__":
    main()
