"""The HTML pieces the run report is made of: its style sheet, tables, and figures as PNGs.

Every section of ``report.html`` (:mod:`shardflow.pipelines.report` and
:mod:`shardflow.pipelines.report_quality`) is built from these few pieces, so the page
stays one self-contained file readable offline: figures are embedded as PNG data URIs,
cells are escaped and numbers formatted alike in every table.
"""

from __future__ import annotations

import base64
import html
import io
import math

#: The report's style sheet, inlined in its ``<head>``.
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}img{max-width:100%}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}.muted{color:#777}
"""


def png_data_uri(fig) -> str:
    """A matplotlib figure drawn as a PNG (90 dpi), as a ``data:`` URI.

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
    fig.savefig(buf, format="png", dpi=90)
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


def table_html(rows: list, header: list) -> str:
    """A table of ``rows`` under ``header``, every cell escaped and formatted by :func:`format_cell`.

    Parameters
    ----------
    rows : list of list
        The rows' cells.
    header : list
        The columns' titles.

    Returns
    -------
    str
        A ``<table>`` element.

    Examples
    --------
    >>> table_html([["rows", 1234]], ["", ""])
    '<table><tr><th></th><th></th></tr><tr><td>rows</td><td>1,234</td></tr></table>'
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def format_cell(value) -> str:
    """A table cell's text: floats to four decimals (whole thousands beyond 1000), integers
    with thousands separators, anything else as ``str``.

    Parameters
    ----------
    value
        The cell's value.

    Returns
    -------
    str
        Its text.

    Examples
    --------
    >>> format_cell(0.123456), format_cell(12345.6), format_cell(1234567), format_cell(float("nan"))
    ('0.1235', '12,346', '1,234,567', 'nan')
    """
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
