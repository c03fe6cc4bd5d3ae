"""A list of scheduler addresses (``--scheduler a:7443,b:7443``, ``OUTRIDER_SCHEDULER`` likewise):
which one to talk to now, and where to go after a refusal or a failed connection.

With several schedulers in high availability (docs/ha.md) one leads and the others are
standbys, which answer every call ``UNAVAILABLE`` with the leader's address in the trailing
metadata key :data:`~outrider.protocol.LEADER_METADATA_KEY`. :meth:`Targets.fail` moves to that
address when a refusal names one (added to the list if it was not in it), else to the next
address in the list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from outrider.config import parse_address
from outrider.protocol import LEADER_METADATA_KEY

#: At most this many addresses in one list (a bound on what a setting may hold).
MAX_TARGETS = 16


def parse_targets(value: Any) -> list[str]:
    """``HOST:PORT[,HOST:PORT…]`` as a list; ValueError naming the bad entry."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected HOST:PORT or a comma-separated list of them, got {value!r}")
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > MAX_TARGETS:
        raise ValueError(f"at most {MAX_TARGETS} scheduler addresses, got {len(parts)}")
    out: list[str] = []
    for part in parts:
        if not part:
            raise ValueError(f"an empty address in the list {value!r}")
        _, port = parse_address(part)
        if port == 0:
            raise ValueError(f"port 0 is not an address to dial, in {value!r}")
        if part not in out:
            out.append(part)
    return out


def leader_hint(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The leader's address a standby's refusal names, or ""."""
    for key, value in metadata or ():
        if key == LEADER_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            try:
                parse_address(text)
            except ValueError:
                return ""
            return text
    return ""


class Targets:
    """The addresses, and the one in use. Not thread-safe: its owner serialises calls."""

    def __init__(self, value: str) -> None:
        self.addresses = parse_targets(value)
        self._index = 0
        #: An address left because it stopped answering (paused, hung): a standby may still name
        #: it as the leader until the takeover, so such a hint is passed over until :meth:`ok`.
        self.avoid = ""

    @property
    def current(self) -> str:
        return self.addresses[self._index]

    @property
    def several(self) -> bool:
        return len(self.addresses) > 1

    def fail(self, hint: str = "", *, silent: bool = False) -> str:
        """After a refusal or a failed connection: the leader ``hint`` names if any, else the
        next address. ``silent``: the current one stopped answering (see :attr:`avoid`).
        Returns the address to use now."""
        if silent and len(self.addresses) > 1:
            self.avoid = self.current
        if hint and hint == self.avoid and len(self.addresses) == 2:
            return self.current  # the other one names the silent one: ask it again later
        if hint and hint != self.current and hint != self.avoid:
            if hint not in self.addresses:
                if len(self.addresses) >= MAX_TARGETS:
                    return self.current
                self.addresses.append(hint)
            self._index = self.addresses.index(hint)
        elif len(self.addresses) > 1:
            self._index = (self._index + 1) % len(self.addresses)
            if self.current == self.avoid and len(self.addresses) > 2:
                self._index = (self._index + 1) % len(self.addresses)
        return self.current

    def ok(self) -> None:
        """The current address answered as the leader: no address is passed over any more."""
        self.avoid = ""

    def __str__(self) -> str:
        return ",".join(self.addresses)
