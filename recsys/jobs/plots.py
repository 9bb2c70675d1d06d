"""Small dependency-free SVG charts for run reports (loss curve, attention weights)."""
from __future__ import annotations

from html import escape

import numpy as np

WIDTH, HEIGHT, PAD = 640, 320, 48


def _frame(title: str, body: str, xlabel: str, ylabel: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>'
            f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD / 2}" y2="{HEIGHT - PAD}" stroke="black"/>'
            f'<line x1="{PAD}" y1="{PAD / 2 + 10}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="black"/>'
            f'<text x="{WIDTH / 2}" y="{HEIGHT - 10}" text-anchor="middle">{escape(xlabel)}</text>'
            f'<text x="14" y="{HEIGHT / 2}" text-anchor="middle" transform="rotate(-90 14 {HEIGHT / 2})">'
            f'{escape(ylabel)}</text>{body}</svg>')


def line_chart_svg(values, title: str, xlabel: str = "step", ylabel: str = "value", max_points: int = 400) -> str:
    y = np.asarray(values, dtype=np.float64)
    y = y[np.isfinite(y)]
    if len(y) == 0:
        return _frame(title, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>',
                      xlabel, ylabel)
    if len(y) > max_points:  # average into buckets so the path stays small
        edges = np.linspace(0, len(y), max_points + 1).astype(int)
        y = np.array([y[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    lo, hi = float(y.min()), float(y.max())
    span = hi - lo or 1.0
    xs = PAD + (WIDTH - 1.5 * PAD) * np.arange(len(y)) / max(len(y) - 1, 1)
    ys = (HEIGHT - PAD) - (HEIGHT - 1.5 * PAD - 10) * (y - lo) / span
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{v:.1f}" for i, (x, v) in enumerate(zip(xs, ys)))
    body = (f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
            f'<text x="{PAD - 4}" y="{HEIGHT - PAD}" text-anchor="end">{lo:.3g}</text>'
            f'<text x="{PAD - 4}" y="{PAD / 2 + 14}" text-anchor="end">{hi:.3g}</text>')
    return _frame(title, body, xlabel, ylabel)


def bar_chart_svg(labels, values, title: str, ylabel: str = "value") -> str:
    values = np.asarray(values, dtype=np.float64)
    hi = float(values.max()) if len(values) and values.max() > 0 else 1.0
    n = max(len(values), 1)
    slot = (WIDTH - 1.5 * PAD) / n
    bars = []
    for i, (label, value) in enumerate(zip(labels, values)):
        h = (HEIGHT - 1.5 * PAD - 20) * value / hi
        x = PAD + i * slot + slot * 0.15
        bars.append(f'<rect x="{x:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="#ff7f0e"/><text x="{x + slot * 0.35:.1f}" y="{HEIGHT - PAD - h - 4:.1f}" '
                    f'text-anchor="middle">{value:.2f}</text><text x="{x + slot * 0.35:.1f}" '
                    f'y="{HEIGHT - PAD + 14}" text-anchor="middle">{escape(str(label))}</text>')
    return _frame(title, "".join(bars), "", ylabel)
