"""The `recgpt` command line (typer)."""
