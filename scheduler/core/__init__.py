"""The scheduler's core: domain types and the components that own its state.

Nothing in here speaks gRPC, protobuf or SQL: the wire is converted at the edge
(:mod:`scheduler.api`) and the store is reached through the transaction object
(:class:`scheduler.core.txn.Txn`). See docs/architecture.md for the map.
"""
