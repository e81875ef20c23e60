"""Alignment training for the chain's LLMs (RecGPT §1.7): sample tables, builders, SFT, self-training.

- `data`: the SFT sample table contract (`SAMPLE_SCHEMA`, `validate_samples`, `to_chat`, ...);
- `builders.logs`: self-supervised samples from interaction logs (tags, interests, explanations);
- `builders.catalogue`: the curriculum's foundation / intermediate / advanced catalogue tasks;
- `builders.distill`: a teacher answers the chain's own prompts, judge and rules reject-sample.

Importing this package stays cheap (no torch): trainers import their heavy libraries themselves.
"""

from recgpt.training.data import (
    LEVELS,
    SAMPLE_SCHEMA,
    SOURCES,
    SampleError,
    TrainPrompt,
    load_samples,
    save_samples,
    to_chat,
    validate_samples,
)

__all__ = [
    "LEVELS",
    "SAMPLE_SCHEMA",
    "SOURCES",
    "SampleError",
    "TrainPrompt",
    "load_samples",
    "save_samples",
    "to_chat",
    "validate_samples",
]
