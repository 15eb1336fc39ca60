"""The HTML pieces the run report is made of: its style sheet, tables, facts and figures as PNGs.

Every section of ``report.html`` (:mod:`shardflow.pipelines.interface.report` and the modules it draws
with) is built from these few pieces, so the page stays one self-contained file readable
offline: figures are embedded as PNG data URIs, cells are escaped, and each column of a
table has the format of the quantity it holds (:mod:`shardflow.pipelines.interface.report_format`).
"""

from __future__ import annotations

import base64
import html
import io
import math

#: The report's style sheet, inlined in its ``<head>``.
CSS = """
:root{--ink:#1d2430;--muted:#667085;--line:#e3e6ea;--soft:#f6f7f9;--accent:#2f6db5}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1180px;
color:var(--ink);padding:0 1.2em;line-height:1.45;background:#fff}
h1{font-size:1.55em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid var(--line);padding-bottom:.25em;
margin-top:2.2em}h3{font-size:1.02em;margin:1.4em 0 .4em}
.sub{color:var(--muted);margin:0 0 1em}.muted{color:var(--muted)}.note{color:var(--muted);font-size:.9em;max-width:70em}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.6em;margin:1em 0}
.fact{border:1px solid var(--line);border-radius:8px;padding:.55em .8em;background:var(--soft)}
.fact .k{font-size:.78em;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.fact .v{font-size:1.12em;font-weight:600;margin:.1em 0}.fact .n{font-size:.85em;color:var(--muted)}
table{border-collapse:collapse;margin:.5em 0;font-variant-numeric:tabular-nums;font-size:.93em}
td,th{border-bottom:1px solid var(--line);padding:.3em .75em;text-align:right;vertical-align:top}
th{font-weight:600;border-bottom:2px solid #cfd4da}td:first-child,th:first-child{text-align:left}
tr.best td{background:#eaf2fb;font-weight:600}tr.total td{font-weight:600;border-top:1px solid #cfd4da}
tr.sub td:first-child{padding-left:1.8em;color:var(--muted)}
table.kv th{text-align:left;color:var(--muted);font-weight:500;border-bottom:1px solid var(--line)}
table.kv td{text-align:left}
pre{background:var(--soft);padding:.8em;overflow:auto;font-size:.82em;border-radius:6px}img{max-width:100%}
figure{margin:.6em 0}figcaption{font-size:.88em;margin-top:.2em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em 1.5em;align-items:start}
.tables{display:flex;flex-wrap:wrap;gap:.4em 2.2em;align-items:flex-start}
details summary{cursor:pointer;color:var(--accent);margin:.4em 0}
nav{font-size:.9em;margin:.4em 0 1.2em}nav a{color:var(--accent);text-decoration:none;margin-right:1em}
"""


def png_data_uri(fig) -> str:
    """A matplotlib figure drawn as a PNG (100 dpi), as a ``data:`` URI.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure to draw.

    Returns
    -------
    str
        ``data:image/png;base64,...``
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def figure_html(src: str, alt: str) -> str:
    """An image with ``alt`` as its alternative text and its caption.

    Parameters
    ----------
    src : str
        The image's URI (see :func:`png_data_uri`).
    alt : str
        Its caption (escaped).

    Returns
    -------
    str
        A ``<figure>`` element.

    Examples
    --------
    >>> figure_html("data:,", "a < b")
    '<figure><img alt="a &lt; b" src="data:,"><figcaption class="muted">a &lt; b</figcaption></figure>'
    """
    return (
        f'<figure><img alt="{html.escape(alt)}" src="{src}"><figcaption class="muted">{html.escape(alt)}'
        "</figcaption></figure>"
    )


def table_html(rows: list, header: list, formats=None, *, row_classes=None) -> str:
    """A table of ``rows`` under ``header``, every cell escaped and formatted.

    Parameters
    ----------
    rows : list of list
        The rows' cells.
    header : list
        The columns' titles.
    formats : list of callable or None, optional
        Each column's format (a function of the cell's value returning its text; None:
        :func:`format_cell`). A column of numbers should say what they are (see
        :mod:`shardflow.pipelines.interface.report_format`).
    row_classes : list of str, optional
        A CSS class per row (``best``, ``total``, ``sub``), or "".

    Returns
    -------
    str
        A ``<table>`` element.

    Examples
    --------
    >>> table_html([["rows", 1234]], ["", "count"])
    '<table><tr><th></th><th>count</th></tr><tr><td>rows</td><td>1,234</td></tr></table>'
    >>> table_html([["a", 0.5]], ["x", "share"], [None, lambda v: f"{100 * v:.0f}%"], row_classes=["best"])
    '<table><tr><th>x</th><th>share</th></tr><tr class="best"><td>a</td><td>50%</td></tr></table>'
    """
    formats = list(formats or [])
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(
            f"<td>{html.escape((formats[j] if j < len(formats) and formats[j] else format_cell)(c))}</td>"
            for j, c in enumerate(row)
        )
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def kv_table(pairs) -> str:
    """A table of ``(name, value)`` pairs, names as row headers (no empty header row).

    Values are text (escaped); format numbers before (see
    :mod:`shardflow.pipelines.interface.report_format`).

    Examples
    --------
    >>> kv_table([("rows", "1,234"), ("path", "<in>")])
    '<table class="kv"><tr><th>rows</th><td>1,234</td></tr><tr><th>path</th><td>&lt;in&gt;</td></tr></table>'
    """
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in pairs
        if v not in (None, "")
    )
    return f'<table class="kv">{rows}</table>'


def facts_html(facts) -> str:
    """The header's cards: ``(title, value, note)`` each, as text (escaped); a missing value
    leaves its card out.

    Examples
    --------
    >>> page = facts_html([("rows", "6,000", "1,187 validation"), ("best", None, "")])
    >>> page.count('class="fact"'), '<div class="v">6,000</div>' in page
    (1, True)
    """
    cards = "".join(
        '<div class="fact">'
        f'<div class="k">{html.escape(title)}</div><div class="v">{html.escape(str(value))}</div>'
        + (f'<div class="n">{html.escape(note)}</div>' if note else "")
        + "</div>"
        for title, value, note in facts
        if value not in (None, "")
    )
    return f'<div class="facts">{cards}</div>'


def section(anchor: str, title: str, body: str) -> str:
    """An ``<h2>`` with an anchor for the page's navigation, and its body; empty without a body.

    Examples
    --------
    >>> section("models", "Models", "<p>x</p>")
    '<h2 id="models">Models</h2><p>x</p>'
    >>> section("models", "Models", "")
    ''
    """
    return f'<h2 id="{anchor}">{html.escape(title)}</h2>{body}' if body else ""


def format_cell(value) -> str:
    """A cell's text when its column has no format: integers with thousands separators,
    floats to four significant digits (whole numbers beyond 1000), anything else as ``str``.

    Examples
    --------
    >>> format_cell(0.123456), format_cell(12345.6), format_cell(1234567), format_cell(float("nan"))
    ('0.1235', '12,346', '1,234,567', '–')
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}" if abs(value) >= 1 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)
