"""Small SVG charts drawn on the server: no chart library, no script, readable without JavaScript."""
from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 80, 16, 16, 36


def btc(sats: int) -> str:
    """Satoshis as a BTC string with 8 decimals, trailing zeros trimmed to at least 2."""
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), 100_000_000)
    text = f"{frac:08d}".rstrip("0")
    return f"{sign}{whole:,}.{text.ljust(2, '0')}"


def _frame(body: str, title: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{body}</svg>')


def _empty(title: str) -> str:
    return _frame(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="muted">no data yet</text>', title)


def balance_line(points: list[dict], title: str = "Confirmed balance by block height") -> str:
    """points: [{"height", "balance"}] in height order; drawn as a step line (a balance holds until it changes)."""
    if not points:
        return _empty(title)
    heights = [p["height"] for p in points]
    values = [p["balance"] for p in points]
    marks = list(zip(heights, values))
    if len(points) == 1:          # one change so far: the balance has held since, so draw a level line
        heights, values = heights + [heights[0] + 1], values + values
    x0, x1 = min(heights), max(heights)
    top = max(max(values), 1)
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(h: int) -> float:
        return PAD_LEFT + (inner_w * (h - x0) / (x1 - x0) if x1 > x0 else inner_w / 2)

    def y(v: int) -> float:
        return PAD_TOP + inner_h * (1 - v / top)

    path = [f"M{x(heights[0]):.1f},{y(values[0]):.1f}"]
    for h, v, prev in zip(heights[1:], values[1:], values):
        path.append(f"L{x(h):.1f},{y(prev):.1f}L{x(h):.1f},{y(v):.1f}")
    axes = (f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{HEIGHT - PAD_BOTTOM}" class="axis"/>'
            f'<line x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH - PAD_RIGHT}" y2="{HEIGHT - PAD_BOTTOM}" class="axis"/>'
            f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 4}" text-anchor="end">{btc(top)}</text>'
            f'<text x="{PAD_LEFT - 6}" y="{HEIGHT - PAD_BOTTOM}" text-anchor="end">0</text>'
            f'<text x="{PAD_LEFT}" y="{HEIGHT - 12}">block {x0}</text>'
            f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 12}" text-anchor="end">{f"block {x1}" if len(points) > 1 else "now"}</text>')
    dots = "".join(f'<circle cx="{x(h):.1f}" cy="{y(v):.1f}" r="2.5"><title>block {h}: {btc(v)} BTC</title></circle>'
                   for h, v in marks)
    return _frame(axes + f'<path d="{"".join(path)}" class="line"/>' + dots, title)


def value_histogram(buckets: list[dict], title: str = "Unspent coins by value") -> str:
    """buckets: [{"from", "to", "count", "value"}] (powers of ten), one bar per bucket."""
    if not buckets:
        return _empty(title)
    top = max(b["count"] for b in buckets)
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = inner_w / len(buckets)
    bars = []
    for n, b in enumerate(buckets):
        h = inner_h * b["count"] / top
        left = PAD_LEFT + n * slot + slot * 0.1
        label = f"{btc(b['from'])}–{btc(b['to'] + 1)} BTC" if b["from"] >= 1_000_000 else f"{b['from']:,}+ sat"
        bars.append(f'<rect x="{left:.1f}" y="{PAD_TOP + inner_h - h:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" class="bar">'
                    f'<title>{escape(label)}: {b["count"]:,} coins, {btc(b["value"])} BTC</title></rect>'
                    f'<text x="{left + slot * 0.4:.1f}" y="{HEIGHT - 20}" text-anchor="middle">{_short(b["from"])}</text>'
                    f'<text x="{left + slot * 0.4:.1f}" y="{PAD_TOP + inner_h - h - 4:.1f}" text-anchor="middle">{b["count"]:,}</text>')
    axes = (f'<line x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH - PAD_RIGHT}" y2="{HEIGHT - PAD_BOTTOM}" class="axis"/>'
            f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 4}" text-anchor="end">{top:,}</text>'
            f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" text-anchor="middle">coin value from (sat)</text>')
    return _frame(axes + "".join(bars), title)


def _short(sats: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if sats >= size:
            return f"{sats // size:,}{unit}"
    return str(sats)
