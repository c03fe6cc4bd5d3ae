"""Run ids and artifact digests from a unique prefix, as git does.

A prefix is looked up as a range on the table's primary key (``runs.run_id``,
``artifacts.digest``: ``key >= prefix AND key < prefix+1``, an index range scan on SQLite
and PostgreSQL alike), a page at a time, keeping only the keys the caller may see. Exactly
one: that is the full id. None: ``NOT_FOUND``, in the words of a run or artifact that does
not exist (another submitter's ids are not probed this way). Several: ``INVALID_ARGUMENT``
naming up to :data:`SHOWN` of them. A prefix too short to be useful, or with characters no
id has, is ``INVALID_ARGUMENT`` too.

A run id may be given with or without its ``run-`` head; a digest with or without ``sha256:``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from outrider.errors import InvalidArgument, NotFound

#: Characters a prefix needs beyond ``run-`` (run ids) or at all (digests).
MIN_CHARS = 4
#: Candidates named in an "ambiguous" error.
SHOWN = 10
#: Keys read per page, and pages read at most (bounded work for a very short prefix).
PAGE = 200
PAGES = 10
MAX_PREFIX = 128

_RUN = re.compile(r"^run-[0-9a-f-]*$")
_DIGEST = re.compile(r"^[0-9a-f]+$")
KINDS = ("run", "artifact")


def normalise(kind: str, text: str) -> str:
    """The prefix as the keys spell it; INVALID_ARGUMENT naming what is wrong with it."""
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {list(KINDS)}, got {kind[:40]!r}")
    raw = text.strip()
    if len(raw) > MAX_PREFIX:
        raise InvalidArgument(f"{kind} id or prefix is {len(raw)} characters, over the limit of {MAX_PREFIX}")
    if kind == "run":
        prefix = raw if raw.startswith("run-") else "run-" + raw
        if not _RUN.match(prefix):
            raise InvalidArgument(f"{raw!r} is no run id or prefix of one (run-HEX-HEX)")
        if len(prefix) - 4 < MIN_CHARS:
            raise InvalidArgument(f"run prefix {raw!r} is too short: give at least {MIN_CHARS} characters after 'run-'")
        return prefix
    prefix = raw.lower().removeprefix("sha256:")
    if not _DIGEST.match(prefix):
        raise InvalidArgument(f"{raw!r} is no artifact digest or prefix of one (hexadecimal sha256)")
    if len(prefix) < MIN_CHARS:
        raise InvalidArgument(f"digest prefix {raw!r} is too short: give at least {MIN_CHARS} hex characters")
    return prefix


async def resolve(
    kind: str,
    text: str,
    lookup: Callable[[str, str, int], Awaitable[list[str]]],
    visible: Callable[[str], bool],
) -> str:
    """The one key the caller may see that starts with ``text``.

    ``lookup(prefix, after, limit)`` reads up to ``limit`` keys in the prefix's range that
    are greater than ``after``, in order (off the event loop).
    """
    prefix = normalise(kind, text)
    # The range is read without a trailing dash: a collation that ignores punctuation (glibc's
    # en_US, a PostgreSQL default) would put keys past "run-1a2b-" after the bound "run-1a2b.".
    low = prefix.rstrip("-")
    found: list[str] = []
    after = ""
    for _ in range(PAGES):
        page = await lookup(low, after, PAGE)
        found.extend(k for k in page if k.startswith(prefix) and visible(k))
        if len(page) < PAGE or len(found) > SHOWN:
            break
        after = page[-1]
    else:  # every page full: whether what was kept is all of it is unknown
        raise InvalidArgument(f"{kind} prefix {text!r} matches more than {PAGE * PAGES} ids; give more characters")
    what = "run" if kind == "run" else "artifact"
    if not found:
        raise NotFound(f"no {what} {text!r}")
    if len(found) == 1:
        return found[0]
    more = len(found) > SHOWN
    names = ", ".join(found[:SHOWN]) + (", …" if more else "")
    count = f"more than {SHOWN}" if more else str(len(found))
    raise InvalidArgument(f"{what} prefix {text!r} is ambiguous: {count} match ({names}); give more characters")
