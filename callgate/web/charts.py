"""Bar charts as inline SVG, rendered on the server (no script, nothing external: the CSP holds).

Pure: labels and numbers in, markup out. Values are Decimal or int; their heights are computed
with exact arithmetic and rounded to whole pixels only when drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from html import escape

WIDTH = 440
HEIGHT = 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 10, 38


def _px(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _nice_max(peak: Decimal) -> Decimal:
    """A round axis maximum at or above ``peak`` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return Decimal(1)
    exponent = peak.adjusted()
    for step in (1, 2, 5, 10):
        candidate = Decimal(step).scaleb(exponent)
        if candidate >= peak:
            return candidate
    return Decimal(10).scaleb(exponent)  # pragma: no cover - 10 always fits


def bar_chart(labels: Sequence[str], values: Sequence[Decimal | int], *, title: str) -> str:
    """One bar per label, a y axis from 0 to a round maximum, the value above each bar."""
    numbers = [Decimal(v) for v in values]
    top = _nice_max(max(numbers, default=Decimal(0)))
    plot_w = Decimal(WIDTH - _LEFT - _RIGHT)
    plot_h = Decimal(HEIGHT - _TOP - _BOTTOM)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    for i in range(5):  # grid lines and axis labels
        level = top * i / 4
        y = _px(_TOP + plot_h - plot_h * i / 4)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y}" x2="{WIDTH - _RIGHT}" y2="{y}" stroke="#e2e6ec"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4}" font-size="10" text-anchor="end" '
            f'fill="#5b6675">{escape(_short(level))}</text>'
        )
    if not numbers:
        parts.append(
            f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" font-size="12" text-anchor="middle" '
            'fill="#5b6675">no calls</text>'
        )
    slot = plot_w / max(1, len(numbers))
    every = max(1, len(numbers) // 8)  # at most about 8 labels under the axis
    for i, (label, value) in enumerate(zip(labels, numbers, strict=True)):
        h = plot_h * value / top
        x = _px(_LEFT + slot * i + slot / 8)
        w = max(1, _px(slot * 3 / 4))
        y = _px(_TOP + plot_h - h)
        parts.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{max(0, _px(h))}" fill="#2d5f9a">'
            f"<title>{escape(label)}: {escape(str(value))}</title></rect>"
        )
        if len(numbers) <= 16:
            parts.append(
                f'<text x="{x + w // 2}" y="{y - 2}" font-size="9" text-anchor="middle" '
                f'fill="#1d2430">{escape(_short(value))}</text>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + w // 2}" y="{HEIGHT - _BOTTOM + 14}" font-size="9" '
                f'text-anchor="middle" fill="#5b6675">{escape(label)}</text>'
            )
    parts.append(
        f'<line x1="{_LEFT}" y1="{_TOP + int(plot_h)}" x2="{WIDTH - _RIGHT}" '
        f'y2="{_TOP + int(plot_h)}" stroke="#5b6675"/></svg>'
    )
    return "".join(parts)


def _short(value: Decimal) -> str:
    """A number for a chart label: no trailing zeros, at most 2 decimals."""
    text = f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP).normalize():f}"
    return text
