"""Benchmarks: ``python -m bench transport [URL] [options]`` (see :mod:`bench.transport`).

Each figure is measured against a *floor*: the bare client loop doing the same storage operations
in the same run (see :mod:`bench.floors`), so a ratio is comparable across machines even when the
absolute rates are not.  Quote figures with the machine, the date and the command (the bench
prints all three).
"""
