"""Markdown tables as a GitHub-flavoured Markdown renderer reads them (markdown-it-py with its GFM table rule).

A GFM renderer splits a table row at every pipe that no backslash escapes,
inside code spans too, drops the cells beyond the header's count and fills
missing ones with nothing: a stray ` | ` in a cell moves every later figure
out from under its header without a word. `tables` gives, for each table,
its header, its rows as rendered, and how many cells each row holds in the
source, so a test can see both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark").enable("table")


@dataclass
class Table:
    line: int  # the header's line in the text, counted from 1
    header: list[str]
    rows: list[list[str]]  # the cells as rendered, the header's count of them
    source_cells: list[int]  # the cells each body row holds in the source

    def column(self, name: str) -> list[str]:
        return [row[self.header.index(name)] for row in self.rows]


def source_cells(line: str) -> int:
    """The cells of one table row in the source: split at each pipe not escaped by a backslash."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return len(re.split(r"(?<!\\)\|", body))


def tables(text: str) -> list[Table]:
    lines = text.splitlines()
    found, table, row, in_header = [], None, None, False
    for token in _PARSER.parse(text):
        if token.type == "table_open":
            table = Table(token.map[0] + 1, [], [], [])
        elif token.type == "thead_open":
            in_header = True
        elif token.type == "thead_close":
            in_header = False
        elif token.type == "tr_open":
            row = []
            if not in_header:
                table.source_cells.append(source_cells(lines[token.map[0]]))
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            (table.header.extend(row) if in_header else table.rows.append(row))
            row = None
        elif token.type == "table_close":
            found.append(table)
    return found
