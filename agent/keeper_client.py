"""The agent's side of the stage keeper (:mod:`agent.keeper`): start it, hand it stages,
learn their exits, renew their leases with it, and take over the stages of a previous
agent process.

The keeper is started on the first spawn, not with the agent: an agent that never ran a
stage has no keeper (an idle edge box stays small). Messages to it are written without
waiting (the socket's buffer holds far more than a burst needs); answers come back on a
reader task that resolves the futures waiting for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent import keeper as keeper_mod

__all__ = ["KeeperClient", "KeeperLost", "StageExit"]

log = logging.getLogger(__name__)

#: How long a freshly started keeper may take to listen.
START_TIMEOUT_S = 15.0
#: Forgotten stages are told the keeper with the next spawn, or after this long.
FORGET_DELAY_S = 1.0

#: (exit code, whether the keeper stopped it because its lease lapsed)
StageExit = tuple[int, bool]


class KeeperLost(ConnectionError):
    """Raised when the keeper went away: the stages it started are no longer supervised."""


class KeeperClient:
    """One connection to the keeper of ``state_dir``.

    Args:
        state_dir: where the keeper's socket, lock and log live.
        env: the environment every stage starts from (a spawn adds its own variables).
        grace: how long the keeper waits between SIGTERM and SIGKILL of a lapsed stage.
        user: (uid, gid) stages run as (the agent's ``stage_user``); None: the keeper's own.
    """

    def __init__(
        self,
        state_dir: Path,
        env: dict[str, str] | None = None,
        grace: float = 5.0,
        user: tuple[int, int] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.user = user
        self.socket_path = state_dir / keeper_mod.SOCKET_NAME
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self._transport: asyncio.WriteTransport | None = None
        self._connecting: asyncio.Future[list[dict[str, Any]]] | None = None
        self._hello: asyncio.Future[list[dict[str, Any]]] | None = None
        self._spawns: dict[str, asyncio.Future[int]] = {}
        self._exits: dict[str, asyncio.Future[StageExit]] = {}
        self._forgets: list[str] = []
        self._forget_timer: asyncio.TimerHandle | None = None
        #: Told (key, pid) of every stage that lasts (the keeper announces them).
        self.on_pid: Callable[[str, int], None] | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    # ------------------------------------------------------------------ connecting

    async def connect(self, start: bool = True) -> list[dict[str, Any]]:
        """Connect (starting the keeper if there is none and ``start``); returns the stages
        it holds (``key``, ``pid``, ``code`` or None while running, ``expired``, ``renewed``,
        ``ttl``). Connecting again while connected returns them again."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect(start))
        return await asyncio.shield(self._connecting)

    async def _connect(self, start: bool) -> list[dict[str, Any]]:
        if self._transport is None:
            try:
                await self._open()
            except (FileNotFoundError, ConnectionRefusedError):
                if not start:
                    return []
                await self._start()
        self._hello = asyncio.get_running_loop().create_future()
        self._send({"op": "hello", "env": self.env, "grace": self.grace, "user": self.user})
        stages = await self._hello
        for s in stages:
            fut = self.exit_of(s["key"])
            if s["code"] is not None and not fut.done():
                fut.set_result((int(s["code"]), bool(s["expired"])))
        return stages

    async def _open(self) -> None:
        # A protocol, not a stream reader and its task: a message is acted on as it arrives
        # (one turn of the event loop less per message; two per stage).
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _KeeperProtocol(self), str(self.socket_path))
        self._transport = transport

    async def _start(self) -> None:
        """Start a keeper for the state dir and wait until it listens."""
        with open(self.state_dir / keeper_mod.LOG_NAME, "ab") as out:
            subprocess.Popen(
                [sys.executable, "-I", "-S", keeper_mod.__file__, str(self.state_dir)],
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # not in the agent's process group: it outlives the agent
            )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while True:
            try:
                await self._open()
                log.info("started the stage keeper (%s)", self.socket_path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if asyncio.get_running_loop().time() > deadline:
                    raise KeeperLost(f"the stage keeper did not start within {START_TIMEOUT_S:g}s") from None
                await asyncio.sleep(0.01)

    def _on_message(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "exited":
            fut = self.exit_of(m["key"])
            if not fut.done():
                fut.set_result((int(m["code"]), bool(m.get("expired"))))
            spawned = self._spawns.pop(m["key"], None)
            if spawned is not None and not spawned.done():
                spawned.set_result(int(m.get("pid", 0)))
        elif op == "spawned":
            spawn = self._spawns.pop(m["key"], None)
            if spawn is not None and not spawn.done():
                spawn.set_result(int(m["pid"]))
            if self.on_pid is not None:
                self.on_pid(m["key"], int(m["pid"]))
        elif op == "failed":
            err = OSError(int(m["errno"]), m["error"], m["filename"] or None)
            spawn = self._spawns.pop(m["key"], None)
            if spawn is not None and not spawn.done():
                spawn.set_exception(err)
                spawn.exception()  # the exit future carries it to whoever waits
            exit_fut = self.exit_of(m["key"])
            if not exit_fut.done():
                exit_fut.set_exception(err)
        elif op == "stages" and self._hello is not None and not self._hello.done():
            self._hello.set_result(list(m["stages"]))

    def _lost(self) -> None:
        """The keeper is gone: whatever waited on it learns so."""
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        err = KeeperLost("the stage keeper went away")
        waiting: list[asyncio.Future[Any]] = [*self._spawns.values(), *self._exits.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # retrieved: nobody may be waiting for it
        self._spawns.clear()
        self._exits.clear()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(err)

    def _send(self, msg: dict[str, Any]) -> None:
        if self._transport is None:
            raise KeeperLost("not connected to the stage keeper")
        self._transport.write(_encode(msg))

    # ------------------------------------------------------------------ stages

    def launch(
        self,
        key: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        stdout: str,
        stderr: str,
        renewed: float,
        ttl: float,
        reply: bool = False,
    ) -> asyncio.Future[int] | None:
        """Ask for a stage to be started in its own process group, at once, without waiting
        (nothing can happen between the caller's last look at the stage and its spawn). If it
        cannot start (the exec, or the chdir into ``cwd``, failed), its exit future
        (:meth:`exit_of`) raises the OSError. With ``reply``, returns a future of its pid.
        KeeperLost if not connected (:meth:`connect` first)."""
        fut: asyncio.Future[int] | None = None
        if reply:
            fut = asyncio.get_running_loop().create_future()
            self._spawns[key] = fut
        self._exits.pop(key, None)
        self.exit_of(key)
        msg: dict[str, Any] = {
            "op": "spawn",
            "key": key,
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "stdout": stdout,
            "stderr": stderr,
            "renewed": renewed,
            "ttl": ttl,
        }
        if reply:
            msg["reply"] = True
        if self._forgets:  # ride along: one message fewer per stage
            msg["forget"], self._forgets = self._forgets, []
        self._send(msg)
        return fut

    async def spawn(
        self,
        key: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        stdout: Path,
        stderr: Path,
        renewed: float,
        ttl: float,
    ) -> int:
        """Connect if need be, :meth:`launch`, and wait for the pid (OSError if it could not start)."""
        if self._transport is None:
            await self.connect()
        fut = self.launch(key, argv, env, str(cwd), str(stdout), str(stderr), renewed, ttl, reply=True)
        assert fut is not None
        return await fut

    def exit_of(self, key: str) -> asyncio.Future[StageExit]:
        """The future of a stage's exit (code, expired)."""
        fut = self._exits.get(key)
        if fut is None:
            fut = self._exits[key] = asyncio.get_running_loop().create_future()
        return fut

    def renew(self, keys: Iterable[str], renewed: float, ttl: float) -> None:
        """These stages' leases were renewed as of monotonic time ``renewed``."""
        keys = list(keys)
        if keys and self._transport is not None:
            self._send({"op": "renew", "keys": keys, "renewed": renewed, "ttl": ttl})

    def kill(self, key: str, sig: int) -> None:
        """Signal a stage's process group (if it still runs)."""
        if self._transport is not None:
            self._send({"op": "kill", "key": key, "sig": sig})

    def forget(self, key: str) -> None:
        """The stage's end is dealt with: the keeper need not keep its exit code (told with
        the next spawn, or within :data:`FORGET_DELAY_S`)."""
        self._exits.pop(key, None)
        self._spawns.pop(key, None)
        self._forgets.append(key)
        if self._forget_timer is None:
            self._forget_timer = asyncio.get_running_loop().call_later(FORGET_DELAY_S, self.flush_forgets)

    def flush_forgets(self) -> None:
        self._forget_timer = None
        if self._forgets and self._transport is not None:
            keys, self._forgets = self._forgets, []
            self._send({"op": "forget", "keys": keys})

    async def close(self) -> None:
        self.flush_forgets()
        if self._forget_timer is not None:
            self._forget_timer.cancel()
            self._forget_timer = None
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # (json.dumps with options makes one per call)


def _encode(msg: dict[str, Any]) -> bytes:
    return _ENCODER.encode(msg).encode() + b"\n"


class _KeeperProtocol(asyncio.Protocol):
    """Reads the keeper's messages (one JSON object per line) and hands each to the client."""

    def __init__(self, client: KeeperClient) -> None:
        self.client = client
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        *lines, self._buf = data.split(b"\n")
        for line in lines:
            if not line:
                continue
            try:
                m = json.loads(line)
            except ValueError as exc:
                log.warning("stage keeper connection broke: %s", exc)
                self.client._lost()
                return
            self.client._on_message(m)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("stage keeper connection broke: %s", exc)
        self.client._lost()
