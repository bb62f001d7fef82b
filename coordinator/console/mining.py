"""The console's mining page: the fleet overview, expected against paid per pool and day, the discrepancy
list with its drill-down (the finding, the statement lines and transaction it is about, the officer's
resolve form) and the sweep history with each sweep's spend."""
from __future__ import annotations

from html import escape

from fastapi import APIRouter, Form, Query, Request

from custody.mining import service as ms

from coordinator.api.common import Id
from coordinator.auth import route
from coordinator.console import charts
from coordinator.console.pages import back, render
from coordinator.context import actor, node, read, write

router = APIRouter()


def expected_vs_paid(points: list[dict], title: str) -> str:
    """points: [{"day", "paid", "expected"}] in day order; paid as bars, expected as a line with dots (a day
    without an expectation breaks the line)."""
    if not points:
        return charts._empty(title)
    w, h = charts.WIDTH, charts.HEIGHT
    left, right, top_pad, bottom = charts.PAD_LEFT, charts.PAD_RIGHT, charts.PAD_TOP, charts.PAD_BOTTOM
    inner_w, inner_h = w - left - right, h - top_pad - bottom
    top = max(1, *(p["paid"] for p in points), *(p["expected"] or 0 for p in points))
    slot = inner_w / len(points)

    def y(v: int) -> float:
        return top_pad + inner_h * (1 - v / top)

    body, path, pen_down = [], [], False
    for n, p in enumerate(points):
        x = left + n * slot
        body.append(f'<rect x="{x + slot * 0.15:.1f}" y="{y(p["paid"]):.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{top_pad + inner_h - y(p["paid"]):.1f}" class="bar"><title>{p["day"]}: paid '
                    f'{charts.btc(p["paid"])} BTC</title></rect>')
        if p["expected"] is None:
            pen_down = False
            continue
        cx, cy = x + slot / 2, y(p["expected"])
        path.append(f'{"L" if pen_down else "M"}{cx:.1f},{cy:.1f}')
        pen_down = True
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5"><title>{p["day"]}: expected '
                    f'{charts.btc(p["expected"])} BTC</title></circle>')
    axes = (f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" class="axis"/>'
            f'<text x="{left - 6}" y="{top_pad + 4}" text-anchor="end">{charts.btc(top)}</text>'
            f'<text x="{left - 6}" y="{h - bottom}" text-anchor="end">0</text>'
            f'<text x="{left}" y="{h - 12}">{escape(points[0]["day"])}</text>'
            f'<text x="{w - right}" y="{h - 12}" text-anchor="end">{escape(points[-1]["day"])}</text>')
    return charts._frame(axes + "".join(body) + f'<path d="{"".join(path)}" class="line"/>', title)


@route(router, "GET", "/mining", "mining.read", page=True)
def mining_page(request: Request, flash: str = "", category: str = Query("", max_length=40),
                severity: str = Query("", max_length=10), account: str = Query("", max_length=200),
                state: str = Query("open", max_length=10), discrepancy: int | None = Query(None, ge=1, le=2**31 - 1)):
    with read(request) as s:
        overview = ms.overview(s)
        pool_charts = [(c["pool"], expected_vs_paid(c["points"], f"{c['pool']}: paid (bars) and expected (line) per day"))
                       for c in ms.chart_data(s)]
        findings = ms.discrepancies(s, category=category or None, severity=severity or None, account=account or None,
                                    state=state)
        detail = ms.discrepancy_show(s, discrepancy) if discrepancy else None
        sweeps = ms.sweep_history(s)
        fleets = sorted({a["fleet_policy"] for a in overview if a["fleet_policy"]})
    return render(request, "mining.html", flash=flash, overview=overview, pool_charts=pool_charts, findings=findings,
                  detail=detail, sweeps=sweeps, fleets=fleets, categories=sorted(ms.SEVERITY),
                  severities=ms.SEVERITIES, states=ms.STATES, accounts=[a["account"] for a in overview],
                  chosen={"category": category, "severity": severity, "account": account, "state": state},
                  max_fee_rate=ms.DEFAULT_MAX_FEE_RATE, max_inputs=ms.DEFAULT_MAX_INPUTS)


@route(router, "POST", "/mining/discrepancies/{discrepancy_id}/resolve", "mining.operate", page=True)
def resolve(request: Request, discrepancy_id: Id, note: str = Form(..., max_length=1000)):
    with write(request) as s:
        ms.discrepancy_resolve(s, discrepancy_id, note=note, actor=actor(request))
    return back(f"/mining?discrepancy={discrepancy_id}", flash=f"discrepancy #{discrepancy_id} resolved")


@route(router, "POST", "/mining/sweeps", "mining.sweep", page=True)
def sweep(request: Request, fleet: str = Form(..., max_length=200), custody: str = Form(..., max_length=200),
          fee_rate: float | None = Form(None, gt=0, le=10_000),
          max_fee_rate: float = Form(ms.DEFAULT_MAX_FEE_RATE, gt=0, le=10_000),
          max_inputs: int = Form(ms.DEFAULT_MAX_INPUTS, ge=1, le=2000)):
    with write(request) as s:
        result = ms.sweep_run(s, node(request), fleet, custody, actor=actor(request), fee_rate=fee_rate,
                              max_fee_rate=max_fee_rate, max_inputs=max_inputs)
    made = ", ".join(f"#{m['spend_id']}" for m in result["sweeps"])
    return back("/mining", flash=(f"{len(result['sweeps'])} sweep spend(s) made ({made}): the fleet key signs them next"
                                  if made else f"nothing to sweep now: {len(result['deferred'])} coin(s) deferred"))
