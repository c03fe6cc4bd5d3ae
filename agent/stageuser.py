"""Stages as another user (``stage_user``): a stage must not read the agent's key or state.

An agent running as root (or as a user holding the capabilities below) starts every stage
as the configured unprivileged user, so a stage cannot read what the agent keeps in its
state dir: the key (where ``pki_dir`` lies in it), the journal, the artifact cache, the
checkpoints, the keeper's socket. With ``stage_user`` set:

* the state dir is ``0711`` (the stage user may pass through it to its work dir, not list
  it), every entry in it but ``work`` loses its group and other permissions, and the agent
  runs with umask ``077``, so what it makes later is private too;
* each work dir, as prepared (code, inputs, the ``.outrider`` dirs), is handed to the
  stage user (``chown``) just before its stage starts, and removed after it (never
  recycled: a process the stage left behind could still change it); the stage's ``stdout`` and
  ``stderr`` files stay the agent's (the stage writes them through the descriptors the
  keeper gives it), and the agent reads them only as the regular files it made
  (:func:`open_own_file`), so a stage cannot swap in a link to one of the agent's files;
* the keeper (:mod:`agent.keeper`) starts the stage with that user's uid and gid and no
  supplementary groups.

Without ``stage_user`` none of this costs anything per stage.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from outrider.errors import ConfigError

__all__ = ["REQUIRED_CAPS", "StageUser", "hand_over", "lock_down", "missing_caps", "open_own_file", "resolve"]

#: Capabilities (name, bit) a non-root agent needs to run stages as another user: set the
#: ids, hand the work dir over, read and remove what the stage left, signal its processes.
REQUIRED_CAPS = (
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
)


@dataclass(frozen=True)
class StageUser:
    """Who stages run as."""

    name: str
    uid: int
    gid: int


def _lookup_user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise ConfigError(f"stage_user: no such user {user!r}") from None


def _lookup_group(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except (KeyError, OverflowError):
        raise ConfigError(f"stage_group: no such group {group!r}") from None


def missing_caps(status: str | None = None) -> list[str]:
    """The :data:`REQUIRED_CAPS` this process lacks (none for root); ``status`` is the text
    of ``/proc/self/status`` (read when not given)."""
    if status is None:
        if os.geteuid() == 0:
            return []
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return [name for name, _ in REQUIRED_CAPS]
    eff = 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            eff = int(line.split()[1], 16)
    return [name for name, bit in REQUIRED_CAPS if not eff >> bit & 1]


def resolve(user: str, group: str = "") -> StageUser | None:
    """The stage user ``user`` (a name or a uid) names, in ``group`` (default: its own
    primary group); None when ``user`` is empty. Raises ConfigError when the user or group
    does not exist, when it is root or this process's own user (nothing would be kept from
    the stage), or when this process cannot switch users."""
    if not user:
        if group:
            raise ConfigError("stage_group is set but stage_user is not")
        return None
    pw = _lookup_user(user)
    gid = _lookup_group(group) if group else pw.pw_gid
    if pw.pw_uid == 0 or pw.pw_uid == os.geteuid():
        who = "root" if pw.pw_uid == 0 else "the agent's own user"
        raise ConfigError(f"stage_user: {user!r} is {who}; name an unprivileged user")
    lacking = missing_caps()
    if lacking:
        raise ConfigError(
            f"stage_user is {user!r} but this agent cannot run stages as another user: run it as root, or give "
            f"it {', '.join(lacking)} (systemd: AmbientCapabilities=, see deploy/README.md)"
        )
    return StageUser(pw.pw_name, pw.pw_uid, gid)


def lock_down(state_dir: Path, work: str = "work") -> None:
    """Keep the stage user out of the state dir: ``0711`` (passable to reach ``work``, not
    listable), every other entry private, and private by default from now on (umask 077)."""
    os.umask(0o077)
    os.chmod(state_dir, 0o711)
    for entry in os.scandir(state_dir):
        if entry.name == work:
            os.chmod(entry.path, 0o711)
        elif not entry.is_symlink():
            mode = entry.stat(follow_symlinks=False).st_mode
            if mode & 0o077:
                os.chmod(entry.path, stat.S_IMODE(mode) & 0o700)


def hand_over(workdir: Path, user: StageUser, keep: tuple[str, ...] = ("stdout", "stderr")) -> None:
    """Give a prepared work dir to the stage user (links themselves, never what they point
    at); the ``.outrider`` files named in ``keep`` stay the agent's."""
    os.chown(workdir, user.uid, user.gid)
    for root, dirs, files in os.walk(workdir):
        top = root == str(workdir / ".outrider")
        for name in dirs + files:
            if not (top and name in keep):
                os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def open_own_file(path: str) -> int:
    """Open ``path`` for reading only if it is a regular file of this process's user, not
    a link (a stage cannot make one: it would need the agent's uid). OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise PermissionError(f"{path} is not the agent's own file")
    return fd
