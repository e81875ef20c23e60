"""recgpt: intent-centric recommendation with LLMs (RecGPT and SERAL), measured honestly."""

__version__ = "0.1.0"
