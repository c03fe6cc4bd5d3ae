"""Keeping an idle agent small: glibc heap tuning, and forgetting start-up-only modules.

An agent sits on every edge box and is idle most of the time, so its resident
memory is a cost paid everywhere (``bench/core.py`` measures it as
``agent_idle_rss_mb``). What the agent does about it, in one place:

* :func:`tune_malloc` keeps bulk transfer buffers out of the heap;
* :func:`trim_heap` gives freed heap back after a burst (the bandwidth probe);
* :func:`shed` forgets modules only start-up needed (argparse, pynvml).

Nothing here imports ctypes: it is used only when the GPU probe already loaded
it, because importing it just for this would cost more than it saves.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["shed", "trim_heap", "tune_malloc"]

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
#: glibc's default mmap threshold, which the tuning pins.
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc() -> Any:
    """glibc through ctypes, only when ctypes is already loaded (the GPU probe loads
    it): importing it just for the tuning below would cost more than it saves."""
    ctypes = sys.modules.get("ctypes")
    if ctypes is None or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_malloc() -> None:
    """Keep bulk transfer buffers out of the heap, so an idle agent stays small.

    glibc serves allocations above its mmap threshold (128 KiB) with mmap and
    returns them on free, but it raises the threshold to the size of any such
    block that is freed: after the first 1 MiB chunk of a transfer, every later
    one comes from the heap, which keeps megabytes after the transfer ended.
    Setting the threshold explicitly turns that adjustment off.
    """
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):  # not glibc (musl has no mallopt)
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), where that is cheap."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):  # not glibc
            libc.malloc_trim(0)


def shed(*modules: str) -> None:
    """Forget modules that only start-up used (and their submodules), so their memory
    can be reclaimed. Only for modules nothing keeps a reference to afterwards."""
    import gc

    for name in [m for m in sys.modules if m.split(".")[0] in modules]:
        del sys.modules[name]
    gc.collect()
