"""Token budget: count with the serving model's tokenizer, drop the oldest buckets on overflow.

The paper counts against a 128k context with an unnamed tokenizer and says nothing of the ~2% that
still overflow. Here the count uses the tokenizer of the model that will read the prompt (by default
the embedded SmolLM2 GGUF, loaded vocabulary-only: ~0.2 s, no weights), and the overflow policy is
"oldest first": whole time buckets are dropped from the oldest on until the text fits; if the most
recent bucket alone is still too long (a MovieLens user rating 500 movies in one evening), its oldest
events are dropped too. The budget covers the behaviour text only; the caller reserves room for the
rest of its prompt. `RegexTokenCounter` is a cheap, model-free stand-in for tests.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recgpt.behavior.sequence import BehaviorSequence


@runtime_checkable
class TokenCounter(Protocol):
    """Anything that says how many tokens a text costs for one model."""

    name: str

    def count(self, text: str) -> int:
        """Number of tokens of `text` (no special tokens added)."""
        ...


class RegexTokenCounter:
    """Words and single punctuation marks: a rough, model-free count (BPE gives ~1.1-1.5x more)."""

    name = "regex"
    _TOKEN = re.compile(r"\w+|[^\w\s]")

    def count(self, text: str) -> int:
        """Number of word / punctuation tokens."""
        return len(self._TOKEN.findall(text))


class LlamaTokenCounter:
    """The exact tokenizer of a GGUF model via llama-cpp-python, vocabulary only (no weights loaded)."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise ImportError(
                "counting with a GGUF tokenizer needs llama-cpp-python: pip install 'recgpt[llm]'"
            ) from e
        if model_path is None:
            from recgpt.llm.models import default_model_path

            model_path = default_model_path()
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        self.model_path = path
        self.name = f"gguf:{path.name}"
        with _quiet():
            self._llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        ctx = self._llm.metadata.get(
            f"{self._llm.metadata.get('general.architecture', 'llama')}.context_length"
        )
        self.context_length = int(ctx) if ctx else None

    def count(self, text: str) -> int:
        """Number of tokens of `text` (no BOS, special-token text counted as plain text)."""
        if not text:
            return 0
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence llama.cpp's C-level loader warnings (the vocab-only context has no n_ctx_train)."""
    try:
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:  # private helper; only cosmetics depend on it
        yield
        return
    with suppress_stdout_stderr(disable=False):
        yield


def make_counter(spec: str = "smollm2") -> TokenCounter:
    """`smollm2` (the embedded model's tokenizer), `regex`, or a path to any `.gguf` file."""
    if spec == "regex":
        return RegexTokenCounter()
    if spec in ("smollm2", "llamacpp", "default"):
        return LlamaTokenCounter()
    path = spec.removeprefix("llamacpp:").removeprefix("gguf:")
    if path.endswith(".gguf"):
        return LlamaTokenCounter(path)
    raise ValueError(f"unknown tokenizer {spec!r}; use 'smollm2', 'regex' or a path to a .gguf file")


@dataclass
class Fitted:
    """A compressed history cut to a budget, and what the cut removed."""

    lines: list[str]
    tokens: int  # of the kept text
    full_tokens: int  # of the whole compressed history, before any cut
    dropped_buckets: list[str] = field(default_factory=list)  # whole buckets removed, oldest first
    dropped_events: int = 0  # reliable events removed (whole buckets and a partly cut one)

    @property
    def text(self) -> str:
        """The lines joined by newlines: what goes into the prompt."""
        return "\n".join(self.lines)


def fit_to_budget(
    seq: BehaviorSequence,
    text_of: Callable[[str], str],
    counter: TokenCounter,
    budget: int,
    item_sep: str = ", ",
) -> Fitted:
    """Render `seq`, dropping the oldest buckets (then the oldest events of the last one) until it fits.

    Dropping older events never lengthens the text (lines only vanish, shrink or merge), so the
    smallest cut that fits is found by binary search over the candidate cut points.
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    n = len(seq.entries)

    def measure(cut: int) -> tuple[list[str], int]:
        lines = seq.render(text_of, start=cut, item_sep=item_sep)
        return lines, counter.count("\n".join(lines))

    lines, full = measure(0)
    if full <= budget or n == 0:
        return Fitted(lines=lines, tokens=full, full_tokens=full)
    last = seq.bucket_start[-1]
    cuts = [*seq.bucket_start[1:], *range(last + 1, n + 1)]
    lo, hi = 0, len(cuts) - 1  # cuts[hi] == n renders nothing, which always fits
    best: tuple[int, list[str], int] = (n, [], 0)
    while lo <= hi:
        mid = (lo + hi) // 2
        got, tokens = measure(cuts[mid])
        if tokens <= budget:
            best, hi = (cuts[mid], got, tokens), mid - 1
        else:
            lo = mid + 1
    cut, lines, tokens = best
    ends = [*seq.bucket_start[1:], n]
    dropped = [b for b, end in zip(seq.buckets, ends, strict=True) if end <= cut]
    return Fitted(lines=lines, tokens=tokens, full_tokens=full, dropped_buckets=dropped, dropped_events=cut)
