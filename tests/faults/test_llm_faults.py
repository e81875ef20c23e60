"""LLM faults (issue 10, items 3-5): a down backend fails the stage loudly and a rerun sends only what
failed; too much fallback fails the stage with a clear message; the fallback share is always shown;
a truncated answer gets a larger budget; a killed LLM stage loses no finished answer."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from recgpt.llm.backends.fake import FakeBackend, FakeBackendCrash
from recgpt.llm.cache import LLMCache
from recgpt.llm.engine import LLMEngine
from recgpt.llm.types import GenerationInput, GenerationOutput
from recgpt.pipeline import run as pipeline_run
from recgpt.pipeline.config import RunConfig
from recgpt.pipeline.stages import StageFailed
from tests.conftest import HashEncoder, echo, fake_answer, fast_config, item_of, req, slice_dataset

QUIET = Console(quiet=True)
LIMIT_HINT = "--set llm.max_fallback_share="


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mls-slice"
    slice_dataset().save(path)
    return path


def _run(cfg: RunConfig, backend: Any, until: str | None = None) -> pipeline_run.RunSummary:
    return pipeline_run.run_pipeline(
        cfg, backend=backend, encoder=HashEncoder(), console=QUIET, progress=False, until=until
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: connections are refused


def _interest_prompts(backend: FakeBackend) -> list[str]:
    return [
        i.messages[-1].content
        for i in backend.inputs
        if "interests" in (i.json_schema or {}).get("properties", {})
    ]


def test_backend_down_exits_non_zero_leaves_no_marker_and_rerun_sends_the_requests(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = fast_config(data, tmp_path / "runs")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.model_dump(mode="json", exclude={"llm"})))
    # the real OpenAI-compatible backend against a closed loopback port; the test encoder replaces the embedder
    monkeypatch.setattr(
        pipeline_run, "run_pipeline", functools.partial(pipeline_run.run_pipeline, encoder=HashEncoder())
    )
    from recgpt.cli.app import app

    spec = f"openai:m@http://127.0.0.1:{_closed_port()}/v1"
    r = CliRunner().invoke(
        app,
        [
            "run",
            "--config",
            str(tmp_path / "cfg.json"),
            "--llm",
            spec,
            "--no-progress",
            "--set",
            "llm.chunk_size=4",
        ],
    )
    assert r.exit_code == 5, r.output
    assert "stage failed" in r.output and "stage 'interests'" in r.output and "Traceback" not in r.output
    assert "8 of 8 LLM requests got no answer" in r.output and "backend_error=8" in r.output
    run_dir = tmp_path / "runs" / "t"
    assert not (run_dir / "03_interests" / "done.json").exists()
    assert (run_dir / "02_pool" / "done.json").exists()
    with LLMCache(run_dir / "llm-cache.sqlite") as cache:
        assert len(cache) == 0  # failures are never cached as answers

    # recovery: the same run, now with a live backend, sends the 8 requests and finishes the stage
    live = FakeBackend(fake_answer)
    _run(cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"spec": "fake"})}), live, until="interests")
    assert len(_interest_prompts(live)) == 8
    assert (run_dir / "03_interests" / "done.json").exists()


class _DownForHalf(FakeBackend):
    """The pipeline's fake LLM with every other interests request failing in transport."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.n = 0

    def _answer(self, inp: GenerationInput) -> str | GenerationOutput:
        if "interests" in (inp.json_schema or {}).get("properties", {}):
            self.n += 1
            if self.n % 2 == 0:
                return GenerationOutput(text="", finish_reason="error", error="timeout: read timed out")
        return fake_answer(inp)


def test_partial_outage_keeps_answers_and_rerun_asks_only_the_failed(data: Path, tmp_path: Path) -> None:
    cfg = fast_config(data, tmp_path / "runs")
    with pytest.raises(StageFailed) as err:
        _run(cfg, _DownForHalf())
    msg = str(err.value)
    assert "stage 'interests': 4 of 8 LLM requests got no answer" in msg and "timeout=4" in msg
    assert "run the same command again" in msg
    run_dir = tmp_path / "runs" / "t"
    assert not (run_dir / "03_interests" / "done.json").exists()
    with LLMCache(run_dir / "llm-cache.sqlite") as cache:
        assert len(cache) == 4  # the 4 answers that came back are kept
    again = FakeBackend(fake_answer)
    _run(cfg, again, until="interests")
    assert len(_interest_prompts(again)) == 4  # exactly the 4 that failed
    assert (run_dir / "03_interests" / "done.json").exists()


def _parroting(inp: GenerationInput) -> str:
    """Every interest a copy of the prompt's worked example: post-processing drops them all."""
    if "interests" in (inp.json_schema or {}).get("properties", {}):
        n = inp.json_schema["properties"]["interests"]["minItems"]
        names = ["Trail running", "Marathon training", "Home baking"]
        return json.dumps(
            {
                "interests": [
                    {"id": i + 1, "interest": names[i % 3], "stage": "long-term", "reason": "x"}
                    for i in range(n)
                ]
            }
        )
    return fake_answer(inp)


def test_fallback_share_above_the_limit_fails_with_a_clear_message(data: Path, tmp_path: Path) -> None:
    cfg = fast_config(data, tmp_path / "runs")
    with pytest.raises(StageFailed) as err:
        _run(cfg, FakeBackend(_parroting))
    msg = str(err.value)
    for part in (
        "stage 'interests'",
        "8 of 8 users (100%) on fallback",
        "limit 20%",
        "example_copy=8",
        LIMIT_HINT,
    ):
        assert part in msg, msg
    assert not (tmp_path / "runs" / "t" / "03_interests" / "done.json").exists()
    # the user raises the limit as told: the stage passes (from the cache: no new call)
    raised = FakeBackend(_parroting)
    cfg2 = fast_config(
        data,
        tmp_path / "runs",
        llm={"spec": "fake", "max_fallback_share": {"interests": 1.0}},
        tune={"users": 0},  # no validation sub-run: its users' prompts would be new ones
    )
    summary = _run(cfg2, raised)
    assert summary.status()["report"] == "ran"
    assert not _interest_prompts(raised)


def test_results_and_report_show_the_fallback_share_per_llm_stage(data: Path, tmp_path: Path) -> None:
    cfg = fast_config(data, tmp_path / "runs")
    summary = _run(cfg, FakeBackend(fake_answer))
    payload = json.loads((summary.run_dir / "results.json").read_text())
    shares = payload["llm_fallback"]
    assert set(shares) == {"interests", "tags", "explanations"}
    assert shares["interests"]["asked"] == 8 and shares["interests"]["limit"] == 0.2
    assert all(0.0 <= s["fallback_share"] <= 0.2 for s in shares.values())
    html = (summary.run_dir / "report.html").read_text()
    assert "LLM fallback" in html and "explanations" in html
    from recgpt.pipeline.report import print_results

    console = Console(record=True, width=200)
    print_results(payload, console)
    assert "LLM fallback per stage" in console.export_text()


def test_bad_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_fallback_share"):
        RunConfig.model_validate({"llm": {"max_fallback_share": {"nosuch": 0.5}}})
    with pytest.raises(ValueError, match="max_fallback_share"):
        RunConfig.model_validate({"llm": {"max_fallback_share": 1.5}})


# ---------------------------------------------------------------- item 5: an answer is cached as it is made


@pytest.mark.parametrize("n_done", [1, 5])
def test_answers_before_a_crash_inside_a_chunk_are_cached(tmp_path: Path, n_done: int) -> None:
    requests = [req(i) for i in range(10)]
    crashing = FakeBackend(echo, crash_on_call=n_done + 1)  # dies after n_done answers, inside chunk 1 of 16
    with LLMCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(FakeBackendCrash):
            LLMEngine(crashing, cache=cache, chunk_size=16).run(requests)
        assert len(cache) == n_done
    resumed = FakeBackend(echo)
    with LLMCache(tmp_path / "c.sqlite") as cache:
        results = LLMEngine(resumed, cache=cache, chunk_size=16).run(requests)
    assert len(resumed.inputs) == 10 - n_done and all(r.ok for r in results)
    assert sorted(item_of(i) for i in resumed.inputs) == sorted(f"item {i}" for i in range(n_done, 10))


_CHILD = textwrap.dedent(
    """
    import sys
    from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend
    from recgpt.llm.cache import LLMCache
    from recgpt.llm.engine import LLMEngine
    from tests.faults.test_llm_faults import review_requests
    engine = LLMEngine(LlamaCppBackend(n_threads=1), cache=LLMCache(sys.argv[1]), chunk_size=16)
    print("ready", flush=True)
    engine.run(review_requests())
    """
)


def review_requests() -> list[Any]:
    """6 short real-model requests (one answer every second or so with SmolLM2 on one core)."""
    from recgpt.llm.types import ChatMessage, LLMRequest, SamplingParams
    from tests.conftest import Tags

    return [
        LLMRequest(
            messages=(
                ChatMessage(role="system", content="List one tag for the movie, as JSON."),
                ChatMessage(role="user", content=f"Movie: {t}"),
            ),
            output_model=Tags,
            sampling=SamplingParams(max_tokens=40),
            stage="tags",
        )
        for t in ("Heat", "Alien", "Fargo", "Toy Story", "Casablanca", "Jaws")
    ]


@pytest.mark.llm
@pytest.mark.slow
def test_sigkill_mid_chunk_with_the_real_model_repeats_no_finished_answer(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    db = tmp_path / "c.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db)], env=env, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and done < 2:
            time.sleep(0.2)
            if db.exists():
                with LLMCache(db) as cache:
                    done = len(cache)
            assert child.poll() is None, "the child finished or died before it was killed"
        assert done >= 2, "the real model produced no answers in time"
        child.send_signal(signal.SIGKILL)  # mid-chunk: the engine's chunk is 16, the batch is 6
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend

    with LLMCache(db) as cache:
        kept = len(cache)
        assert 2 <= kept < 6
        backend = LlamaCppBackend(n_threads=1)
        seen: list[str] = []
        real = backend.generate_iter

        def counting(inputs: list[GenerationInput]) -> Iterator[tuple[int, GenerationOutput]]:
            seen.extend(i.messages[1].content for i in inputs)
            return real(inputs)

        backend.generate_iter = counting  # type: ignore[method-assign]
        with LLMEngine(backend, cache=cache) as engine:
            results = engine.run(review_requests())
    assert engine.ledger.stage("tags").cache_hits == kept
    assert len(set(seen)) == 6 - kept, seen  # only the unfinished requests were generated
    assert sum(r.ok for r in results) >= kept


def test_an_answer_the_rules_empty_is_asked_again_at_a_new_seed(data: Path, tmp_path: Path) -> None:
    def greedy_parrots(inp: GenerationInput) -> str:
        return _parroting(inp) if inp.sampling.temperature == 0 else fake_answer(inp)

    backend = FakeBackend(greedy_parrots)
    summary = _run(fast_config(data, tmp_path / "runs"), backend, until="interests")
    stats = summary.outcomes[-1].stats
    assert (stats["fallback"], stats["fallback_share"]) == (0, 0.0)  # the sampled second answers were kept
    asked = [i.sampling for i in backend.inputs if "interests" in (i.json_schema or {}).get("properties", {})]
    assert len(asked) == 16 and len({(s.seed, s.temperature) for s in asked}) == 2


def test_quickstart_limits_are_explicit() -> None:
    from recgpt.pipeline.config import quickstart_config

    q = quickstart_config(users=10)
    assert [q.llm.fallback_limit(s) for s in ("interests", "tags", "explanations")] == [0.2, 0.3, 0.35]
    assert quickstart_config(llm={"max_fallback_share": 0.5}).llm.fallback_limit("explanations") == 0.5
