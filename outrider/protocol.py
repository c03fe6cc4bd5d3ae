"""The vocabulary of the wire contract that both ends must spell the same way.

The protobuf messages carry these as strings (``Completion.outcome``,
``ArtifactRef.kind``); the scheduler, the agent and the client name them
through these enums so a typo is an attribute error, not a silent mismatch.
"""

from __future__ import annotations

import enum


class Outcome(str, enum.Enum):
    """How an attempt of a task ended, as the agent reports it (``Completion.outcome``)."""

    SUCCEEDED = "succeeded"  #: exit code 0 and every declared output published
    FAILED = "failed"  #: non-zero exit, a missing output, or the agent could not run it
    TIMEOUT = "timeout"  #: ran past its ``timeout``; the process group was killed
    CANCELLED = "cancelled"  #: stopped on purpose (cancel, lease lost, agent stopping)
    RELEASED = "released"  #: given back without a result: the agent could not run it, or is draining


class ArtifactKind(str, enum.Enum):
    """What an artifact's bytes are (``ArtifactRef.kind``)."""

    FILE = "file"  #: the bytes of one file
    DIR = "dir"  #: a directory packed as a deterministic tar


OUTCOMES = frozenset(o.value for o in Outcome)
ARTIFACT_KINDS = frozenset(k.value for k in ArtifactKind)


_HEX = frozenset("0123456789abcdef")


def is_digest(text: str) -> bool:
    """True for an artifact digest as the wire carries it: sha256, 64 lowercase hex characters."""
    return len(text) == 64 and set(text) <= _HEX


#: The trailing metadata key of the scheduler's refusal of a revoked agent (``UNAUTHENTICATED``);
#: its value is the revoked name. The agent recognises its revocation by this key, not by the
#: wording of the message, and stops for good (``agent.daemon.EXIT_REVOKED``).
REVOKED_METADATA_KEY = "outrider-revoked"


def revoked_message(name: str, revoked_at: str, revoked_by: str, reason: str = "") -> str:
    """The refusal every call of a revoked agent gets: ``agent NAME was revoked at TIME by ID``,
    then the reason, if one was given. (The agent's own log says what to do.)"""
    why = f" ({reason})" if reason else ""
    return f"agent {name} was revoked at {revoked_at} by {revoked_by}{why}; its certificate is refused for good"


#: The trailing metadata key of a standby scheduler's refusal (``UNAVAILABLE``, "not the leader;
#: the leader is HOST:PORT"); its value is the leader's advertised HOST:PORT (empty while none
#: is known). Clients and agents move to that address without waiting (``outrider.targets``).
LEADER_METADATA_KEY = "outrider-leader"
