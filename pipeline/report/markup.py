"""A tiny document model rendered to HTML (the report) and Markdown (MODEL_CARD.md),
so the model card is written once and reads the same in both."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

from btmri.intervals import format_with_interval

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"  # the page frame, CSS, the card


@dataclass
class Heading:
    text: str
    level: int = 2
    id: str = ""


@dataclass
class Paragraph:
    text: str
    css: str = ""


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Cell:
    text: str
    css: str = ""  # HTML class: e.g. "pass", "fail", "num"
    title: str = ""  # HTML tooltip


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell | str]]
    id: str = ""
    caption: str = ""
    css: str = ""


Block = Heading | Paragraph | Bullets | Table


def rate(value: float | None, digits: int = 3) -> str:
    """A ratio in [0, 1] as 0.873; undefined (0/0) as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def rate_ci(value: float | None, interval, digits: int = 3) -> str:
    """A ratio with its 95 % interval: 0.873 [0.842, 0.899]; n/a when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format_with_interval(value, interval, digits)


def count(value) -> str:
    return f"{int(value):,}"


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the one inline markup both renderers share)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cell(cell: Cell | str) -> Cell:
    return cell if isinstance(cell, Cell) else Cell(str(cell))


# --- HTML ---------------------------------------------------------------------


def _attrs(**attrs) -> str:
    return "".join(f' {k.rstrip("_")}="{html.escape(v, quote=True)}"' for k, v in attrs.items() if v)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = [_cell(c) for c in row]
        tds = "".join(f"<td{_attrs(class_=c.css, title=c.title)}>{html.escape(c.text)}</td>" for c in cells)
        body.append(f"<tr>{tds}</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    thead = f"<thead><tr>{head}</tr></thead>" if any(table.header) else ""
    return (
        f"<table{_attrs(id=table.id, class_=table.css)}>{caption}{thead}"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def to_html(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}{_attrs(id=block.id)}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p{_attrs(class_=block.css)}>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            out.append(f'<div class="table-wrap">{table_html(block)}</div>')
        else:
            raise TypeError(f"unknown block {block!r}")
    return "\n".join(out)


# --- Markdown -----------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = []
            if block.caption:
                lines.append(f"*{block.caption}*\n")
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "|".join("---" for _ in block.header) + "|")
            lines.extend("| " + " | ".join(_md_cell(_cell(c).text) for c in row) + " |" for row in block.rows)
            out.append("\n".join(lines))
        else:
            raise TypeError(f"unknown block {block!r}")
    return "\n\n".join(out) + "\n"
