"""This agent's instance id: who it is, beyond the name in its certificate.

A name says which machine an agent speaks for; the instance id says which state dir
(its leases, its outbox, its running stages) it speaks for. It is made once, on the
first start with an empty state dir, and kept there, so a restart of the same
instance (a crash, a reboot, ``systemctl restart``) sends the same id and takes over
its session and leases, while a second agent started elsewhere under the same name
(a copied certificate, a cloned VM) sends another, and the scheduler refuses it
instead of letting it replace the first one's capabilities.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FILE_NAME", "load_or_create"]

#: Where the id is kept, inside the state dir.
FILE_NAME = "instance_id"


def load_or_create(state_dir: Path) -> str:
    """The id kept in ``state_dir``, made (and written durably) if there is none."""
    path = state_dir / FILE_NAME
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    new = os.urandom(16).hex()
    tmp = path.with_name(f".{FILE_NAME}.tmp")
    with open(tmp, "w") as fh:
        fh.write(new + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    return new
