"""Generated wire stubs for the ``outrider.v1`` protocol (see proto/outrider/v1/).

Regenerate with ``python scripts/gen_protos.py``; never edit the ``*_pb2*`` files.
"""
