"""Who owns what: the ownership checks that the rows of :data:`scheduler.auth.RULES` name.

The interceptor has already checked the caller's certificate and role; the servicers ask
here what the caller may see and change. Every run records the SPIFFE ID that submitted
it (``Run.submitter``). An admin sees and changes everything. A submitter:

- ``run``: reads, watches, explains, follows the logs of, cancels and retries only its
  own runs; another's run is answered ``NOT_FOUND`` with the very words of a run that
  does not exist, so run ids cannot be probed;
- ``own runs``: lists only its own runs, and how many others' runs it was not shown
  (counts, not contents);
- ``artifact``: downloads only artifacts reachable from its own runs (their code
  bundles, the outputs of their tasks, their checkpoints); ``Stat`` of any other digest
  answers "absent", whether or not the scheduler has it, so the store is no oracle;
- ``shared``: sees agents whole (names, labels, slots, state): they are shared
  infrastructure, and ``requires`` is written against their labels.

An agent's downloads are bounded by residency (an artifact only inside its zones), as
before, not by its leases; its zones are those its certificate or the configuration
attest (:mod:`scheduler.core.zones`), never more than the certificate of the call says.
"""

from __future__ import annotations

from outrider.errors import NotFound, PermissionDenied
from outrider.pki import Identity
from scheduler.auth import current_identity
from scheduler.core.engine import Engine
from scheduler.core.model import Run, RunState


def sees_all(ident: Identity) -> bool:
    """Whether the caller sees every run and artifact (an admin)."""
    return ident.role == "admin"


def owns(ident: Identity, run: Run) -> bool:
    """Whether the caller may see and change ``run``."""
    return sees_all(ident) or run.submitter == ident.spiffe_id


class Access:
    """The ownership checks, against the engine's runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, run_id: str) -> None:
        """Raise NOT_FOUND, as for a run that does not exist, unless the caller owns ``run_id``."""
        run = self.engine.runs.get(run_id)
        if run is not None and not owns(current_identity(), run):
            raise NotFound(f"no run {run_id!r}")

    def visible(self, state: RunState | None) -> tuple[list[Run], int]:
        """(the runs in ``state`` (or all) the caller may see, newest first; how many others it may not)."""
        runs = sorted(self.engine.runs.values(), key=lambda r: r.seq, reverse=True)
        if state is not None:
            runs = [r for r in runs if r.state is state]
        ident = current_identity()
        if sees_all(ident):
            return runs, 0
        mine = [r for r in runs if r.submitter == ident.spiffe_id]
        return mine, len(runs) - len(mine)

    def readable(self, digest: str) -> bool:
        """Whether the caller may know of the artifact ``digest``: a submitter only of those its
        runs reach (an agent's downloads are checked by :meth:`download`, its ``Stat`` is free)."""
        ident = current_identity()
        if sees_all(ident) or ident.role == "agent":
            return True
        return any(_reaches(run, digest) for run in self.engine.runs.values() if run.submitter == ident.spiffe_id)

    def download(self, digest: str) -> None:
        """Raise unless the caller may download ``digest``: an agent where residency allows,
        a submitter what its runs reach (else NOT_FOUND, as for bytes the store lacks)."""
        ident = current_identity()
        if ident.role == "agent":
            refusal = self.engine.may_download(ident.name, digest, ident.zones)
            if refusal is not None:
                raise PermissionDenied(refusal)
        elif not self.readable(digest):  # the same answer as for bytes the store lacks
            raise NotFound(f"no artifact {digest}")


def _reaches(run: Run, digest: str) -> bool:
    """Whether ``digest`` is the run's code bundle, an output of its tasks or one of their checkpoints."""
    if run.spec.code_digest == digest:
        return True
    for t in run.tasks.values():
        if any(o.digest == digest for o in t.outputs.values()):
            return True
        if t.checkpoint is not None and t.checkpoint.digest == digest:
            return True
        if any(a.resumed_from is not None and a.resumed_from.digest == digest for a in t.history):
            return True
    return False
