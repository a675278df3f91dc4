"""Shared libraries already loaded into this process, found by path."""
from __future__ import annotations


def loaded_library(fragment: str) -> str | None:
    """Path of the first mapped library whose path contains ``fragment`` (e.g.
    ``"/libcublas.so"``), from /proc/self/maps; None where nothing matches or
    the maps cannot be read (not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if fragment in path:
                    return path
    except OSError:
        pass
    return None
