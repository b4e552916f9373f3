"""Print rich tables at their natural width, also where the console reports 80 columns (logs, CI)."""

from __future__ import annotations

import shutil


def print_table(table) -> None:
    """Print ``table`` without folding its cells: at least as wide as the table needs."""
    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(width=1000)
    needed = Measurement.get(probe, probe.options, table).maximum
    Console(width=max(needed, shutil.get_terminal_size().columns)).print(table)
