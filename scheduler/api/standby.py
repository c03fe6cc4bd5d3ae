"""What a standby scheduler answers (docs/ha.md): every call but health is refused with
``UNAVAILABLE`` "not the leader; the leader is HOST:PORT", the leader's address also in the
trailing metadata key :data:`~outrider.protocol.LEADER_METADATA_KEY`, so clients and agents
move there without parsing the message. One generic handler: no servicer knows of standbys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from outrider.protocol import LEADER_METADATA_KEY


def refusal(leader: str) -> str:
    where = f"the leader is {leader}" if leader else "no leader is known yet (one is being elected)"
    return f"not the leader; {where}"


class StandbyGate(grpc.GenericRpcHandler):
    """Registered after health: every method it is asked for is refused."""

    def __init__(self) -> None:
        self.leader = ""  # the leader's advertised address, as the leader row says

    def set_leader(self, address: str) -> None:
        self.leader = address

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self._refuse)

    async def _refuse(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, refusal(self.leader), trailing_metadata=((LEADER_METADATA_KEY, self.leader),)
        )
