"""Outrider test suite."""
