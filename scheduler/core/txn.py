"""The transaction object: one change to the scheduler's state, made durable as a unit.

A component applies a change in memory and records, on the :class:`Txn` it was
handed, the store writes the change makes (``txn.changes``) and whatever may only
happen once the change is durable (``txn.after``: an event shown to watchers, an
assignment sent, an ack). :class:`Journal` hands the writes to the store and runs
the ``after`` callbacks when the commit that holds them has landed, so nothing is
shown to the outside world before it would survive a crash. If the store refuses
the change (:class:`~scheduler.store.base.WriteRefused`), the ``after`` effects never
run; ``txn.aborted`` callbacks undo bookkeeping that expected them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from scheduler.store.base import Store
from scheduler.store.changes import Changes


class Txn:
    """The writes and the after-commit effects of one change."""

    __slots__ = ("_aborted", "_after", "changes")

    def __init__(self) -> None:
        self.changes = Changes()
        self._after: list[Callable[[], None]] = []
        self._aborted: list[Callable[[], None]] = []

    def after(self, effect: Callable[[], None]) -> None:
        """Run ``effect`` once this change is durable (in the order they were added)."""
        self._after.append(effect)

    def aborted(self, effect: Callable[[], None]) -> None:
        """Run ``effect`` instead of the ``after`` effects if the store refuses this change."""
        self._aborted.append(effect)

    def _settle(self, fut: asyncio.Future[None]) -> None:
        ok = not fut.cancelled() and fut.exception() is None
        for effect in self._after if ok else self._aborted:
            effect()


class Journal:
    """Commits transactions to the store; the only way the core writes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def commit(self, txn: Txn) -> asyncio.Future[None]:
        """Queue ``txn``; the future resolves (and its effects run) once it is durable."""
        fut = self.store.commit(txn.changes)
        if txn._after or txn._aborted:
            fut.add_done_callback(txn._settle)
        fut.add_done_callback(_retrieve)
        return fut

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything already applied in memory is durable: reads wait for
        it, so they never show a state that a crash could take back."""
        return self.store.barrier()


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a refusal as seen: the store logged it, and a caller that awaits still gets it."""
    if not fut.cancelled():
        fut.exception()
