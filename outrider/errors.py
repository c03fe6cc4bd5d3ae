"""One root exception and its grouped subclasses, and the command line's exit codes.

Domain code raises these; the one place that maps them to gRPC status codes is
``scheduler.api.status`` (server side) and ``outrider.client`` (client side). An error
that came back from the scheduler keeps the status it came back with in ``code``;
:data:`EXIT_CODES` turns that name into the ``outrider`` command's exit code.
"""

from __future__ import annotations


class OutriderError(Exception):
    """Root of every error Outrider raises on purpose."""

    #: Name of the grpc.StatusCode this error maps to on the wire (on an instance made from
    #: a call's status by ``outrider.client``: the status the call ended with).
    code = "UNKNOWN"


class InvalidArgument(OutriderError):
    """Raised when an input (spec, RPC field, config, flag) is malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(OutriderError):
    """Raised when a run, task, agent or artifact does not exist."""

    code = "NOT_FOUND"


class StaleEpoch(OutriderError):
    """Raised when a report carries a lease epoch that is no longer current."""

    code = "ABORTED"


class PermissionDenied(OutriderError):
    """Raised when an identity's role does not allow an action."""

    code = "PERMISSION_DENIED"


class FailedPrecondition(OutriderError):
    """Raised when an action does not fit the current state (retry a running run)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(OutriderError):
    """Raised when admission control refuses new work."""

    code = "RESOURCE_EXHAUSTED"


class DataLoss(OutriderError):
    """Raised when bytes do not match their digest."""

    code = "DATA_LOSS"


class ConfigError(InvalidArgument):
    """Raised when a config file or flag is invalid; names the file and key."""


#: The exit code of a command that failed with an error: 2, as for a usage error, unless the
#: error's status name is in :data:`EXIT_CODES`.
EXIT_OTHER = 2

#: The ``outrider`` command's exit code by status name: the gRPC status a call ended with, or
#: the name of an error found before any call (a spec that fails validation is
#: ``INVALID_ARGUMENT``, a missing spec file ``NOT_FOUND``; a config or PKI problem is
#: ``CONFIG_ERROR``, :data:`EXIT_OTHER`). The one table: every verb's errors go through
#: :func:`exit_code`. 0 (success), 1 (a watched run failed, a broken audit chain), 2 (usage
#: errors, and every status not here) and 130 (interrupted) are set elsewhere and never reused.
EXIT_CODES: dict[str, int] = {
    # 3: the request is wrong, or does not fit the current state; sending it again will not help.
    "INVALID_ARGUMENT": 3,
    "FAILED_PRECONDITION": 3,
    "OUT_OF_RANGE": 3,
    # 4: who is asking may not do this (the role or the certificate).
    "PERMISSION_DENIED": 4,
    "UNAUTHENTICATED": 4,
    # 5: the run, task, agent, artifact or file does not exist (or is not the caller's to see).
    "NOT_FOUND": 5,
    # 6: the scheduler could not be reached, or did not answer in time; worth retrying.
    "UNAVAILABLE": 6,
    "DEADLINE_EXCEEDED": 6,
    # 7: refused for load or a conflict: admission control, a limit, a competing change.
    "RESOURCE_EXHAUSTED": 7,
    "ALREADY_EXISTS": 7,
    "ABORTED": 7,
}


def status_name(exc: BaseException) -> str:
    """The status name the command line reports ``exc`` under (its ``--json`` ``code``).

    An OutriderError its ``code`` (a config problem ``CONFIG_ERROR``); a local file that is
    not there ``NOT_FOUND``, one we may not touch ``PERMISSION_DENIED``; anything else
    ``UNKNOWN``.
    """
    if isinstance(exc, ConfigError):
        return "CONFIG_ERROR"
    if isinstance(exc, OutriderError):
        return exc.code
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND"
    if isinstance(exc, PermissionError):
        return "PERMISSION_DENIED"
    return "UNKNOWN"


def exit_code(name: str) -> int:
    """The exit code for a status name (:data:`EXIT_CODES`, else :data:`EXIT_OTHER`)."""
    return EXIT_CODES.get(name, EXIT_OTHER)
