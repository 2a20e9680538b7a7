"""Charts as inline SVG strings: horizontal bars, box plots and a line over time.

Drawn here, in Python, so that a report is one self-contained HTML file: no script, no
library, no network; it opens offline, prints, and mails as it is. Every mark carries a
``<title>`` (the browser shows it on hover) with the exact figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 640
LABEL_W = 170
ROW_H = 22
COLORS = ("#3b6fb6", "#e08a2c", "#4a9a5b", "#b8475a")


@dataclass(frozen=True)
class Spread:
    """A distribution in five figures (and how many values it has)."""

    low: float
    q1: float
    median: float
    q3: float
    high: float
    count: int


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _svg(height: int, body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">{body}</svg>'
    )


def _label(y: float, text: str) -> str:
    short = text if len(text) <= 26 else text[:25] + "…"
    return (
        f'<text x="{LABEL_W - 6}" y="{y:.1f}" text-anchor="end" class="lbl">'
        f"<title>{escape(text)}</title>{escape(short)}</text>"
    )


def bars(
    title: str,
    rows: Sequence[tuple[str, Sequence[float]]],
    series: Sequence[str] = ("",),
    unit: str = "",
) -> str:
    """One group of bars per row (one bar per series), scaled to the largest value."""
    if not rows:
        return _empty(title)
    peak = max((max(values) for _, values in rows if values), default=0) or 1.0
    plot_w = WIDTH - LABEL_W - 70
    bar_h = 16 if len(series) == 1 else 13
    legend = _legend(series) if len(series) > 1 else ""
    top = 20 if legend else 4
    parts = [legend]
    for i, (name, values) in enumerate(rows):
        y0 = top + i * (bar_h * len(series) + 8)
        parts.append(_label(y0 + bar_h * len(series) / 2 + 4, name))
        for j, value in enumerate(values):
            w = max(1.0, plot_w * value / peak)
            y = y0 + j * bar_h
            tip = f"{name}{' ' + series[j] if series[j] else ''}: {_fmt(value)}{unit}"
            parts.append(
                f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{bar_h - 1}" '
                f'fill="{COLORS[j % len(COLORS)]}"><title>{escape(tip)}</title></rect>'
                f'<text x="{LABEL_W + w + 4:.1f}" y="{y + bar_h - 2}" class="val">'
                f"{escape(_fmt(value) + unit)}</text>"
            )
    height = top + len(rows) * (bar_h * len(series) + 8) + 4
    return _svg(height, "".join(parts), title)


def boxes(title: str, rows: Sequence[tuple[str, Spread]], unit: str = "") -> str:
    """One box plot per row: whiskers low..high, the box q1..q3, a line at the median."""
    if not rows:
        return _empty(title)
    peak = max(spread.high for _, spread in rows) or 1.0
    plot_w = WIDTH - LABEL_W - 20

    def x(value: float) -> float:
        return LABEL_W + plot_w * value / peak

    parts = []
    for i, (name, s) in enumerate(rows):
        y = 6 + i * (ROW_H + 6)
        mid = y + ROW_H / 2
        tip = (
            f"{name}: median {_fmt(s.median)}{unit}, middle half {_fmt(s.q1)} to {_fmt(s.q3)}"
            f"{unit}, range {_fmt(s.low)} to {_fmt(s.high)}{unit}, {s.count} tasks"
        )
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            f'<line x1="{x(s.low):.1f}" x2="{x(s.high):.1f}" y1="{mid}" y2="{mid}" '
            'class="whisker"/>'
            f'<rect x="{x(s.q1):.1f}" y="{y + 3}" width="{max(1.0, x(s.q3) - x(s.q1)):.1f}" '
            f'height="{ROW_H - 6}" fill="{COLORS[0]}" fill-opacity="0.35" stroke="{COLORS[0]}"/>'
            f'<line x1="{x(s.median):.1f}" x2="{x(s.median):.1f}" y1="{y + 1}" '
            f'y2="{y + ROW_H - 1}" stroke="{COLORS[1]}" stroke-width="3"/></g>'
        )
        parts.append(_label(mid + 4, f"{name} ({s.count})"))
    height = 6 + len(rows) * (ROW_H + 6) + 18
    axis_y = height - 4
    parts.append(
        f'<text x="{LABEL_W}" y="{axis_y}" class="val">0</text>'
        f'<text x="{WIDTH - 20}" y="{axis_y}" text-anchor="end" class="val">'
        f"{escape(_fmt(peak) + unit)}</text>"
    )
    return _svg(height, "".join(parts), title)


def line(
    title: str, points: Sequence[tuple[str, float, str]], low: float = 0, high: float = 100
) -> str:
    """Values over time between ``low`` and ``high``: (x label, value, hover note) each."""
    if not points:
        return _empty(title)
    height, left, right, top, bottom = 220, 40, 12, 10, 40
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    step = plot_w / max(1, len(points) - 1)

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / ((high - low) or 1))

    parts = []
    for tick in (low, (low + high) / 2, high):
        parts.append(
            f'<line x1="{left}" x2="{WIDTH - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'class="grid"/><text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" '
            f'class="val">{_fmt(tick)}</text>'
        )
    xy = [(left + i * step, y(v)) for i, (_, v, _) in enumerate(points)]
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
    parts.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[0]}" stroke-width="2"/>')
    every = max(1, len(points) // 8)
    for i, ((name, value, note), (px, py)) in enumerate(zip(points, xy, strict=True)):
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{COLORS[0]}">'
            f"<title>{escape(f'{name}: {_fmt(value)} ({note})')}</title></circle>"
        )
        if i % every == 0:
            parts.append(
                f'<text x="{px:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="val">{escape(name)}</text>'
            )
    return _svg(height, "".join(parts), title)


def _legend(series: Sequence[str]) -> str:
    parts = []
    for j, name in enumerate(series):
        x = LABEL_W + j * 110
        parts.append(
            f'<rect x="{x}" y="3" width="10" height="10" fill="{COLORS[j % len(COLORS)]}"/>'
            f'<text x="{x + 14}" y="12" class="val">{escape(name)}</text>'
        )
    return "".join(parts)


def _empty(title: str) -> str:
    return _svg(30, '<text x="4" y="20" class="val">no data yet</text>', title)
