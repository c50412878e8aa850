"""Foundations every layer above uses: the device `Engine`, checkpoint files, run folders,
pictures and progress text. They know nothing of families, training or notebooks."""

import os


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's share)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1
