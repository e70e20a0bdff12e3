"""Tables and a self-contained HTML report (images inlined) for sharing evaluation results."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rspo.utils.io import atomic_write_text

__all__ = ["columns_of", "format_value", "markdown_table", "write_csv", "write_html_report"]


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys, in order of first appearance."""
    cols: dict[str, None] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, None)
    return list(cols)


def format_value(v: Any, digits: int = 4) -> str:
    """Display form of a cell: floats to ``digits`` significant digits, lists element-wise,
    ``None`` as empty. Used by both the Markdown and the HTML table."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x, digits) for x in v) + "]"
    if hasattr(v, "item") and callable(v.item):  # numpy scalar
        return format_value(v.item(), digits)
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """GitHub-flavoured Markdown table of ``rows`` (all columns if ``columns`` is None)."""
    cols = list(columns) if columns is not None else columns_of(rows)
    if not cols:
        return ""

    def cell(v: Any) -> str:
        return format_value(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |"]
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_csv(
    rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Write ``rows`` as CSV (atomically); lists/dicts are JSON-encoded, ``None`` is empty.
    Values are written at full precision, unlike the display tables."""
    cols = list(columns) if columns is not None else columns_of(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        out = []
        for c in cols:
            v = r.get(c)
            if v is None:
                out.append("")
            elif isinstance(v, (list, tuple, dict)):
                out.append(json.dumps(v))
            else:
                out.append(v.item() if hasattr(v, "item") and callable(v.item) else v)
        w.writerow(out)
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:1em 0;display:block}
.notes{white-space:pre-wrap;background:#fafafa;padding:0.8em;border-left:3px solid #ccc}
"""


def write_html_report(
    path: str | Path,
    title: str,
    table_rows: Sequence[dict[str, Any]],
    images: Sequence[str | Path],
    notes: str = "",
) -> Path:
    """Write one self-contained HTML file: title, notes (plain text), a table of
    ``table_rows`` and each PNG in ``images`` embedded as a base64 data URI (so the file
    can be mailed or attached without its images). Written atomically; returns the path."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append(f'<div class="notes">{html.escape(notes)}</div>')
    cols = columns_of(table_rows)
    if cols:
        parts.append("<table><thead><tr>")
        parts.extend(f"<th>{html.escape(c)}</th>" for c in cols)
        parts.append("</tr></thead><tbody>")
        for r in table_rows:
            cells = "".join(f"<td>{html.escape(format_value(r.get(c)))}</td>" for c in cols)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
    for img in images:
        p = Path(img)
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        alt = html.escape(p.name)
        parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">')
        parts.append(f"<figcaption>{alt}</figcaption></figure>")
    parts.append("</body></html>\n")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path
