"""Line charts as SVG, for Prefect markdown artifacts.

Plain functions from DataFrames to an SVG string and to markdown that shows it. The Prefect
UI (3.9, both its UIs) displays a markdown image whose source is a `data:image/svg+xml`
URL, and strips inline `<svg>` elements, so a chart is an image of a base64 data URL
(checked in Chromium by tests/test_ui_pages.py). Hand-written SVG keeps the charts small
(a few KB) and needs no plotting library.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import pandas as pd

PANEL_WIDTH, PANEL_HEIGHT = 360, 240  # two panels fit the UI's artifact column
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 14, 30, 40
LEGEND_LINE = 15
COLUMNS = 2  # panels side by side
MAX_POINTS = 400  # per series: more are thinned evenly (the first and last always kept)
MAX_LEGEND = 8  # series named in a panel's legend; the rest are counted
COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


@dataclass(frozen=True)
class Series:
    """One line of a panel: its legend label and its points, x and y in step."""

    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]


@dataclass(frozen=True)
class Panel:
    """One plot: a title, its lines, and the x axis (its label; text ticks at 0, 1, ...)."""

    title: str
    series: tuple[Series, ...]
    x_label: str
    x_ticks: tuple[str, ...] = ()


def series_of(frame: pd.DataFrame, x: str, y: str, label: str) -> Series | None:
    """The numeric points (x, y) of two columns, NaN and non-numbers left out; None if none."""
    xs = pd.to_numeric(frame[x], errors="coerce").astype(float)
    ys = pd.to_numeric(frame[y], errors="coerce").astype(float)
    keep = xs.notna() & ys.notna() & ys.map(math.isfinite)
    if not keep.any():
        return None
    points = list(zip(xs[keep].tolist(), ys[keep].tolist(), strict=True))
    if len(points) > MAX_POINTS:
        step = (len(points) - 1) / (MAX_POINTS - 1)
        points = [points[round(i * step)] for i in range(MAX_POINTS)]
    return Series(label, tuple(p[0] for p in points), tuple(p[1] for p in points))


def panels_by_column(
    frame: pd.DataFrame, x: str, groups: dict[str, list[str]], by: str | None = None
) -> list[Panel]:
    """A panel per entry of `groups` (title -> columns), a line per column, or per value of
    `by` when given (then each title's columns are drawn per group, e.g. per run)."""
    panels = []
    for title, columns in groups.items():
        lines = []
        parts = frame.groupby(by, sort=False) if by else [(None, frame)]
        for key, part in parts:
            for column in columns:
                label = (
                    column if by is None else (str(key) if len(columns) == 1 else f"{key} {column}")
                )
                found = series_of(part, x, column, label)
                if found is not None:
                    lines.append(found)
        if lines:
            panels.append(Panel(title, tuple(lines), x))
    return panels


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if high <= low:
        low, high = low - (abs(low) or 1) / 2, high + (abs(high) or 1) / 2
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - 1e-12 * abs(step):
        ticks.append(first + len(ticks) * step)
    return [round(t, 12) for t in ticks]


def _number(value: float) -> str:
    return f"{value:.4g}"


def _legend_lines(panel: Panel) -> int:
    if len(panel.series) < 2:
        return 0
    return min(len(panel.series), MAX_LEGEND) + (len(panel.series) > MAX_LEGEND)


def _panel_svg(panel: Panel, left: float, top: float) -> list[str]:
    """The SVG elements of one panel whose box starts at (left, top)."""
    plot_left, plot_top = left + MARGIN_LEFT, top + MARGIN_TOP
    plot_width = PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    xs = [x for s in panel.series for x in s.xs]
    ys = [y for s in panel.series for y in s.ys]
    x_ticks = nice_ticks(min(xs), max(xs), 6)
    if all(float(x).is_integer() for x in xs):
        x_ticks = [t for t in x_ticks if float(t).is_integer()] or x_ticks
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1 = min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs))
    pad = 0.3 if panel.x_ticks else 0.03 * ((x1 - x0) or 1)  # room for the end points' labels
    x0, x1 = x0 - pad, x1 + pad
    y0, y1 = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return plot_left + (x - x0) / ((x1 - x0) or 1) * plot_width

    def py(y: float) -> float:
        return plot_top + plot_height - (y - y0) / ((y1 - y0) or 1) * plot_height

    out = [
        f'<text x="{left + PANEL_WIDTH / 2:.0f}" y="{top + 18:.0f}" text-anchor="middle" '
        f'font-weight="bold">{escape(panel.title)}</text>'
    ]
    for y in y_ticks:
        out.append(
            f'<line x1="{plot_left:.1f}" x2="{plot_left + plot_width:.1f}" y1="{py(y):.1f}" '
            f'y2="{py(y):.1f}" stroke="#e3e3e3"/><text x="{plot_left - 6:.1f}" '
            f'y="{py(y) + 4:.1f}" text-anchor="end">{_number(y)}</text>'
        )
    for x in x_ticks:
        index = round(x)
        text = _number(x)
        if panel.x_ticks:
            if not float(x).is_integer() or not 0 <= index < len(panel.x_ticks):
                continue
            text = panel.x_ticks[index]
        out.append(
            f'<text x="{px(x):.1f}" y="{plot_top + plot_height + 16:.1f}" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    out.append(
        f'<rect x="{plot_left:.1f}" y="{plot_top:.1f}" width="{plot_width:.1f}" '
        f'height="{plot_height:.1f}" fill="none" stroke="#888"/>'
        f'<text x="{plot_left + plot_width / 2:.1f}" y="{top + PANEL_HEIGHT - 6:.1f}" '
        f'text-anchor="middle" fill="#555">{escape(panel.x_label)}</text>'
    )
    for i, line in enumerate(panel.series):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(line.xs, line.ys, strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(line.xs) <= 60:
            out += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>'
                for x, y in zip(line.xs, line.ys, strict=True)
            ]
    if _legend_lines(panel):
        y = top + PANEL_HEIGHT + 4
        for i, line in enumerate(panel.series[:MAX_LEGEND]):
            colour = COLOURS[i % len(COLOURS)]
            y += LEGEND_LINE
            out.append(
                f'<rect x="{plot_left:.1f}" y="{y - 9:.1f}" width="14" height="4" '
                f'fill="{colour}"/><text x="{plot_left + 20:.1f}" y="{y:.1f}">'
                f"{escape(line.label)}</text>"
            )
        if len(panel.series) > MAX_LEGEND:
            more = len(panel.series) - MAX_LEGEND
            out.append(
                f'<text x="{plot_left + 20:.1f}" y="{y + LEGEND_LINE:.1f}">and {more} more</text>'
            )
    return out


def svg(panels: Sequence[Panel]) -> str:
    """The panels as one SVG image, `COLUMNS` to a row, each with its legend below."""
    if not panels:
        raise ValueError("a chart needs at least one panel")
    rows = [panels[i : i + COLUMNS] for i in range(0, len(panels), COLUMNS)]
    heights = [PANEL_HEIGHT + LEGEND_LINE * max(map(_legend_lines, row)) + 8 for row in rows]
    width = PANEL_WIDTH * min(len(panels), COLUMNS)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{sum(heights)}" '
        f'viewBox="0 0 {width} {sum(heights)}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{sum(heights)}" fill="white"/>',
    ]
    top = 0.0
    for row, height in zip(rows, heights, strict=True):
        for column, panel in enumerate(row):
            parts += _panel_svg(panel, column * PANEL_WIDTH, top)
        top += height
    return "".join(parts) + "</svg>"


def markdown(title: str, panels: Sequence[Panel], caption: str) -> str:
    """Markdown showing the chart as an image (a data URL), with a heading and a caption."""
    data = base64.b64encode(svg(panels).encode()).decode()
    return f"# {title}\n\n![{escape(title)}](data:image/svg+xml;base64,{data})\n\n{caption}\n"
