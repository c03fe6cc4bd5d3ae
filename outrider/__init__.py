"""Outrider: a pull-based scheduler and lightweight agents for multi-stage ML pipelines.

This package is the thin layer shared by the scheduler, the agent and users:
wire stubs (``outrider.v1``), TLS and PKI helpers, config helpers, the client SDK
(``outrider.client``, ``outrider.pipeline``) and the ``outrider`` CLI.
"""

__version__ = "0.1.0"
