"""scheduler.core.residency.ResidencyIndex alone: the most restrictive zones win, and
downloads outside them are refused with a message that names the zones."""

from __future__ import annotations

from scheduler.core.model import Output
from scheduler.core.residency import ResidencyIndex

D1 = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32


def out(digest: str, zones: set[str] | None) -> Output:
    return Output("o", digest, 10, "file", None if zones is None else frozenset(zones))


def test_an_unknown_or_unrestricted_artifact_may_go_anywhere() -> None:
    idx = ResidencyIndex()
    assert idx.refusal("a", frozenset(), D1) is None
    idx.note(out(D1, None))
    assert idx.refusal("a", frozenset(), D1) is None
    assert idx.refusal("a", frozenset({"us"}), D1) is None


def test_a_download_outside_the_zones_is_refused_naming_them() -> None:
    idx = ResidencyIndex()
    idx.note(out(D1, {"eu-west", "eu-central"}))
    assert idx.refusal("a", frozenset({"eu-west", "lab"}), D1) is None
    why = idx.refusal("box-7", frozenset({"us-east"}), D1)
    assert why == (
        f"artifact {D1[:12]} may be processed only in zones eu-central, eu-west; agent box-7 sits in us-east"
    )
    assert idx.refusal("box-8", frozenset(), D1) == (
        f"artifact {D1[:12]} may be processed only in zones eu-central, eu-west; agent box-8 sits in no zones"
    )


def test_the_most_restrictive_tag_wins_whatever_the_order() -> None:
    idx = ResidencyIndex()
    idx.note(out(D1, None))
    idx.note(out(D1, {"eu", "us"}))  # a tag after "anywhere" restricts
    idx.note(out(D1, {"eu", "ap"}))  # narrows to eu
    idx.note(out(D1, None))  # "anywhere" later widens nothing
    assert idx.refusal("a", frozenset({"eu"}), D1) is None
    for zone in ("us", "ap"):
        why = idx.refusal("a", frozenset({zone}), D1)
        assert why is not None and "only in zones eu;" in why


def test_disjoint_tags_leave_no_zone_and_refuse_everyone() -> None:
    idx = ResidencyIndex()
    idx.note(out(D1, {"eu"}))
    idx.note(out(D1, {"us"}))
    why = idx.refusal("a", frozenset({"eu", "us"}), D1)
    assert why is not None and "only in zones (none)" in why


def test_artifacts_are_indexed_separately() -> None:
    idx = ResidencyIndex()
    idx.note(out(D1, {"eu"}))
    idx.note(out(D2, {"us"}))
    assert idx.refusal("a", frozenset({"us"}), D2) is None
    assert idx.refusal("a", frozenset({"us"}), D1) is not None
