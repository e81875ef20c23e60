"""One exit code per error class, for every `recgpt` command.

Commands raise the package's own exceptions and this wrapper turns them into one printed line and an
exit status, so a `DataError` is exit 2 in `data import`, `evaluate`, `run` and `train` alike:

| exit | error classes (and their subclasses) | printed as |
| --- | --- | --- |
| 2 | bad input: `DataError`, `FolderError`, `PreflightError`, `SampleError`, `LabelError`, `SettingsError`, `BackendUnavailable`, `RunNotFinished`, usage errors | `error: ...` |
| 3 | `LeakageError`: a prompt would have named a held-out item | `leakage: ...` |
| 4 | `FolderBusy`: another process holds the folder | `busy: ...` |
| 5 | `StageFailed`: an LLM stage's answers cannot be trusted (backend down, too much fallback) | `stage failed: ...` |

Anything else is a bug and keeps its traceback. Classes are matched by name among the `recgpt`
classes of the exception's MRO, so this module imports none of them (`recgpt --help` stays fast and
torch-free) and keeps working when a class moves between modules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

EXIT_BAD_INPUT = 2
EXIT_LEAKAGE = 3
EXIT_BUSY = 4
EXIT_STAGE_FAILED = 5

# (class name, exit status, label), most specific first: FolderBusy is a FolderError
ERROR_CLASSES: tuple[tuple[str, int, str], ...] = (
    ("FolderBusy", EXIT_BUSY, "busy"),
    ("LeakageError", EXIT_LEAKAGE, "leakage"),
    ("StageFailed", EXIT_STAGE_FAILED, "stage failed"),
    ("DataError", EXIT_BAD_INPUT, "error"),
    ("FolderError", EXIT_BAD_INPUT, "error"),
    ("PreflightError", EXIT_BAD_INPUT, "error"),
    ("SampleError", EXIT_BAD_INPUT, "bad samples"),
    ("LabelError", EXIT_BAD_INPUT, "error"),
    ("SettingsError", EXIT_BAD_INPUT, "error"),
    ("BackendUnavailable", EXIT_BAD_INPUT, "error"),
    ("RunNotFinished", EXIT_BAD_INPUT, "error"),
)

F = TypeVar("F", bound=Callable[..., Any])


def classify(exc: BaseException, bad_input: tuple[type[BaseException], ...] = ()) -> tuple[int, str] | None:
    """(exit status, label) of an exception, or None for a bug (an unexpected exception)."""
    names = {c.__name__ for c in type(exc).__mro__ if c.__module__.startswith("recgpt.")}
    for name, code, label in ERROR_CLASSES:
        if name in names:
            return code, label
    if bad_input and isinstance(exc, bad_input):
        return EXIT_BAD_INPUT, "error"
    return None


def fail(label: str, message: str, code: int) -> typer.Exit:
    """Print `label: message` on one line (never wrapped: logs are grepped) and return the Exit to raise."""
    Console(soft_wrap=True, highlight=False).print(f"[bold red]{escape(label)}:[/bold red] {escape(message)}")
    return typer.Exit(code)


def cli_errors(*bad_input: type[BaseException]) -> Callable[[F], F]:
    """Decorate a command: the package's errors (and `bad_input`, e.g. ValueError) become exit codes.

    `bad_input` names the extra exception types that, in this command, can only come from what the
    user gave (e.g. `FileNotFoundError` for a path option); they exit 2 like a `DataError`.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, typer.TyperException):  # usage errors and exits: typer's own
                raise
            except Exception as exc:
                found = classify(exc, bad_input)
                if found is None:
                    raise
                code, label = found
                raise fail(label, str(exc), code) from exc

        return run  # type: ignore[return-value]

    return wrap


__all__ = [
    "ERROR_CLASSES",
    "EXIT_BAD_INPUT",
    "EXIT_BUSY",
    "EXIT_LEAKAGE",
    "EXIT_STAGE_FAILED",
    "classify",
    "cli_errors",
    "fail",
]
