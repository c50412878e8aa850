"""Progress bars that read wherever a run is watched.

A live notebook gets tqdm's widget (`tqdm.notebook`). Everywhere else - papermill (the suite's
runner, Kaggle's "Save & Run All"), a log file, a terminal - gets plain text:
a widget there is saved as a stale `0%| 0/400` (or nothing) in the executed
notebook, and papermill's `--log-output` prints every redraw as a new line,
so the text bar redraws rarely unless a person is watching a terminal.

Imports nothing from the rest of `lib`, so the data and training code can use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

HEADLESS_ENV = "GENLAB_HEADLESS"  # set by the runner for the kernels it starts
TERMINAL_INTERVAL_S = 1.0  # someone is watching: redraw often
LOG_INTERVAL_S = 30.0  # a log or an executed notebook: a line every half minute at most
LOG_COLUMNS = 80  # no terminal to measure


def in_kernel() -> bool:
    """True inside a Jupyter kernel (live or driven by papermill)."""
    ipython = sys.modules.get("IPython")  # imported by every kernel; never imported here
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def live_notebook() -> bool:
    """True in a notebook a person is looking at (Jupyter, Kaggle's editor).

    False under the suite's runner, Kaggle's "Save & Run All" and plain Python.
    """
    if os.environ.get(HEADLESS_ENV) or os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Batch":
        return False
    return in_kernel()


def progress_bar(total: int | None = None, initial: int = 0, desc: str = "",
                 disable: bool = False, iterable: Iterable | None = None, unit: str = "it"):
    """A tqdm bar: the widget in a live notebook, plain text redrawn every 30 s elsewhere
    (every second in a terminal).

    In a kernel the text goes to stdout: Jupyter paints stderr pink, as if it were an
    error. Outside one it stays on stderr, so a command's stdout keeps only its answer.
    """
    if live_notebook():
        from tqdm.notebook import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable,
                    unit=unit, mininterval=TERMINAL_INTERVAL_S)
    from tqdm.std import tqdm

    stream = sys.stdout if in_kernel() else sys.stderr
    terminal = not in_kernel() and stream.isatty()
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable, unit=unit,
                file=stream, dynamic_ncols=terminal, ncols=None if terminal else LOG_COLUMNS,
                mininterval=TERMINAL_INTERVAL_S if terminal else LOG_INTERVAL_S)


def write_beside(bar, text: str) -> None:
    """A line on stderr beside a bar, the bar's own text left as it is.

    Where the bar shares stderr (a terminal, a log) tqdm clears it and draws it again below
    the line. In an executed notebook the bar is on stdout, another output of the cell:
    that redraw would stay there as a second copy of the bar's line.
    """
    if in_kernel() and not live_notebook():
        print(text, file=sys.stderr, flush=True)
    else:
        bar.write(text, file=sys.stderr)
