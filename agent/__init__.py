"""Outrider agent: the lightweight daemon that pulls work from the scheduler and runs it."""
