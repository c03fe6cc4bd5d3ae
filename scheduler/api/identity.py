"""The identity services: join tokens (admin), certificate renewal (agent), enrolment (a join token).

Thin, as the other servicers: bounds on the request, one call into
:class:`scheduler.enrolment.Enrolment`, the answer converted. ``IdentityService`` is served on
the mTLS port behind the usual interceptor (:data:`scheduler.auth.RULES`); ``EnrollService``
alone on the enrolment port, where there is no client certificate and the join token in the
request is what authorises it.
"""

from __future__ import annotations

import re
from typing import Any

from outrider.errors import InvalidArgument
from outrider.labels import LABEL_KEY_PATTERN
from outrider.v1 import identity_pb2, identity_pb2_grpc
from scheduler.api import bounds
from scheduler.api.status import unary
from scheduler.auth import current_identity
from scheduler.core.tokens import DEFAULT_TTL_S, MAX_LABELS, Token
from scheduler.enrolment import Enrolment

_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)
MAX_LABEL_VALUE = 256


def token_info(t: Token) -> identity_pb2.TokenInfo:
    return identity_pb2.TokenInfo(
        token_id=t.token_id,
        created_at=t.created_at,
        created_by=t.created_by,
        expires_at=t.expires_at,
        uses_left=max(t.uses_left, 0),
        labels=t.labels,
        zones=sorted(t.zones or ()),
    )


def labels_of(labels: Any) -> dict[str, str]:
    """A token's labels: keys as label expressions name them (outrider.labels), bounded printable values."""
    bounds.count("labels", labels, MAX_LABELS)
    out = {}
    for key, value in labels.items():
        if len(key) > bounds.MAX_NAME or not _LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"labels: invalid key {key[:64]!r}: use letters, digits, '.', '_', '/' and '-'")
        if len(value) > MAX_LABEL_VALUE or not value.isprintable():
            raise InvalidArgument(f"labels[{key}]: at most {MAX_LABEL_VALUE} printable characters")
        out[key] = value
    return out


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, enrolment: Enrolment) -> None:
        self.enrolment = enrolment

    @unary
    async def CreateToken(
        self, request: identity_pb2.CreateTokenRequest, context: Any
    ) -> identity_pb2.CreateTokenResponse:
        labels = labels_of(request.labels)
        bounds.count("zones", request.zones, bounds.MAX_ZONES)
        zones = list(request.zones) or None
        ttl = bounds.number("ttl_s", request.ttl_s, 0.0, bounds.MAX_WALL) or DEFAULT_TTL_S
        uses = request.uses or 1
        token, tok = await self.enrolment.tokens.create(labels, zones, ttl, uses)
        return identity_pb2.CreateTokenResponse(token=token, info=token_info(tok))

    @unary
    async def ListTokens(
        self, request: identity_pb2.ListTokensRequest, context: Any
    ) -> identity_pb2.ListTokensResponse:
        return identity_pb2.ListTokensResponse(tokens=[token_info(t) for t in self.enrolment.tokens.list()])

    @unary
    async def RevokeToken(
        self, request: identity_pb2.RevokeTokenRequest, context: Any
    ) -> identity_pb2.RevokeTokenResponse:
        token_id = bounds.text("token_id", request.token_id, 64)
        return identity_pb2.RevokeTokenResponse(info=token_info(await self.enrolment.tokens.revoke(token_id)))

    @unary
    async def RenewCertificate(
        self, request: identity_pb2.RenewCertificateRequest, context: Any
    ) -> identity_pb2.RenewCertificateResponse:
        issued = await self.enrolment.renew(current_identity(), request.csr_pem)
        return identity_pb2.RenewCertificateResponse(
            certificate_pem=issued.cert_pem, ca_pem=issued.ca_pem, not_after=issued.not_after
        )


class EnrollServicer(identity_pb2_grpc.EnrollServiceServicer):
    def __init__(self, enrolment: Enrolment, scheduler_port: int) -> None:
        self.enrolment = enrolment
        self.scheduler_port = scheduler_port

    @unary
    async def Enroll(self, request: identity_pb2.EnrollRequest, context: Any) -> identity_pb2.EnrollResponse:
        name = bounds.text("name", request.name, 64)
        # the token is bounded by its parser, which never echoes it (scheduler.core.tokens.parse_token)
        done = await self.enrolment.enrol(request.token, name, request.csr_pem, context.peer() or "")
        return identity_pb2.EnrollResponse(
            certificate_pem=done.issued.cert_pem,
            ca_pem=done.issued.ca_pem,
            spiffe_id=done.issued.spiffe_id,
            labels=done.token.labels,
            zones=sorted(done.token.zones or ()),
            scheduler_port=self.scheduler_port,
            not_after=done.issued.not_after,
        )
