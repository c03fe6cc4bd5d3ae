"""Moving artifacts between this agent and the scheduler, and measuring the link doing it.

* :meth:`Transfers.fetch` makes a stage's input appear in its work dir, downloading
  it into the :class:`~agent.cache.BlobCache` once however many stages want it;
* :meth:`Transfers.publish` hashes a stage's output, keeps it in the cache (so a
  downstream stage placed here finds it locally) and uploads it unless the
  scheduler has it;
* both ride out a broken link for up to one lease TTL: a stage that finished while
  the scheduler was unreachable must not fail for that;
* :meth:`Transfers.probe_link` measures the link right after registering.

Every transfer feeds the :class:`~agent.link.LinkMeter` the scheduler places work by.
The artifact stub is lent by the session while it is connected
(:meth:`Transfers.attach` / :meth:`Transfers.detach`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from agent.cache import BlobCache
from agent.link import LinkMeter, TransferTimer
from agent.memory import trim_heap
from outrider.protocol import ArtifactKind
from outrider.v1 import artifact_pb2, common_pb2

__all__ = ["PROBE_TIMEOUT_S", "RETRY_INTERVAL_S", "Transfers"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Transfers in flight reported with the heartbeat figures, at most (the largest first).
MAX_REPORTED_TRANSFERS = 32
#: Status codes of a broken link (not of a refused request): retried within the lease TTL.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})
#: The start-up bandwidth probe gives up after this long (what arrived still counts).
PROBE_TIMEOUT_S = 60.0
#: How often an artifact call waiting for the scheduler to come back tries again.
RETRY_INTERVAL_S = 0.2


class Transfers:
    """Fetch, publish and probe against the scheduler's ArtifactService.

    Args:
        cache: where downloads land and published outputs are kept.
        link: fed with every transfer's throughput.
        scratch: where a packed directory goes when the cache cannot take it.
        ride_out: the current lease TTL: how long a call waits for a broken link to
            come back (past it the lease is gone anyway and the attempt runs elsewhere).
        probe_bytes: size of the start-up bandwidth probe; 0: none.
        max_extract_bytes: ceiling on what a directory artifact may expand to in a work
            dir (and on what the symlinks in a directory output may add); 0: none.
    """

    def __init__(
        self,
        cache: BlobCache,
        link: LinkMeter,
        scratch: Path,
        *,
        ride_out: Callable[[], float],
        probe_bytes: int = 0,
        max_extract_bytes: int = 0,
    ) -> None:
        self.cache = cache
        self.link = link
        self.scratch = scratch
        self.probe_bytes = probe_bytes
        self.max_extract_bytes = max_extract_bytes or None
        self._ride_out = ride_out
        self._stub: Any = None
        self._fetching: dict[str, asyncio.Future[Path]] = {}
        self._probed = probe_bytes <= 0
        #: (direction, digest) -> [bytes done, bytes in all (0: not known yet)] of each transfer in flight
        self._inflight: dict[tuple[str, str], list[int]] = {}

    def progress(self) -> list[common_pb2.TransferProgress]:
        """The transfers in flight, the largest first (at most :data:`MAX_REPORTED_TRANSFERS`), for
        the heartbeat figures (agent/figures.py) and so for ``outrider watch``."""
        items = sorted(self._inflight.items(), key=lambda kv: -max(kv[1]))[:MAX_REPORTED_TRANSFERS]
        return [
            common_pb2.TransferProgress(digest=digest, direction=way, done_bytes=done, total_bytes=total)
            for (way, digest), (done, total) in items
        ]

    def _track(self, direction: str, digest: str, total: int) -> list[int]:
        """Count a transfer in flight (a try of it: a retry starts from zero); untrack it when done."""
        entry = self._inflight[(direction, digest)] = [0, total]
        return entry

    # ------------------------------------------------------------------ the link

    def attach(self, stub: Any) -> None:
        """The session is connected: artifact calls go through ``stub`` (an ArtifactServiceStub)."""
        self._stub = stub

    def detach(self) -> None:
        """The session is gone: artifact calls wait for the next :meth:`attach`."""
        self._stub = None

    @property
    def probed(self) -> bool:
        """Whether the link needs no start-up probe (done, disabled, or unsupported)."""
        return self._probed

    async def probe_link(self) -> None:
        """Measure the link right after registering: time a ``Probe`` of N filler bytes.

        A scheduler without ``Probe`` (UNIMPLEMENTED) is not an error: the link is then
        measured by real transfers only. Other failures are retried at the next session.
        """
        n = self.probe_bytes
        stub = self._stub
        if stub is None or n <= 0:
            return
        timer = TransferTimer()
        try:
            async for chunk in stub.Probe(artifact_pb2.ProbeRequest(size=n), timeout=PROBE_TIMEOUT_S):
                timer.chunk(len(chunk.data))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.debug("the scheduler has no bandwidth probe; measuring real transfers only")
                self._probed = True
                return
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or not timer.nbytes:
                log.debug("bandwidth probe failed: %s: %s", exc.code().name, exc.details())
                return
            log.debug("bandwidth probe cut off after %gs with %d of %d bytes", PROBE_TIMEOUT_S, timer.nbytes, n)
        except Exception as exc:  # a measurement must never break the session
            log.debug("bandwidth probe failed: %s", exc)
            return
        self._probed = True
        self.link.observe_transfer(*timer.result())
        trim_heap()
        log.info("link to the scheduler: %.1f MB/s (probe of %d bytes)", self.link.bandwidth_bps / 1e6, timer.nbytes)

    async def _with_scheduler(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run an artifact call, riding out a broken link for up to one lease TTL.

        A stage that finished while the scheduler was unreachable must not fail for
        that: its lease is claimed again on reconnect, so wait and retry. Past the
        TTL the lease is gone anyway and the attempt will run elsewhere.
        """
        deadline = time.monotonic() + self._ride_out()
        while True:
            stub = self._stub
            if stub is not None:
                try:
                    return await op(stub)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _TRANSIENT:
                        raise
                    log.info("%s: scheduler unreachable (%s); retrying", what, exc.code().name)
            if time.monotonic() > deadline:
                raise ConnectionError(f"{what}: scheduler unreachable for {self._ride_out():g}s")
            await asyncio.sleep(RETRY_INTERVAL_S)

    # ------------------------------------------------------------------ inputs

    async def fetch(self, ref: common_pb2.ArtifactRef, dest: Path) -> None:
        """Make an artifact appear at ``dest``, downloading it into the cache once.

        The blob is marked in use from before the download until it is placed, so
        eviction never removes it under a stage that is about to read it. A directory
        expands to no more than its declared size and ``max_extract_bytes``.
        """
        from outrider.artifacts import place

        self.cache.acquire(ref.digest)
        try:
            blob = await self._cached(ref.digest, ref.kind)
            await asyncio.to_thread(
                place,
                blob,
                ref.kind or ArtifactKind.FILE.value,
                dest,
                declared_size=ref.size or None,
                max_bytes=self.max_extract_bytes,
            )
        finally:
            self.cache.release(ref.digest)
            self.cache.evict()

    async def _cached(self, digest: str, kind: str = "") -> Path:
        blob = self.cache.path(digest)
        if blob.exists():
            if digest in self.cache:
                self.cache.touch(digest, kind)
            else:  # put there behind our back: adopt it
                self.cache.add(digest, blob.stat().st_size, kind)
            return blob
        self.cache.discard(digest)  # indexed but gone (removed by hand): fetch it again
        pending = self._fetching.get(digest)
        if pending is None:  # one download per digest, however many stages want it
            pending = asyncio.ensure_future(self.download(digest, blob, kind))
            self._fetching[digest] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(digest, None))
        return await asyncio.shield(pending)

    async def download(self, digest: str, blob: Path, kind: str = "") -> Path:
        """Download an artifact to ``blob`` (its place in the cache), verified, and index it."""
        from outrider.artifacts import Receiver

        async def fetch(stub: Any) -> Path:
            nonlocal kind
            recv = Receiver(digest, blob)
            timer = TransferTimer()
            moved = self._track("in", digest, 0)
            try:
                async for chunk in stub.Download(artifact_pb2.DownloadRequest(digest=digest)):
                    if chunk.HasField("info"):
                        kind = kind or chunk.info.kind
                        moved[1] = max(0, chunk.info.size)
                    timer.chunk(len(chunk.data))
                    recv.write(chunk.data)
                    moved[0] += len(chunk.data)
                path = await asyncio.to_thread(recv.finish)
            except BaseException:
                recv.abort()
                raise
            finally:
                self._inflight.pop(("in", digest), None)
            self.link.observe_transfer(*timer.result())
            self.cache.add(digest, recv.size, kind)
            return path

        path = await self._with_scheduler(f"download {digest[:12]}", fetch)
        self.cache.evict()
        return path

    # ------------------------------------------------------------------ outputs

    async def publish(self, name: str, path: Path) -> common_pb2.ArtifactRef:
        """Hash an output, keep it in the cache, and upload it unless the scheduler has it.

        Keeping it (a file is copied in while it is hashed, a dir's packed tar is
        moved in) means a downstream stage placed here finds its input locally, and
        the cache inventory tells the scheduler so (data locality).

        ``path`` is ``OUTPUTS_DIR/name``; a symlink there or in its tree may lead only
        inside the outputs dir (InvalidArgument otherwise: the task's fault), and is
        published as what it leads to (:func:`outrider.artifacts.pack_dir`).
        """
        from outrider.artifacts import upload_chunks

        digest, size, kind, tmp, source = await asyncio.to_thread(self._stash_output, name, path)
        upload_from, remove_after, kept = source, None, False
        if tmp is not None:
            # On the event loop with no await in between: eviction cannot interleave.
            try:
                upload_from = self.cache.adopt(digest, size, kind, tmp)
                self.cache.acquire(digest)  # not evicted while it uploads
                kept = True
            except OSError as exc:
                log.warning("output %r not kept in the artifact cache: %s", name, exc)
                upload_from = remove_after = tmp
        elif kind == ArtifactKind.DIR.value:
            remove_after = source

        async def push(stub: Any) -> None:
            info = await stub.Stat(artifact_pb2.StatRequest(digest=digest))
            if not info.exists:
                t0 = time.monotonic()
                await self._upload(stub, upload_chunks(upload_from, digest, size, kind), digest, size)
                self.link.observe_transfer(size, time.monotonic() - t0)

        try:
            await self._with_scheduler(f"upload of output {name!r}", push)
        finally:
            if remove_after is not None:
                remove_after.unlink(missing_ok=True)
            if kept:
                self.cache.release(digest)
                self.cache.evict()
        return common_pb2.ArtifactRef(name=name, digest=digest, size=size, kind=kind)

    async def upload(self, what: str, path: Path, digest: str, size: int, kind: str) -> None:
        """Upload a file already hashed (a checkpoint's tar) unless the scheduler has it,
        riding out a broken link for up to one lease TTL (ConnectionError past it)."""
        from outrider.artifacts import upload_chunks

        async def push(stub: Any) -> None:
            info = await stub.Stat(artifact_pb2.StatRequest(digest=digest))
            if not info.exists:
                t0 = time.monotonic()
                await self._upload(stub, upload_chunks(path, digest, size, kind), digest, size)
                self.link.observe_transfer(size, time.monotonic() - t0)

        await self._with_scheduler(what, push)

    async def _upload(self, stub: Any, chunks: Iterable[Any], digest: str, size: int) -> None:
        """One try of an upload, its bytes counted as they go (:meth:`progress`)."""
        moved = self._track("out", digest, size)

        def counted() -> Iterator[Any]:
            for chunk in chunks:
                moved[0] += len(chunk.data)
                yield chunk

        try:
            await stub.Upload(_aiter(counted()))
        finally:
            self._inflight.pop(("out", digest), None)

    def _stash_output(self, name: str, path: Path) -> tuple[str, int, str, Path | None, Path]:
        """(digest, size, kind, temporary copy inside the cache or None, original) of an output.

        Runs in a worker thread. A file is hashed while it is copied into the cache's
        staging area (one read, from a descriptor opened without following links); a
        dir is packed straight into it. If the copy fails (disk full), the output is
        still hashed and uploaded from its real path, just not kept.
        """
        import stat
        import tempfile

        from outrider.artifacts import hash_file, open_output, pack_dir

        what = f"output {name!r}"
        fd, real = open_output(path, path.parent, what)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)  # packed below, link by checked link
        else:
            with os.fdopen(fd, "rb") as fh:
                try:
                    digest, size, tmp = self.cache.ingest_file(fh)
                    return digest, size, ArtifactKind.FILE.value, tmp, Path(real)
                except OSError as exc:
                    log.warning("cannot keep output %s in the artifact cache: %s", path, exc)
                    fh.seek(0)
                    digest, size = hash_file(fh)
                    return digest, size, ArtifactKind.FILE.value, None, Path(real)
        try:
            staging = self.cache.staging()
        except OSError:
            staging = self.scratch
        fd, name = tempfile.mkstemp(dir=staging, prefix=".part-", suffix=".tar")
        os.close(fd)
        tar = Path(name)
        try:
            digest, size = pack_dir(path, tar, within=path.parent, link_budget=self.max_extract_bytes, what=what)
        except BaseException:
            tar.unlink(missing_ok=True)
            raise
        return digest, size, ArtifactKind.DIR.value, tar, tar


async def _aiter(it: Iterable[T]) -> AsyncIterator[T]:
    for item in it:
        yield item
