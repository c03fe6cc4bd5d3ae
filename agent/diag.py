"""Short, bounded descriptions of why something failed, for logs and for humans.

The probes put such a text on the wire (``Capabilities.gpu_probe``) for
``outrider agents`` to show: one line, bounded, never a traceback.
"""

from __future__ import annotations

__all__ = ["MAX_REASON", "first_line", "reason"]

#: Longest reason text kept.
MAX_REASON = 120


def reason(exc: BaseException) -> str:
    """A one-line, bounded description of why a probe failed."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return (msg or type(exc).__name__)[:MAX_REASON]


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped and bounded ("" if none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:MAX_REASON]
    return ""
