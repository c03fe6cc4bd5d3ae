"""The wire edge of the scheduler: protobuf in and out, and the gRPC servicers.

:mod:`scheduler.api.wire` converts between ``outrider.v1`` messages and the core's
domain types; the servicers parse a request, call one core method and convert
the answer back. Nothing below this package imports ``outrider.v1``.
"""
