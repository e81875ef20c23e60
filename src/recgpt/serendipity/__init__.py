"""SERAL (arXiv 2502.13539): serendipity recommendation, a second pipeline beside the RecGPT chain.

Modules (each a step over tables, usable alone):

- `profiles` (+ `profile_tasks`): multi-level cognition profiles (static, short-term, long-term);
- `candidates`: unexpected candidate items outside the user's familiar categories;
- `labels`: serendipity lists (log labels, human verdicts);
- `seren`: SerenGPT, the LLM that ranks a list for serendipity;
- `references`: rule-based reference rankings (random, popularity, distance);
- `cache`: SerenGPT's answers cached per user and profile version;
- `slot`: the serendipity slot merged into a base recommendation list;
- `nearline`: refresh of stale profiles and cache entries.

Depends on data, behavior, llm, intent helpers and eval; never on pipeline or cli.
"""
