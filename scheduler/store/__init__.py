"""Durable state behind one interface (:class:`scheduler.store.base.Store`).

The core writes only through :class:`scheduler.store.changes.Changes` records; a
backend (:mod:`scheduler.store.sqlite` today) turns them into its own statements.
Import the backend module you need; this package imports none, so that the core
can use the records without pulling in a database driver.
"""
