"""The end-of-run report: a rich table of final metrics, evaluation, time and locations."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from sptrack.console import print_table

_HEADLINE = ("linear_probe_acc", "random_init_linear_probe_acc", "random_init_linear_probe_std", "linear_probe_gain")


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, everything else as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_report(recipe: str, results: dict) -> None:
    """Print the run's results: probe accuracies first, then metrics, wall time and paths."""
    table = Table(title=f"sptrack {recipe}: results")
    table.add_column("metric")
    table.add_column("value", justify="right")
    ordered = [k for k in _HEADLINE if k in results] + sorted(k for k in results if k not in _HEADLINE)
    for key in ordered:
        table.add_row(key, format_value(results[key]))
    print_table(table)
