"""Alignment training for the LLMs (RecGPT §1.7, SERAL): sample tables, builders, SFT, self-training, IPO.

- `data`: the SFT sample table contract (`SAMPLE_SCHEMA`, `validate_samples`, `to_chat`, ...);
- `builders.logs`: self-supervised samples from interaction logs (tags, interests, explanations);
- `builders.catalogue`: the curriculum's foundation / intermediate / advanced catalogue tasks;
- `builders.distill`: a teacher answers the chain's own prompts, judge and rules reject-sample;
- `seren_data`, `seren`, `seren_eval`, `seren_report`: SERAL's SerenGPT alignment (SFT, then IPO with the
  SFT term kept: `L_IPO + α·L_SFT`), its evaluation against references and its training report.

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
