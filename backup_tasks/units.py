"""Byte counts as people read them, the same in the CLI, Flower's progress line and the DR report."""

from __future__ import annotations


def human_size(n: int | float | None) -> str:
    """Binary units (a 1.5 GiB dump reads as such, not as 1.6 GB); ``-`` where nothing is known."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)
