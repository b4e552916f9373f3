"""Helpers for the tracker tests: a real MLflow server fixture, a `.wandb` file reader, workers."""
