"""Observing runs: hooks the control processor calls after a commit (console progress
now; metrics and lineage later). What must hold: an observer never reports what a crash
could undo, and a failing observer is logged and skipped, never stops a loop.
"""
