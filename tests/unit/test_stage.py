"""Stop reasons: their texts (the agent's log and Completion.error show them) and which
of them still report a result."""

from __future__ import annotations

import pytest

from agent.stage import Stage, StopReason
from tests.helpers.agents import assignment


@pytest.mark.parametrize(
    "reason, text",
    [
        (StopReason.TIMEOUT, "timeout"),
        (StopReason.CANCELLED, "cancelled by the scheduler"),
        (StopReason.LEASE_LOST, "lease lost"),
        (StopReason.LEASE_UNKNOWN, "scheduler no longer knows this lease"),
        (StopReason.LEASE_EXPIRED, "lease expired"),
        (StopReason.AGENT_STOPPED, "agent stopped"),
        (StopReason.DRAINING, "agent draining"),
    ],
)
def test_stop_reason_texts(reason: StopReason, text: str) -> None:
    assert reason.value == text
    assert StopReason(text) is reason


def test_only_a_timeout_and_a_drain_still_report_their_result() -> None:
    assert [r for r in StopReason if r.reports_result] == [StopReason.TIMEOUT, StopReason.DRAINING]


def test_a_key_as_text_and_back() -> None:
    from agent.stage import key_text, parse_key_text

    assert parse_key_text(key_text(("run-7", "train", 3))) == ("run-7", "train", 3)
    assert parse_key_text("nonsense") is None


def test_a_stage_is_known_by_its_lease() -> None:
    stage = Stage(assignment("train", epoch=3, run_id="run-7"))
    assert stage.key == ("run-7", "train", 3)
    assert stage.lease.task == "train" and stage.stop_reason is None
