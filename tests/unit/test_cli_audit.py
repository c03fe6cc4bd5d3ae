"""``outrider audit``: what --since means, and how the verbs are wired (outrider/cli_audit.py)."""
from __future__ import annotations

import datetime as dt

import pytest

from outrider import cli_audit
from outrider.cli import build_parser
from outrider.errors import InvalidArgument

NOW = 1_800_000_000.0


@pytest.mark.parametrize("text,want", [
    ("1", (0, 0.0)),
    ("42", (41, 0.0)),
    ("90s", (0, NOW - 90)),
    ("10m", (0, NOW - 600)),
    ("2h", (0, NOW - 7200)),
    ("1.5d", (0, NOW - 1.5 * 86400)),
    ("2026-11-30T01:00:00Z", (0, dt.datetime(2026, 11, 30, 1, tzinfo=dt.timezone.utc).timestamp())),
    ("2026-11-30T01:00:00", (0, dt.datetime(2026, 11, 30, 1, tzinfo=dt.timezone.utc).timestamp())),  # UTC
    ("2026-11-30T02:00:00+01:00", (0, dt.datetime(2026, 11, 30, 1, tzinfo=dt.timezone.utc).timestamp())),
])
def test_since_is_a_seq_a_duration_or_a_time(text: str, want: tuple[int, float]) -> None:
    assert cli_audit.parse_since(text, now=NOW) == want


def test_a_since_that_is_none_of_them_says_what_it_takes() -> None:
    with pytest.raises(InvalidArgument, match="duration ago"):
        cli_audit.parse_since("yesterday")


def test_audit_lists_and_audit_verify_verifies() -> None:
    args = build_parser().parse_args(["audit", "--since", "10m", "--identity", "scheduler", "--json"])
    assert args.func is cli_audit.cmd_audit and args.since == "10m" and args.identity == "scheduler" and args.json
    args = build_parser().parse_args(["audit", "verify", "--json"])
    assert args.func is cli_audit.cmd_verify and args.json


def test_iso_times_are_utc_with_microseconds() -> None:
    assert cli_audit.iso(1_800_000_000_123_456) == "2027-01-15T08:00:00.123456+00:00"
