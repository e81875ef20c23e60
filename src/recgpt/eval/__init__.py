"""Evaluation: central top-K ranking and vectorized accuracy / beyond-accuracy metrics."""
