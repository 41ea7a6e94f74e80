"""Counted consistency's storage: histograms, hourly files, windows, the mismatch cap (no database needed)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from federation.rollout import _counts


def test_quantiles_interpolate_inside_the_bucket_and_the_last_bucket_is_open():
    """p50/p99 from a histogram: interpolated within a bucket; the +Inf bucket reports its lower bound."""
    hist = _counts.empty_latency()
    assert _counts.quantile(hist, 0.5) is None
    hist["counts"][4] = 100  # 100 calls between 0.5 ms and 1 ms
    assert _counts.quantile(hist, 0.5) == pytest.approx(0.75)
    assert _counts.quantile(hist, 0.99) == pytest.approx(0.995)
    hist["counts"][-1] = 1000  # most calls slower than the last bound
    assert _counts.quantile(hist, 0.99) == _counts.LATENCY_BOUNDS_MS[-1]


def test_a_cell_round_trips_through_json():
    """A cell written and read back is the same cell (what a failed flush gives back)."""
    tally = _counts.Tally()
    tally.observe("polls", 2, compared=True, mismatched=True, files_s=0.0004, db_s=0.02)
    tally.observe("polls", 2, compared=False, error=True, files_s=0.0001)
    (key, cell), = tally.cells.items()
    again = _counts.Cell.from_json(json.loads(json.dumps(cell.to_json())))
    assert again.to_json() == cell.to_json()
    assert (cell.comparisons, cell.mismatches, cell.errors) == (1, 1, 1)
    assert sum(cell.hist["files"]) == 2 and sum(cell.hist["db"]) == 1


def test_past_hours_leave_memory_once_taken_and_come_back_when_the_write_failed(monkeypatch):
    """take() hands every hour in memory; a past hour is dropped after it; give_back() restores it."""
    now = [1_800_000_000.0 + 3590]  # ten seconds before an hour ends
    monkeypatch.setattr(_counts.time, "time", lambda: now[0])
    tally = _counts.Tally(width=60)
    tally.observe("context", 3, compared=True)
    now[0] += 20  # the next hour
    tally.observe("context", 3, compared=True, mismatched=True)
    hours, _ = tally.take()
    first = int(1_800_000_000 + 3590) // 3600 * 3600
    assert sorted(hours) == [first, first + 3600]
    assert len(tally.cells) + len(tally.sealed) == 1  # only the current hour stays
    tally.give_back(hours, [])
    assert len(tally.cells) + len(tally.sealed) == 2


def test_window_counts_buckets_that_start_inside_it(tmp_path):
    """read_cells takes the cells whose bucket starts in [since, until), from the hours the window covers."""
    hour = 1_800_000_000 // 3600 * 3600
    cells = [((hour + 60 * i, "votes", 3), {"comparisons": 1, "mismatches": 0, "errors": 0,
                                             "latency": {s: {"counts": [0] * 17, "sum_ms": 0.0} for s in ("files", "db")}})
             for i in range(60)]
    _counts.write_counts(_counts.counts_file(tmp_path, hour, 1, 0.0), 1, "x", 60, cells)
    at = lambda t: datetime.fromtimestamp(t, tz=timezone.utc)  # noqa: E731
    assert len(list(_counts.read_cells(tmp_path, at(hour), at(hour + 3600)))) == 60
    assert len(list(_counts.read_cells(tmp_path, at(hour + 90), at(hour + 600)))) == 8  # 120 .. 540
    assert list(_counts.read_cells(tmp_path, at(hour + 3600), at(hour + 7200))) == []
    assert list(_counts.read_cells(tmp_path / "none", at(hour), at(hour) + timedelta(hours=1))) == []


def test_mismatch_sample_is_capped_and_long_values_are_cut(tmp_path):
    """At most MISMATCH_CAP pending mismatches, the file rewritten past twice the cap; long texts cut."""
    tally = _counts.Tally()
    for i in range(_counts.MISMATCH_CAP + 50):
        tally.mismatch(entity="context", key=f"k{i}", phase=3, op="load_context", authority="db",
                       diff=[{"field": "text", "db": "x" * 2000, "files": "y"}])
    _, pending = tally.take()
    assert len(pending) == _counts.MISMATCH_CAP and pending[-1]["key"] == f"k{_counts.MISMATCH_CAP + 49}"
    assert len(pending[0]["diff"][0]["db"]) < 600 and "2000 chars" in pending[0]["diff"][0]["db"]
    path = tmp_path / "m.jsonl"
    lines = 0
    for _ in range(3):
        lines = _counts.append_mismatches(path, pending, lines)
    assert lines == _counts.MISMATCH_CAP == len(path.read_text().splitlines())


def test_ended_minutes_are_sealed_and_a_late_count_opens_one_again(monkeypatch, tmp_path):
    """Ten minutes of comparisons each second (issue 30): a flush every 10 s keeps only the open minute's cells
    as objects, the ended ones sealed as the bytes their file holds; a count that comes after its minute was
    sealed opens it again; the file read back has every count."""
    hour = 1_800_000_000 // 3600 * 3600
    now = [hour + 0.5]
    monkeypatch.setattr(_counts.time, "time", lambda: now[0])
    tally = _counts.Tally(width=60)
    path = _counts.counts_file(tmp_path, hour, 1, 0.0)
    for second in range(600):
        now[0] = hour + second + 0.5
        tally.observe("context", 3, compared=True, files_s=0.001, db_s=0.002)
        tally.observe("messages", 3, compared=True, mismatched=second % 100 == 0)
        if second % 10 == 9:
            hours, _ = tally.take()
            _counts.write_counts(path, 1, "x", 60, hours[hour])
    assert len(tally.cells) == 2 and len(tally.sealed) == 2 * 9  # the open minute (and minute 9, not yet sealed)
    assert all(isinstance(blob, bytes) for blob in tally.sealed.values())
    now[0] = hour + 601.0
    late = dict(tally.sealed)[(hour, "context", 3)]
    with monkeypatch.context() as m:  # a thread that read the clock in minute 0
        m.setattr(_counts.time, "time", lambda: hour + 30.2)
        tally.observe("context", 3, compared=True)
    assert (hour, "context", 3) in tally.cells and (hour, "context", 3) not in tally.sealed
    hours, _ = tally.take()
    _counts.write_counts(path, 1, "x", 60, hours[hour])
    at = lambda t: datetime.fromtimestamp(t, tz=timezone.utc)  # noqa: E731
    cells = list(_counts.read_cells(tmp_path, at(hour), at(hour + 3600)))
    by_entity = {e: [c for c in cells if c["entity"] == e] for e in ("context", "messages")}
    assert sum(c["comparisons"] for c in by_entity["context"]) == 601
    assert sum(c["comparisons"] for c in by_entity["messages"]) == 600
    assert sum(c["mismatches"] for c in by_entity["messages"]) == 6
    assert tally.sealed[(hour, "context", 3)] != late  # sealed again, with the late count


def _busy_hour(monkeypatch, tmp_path, hour: int, until: float) -> tuple[object, float]:
    """A process's counts file of *hour* as the process writes it (a Tally fed call by call, seconds
    random) from the hour's start to *until*, flushed at *until*; (its path, *until*)."""
    import random

    from federation.rollout import _status  # noqa: F401 - merge_counters below

    rnd = random.Random(5)
    clock = [float(hour)]
    monkeypatch.setattr(_counts.time, "time", lambda: clock[0])
    tally = _counts.Tally(width=60)
    while clock[0] < until:
        entity = rnd.choice(("messages", "polls", "context"))
        tally.observe(entity, rnd.choice((2, 3)), compared=rnd.random() < 0.9, mismatched=rnd.random() < 0.05,
                      error=rnd.random() < 0.02, files_s=rnd.expovariate(500), db_s=rnd.expovariate(300))
        clock[0] += rnd.expovariate(0.5)
    clock[0] = until
    hours, _ = tally.take()
    path = _counts.counts_file(tmp_path, hour, 1, 0.0)
    _counts.write_counts(path, 1, "x", 60, hours[hour])
    return path, until


def test_a_roll_up_gives_the_sums_of_the_seconds_and_is_read_instead_of_them(monkeypatch, tmp_path):
    """A process writes, beside its hour file, a roll-up (its closed minutes summed, the minute in progress
    with its seconds).  Every window's sums (counts and latency histograms) are the same read through it
    or through the seconds; a window holding the closed minutes (the default one, ending now) never opens
    the file itself, one that cuts them reads it."""
    from federation.rollout import _io, _status

    hour = 1_800_000_000 // 3600 * 3600
    path, until = _busy_hour(monkeypatch, tmp_path, hour, hour + 26 * 60 + 37.5)  # minute 26, second 37
    rolled = json.loads(path.with_name(_counts.rollup_name(path.name)).read_text())
    assert rolled["kind"] == _counts.ROLLUP and rolled["closed"]["until"] == hour + 26 * 60
    assert len(rolled["closed"]["cells"]) <= 6 and {c["start"] for c in rolled["cells"]} == {hour + 26 * 60}
    at = lambda t: datetime.fromtimestamp(t, tz=timezone.utc)  # noqa: E731

    def sums(lo: float, hi: float, rollups: bool) -> list[dict]:
        rows = _status.merge_counters(_counts.read_cells(tmp_path, at(lo), at(hi), rollups=rollups))
        for row in rows:
            for side in _counts.SIDES:
                row["latency"][side]["sum_ms"] = round(row["latency"][side]["sum_ms"], 3)
        return rows

    windows = [(hour - 86400, until + 1), (hour, until), (hour, hour + 3600), (hour - 60, hour + 26 * 60),
               (hour + 26 * 60, until), (hour + 26 * 60 + 10, until),  # the minute in progress, whole and cut
               (hour + 61.5, until), (hour + 600, hour + 1200.25), (hour + 3600, hour + 7200)]  # cutting the rest
    expected = [sums(lo, hi, rollups=False) for lo, hi in windows]
    assert sum(r["comparisons"] for r in expected[0]) > 500 and expected[-1] == []
    assert [sums(lo, hi, rollups=True) for lo, hi in windows] == expected
    # the file itself replaced by junk: a window holding the closed minutes does not see it, one cutting them does
    path.write_bytes(b"{not json")
    assert sums(hour - 86400, until + 1, rollups=True) == expected[0]
    assert sums(hour, until, rollups=True) == expected[1]
    assert not [p for p in _io.problems() if p["path"] == str(path)]
    assert sums(hour + 61.5, until, rollups=True) == []
    assert [p for p in _io.problems() if p["path"] == str(path)]


def test_a_bad_roll_up_is_said_and_the_file_itself_read(monkeypatch, tmp_path):
    """A roll-up that is not one (junk, another file's, a bad cell) is noted and the counts file is read."""
    from federation.rollout import _io, _status

    hour = 1_800_000_000 // 3600 * 3600
    path, until = _busy_hour(monkeypatch, tmp_path, hour, hour + 10 * 60 + 5)
    at = lambda t: datetime.fromtimestamp(t, tz=timezone.utc)  # noqa: E731
    expected = _status.merge_counters(_counts.read_cells(tmp_path, at(hour), at(until), rollups=False))
    rollup = path.with_name(_counts.rollup_name(path.name))
    good = json.loads(rollup.read_text())
    bad_cell = json.loads(json.dumps(good))
    bad_cell["closed"]["cells"][0]["comparisons"] = -1
    for junk, said in ((b"[1, 2", "not valid JSON"), (json.dumps({**good, "of": "other.json"}).encode(), "not a roll-up"),
                       (json.dumps(bad_cell).encode(), "a cell that is not valid")):
        rollup.write_bytes(junk)
        assert _status.merge_counters(_counts.read_cells(tmp_path, at(hour), at(until))) == expected
        assert [p for p in _io.problems() if p["path"] == str(rollup) and said in p["reason"]], junk
