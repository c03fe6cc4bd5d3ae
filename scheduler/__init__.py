"""The Outrider scheduler: the only source of truth and the only writer of state.

Layout: ``store`` owns SQLite; ``model`` holds the domain objects and their state
machines; ``matcher`` is pure placement logic; ``engine`` ties them together;
``servicers`` are thin gRPC adapters; ``server`` wires TLS, auth, health and
reflection; ``main`` is the ``outrider-scheduler`` entry point.
"""
