"""Markdown tables that render as they are written (no Keras import: the command line's listings use it too)."""

from __future__ import annotations

from collections.abc import Iterable


def markdown_row(cells: Iterable) -> str:
    """One row of a Markdown table, each cell's pipes escaped (`\\|`).

    A GitHub-flavoured Markdown renderer splits a row at every unescaped pipe,
    inside code spans too, and drops the cells beyond the header's count: one
    stray ` | ` moves every later figure out from under its header.
    """
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
