"""The scheduler's HTTP side: a read-only dashboard (and the hook for ``/metrics``).

``server.py`` (the aiohttp server, its TLS and who is looking), ``data.py`` (what the pages
and the ``/api/…`` JSON show, read from the engine), ``pages.py`` (the HTML), ``static/`` (the
stylesheet and the little JavaScript that polls the JSON). See docs/dashboard.md.
"""
