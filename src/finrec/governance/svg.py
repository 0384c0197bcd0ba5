"""Small SVG charts for the validation report (no plotting library needed): horizontal bars, lines
and a histogram, each returned as SVG text that the report embeds as an image."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from html import escape

WIDTH = 560
COLORS = ("#1f5f8b", "#d1495b", "#66a182", "#edae49", "#7b6d8d", "#8c8c8c")
_FAMILY = 'font-family="Helvetica, Arial, sans-serif"'
_FONT = f'{_FAMILY} font-size="11"'


def data_uri(svg: str) -> str:
    """The SVG as a ``data:`` URI (an ``<img>`` source inside a self-contained file)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _fmt(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _frame(width: int, height: int, body: list[str], title: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="8" y="16" {_FAMILY} font-size="13" font-weight="bold">{escape(title)}</text>'
    )
    return head + "".join(body) + "</svg>"


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, width: int = WIDTH) -> str:
    """Horizontal bars, one per label, with the value written beside each."""
    row, left, top = 18, 170, 26
    height = top + row * len(labels) + 10
    high = max([abs(v) for v in values if math.isfinite(v)] + [1e-12])
    span = width - left - 70
    body = []
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        length = 0 if not math.isfinite(value) else span * abs(value) / high
        body.append(
            f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" {_FONT}>{escape(str(label)[:28])}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{length:.1f}" height="{row - 5}" fill="{COLORS[0]}"/>'
            f'<text x="{left + length + 4:.1f}" y="{y + 12}" {_FONT}>{_fmt(value)}</text>'
        )
    return _frame(width, height, body, title)


def line_chart(
    series: Mapping[str, Sequence[float]],
    title: str,
    x_label: str = "",
    width: int = WIDTH,
    height: int = 220,
    x_values: Sequence[float] | None = None,
) -> str:
    """One line per series over x = 1..n (or ``x_values``), a shared y axis, and a legend."""
    left, right, top, bottom = 52, 120, 26, 32
    points = [v for values in series.values() for v in values if v is not None and math.isfinite(v)]
    if not points:
        return _frame(width, 60, [f'<text x="8" y="40" {_FONT}>no values</text>'], title)
    low, high = min(points), max(points)
    if high == low:
        low, high = low - 0.5, high + 0.5
    n = max(len(values) for values in series.values())
    xs = list(x_values) if x_values is not None else list(range(1, n + 1))
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x):
        return left + plot_w * (x - x_low) / (x_high - x_low)

    def py(y):
        return top + plot_h * (1 - (y - low) / (high - low))

    body = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
    ]
    for tick in (low, (low + high) / 2, high):
        body.append(f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" text-anchor="end" {_FONT}>{_fmt(tick)}</text>')
    for tick in (x_low, x_high):
        body.append(
            f'<text x="{px(tick):.1f}" y="{top + plot_h + 14}" text-anchor="middle" {_FONT}>{_fmt(tick)}</text>'
        )
    if x_label:
        body.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" {_FONT}>{escape(x_label)}</text>'
        )
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, values) if y is not None and math.isfinite(y))
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.append(
            f'<rect x="{width - right + 10}" y="{top + 16 * i}" width="10" height="10" fill="{color}"/>'
            f'<text x="{width - right + 24}" y="{top + 16 * i + 9}" {_FONT}>{escape(name[:16])}</text>'
        )
    return _frame(width, height, body, title)


def histogram(counts: Sequence[float], labels: Sequence[str], title: str, width: int = 300, height: int = 110) -> str:
    """Vertical bars of ``counts`` (shares or counts), labelled under the first and last bar."""
    top, bottom = 22, 18
    n = max(len(counts), 1)
    high = max(list(counts) + [1e-12])
    bar = (width - 16) / n
    body = []
    for i, count in enumerate(counts):
        h = (height - top - bottom) * count / high
        body.append(
            f'<rect x="{8 + i * bar:.1f}" y="{height - bottom - h:.1f}" width="{max(bar - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="{COLORS[0]}"><title>{escape(str(labels[i]))}: {_fmt(count)}</title></rect>'
        )
    if labels:
        body.append(
            f'<text x="8" y="{height - 4}" {_FONT}>{escape(str(labels[0])[:18])}</text>'
            f'<text x="{width - 8}" y="{height - 4}" text-anchor="end" {_FONT}>{escape(str(labels[-1])[:18])}</text>'
        )
    return _frame(width, height, body, title)
