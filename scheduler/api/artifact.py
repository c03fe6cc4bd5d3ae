"""The artifact service: content-addressed uploads and downloads, and the bandwidth probe.

The bytes live in the artifact store (:class:`scheduler.artifacts.ArtifactStore`,
verified against their digest before they are published); that an artifact
exists is recorded through the engine; who may read it is decided in
:mod:`scheduler.api.access` (residency for agents, ownership for submitters).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from outrider.errors import InvalidArgument
from outrider.protocol import ARTIFACT_KINDS
from outrider.v1 import artifact_pb2, artifact_pb2_grpc
from scheduler.api.access import Access
from scheduler.api.status import streaming, unary
from scheduler.artifacts import ArtifactStore
from scheduler.core.engine import Engine
from scheduler.core.instruments import I

PROBE_MAX_BYTES = 64 << 20
_FILLER = bytes(range(256)) * 4096  # 1 MiB; gRPC does not compress by default


class ArtifactServicer(artifact_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, engine: Engine, store: ArtifactStore) -> None:
        self.engine = engine
        self.store = store
        self.access = Access(engine)

    @unary
    async def Upload(
        self, request_iterator: AsyncIterator[artifact_pb2.UploadChunk], context: Any
    ) -> artifact_pb2.ArtifactInfo:
        upload = None
        header = None
        try:
            async for chunk in request_iterator:
                if header is None:
                    if not chunk.HasField("header"):
                        raise InvalidArgument("the first upload chunk must carry the artifact header")
                    header = chunk.header
                    if header.kind not in ARTIFACT_KINDS:
                        raise InvalidArgument(f"artifact kind must be 'file' or 'dir', got {header.kind!r}")
                    if self.store.exists(header.digest):
                        continue  # content-addressed: already have it; drain the rest
                    upload = self.store.writer(header.digest, header.size)
                if upload is not None and chunk.data:
                    upload.write(chunk.data)
                    I.artifact_bytes.labels("in").inc(len(chunk.data))
            if header is None:
                raise InvalidArgument("empty upload: no header received")
            if upload is not None:
                await asyncio.to_thread(upload.commit)
                upload = None
                await self.engine.record_artifact(header.digest, header.size, header.kind)
        finally:
            if upload is not None:
                upload.abort()
        return artifact_pb2.ArtifactInfo(digest=header.digest, size=header.size, kind=header.kind, exists=True)

    @streaming
    async def Download(
        self, request: artifact_pb2.DownloadRequest, context: Any
    ) -> AsyncIterator[artifact_pb2.DownloadChunk]:
        self.access.download(request.digest)
        size = self.store.size(request.digest)
        if request.offset < 0 or request.offset > size:
            raise InvalidArgument(f"offset {request.offset} is outside the artifact (size {size})")
        offset = request.offset
        first = True
        for data in self.store.read_chunks(request.digest, request.offset):
            msg = artifact_pb2.DownloadChunk(data=data, offset=offset)
            if first:
                msg.info.CopyFrom(artifact_pb2.ArtifactInfo(digest=request.digest, size=size, exists=True))
                first = False
            offset += len(data)
            I.artifact_bytes.labels("out").inc(len(data))
            yield msg
        if first:  # empty artifact: still say what it is
            yield artifact_pb2.DownloadChunk(
                info=artifact_pb2.ArtifactInfo(digest=request.digest, size=size, exists=True), offset=offset
            )

    @streaming
    async def Probe(
        self, request: artifact_pb2.ProbeRequest, context: Any
    ) -> AsyncIterator[artifact_pb2.DownloadChunk]:
        """Filler bytes for an agent's bandwidth measurement (bounded: 64 MiB)."""
        if request.size < 0 or request.size > PROBE_MAX_BYTES:
            raise InvalidArgument(f"probe size must be 0..{PROBE_MAX_BYTES}, got {request.size}")
        left, offset = request.size, 0
        while left > 0:
            n = min(left, len(_FILLER))
            yield artifact_pb2.DownloadChunk(data=_FILLER[:n], offset=offset)
            left -= n
            offset += n

    @unary
    async def Stat(self, request: artifact_pb2.StatRequest, context: Any) -> artifact_pb2.ArtifactInfo:
        if not self.store.exists(request.digest) or not self.access.readable(request.digest):
            self.store.path(request.digest)  # raises InvalidArgument on a malformed digest
            return artifact_pb2.ArtifactInfo(digest=request.digest, exists=False)
        return artifact_pb2.ArtifactInfo(digest=request.digest, size=self.store.size(request.digest), exists=True)
