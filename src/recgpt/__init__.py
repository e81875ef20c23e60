"""recgpt: intent-centric recommendation with LLMs (RecGPT; SERAL planned), measured honestly."""

__version__ = "0.1.0"
