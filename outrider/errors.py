"""One root exception and its grouped subclasses.

Domain code raises these; the one place that maps them to gRPC status codes is
``scheduler.api.status`` (server side) and ``outrider.client`` (client side).
"""

from __future__ import annotations


class OutriderError(Exception):
    """Root of every error Outrider raises on purpose."""

    #: Name of the grpc.StatusCode this error maps to on the wire.
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
