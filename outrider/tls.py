"""Mutual-TLS plumbing shared by the scheduler, the agent and the client.

The agent imports this module, and the agent must stay small and start fast on
edge boxes, so nothing here imports ``cryptography`` at module level; only
``identity_from_auth_context`` (the scheduler's, reading the peer certificate's
zones extension, or its SPIFFE ID where gRPC did not expose the URI SANs) pulls it
in, through ``outrider.pki``.

What gRPC (1.85) puts in ``context.auth_context()`` for an mTLS peer, verified
by tests/unit/test_tls.py against a real server. Values are lists of bytes:

- ``peer_uri``: the URI SANs only (our ``spiffe://...`` identity lives here);
- ``peer_spiffe_id``: set by gRPC core only when the certificate has exactly one
  URI SAN and it is a valid SPIFFE ID;
- ``x509_subject_alternative_name``: every SAN (DNS, IP and URI) as text;
- ``peer_dns`` / ``peer_ip``: the DNS / IP SANs;
- ``x509_pem_cert``: the peer's leaf certificate, PEM;
- ``x509_common_name``, ``x509_subject``, ``transport_security_type`` (``ssl``),
  ``security_level``, ``ssl_tls_version``, ...
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import grpc

from outrider.errors import ConfigError, InvalidArgument

if TYPE_CHECKING:
    from outrider.pki import Identity

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Largest gRPC message either side accepts (artifact chunks are far smaller;
#: this bounds big specs, log batches and capability reports).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Client channel options for long-lived streams over NAT and flaky links.
#: Pings every 20 s keep NAT/firewall mappings alive (many drop idle UDP/TCP state
#: after 30-60 s) and detect a dead path within ~30 s (20 s + 10 s timeout), even
#: while the agent holds no call (permit_without_calls) and no data flows
#: (max_pings_without_data 0 = unlimited). Reconnect backoff is capped at 30 s so
#: an edge box comes back quickly after its link returns.
#:
#: ``grpc.min_reconnect_backoff_ms`` is left at gRPC's default on purpose: gRPC core
#: also uses it as the *minimum connect timeout* (grpc/grpc#12830), and at 1 s a TLS
#: handshake over a slow, lossy edge link (300 ms ± 200 ms, 20 % loss) never finished:
#: every attempt was cut off before the server's SETTINGS frame arrived.
DEFAULT_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 30_000),
]

#: Server options matching DEFAULT_CHANNEL_OPTIONS. A gRPC server, by default,
#: treats a client ping more often than every 5 minutes, or any ping while no call
#: is open, as abuse and, after two such "strikes", closes the connection with
#: GOAWAY ENHANCE_YOUR_CALM ("too_many_pings"). So the server must accept pings
#: without calls and at an interval shorter than the clients' 20 s. It also pings
#: its clients every 30 s so that half-open connections (a NAT box that silently
#: dropped state, an edge box that lost power) are noticed and their streams end.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

_SPIFFE_PREFIX = b"spiffe://"


def pki_paths(pki_dir: PathLike, name: str) -> tuple[Path, Path, Path]:
    """The (CA cert, cert, key) paths of identity ``name`` in a PKI directory.

    That is ``DIR/ca.crt``, ``DIR/NAME.crt``, ``DIR/NAME.key``, the layout
    ``outrider pki init`` / ``outrider pki issue`` write.
    """
    d = Path(pki_dir)
    return d / "ca.crt", d / f"{name}.crt", d / f"{name}.key"


def _read_pem(path: PathLike, what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found") from None
    except PermissionError:
        raise ConfigError(
            f"{p}: {what} is not readable by this user (uid {os.getuid()}); check its owner and mode"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: {what} is a directory, expected a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read {what}: {exc.strerror or exc}") from None
    # A cheap sanity check that saves a cryptic TLS handshake failure later.
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{p}: {what} is not a PEM file (no '-----BEGIN' line)")
    return data


def read_pem_files(ca: PathLike, cert: PathLike, key: PathLike) -> tuple[bytes, bytes, bytes]:
    """Read the CA certificate, our certificate and our private key as PEM bytes.

    Raises ConfigError naming the file that is missing, unreadable or not PEM.
    """
    return (
        _read_pem(ca, "CA certificate"),
        _read_pem(cert, "certificate"),
        _read_pem(key, "private key"),
    )


def server_credentials(ca: PathLike, cert: PathLike, key: PathLike) -> grpc.ServerCredentials:
    """Server credentials that require and verify a client certificate from our CA."""
    ca_pem, cert_pem, key_pem = read_pem_files(ca, cert, key)
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)


def channel_credentials(ca: PathLike, cert: PathLike, key: PathLike) -> grpc.ChannelCredentials:
    """Channel credentials that present our certificate and trust only our CA."""
    ca_pem, cert_pem, key_pem = read_pem_files(ca, cert, key)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def identity_from_auth_context(auth_context: Mapping[str, Sequence[bytes]] | None) -> Identity | None:
    """The peer's Identity from ``grpc.ServicerContext.auth_context()``, or None.

    None means the peer presented no certificate, or one that does not carry
    exactly one well-formed ``spiffe://<domain>/<role>/<name>`` URI SAN (the
    reason is logged once per certificate), or its zones extension is malformed.
    The caller decides what None means (usually UNAUTHENTICATED). The certificate
    chain itself was already verified against our CA by the TLS handshake; this
    only reads the name and the zones (:attr:`Identity.zones`, from the PEM).

    Called on every RPC, so results are cached by certificate.
    """
    if not auth_context:
        return None
    pem_list = auth_context.get("x509_pem_cert") or ()
    pem = pem_list[0] if pem_list else b""
    # peer_uri holds exactly the URI SANs; older gRPC releases only expose the
    # mixed SAN list, where a DNS name or IP can never start with spiffe://.
    uris = auth_context.get("peer_uri") or auth_context.get("x509_subject_alternative_name") or ()
    if not pem and not uris:
        return None
    return _identity_cached(bytes(pem), tuple(bytes(u) for u in uris))


@functools.lru_cache(maxsize=4096)
def _identity_cached(pem: bytes, uris: tuple[bytes, ...]) -> Identity | None:
    """Resolve (and memoise) the identity for one certificate."""
    from outrider.certzones import zones_from_pem
    from outrider.pki import identity_from_pem, parse_spiffe_id

    spiffe = [u for u in uris if u.lower().startswith(_SPIFFE_PREFIX)]
    try:
        if len(spiffe) == 1:
            ident = parse_spiffe_id(spiffe[0].decode("utf-8", "replace"))
            return dataclasses.replace(ident, zones=zones_from_pem(pem)) if pem else ident
        if len(spiffe) > 1:
            log.warning(
                "peer certificate has %d spiffe:// URI SANs, expected exactly one: %s",
                len(spiffe),
                b", ".join(spiffe).decode("utf-8", "replace"),
            )
            return None
        if pem:
            # gRPC did not expose the URI SANs: read them from the certificate.
            return identity_from_pem(pem)
    except InvalidArgument as exc:
        log.warning("peer certificate carries no valid Outrider identity: %s", exc)
    return None
