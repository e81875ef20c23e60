"""Fault-injection suite (issue: nothing lost, nothing leaked): each file tries one family of faults
on small data built by the tests and asserts what the user gets: a clear error, nothing lost, nothing leaked."""

import sys


def serve_argv(port: int, *extra: str) -> list[str]:
    """`recgpt llm serve --port PORT ...` as a subprocess command line (this interpreter, this checkout)."""
    return [
        sys.executable,
        "-c",
        "from recgpt.cli.app import main; main()",
        "llm",
        "serve",
        "--port",
        str(port),
        *extra,
    ]
