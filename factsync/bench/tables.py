"""Plain-text tables for bench reports: columns padded to their widest cell."""

from __future__ import annotations

from collections.abc import Sequence


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``header`` and ``rows`` as ``|``-separated columns padded to their widest cell,
    with a rule under the header and no trailing spaces."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [_line(row, widths) for row in [header, *rows]]
    lines.insert(1, "-|-".join("-" * width for width in widths))
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: list[int]) -> str:
    return " | ".join(cell.ljust(width)
                      for cell, width in zip(cells, widths, strict=True)).rstrip()
