"""Experiment drivers: one run, and the resumable series of runs (sweep, collect, regress)."""
