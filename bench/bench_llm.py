"""Benchmark the LLM layer on the embedded llama.cpp backend and the shipped SmolLM2 model.

Four ratios, side by side in one run:
  1. overhead   - our layer (engine + backend: schema, key, validation, ledger) vs raw
                  llama-cpp-python `create_chat_completion(response_format=...)` on the same prompts
                  (target: ours / raw <= 1.2)
  2. grammar    - grammar-constrained vs unconstrained decode rate, raw llama-cpp-python
  3. cache hit  - cost per request of a fully cached batch through `LLMEngine.run` (target <= 1 ms)
  4. parallel   - 2 worker processes x 1 thread vs 1 process x 1 thread, requests/s (aim >= 1.5x);
                  `--parts ...,threads` adds 1 process x 2 threads

    .venv/bin/python bench/bench_llm.py                 # 12 prompts, 2 repeats (~3-4 min on 2 idle cores)
    .venv/bin/python bench/bench_llm.py --n 6 --repeats 1 --json results/bench_llm.json

Timings are wall-clock and meaningless while other jobs share the cores (see docs/runtime.md):
the script prints the load average before and after.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend, default_model_path
from recgpt.llm.cache import LLMCache
from recgpt.llm.engine import LLMEngine
from recgpt.llm.prompts.smoke import BASKETS, SmokeInterests, smoke_request
from recgpt.llm.schema import json_schema_for
from recgpt.llm.types import LLMRequest


def bench_requests(n: int, max_tokens: int, offset: int = 0) -> list[LLMRequest[Any]]:
    """n distinct smoke prompts: a basket plus one item borrowed from another basket."""
    out = []
    for j in range(offset, offset + n):
        base, other = BASKETS[j % len(BASKETS)], BASKETS[(3 * j + 1) % len(BASKETS)]
        out.append(smoke_request((*base, other[j % len(other)]), max_tokens=max_tokens, key=str(j)))
    return out


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall time over `repeats` runs (least disturbed by other load) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def raw_llama(threads: int, n_ctx: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(default_model_path()),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def raw_run(llm: Any, requests: list[LLMRequest[Any]], constrained: bool) -> tuple[int, int]:
    """Plain llama-cpp-python: the code a user would write without our layer. Returns (valid, tokens)."""
    valid = tokens = 0
    for req in requests:
        schema = json_schema_for(req.output_model)
        resp = llm.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in req.messages],
            response_format={"type": "json_object", "schema": schema} if constrained else None,
            temperature=req.sampling.temperature,
            top_p=req.sampling.top_p,
            max_tokens=req.sampling.max_tokens,
            seed=req.sampling.seed,
        )
        tokens += resp["usage"]["completion_tokens"]
        try:
            SmokeInterests.model_validate_json(resp["choices"][0]["message"]["content"])
            valid += 1
        except ValueError:
            pass
    return valid, tokens


def ours_run(engine: LLMEngine, requests: list[LLMRequest[Any]]) -> tuple[int, int]:
    results = engine.run(requests)
    return sum(r.ok for r in results), sum(r.usage.completion_tokens for r in results)


def bench_overhead_and_grammar(args: argparse.Namespace) -> dict[str, Any]:
    requests = bench_requests(args.n, args.max_tokens)
    raw = raw_llama(1, args.n_ctx)
    backend = LlamaCppBackend(n_threads=1, n_ctx=args.n_ctx)
    engine = LLMEngine(backend, max_retries=0)  # no cache, no retries: the same work as the raw loop
    raw_run(raw, requests[:1], True), ours_run(engine, requests[:1])  # warm both
    raw_t, ours_t = [], []
    for _ in range(args.repeats):  # interleaved, so drifting background load hits both sides
        t, (raw_valid, raw_tok) = best_of(1, lambda: raw_run(raw, requests, True))
        raw_t.append(t)
        t, (ours_valid, ours_tok) = best_of(1, lambda: ours_run(engine, requests))
        ours_t.append(t)
    free_t, (free_valid, free_tok) = best_of(args.repeats, lambda: raw_run(raw, requests, False))
    raw.close()
    backend.close()
    raw_s, ours_s = min(raw_t), min(ours_t)
    return {
        "requests": len(requests),
        "raw_s": raw_s,
        "ours_s": ours_s,
        "overhead_ratio": ours_s / raw_s,
        "raw_valid": raw_valid,
        "ours_valid": ours_valid,
        "raw_tokens": raw_tok,
        "ours_tokens": ours_tok,
        "ours_per_token_ratio": (ours_s / max(ours_tok, 1)) / (raw_s / max(raw_tok, 1)),
        "constrained_tok_s": raw_tok / raw_s,
        "unconstrained_tok_s": free_tok / free_t,
        "unconstrained_valid": free_valid,
    }


def bench_cache_hits(n: int) -> dict[str, Any]:
    requests = bench_requests(n, 128)
    answer = json.dumps({"interests": [{"name": "x", "reason": "y"}] * 3})
    with tempfile.TemporaryDirectory() as tmp, LLMCache(Path(tmp) / "bench.sqlite") as cache:
        LLMEngine(FakeBackend(lambda _i: answer), cache=cache, chunk_size=64).run(requests)
        backend = FakeBackend(lambda _i: answer)
        engine = LLMEngine(backend, cache=cache)
        t, results = best_of(3, lambda: engine.run(requests))
        assert backend.generate_calls == 0 and all(r.usage.cached for r in results)
        render_t, _ = best_of(3, lambda: bench_requests(n, 128))
    return {"requests": n, "hit_ms": 1000 * t / n, "render_ms": 1000 * render_t / n}


def bench_parallel(args: argparse.Namespace, with_threads: bool) -> dict[str, Any]:
    requests = bench_requests(args.n_parallel, args.max_tokens, offset=100)
    warm = bench_requests(2, args.max_tokens, offset=500)
    configs = {"1proc_1thr": (1, 1), "2proc_1thr": (1, 2)}
    if with_threads:  # opt-in: on a busy machine 2 threads run ~10x slower and take minutes
        configs["1proc_2thr"] = (2, 1)
    engines = {}
    for label, (threads, workers) in configs.items():
        engine = LLMEngine(
            LlamaCppBackend(n_threads=threads, n_workers=workers, n_ctx=args.n_ctx),
            max_retries=0,
            chunk_size=len(requests),
        )
        engine.run(warm)  # start worker processes and load their models outside the timing
        engines[label] = engine
    times: dict[str, list[float]] = {label: [] for label in configs}
    out: dict[str, Any] = {"requests": len(requests)}
    for _ in range(args.repeats):  # interleaved, so drifting background load hits every config
        for label, engine in engines.items():
            t, (valid, tokens) = best_of(1, lambda e=engine: ours_run(e, requests))
            times[label].append(t)
            out[label] = {"valid": valid, "tokens": tokens}
    for label, engine in engines.items():
        engine.close()
        t = min(times[label])
        out[label].update(s=t, req_s=len(requests) / t, tok_s=out[label]["tokens"] / t)
    out["speedup_2proc"] = out["2proc_1thr"]["req_s"] / out["1proc_1thr"]["req_s"]
    if with_threads:
        out["speedup_2thr"] = out["1proc_2thr"]["req_s"] / out["1proc_1thr"]["req_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="prompts for the overhead / grammar runs")
    ap.add_argument("--n-parallel", type=int, default=12, help="prompts for the parallel run")
    ap.add_argument("--n-cache", type=int, default=2000, help="requests for the cache-hit run")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--parts",
        default="cache,overhead,parallel",
        help="comma list of: cache, overhead, parallel, threads (1 proc x 2 threads, slow when busy)",
    )
    args = ap.parse_args()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    cache = bench_cache_hits(args.n_cache) if "cache" in parts else None
    over = bench_overhead_and_grammar(args) if "overhead" in parts else None
    par = bench_parallel(args, "threads" in parts) if parts & {"parallel", "threads"} else None
    load_after = os.getloadavg()

    rows: list[tuple[str, str, str, str]] = []
    if over:
        rows += [
            (
                "overhead: ours / raw llama-cpp-python (wall)",
                f"{over['overhead_ratio']:.3f}x",
                "<= 1.2x",
                f"{over['ours_s']:.1f} s vs {over['raw_s']:.1f} s for {over['requests']} requests; valid "
                f"{over['ours_valid']} vs {over['raw_valid']}; per-token ratio {over['ours_per_token_ratio']:.3f}",
            ),
            (
                "grammar: constrained / unconstrained tok/s",
                f"{over['constrained_tok_s'] / over['unconstrained_tok_s']:.2f}x",
                "-",
                f"{over['constrained_tok_s']:.0f} vs {over['unconstrained_tok_s']:.0f} tok/s (1 thread); "
                f"schema-valid unconstrained {over['unconstrained_valid']}/{over['requests']}",
            ),
        ]
    if cache:
        rows.append(
            (
                "cache hit: ms per request",
                f"{cache['hit_ms']:.3f} ms",
                "<= 1 ms",
                f"{cache['requests']} cached requests through LLMEngine.run; rendering {cache['render_ms']:.3f} ms extra",
            )
        )
    if par:
        rows += [
            (
                "parallel: 2 procs x 1 thr / 1 proc x 1 thr",
                f"{par['speedup_2proc']:.2f}x",
                ">= 1.5x",
                f"{par['2proc_1thr']['req_s']:.2f} vs {par['1proc_1thr']['req_s']:.2f} req/s on {par['requests']} requests",
            ),
        ]
        if "speedup_2thr" in par:
            rows.append(
                (
                    "threads: 1 proc x 2 thr / 1 proc x 1 thr",
                    f"{par['speedup_2thr']:.2f}x",
                    "-",
                    f"{par['1proc_2thr']['req_s']:.2f} req/s",
                )
            )
    if not rows:
        raise SystemExit(f"no known part in --parts {args.parts!r}: use cache, overhead, parallel, threads")
    print(f"\nLLM layer benchmark - SmolLM2-135M Q4_1, max_tokens {args.max_tokens}, best of {args.repeats}")
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores; >1 means contention)"
    )
    width = max(len(r[0]) for r in rows)
    for name, value, target, detail in rows:
        print(f"  {name:<{width}}  {value:>10}  target {target:<8}  {detail}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {"overhead": over, "cache": cache, "parallel": par, "load": [load_before, load_after]}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":  # required: worker processes are spawned and re-import this module
    main()
