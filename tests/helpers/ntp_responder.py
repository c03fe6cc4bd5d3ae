"""A tiny NTP server on loopback, for giving agents a fake clock offset in tests.

Usage::

    with NtpResponder(offset=5.0) as ntp:
        samples = ntp_samples([ntp.address])      # ntp.address == "127.0.0.1:<port>"
        ntp.offset = -2.0                         # takes effect on the next request

It answers NTPv3/v4 client requests (mode 3) with server replies (mode 4) whose
receive/transmit timestamps are this machine's real time plus ``offset`` seconds, so a
client on the same machine measures an offset of ``offset`` with a round trip of a
few microseconds. Other packets (other modes or versions, short packets) are ignored,
as a real server would.

Knobs for fault tests:

* ``delay_s``: sleep before stamping the receive time, i.e. a slow *request* path.
  The client sees that much more round-trip delay and an offset error of about
  ``-delay_s / 2``, which stays within the uncertainty it computes.
* ``silent``: receive but never answer (the client times out).
* ``stratum``/``leap``/``root_delay``/``root_dispersion``: what the server claims
  about its own synchronization (stratum 0 is a Kiss-o'-Death, leap 3 is
  "unsynchronized").
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["NTP_EPOCH_OFFSET", "NtpResponder"]

#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_EPOCH_OFFSET = 2_208_988_800

_PACKET = struct.Struct("!BBBb II 4s 8s 8s 8s 8s")  # 48 bytes, RFC 5905 fig. 8
_MODE_CLIENT = 3
_MODE_SERVER = 4


def _ntp_timestamp(unix_time: float) -> bytes:
    """64-bit NTP timestamp (32.32 fixed point, seconds since 1900) of a Unix time."""
    ntp = unix_time + NTP_EPOCH_OFFSET
    seconds = int(ntp)
    fraction = int((ntp - seconds) * 2**32)
    return struct.pack("!II", seconds & 0xFFFFFFFF, min(fraction, 0xFFFFFFFF))


def _short_format(seconds: float) -> int:
    """NTP short format (16.16 fixed point), used for root delay/dispersion."""
    return max(0, min(int(round(seconds * 65536)), 0xFFFFFFFF))


class NtpResponder:
    """An NTP server on a UDP socket served by one background thread.

    The socket is bound in the constructor, so :attr:`port` and :attr:`address` are
    known before :meth:`start`; requests sent before then wait in the socket buffer.
    Attributes such as :attr:`offset` may be changed while it runs; each request reads
    them afresh. :meth:`stop` joins the thread and closes the socket; it is
    idempotent, and a stopped responder cannot be restarted (make a new one).
    """

    def __init__(
        self,
        offset: float = 0.0,
        *,
        host: str = "127.0.0.1",
        stratum: int = 1,
        leap: int = 0,
        root_delay: float = 0.0005,
        root_dispersion: float = 0.0005,
        delay_s: float = 0.0,
        silent: bool = False,
    ) -> None:
        self.offset = offset
        self.stratum = stratum
        self.leap = leap
        self.root_delay = root_delay
        self.root_dispersion = root_dispersion
        self.delay_s = delay_s
        self.silent = silent
        #: Number of requests answered so far (replies sent or being sent).
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        # A short timeout lets the loop notice stop() without a self-pipe.
        self._sock.settimeout(0.05)
        self._host, self._port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``"host:port"``, as accepted by ``agent.probe.ntp_samples``."""
        return f"{self._host}:{self._port}"

    def start(self) -> NtpResponder:
        if self._closed:
            raise RuntimeError("NtpResponder was stopped; create a new one")
        if self._thread is None:
            # Daemon, so a test that forgets stop() cannot hang interpreter exit.
            self._thread = threading.Thread(
                target=self._serve, name=f"ntp-responder:{self._port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        self._closed = True

    def __enter__(self) -> NtpResponder:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(1024)
            except socket.timeout:
                continue
            except OSError:
                # The socket went away (stop() racing us); nothing more to serve.
                return
            if self.delay_s:
                time.sleep(self.delay_s)
            recv_time = time.time() + self.offset
            if self.silent:
                continue
            reply = self._reply(data, recv_time)
            if reply is None:
                continue
            # Count before sending: a client that has its reply may read the count
            # at once, before this thread would get past sendto().
            self.requests += 1
            try:
                self._sock.sendto(reply, peer)
            except OSError:
                continue

    def _reply(self, data: bytes, recv_time: float) -> bytes | None:
        """The mode-4 reply to one request, or None if it is not an NTPv3/v4 client packet."""
        if len(data) < _PACKET.size:
            return None
        version = (data[0] >> 3) & 0x7
        mode = data[0] & 0x7
        if mode != _MODE_CLIENT or version not in (3, 4):
            return None
        poll = data[2]
        # Originate = the client's transmit timestamp, copied byte for byte: that is
        # how the client matches the reply to its request and computes the delay.
        client_transmit = data[40:48]
        # Reference ID: a 4-letter clock name at stratum 1, the upstream's IPv4 above.
        ref_id = b"GPS\0" if self.stratum <= 1 else socket.inet_aton("127.0.0.1")
        transmit_time = time.time() + self.offset
        return _PACKET.pack(
            (self.leap & 0x3) << 6 | version << 3 | _MODE_SERVER,
            self.stratum & 0xFF,
            poll,
            -20,  # precision: 2**-20 s, about a microsecond
            _short_format(self.root_delay),
            _short_format(self.root_dispersion),
            ref_id,
            _ntp_timestamp(recv_time - 16.0),  # reference: "last set" a little while ago
            client_transmit,
            _ntp_timestamp(recv_time),
            _ntp_timestamp(transmit_time),
        )
