"""One grammar of durations and moments for ``--older-than``, ``--since``, ``?since=`` and ``?window=``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
import pytest

from federation import cli
from federation.apps import dashboard
from federation.domain import moments
from federation.errors import ValidationError

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, delta", [("2w", timedelta(weeks=2)), ("90m", timedelta(minutes=90)),
                                         ("45s", timedelta(seconds=45)), (" 7D ", timedelta(days=7))])
def test_every_reader_takes_the_same_durations(text, delta):
    """What --older-than accepts, --since and ?since= accept as a duration back from now."""
    assert moments.parse_duration(text) == delta
    assert moments.parse_moment(text, NOW) == NOW - delta
    assert dashboard.parse_since(text, NOW) == NOW - delta
    moment = cli._moment(text)
    assert abs((datetime.now(timezone.utc) - delta) - moment) < timedelta(seconds=60)


def test_the_dashboard_windows_are_durations_of_the_same_grammar():
    assert dashboard.WINDOWS == {"24h": timedelta(hours=24), "7d": timedelta(days=7)}


@pytest.mark.parametrize("text, moment", [("2026-11-30T10:00:00Z", NOW - timedelta(hours=2)),
                                          ("2026-11-30T10:00:00", NOW - timedelta(hours=2)),
                                          ("2026-11-30T11:00:00+01:00", NOW - timedelta(hours=2))])
def test_moments_are_iso_8601_utc_unless_they_say_otherwise(text, moment):
    assert moments.parse_moment(text, NOW) == moment


@pytest.mark.parametrize("bad", ["yesterday", "1.5h", "", "-2h"])
def test_a_bad_moment_is_a_typed_error_everywhere(bad):
    with pytest.raises(ValidationError, match="neither an ISO 8601 time nor a duration"):
        moments.parse_moment(bad, NOW)
    with pytest.raises(dashboard.BadRequest, match=r"^since="):
        dashboard.parse_since(bad, NOW)
    with pytest.raises(click.BadParameter):
        cli._moment(bad)


@pytest.mark.parametrize("text, moment", [
    ("05:58:31Z", datetime(2026, 11, 30, 5, 58, 31, tzinfo=timezone.utc)),      # earlier today
    ("05:58:31", datetime(2026, 11, 30, 5, 58, 31, tzinfo=timezone.utc)),       # UTC unless it says otherwise
    ("07:00:00Z", datetime(2026, 11, 29, 7, 0, 0, tzinfo=timezone.utc)),        # still to come today: yesterday's
    ("06:30+01:00", datetime(2026, 11, 30, 5, 30, 0, tzinfo=timezone.utc)),     # a zone of its own
])
def test_a_time_of_day_is_the_last_such_moment(text, moment):
    """`rollout set 3 --since 12:03:41Z`, as an operator types it: the last such moment, never one to come."""
    now = datetime(2026, 11, 30, 6, 0, 0, tzinfo=timezone.utc)
    assert moments.parse_moment(text, now) == moment
    with pytest.raises(ValidationError):
        moments.parse_moment("25:61", now)
