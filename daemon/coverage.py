"""What the store holds, as a picture a person reads at a glance: pure, no I/O.

One row per series, one cell per day (per hour for short lookbacks), each cell
coloured by what its bars are: all stored (or confirmed empty with some
stored), all confirmed empty, some missing, none expected (market closed),
before the series' genesis, or not settled yet. The facts come from the store
(`candled.store.coverage`); `render_html` and `render_svg` draw the same
picture for `/coverage` and `candled coverage --out`.
"""

from __future__ import annotations

import enum
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from candled.domain import SeriesKey, Timeframe
from candled.domain.ranges import Range, count_bars, subtract_ranges
from candled.gaps import missing_ranges

HOUR, DAY, WEEK = timedelta(hours=1), timedelta(days=1), timedelta(weeks=1)
# At most this many columns: a longer lookback is drawn in coarser cells.
MAX_CELLS = 120


class CellState(enum.StrEnum):
    """What one cell's bars are; the value is the CSS class suffix and legend key."""

    COMPLETE = "complete"  # every expected bar stored or confirmed empty, some stored
    EMPTY = "empty"  # every expected bar confirmed empty by the venue
    MISSING = "missing"  # some expected bar neither stored nor confirmed empty
    CLOSED = "closed"  # the market expects no bar here
    BEFORE_GENESIS = "before-genesis"  # the series did not exist yet
    PENDING = "pending"  # not settled yet: judged later

    @property
    def label(self) -> str:
        """The legend's words for the state."""
        return _LABELS[self]


_LABELS = {
    CellState.COMPLETE: "complete",
    CellState.EMPTY: "confirmed empty",
    CellState.MISSING: "missing",
    CellState.CLOSED: "market closed",
    CellState.BEFORE_GENESIS: "before genesis",
    CellState.PENDING: "not settled yet",
}
_COLOURS = {
    CellState.COMPLETE: "#2e7d32",
    CellState.EMPTY: "#90caf9",
    CellState.MISSING: "#d32f2f",
    CellState.CLOSED: "#e0e0e0",
    CellState.BEFORE_GENESIS: "#f5f5f5",
    CellState.PENDING: "#fff59d",
}


@dataclass(frozen=True)
class Counts:
    """Bars of a cell or a series: expected by the calendar, stored, confirmed empty, missing."""

    expected: int = 0
    stored: int = 0
    empty: int = 0
    missing: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.expected + other.expected,
            self.stored + other.stored,
            self.empty + other.empty,
            self.missing + other.missing,
        )


@dataclass(frozen=True)
class Cell:
    """One cell of a row: its time span, state and bar counts."""

    start: datetime
    end: datetime
    state: CellState
    counts: Counts


@dataclass(frozen=True)
class SeriesFacts:
    """What the store and the calendar say about one series over the picture's span.

    `expected` holds the calendar's expected bars (half-open, aligned),
    `islands` the stored runs as `(first, last)` open times (both inclusive,
    as `candled.store.healing.islands` returns them), `confirmed_empty` the
    ranges the venue confirmed empty, `settled_end` the end of the bars that
    may be judged now."""

    key: SeriesKey
    expected: Sequence[Range]
    islands: Sequence[tuple[datetime, datetime]]
    confirmed_empty: Sequence[Range]
    genesis: datetime | None
    settled_end: datetime


@dataclass(frozen=True)
class SeriesRow:
    """One row of the picture."""

    key: SeriesKey
    cells: list[Cell]
    totals: Counts


@dataclass(frozen=True)
class Coverage:
    """The whole picture: the cells' span, the rows and the grand totals."""

    generated_at: datetime
    start: datetime
    end: datetime
    cell: timedelta
    rows: list[SeriesRow] = field(default_factory=list)

    @property
    def totals(self) -> Counts:
        """Bars over every series."""
        return sum((r.totals for r in self.rows), Counts())


def cell_span(start: datetime, end: datetime) -> timedelta:
    """Hours for a short span, else days, else weeks: at most MAX_CELLS columns."""
    for span in (HOUR, DAY):
        if (end - start) / span <= MAX_CELLS:
            return span
    return WEEK


def cell_starts(start: datetime, end: datetime, span: timedelta) -> list[datetime]:
    """Cell boundaries covering [start, end), aligned to UTC hours, days or Mondays."""
    unit = Timeframe.parse({HOUR: "1h", DAY: "1d", WEEK: "1w"}[span])
    first = unit.floor(start)
    return list(unit.bars(first, end))


def _clip(ranges: Iterable[Range], lo: datetime, hi: datetime) -> list[Range]:
    return [(max(s, lo), min(e, hi)) for s, e in ranges if s < hi and e > lo]


def series_row(facts: SeriesFacts, starts: Sequence[datetime], span: timedelta) -> SeriesRow:
    """Classify each cell of one series from its facts."""
    tf = facts.key.tf
    first_bar = tf.ceil(facts.genesis) if facts.genesis is not None else None
    wanted = [(max(s, first_bar) if first_bar else s, e) for s, e in facts.expected]
    wanted = [(s, min(e, facts.settled_end)) for s, e in wanted if s < min(e, facts.settled_end)]
    missing = missing_ranges(wanted, facts.islands, tf, confirmed_empty=facts.confirmed_empty)
    present = [(tf.ceil(a), tf.next(b)) for a, b in facts.islands]
    stored = subtract_ranges(wanted, subtract_ranges(wanted, present))
    empty = subtract_ranges(subtract_ranges(wanted, stored), missing)
    cells, totals = [], Counts()
    for lo in starts:
        hi = lo + span
        counts = Counts(
            count_bars(_clip(wanted, lo, hi), tf),
            count_bars(_clip(stored, lo, hi), tf),
            count_bars(_clip(empty, lo, hi), tf),
            count_bars(_clip(missing, lo, hi), tf),
        )
        cells.append(Cell(lo, hi, _state(lo, hi, counts, first_bar, facts, tf), counts))
        totals += counts
    return SeriesRow(facts.key, cells, totals)


def _state(
    lo: datetime,
    hi: datetime,
    counts: Counts,
    first_bar: datetime | None,
    facts: SeriesFacts,
    tf: Timeframe,
) -> CellState:
    if first_bar is not None and hi <= first_bar:
        return CellState.BEFORE_GENESIS
    if counts.missing:
        return CellState.MISSING
    if lo >= facts.settled_end:
        return CellState.PENDING
    if counts.expected == 0:
        # Bars the calendar expects later in this cell are not settled yet.
        later = _clip(facts.expected, facts.settled_end, hi)
        return CellState.PENDING if count_bars(later, tf) else CellState.CLOSED
    if counts.stored == 0:
        return CellState.EMPTY
    return CellState.COMPLETE


def build(
    facts: Sequence[SeriesFacts], start: datetime, end: datetime, generated_at: datetime
) -> Coverage:
    """The picture of `facts` over [start, end)."""
    span = cell_span(start, end)
    starts = cell_starts(start, end, span)
    rows = [series_row(f, starts, span) for f in sorted(facts, key=lambda f: f.key)]
    return Coverage(generated_at, starts[0] if starts else start, end, span, rows)


# --- drawing -------------------------------------------------------------------


def _when(ts: datetime, span: timedelta) -> str:
    return ts.strftime("%Y-%m-%d %H:00" if span == HOUR else "%Y-%m-%d")


def _title(key: SeriesKey, cell: Cell, span: timedelta) -> str:
    c = cell.counts
    return (
        f"{key} {_when(cell.start, span)} UTC: {cell.state.label}; {c.stored} stored, "
        f"{c.empty} confirmed empty, {c.missing} missing of {c.expected} expected"
    )


def _percent(c: Counts) -> str:
    if not c.expected:
        return "-"
    return f"{100 * (c.stored + c.empty) / c.expected:.2f}%"


_CSS = (
    "body{font:13px system-ui,sans-serif;margin:16px;color:#212121}"
    "table{border-collapse:collapse}td,th{padding:0}"
    "th.series{text-align:left;padding-right:8px;white-space:nowrap;font-weight:normal}"
    "thead th:not(.time){padding:0 6px;vertical-align:bottom}"
    "td.cell{width:10px;height:16px;border:1px solid #fff}"
    "td.num{text-align:right;padding:0 6px;white-space:nowrap}"
    "th.time{font-weight:normal;font-size:10px;writing-mode:vertical-rl;height:80px}"
    ".legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;"
    "vertical-align:middle}"
    + "".join(f".s-{s.value}{{background:{colour}}}" for s, colour in _COLOURS.items())
)


def render_html(cov: Coverage) -> str:
    """A self-contained page: no script, nothing fetched from the network."""
    span = cov.cell
    label_every = max(1, len(cov.rows[0].cells) // 12) if cov.rows else 1
    head = "".join(
        f'<th class="time">{_when(c.start, span) if i % label_every == 0 else ""}</th>'
        for i, c in enumerate(cov.rows[0].cells if cov.rows else [])
    )
    body = []
    for row in cov.rows:
        cells = "".join(
            f'<td class="cell s-{c.state.value}" data-start="{c.start.isoformat()}"'
            f' data-state="{c.state.value}" title="{html.escape(_title(row.key, c, span))}"></td>'
            for c in row.cells
        )
        t = row.totals
        body.append(
            f'<tr data-series="{html.escape(str(row.key))}">'
            f'<th class="series">{html.escape(str(row.key))}</th>{cells}'
            f'<td class="num">{t.expected}</td><td class="num">{t.stored}</td>'
            f'<td class="num">{t.empty}</td><td class="num missing">{t.missing}</td>'
            f'<td class="num">{_percent(t)}</td></tr>'
        )
    t = cov.totals
    legend = "".join(f'<span class="s-{s.value}"></span>{s.label}' for s in CellState)
    unit = {HOUR: "hour", DAY: "day", WEEK: "week"}[span]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>candled coverage</title>"
        '<meta http-equiv="refresh" content="60">'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Coverage</h1><p>{len(cov.rows)} series, one cell per {unit} (UTC), "
        f"{_when(cov.start, span)} to {cov.end.strftime('%Y-%m-%d %H:%M')}; "
        f"generated {cov.generated_at.strftime('%Y-%m-%d %H:%M:%S')} UTC.</p>"
        f'<p class="legend">{legend}</p>'
        f'<table id="coverage"><thead><tr><th></th>{head}'
        "<th>expected</th><th>stored</th><th>empty</th><th>missing</th><th>complete</th>"
        f"</tr></thead><tbody>{''.join(body)}</tbody>"
        f'<tfoot><tr id="totals"><th class="series">all series</th>'
        f'<td colspan="{len(cov.rows[0].cells) if cov.rows else 0}"></td>'
        f'<td class="num">{t.expected}</td><td class="num">{t.stored}</td>'
        f'<td class="num">{t.empty}</td><td class="num missing">{t.missing}</td>'
        f'<td class="num">{_percent(t)}</td></tr></tfoot></table></body></html>\n'
    )


def render_svg(cov: Coverage) -> str:
    """The same picture as an SVG image (cells with tooltips, names, totals)."""
    size, name_w, top = 12, 220, 40
    columns = len(cov.rows[0].cells) if cov.rows else 0
    width = name_w + columns * size + 260
    height = top + len(cov.rows) * (size + 4) + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="11">',
        f'<text x="0" y="14" font-size="14">candled coverage, generated '
        f"{cov.generated_at.strftime('%Y-%m-%d %H:%M:%S')} UTC</text>",
    ]
    for r, row in enumerate(cov.rows):
        y = top + r * (size + 4)
        out.append(f'<text x="0" y="{y + size - 2}">{html.escape(str(row.key))}</text>')
        for c, cell in enumerate(row.cells):
            out.append(
                f'<rect x="{name_w + c * size}" y="{y}" width="{size - 1}" height="{size}"'
                f' fill="{_COLOURS[cell.state]}" class="s-{cell.state.value}">'
                f"<title>{html.escape(_title(row.key, cell, cov.cell))}</title></rect>"
            )
        t = row.totals
        out.append(
            f'<text x="{name_w + columns * size + 8}" y="{y + size - 2}">'
            f"{t.missing} missing of {t.expected}, {_percent(t)}</text>"
        )
    y = top + len(cov.rows) * (size + 4) + 20
    x = 0
    for state in CellState:
        out.append(f'<rect x="{x}" y="{y}" width="{size}" height="{size}" '
                   f'fill="{_COLOURS[state]}"/>')  # fmt: skip
        out.append(f'<text x="{x + size + 4}" y="{y + size - 2}">{state.label}</text>')
        x += size + 12 + 7 * len(state.label)
    out.append("</svg>\n")
    return "\n".join(out)
