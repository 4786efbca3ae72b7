"""The coverage picture's classification and drawing, pure (no store, no clock)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from candled import calendars
from candled.coverage import (
    DAY,
    HOUR,
    WEEK,
    CellState,
    Counts,
    SeriesFacts,
    build,
    cell_span,
    render_html,
    render_svg,
)
from candled.domain import DataProfile, SeriesKey

BTC = SeriesKey("binance", "BTCUSDT", "1m")
AAPL = SeriesKey("alpaca", "AAPL", "15m")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_cell_is_an_hour_for_short_spans_a_day_or_a_week_for_longer() -> None:
    t = at("2026-11-30 00:00")
    assert cell_span(t, t + timedelta(hours=6)) == HOUR
    assert cell_span(t, t + timedelta(days=30)) == DAY
    assert cell_span(t, t + timedelta(days=400)) == WEEK


def crypto_facts() -> SeriesFacts:
    # Three hours of 1m bars, 12:00-15:00; the series began at 12:30; the bars
    # of 13:10-13:20 are missing, 14:00-14:05 confirmed empty; everything
    # before 14:50 is settled.
    start, end = at("2026-11-30 12:00"), at("2026-11-30 15:00")
    islands = [
        (at("2026-11-30 12:30"), at("2026-11-30 13:09")),
        (at("2026-11-30 13:20"), at("2026-11-30 13:59")),
        (at("2026-11-30 14:05"), at("2026-11-30 14:49")),
    ]
    return SeriesFacts(
        BTC,
        expected=[(start, end)],
        islands=islands,
        confirmed_empty=[(at("2026-11-30 14:00"), at("2026-11-30 14:05"))],
        genesis=at("2026-11-30 12:30"),
        settled_end=at("2026-11-30 14:50"),
    )


def test_each_cell_says_what_its_bars_are() -> None:
    cov = build(
        [crypto_facts()], at("2026-11-30 12:00"), at("2026-11-30 15:00"), at("2026-11-30 15:00")
    )
    assert cov.cell == HOUR
    (row,) = cov.rows
    states = [c.state for c in row.cells]
    # 12:00 holds the genesis (bars before it are not expected), 13:00 a hole,
    # 14:00 confirmed-empty bars beside stored ones and its last ten not settled.
    assert states == [CellState.COMPLETE, CellState.MISSING, CellState.COMPLETE]
    assert row.cells[0].counts == Counts(expected=30, stored=30, empty=0, missing=0)
    assert row.cells[1].counts == Counts(expected=60, stored=50, empty=0, missing=10)
    assert row.cells[2].counts == Counts(expected=50, stored=45, empty=5, missing=0)
    assert row.totals == Counts(expected=140, stored=125, empty=5, missing=10)


def test_before_genesis_all_empty_and_unsettled_cells() -> None:
    f = crypto_facts()
    facts = SeriesFacts(
        BTC,
        expected=[(at("2026-11-30 10:00"), at("2026-11-30 17:00"))],
        islands=f.islands,
        confirmed_empty=[(at("2026-11-30 14:00"), at("2026-11-30 15:00"))],
        genesis=at("2026-11-30 12:00"),
        settled_end=at("2026-11-30 16:00"),
    )
    cov = build([facts], at("2026-11-30 10:00"), at("2026-11-30 17:00"), at("2026-11-30 17:00"))
    states = [c.state for c in cov.rows[0].cells]
    assert states == [
        CellState.BEFORE_GENESIS,  # 10:00
        CellState.BEFORE_GENESIS,  # 11:00
        CellState.MISSING,  # 12:00: 12:00-12:30 neither stored nor confirmed
        CellState.MISSING,  # 13:00
        CellState.COMPLETE,  # 14:00: stored bars and the rest confirmed empty
        CellState.MISSING,  # 15:00: settled and absent
        CellState.PENDING,  # 16:00: not settled yet
    ]


def test_market_closed_cells_on_an_equity_weekend() -> None:
    # NYSE, Friday 2026-12-04 to Monday 2026-12-07 (UTC days): the weekend expects nothing.
    start, end = at("2026-12-04 00:00"), at("2026-12-08 00:00")
    expected = calendars.expected_ranges(DataProfile.EQUITY, "XNYS", AAPL.tf, start, end)
    islands = [(s, AAPL.tf.add(e, -1)) for s, e in expected]  # every expected bar stored
    facts = SeriesFacts(AAPL, expected, islands, [], None, end)
    cov = build([facts], start, end, end)
    # Four UTC days are 96 hours: hourly cells; sessions run 14:30-21:00 UTC.
    by_day: dict[str, set[CellState]] = {}
    for c in cov.rows[0].cells:
        by_day.setdefault(c.start.strftime("%a"), set()).add(c.state)
    assert by_day["Sat"] == by_day["Sun"] == {CellState.CLOSED}
    assert by_day["Fri"] == by_day["Mon"] == {CellState.CLOSED, CellState.COMPLETE}
    assert cov.totals.missing == 0 and cov.totals.expected == 2 * 26


def test_the_page_and_the_image_draw_every_cell_without_script() -> None:
    cov = build(
        [crypto_facts()], at("2026-11-30 12:00"), at("2026-11-30 15:00"), at("2026-11-30 15:00")
    )
    page = render_html(cov)
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert page.count('data-state="missing"') == 1 and page.count('data-state="complete"') == 2
    assert "binance:BTCUSDT:1m" in page and ">10</td>" in page  # the row's missing total
    svg = ET.fromstring(render_svg(cov))
    rects = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("class")]
    assert [r.get("class") for r in rects] == ["s-complete", "s-missing", "s-complete"]
