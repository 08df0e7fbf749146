"""Plain-text results table: mAP, mINP and CMC ranks as percentages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = ("mAP", "mINP", "R-1", "R-5", "R-10", "R-20")


def _cell(result: Mapping[str, Any], column: str) -> str:
    if column in ("mAP", "mINP"):
        value = result.get(column)
    else:
        rank = int(column[2:])
        cmc = result.get("cmc")
        value = cmc[rank - 1] if cmc is not None and len(cmc) >= rank else None
    return "-" if value is None else f"{100.0 * float(value):.1f}"


def format_results_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per named result, columns mAP, mINP, R-1, R-5, R-10, R-20 in percent.

    A rank beyond the stored CMC curve (max_rank or gallery smaller than it) shows "-".

    Args:
        rows: name -> metrics dict of `evaluate_rank` (needs "cmc", "mAP"; "mINP" optional).

    Returns:
        The table, lines joined by newlines, no trailing newline.

    Example:
        >>> print(format_results_table({"occluded queries": result}))
        name                mAP  mINP   R-1   R-5  R-10  R-20
        occluded queries   50.9  ...
    """
    name_width = max([len("name"), *(len(name) for name in rows)])
    header = "name".ljust(name_width) + "".join(f"{c:>7}" for c in COLUMNS)
    lines = [header]
    for name, result in rows.items():
        lines.append(name.ljust(name_width) + "".join(f"{_cell(result, c):>7}" for c in COLUMNS))
    return "\n".join(lines)
