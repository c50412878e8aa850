"""Execute the notebook suite with papermill, one progress line per notebook.

On a machine without a GPU the notebooks before the report run side by side, one
torch thread each (small models use a second core poorly: one notebook per core
ends the suite about twice as soon); beside a GPU, which they would share, one at
a time. The report runs last: it reads the others' runs.

Parameters come from a preset (configs/notebooks_<name>.json: notebook -> its
parameters, "*" -> parameters for every notebook that declares them) and from
`key=value` overrides: `epochs=1` goes to every notebook with an `epochs`
parameter, `02_dcgan.epochs=1` to that notebook alone. A name no notebook
declares is an error, not a silently ignored typo. A failing cell stops the run
(the report does not run) with a `NotebookFailed` naming the notebook and the cell,
once the notebooks already running have ended; the partly executed
copy is kept for reading as `<name>.failed.ipynb`, beside the last good
`<name>.ipynb`, which a failure never overwrites.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lib.config import parse_value
from lib.core import usable_cores
from lib.core.progress import HEADLESS_ENV
from lib.notebook.paths import project_root

NOTEBOOKS = ("01_data_exploration", "02_dcgan", "03_cvae", "04_ddpm", "05_report")
REPORT = "05_report"  # reads the other notebooks' runs: it runs after them
PRESETS = {"demo": "configs/notebooks_demo.json", "gpu": "configs/notebooks_gpu.json"}
ALL = "*"  # preset key whose parameters go to every notebook that declares them
# the kernel's start-up warnings (e.g. about TCP transport) would drown the progress lines
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]


class RunnerError(ValueError):
    """The runner was asked for something impossible (unknown notebook, preset or parameter)."""


class NotebookFailed(RuntimeError):
    """A notebook raised in one of its cells."""

    def __init__(self, notebook: str, cell: str, error: str, output: Path,
                 last_good: Path | None = None):
        self.notebook, self.cell, self.error, self.output = notebook, cell, error, output
        kept = (f"\nlast good executed copy (an earlier run), kept: {last_good}"
                if last_good else "")
        super().__init__(f"notebook {notebook} failed in {cell}: {error}\n"
                         f"partly executed copy: {output}{kept}")


@dataclass
class Result:
    notebook: str
    output: Path
    seconds: float


def notebooks_dir() -> Path:
    root = project_root()
    if root is None or not (root / "notebooks").is_dir():
        raise RunnerError("no notebooks/ folder found beside the lib package or in the current "
                          "folder; run from the repository's root")
    return root / "notebooks"


def load_preset(preset: str | Path | None) -> dict[str, dict]:
    """A preset name (demo, gpu) or a JSON file path -> {notebook or '*': {param: value}}."""
    if preset is None:
        return {}
    if str(preset) in PRESETS:
        path = (project_root() or Path.cwd()) / PRESETS[str(preset)]
    else:
        path = Path(preset)
    if not path.is_file():
        raise RunnerError(f"notebook preset {str(preset)!r} not found ({path}); use one of "
                          f"{', '.join(PRESETS)} or a JSON file mapping notebook -> parameters")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise RunnerError(f"{path}: not a valid JSON preset ({e})") from None
    if not isinstance(raw, dict):
        raise RunnerError(f"{path}: expected a JSON object {{notebook: {{parameter: value}}}} "
                          f"at the top, got a {type(raw).__name__}")
    for key, value in raw.items():
        if key != ALL and key not in NOTEBOOKS:
            raise RunnerError(f"{path}: {key!r} is not a notebook; valid: {ALL}, "
                              f"{', '.join(NOTEBOOKS)}")
        if not isinstance(value, dict):
            raise RunnerError(f"{path}: {key} must map parameter names to values")
    return raw


PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """['epochs=1', '02_dcgan.image_size=16'] -> {'*': {'epochs': 1}, '02_dcgan': {...}}.

    Values are JSON when they parse (numbers, true, null), Python's True, False and None
    as papermill's -p reads them (the string "False" would be a true value), else strings.
    """
    out: dict[str, dict] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RunnerError(f"parameter {item!r} must look like key=value or notebook.key=value")
        value = PYTHON_CONSTANTS.get(text.strip(), parse_value(text))
        notebook, dot, name = key.strip().rpartition(".")
        if dot and notebook not in NOTEBOOKS:
            raise RunnerError(f"parameter {item!r}: {notebook!r} is not a notebook; valid: "
                              f"{', '.join(NOTEBOOKS)}")
        out.setdefault(notebook if dot else ALL, {})[name] = value
    return out


def declared_parameters(path: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(path))


def plan(names: list[str], layers: list[dict[str, dict]], folder: Path) -> dict[str, dict]:
    """Each selected notebook's parameters; later layers win, '*' entries go where declared.

    A name must be declared by some notebook of the suite (selected or not), so that a
    typo is an error while a preset's shared entries still fit a partial run.
    """
    declared = {name: declared_parameters(folder / f"{name}.ipynb") for name in NOTEBOOKS}
    known = sorted({p for d in declared.values() for p in d})
    params: dict[str, dict] = {name: {} for name in names}
    for layer in layers:
        for key, values in layer.items():
            for param, value in values.items():
                if key == ALL and param not in known:
                    raise RunnerError(f"no notebook has a parameter {param!r}; "
                                      f"known: {', '.join(known)}")
                if key != ALL and param not in declared[key]:
                    raise RunnerError(f"notebook {key} has no parameter {param!r}; its "
                                      f"parameters: {', '.join(declared[key])}")
                for name in names if key == ALL else [key] if key in names else []:
                    if param in declared[name]:
                        params[name][param] = value
    return params


def run_notebooks(only: list[str] | None = None, preset: str | Path | None = "demo",
                  overrides: list[str] | None = None, out_root: str | Path = "outputs",
                  echo: Callable[[str], None] = print, jobs: int | None = None) -> list[Result]:
    """Execute notebooks into out_root/notebooks/ (results in suite order), `jobs` at a time
    before the report (None: see side_by_side); raise NotebookFailed on error.

    `out_root` reaches every notebook with an `out_root` parameter, so the run folders,
    the report and the executed copies all land under it.
    """
    for name in only or []:
        if name not in NOTEBOOKS:
            raise RunnerError(f"unknown notebook {name!r}; valid: {', '.join(NOTEBOOKS)}")
    names = [n for n in NOTEBOOKS if not only or n in only]
    folder = notebooks_dir()
    out_root = Path(out_root).resolve()
    executed = out_root / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    layers = [{ALL: {"out_root": str(out_root)}}, load_preset(preset),
              parse_overrides(overrides or [])]
    params = plan(names, layers, folder)

    tags = {name: f"[{i}/{len(names)}]" for i, name in enumerate(names, 1)}
    first = [n for n in names if n != REPORT]
    jobs = jobs or side_by_side(len(first))

    def run(name: str) -> Result:
        return execute(name, tags[name], folder, executed, params[name], echo)

    with kernel_env(jobs):
        # the suite's later notebooks train the costlier models (the DDPM most): they start
        # first, and the cheap ones fill the other cores around them
        return together(run, first, jobs, start=first[::-1]) + [
            run(n) for n in names if n == REPORT]


def side_by_side(n: int) -> int:
    """Notebooks at once: one per core without a GPU (each on one torch thread: more
    kernels than cores only take turns), one at a time beside a GPU."""
    import torch  # heavy: only to ask for a GPU

    return 1 if torch.cuda.is_available() else max(1, min(n, usable_cores()))


def together(run: Callable[[str], Result], names: list[str], jobs: int,
             start: list[str] | None = None) -> list[Result]:
    """run(name) for each name, `jobs` at a time in the order `start` (default: names);
    results and the first failure in names' order, raised once the notebooks already
    running have ended; none starts after it."""
    if jobs <= 1:  # in this thread: Ctrl-C stops the notebook at once
        return [run(n) for n in names]
    failed = threading.Event()

    def guarded(name: str) -> Result | None:
        if failed.is_set():
            return None  # not started: an earlier notebook failed
        try:
            return run(name)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(jobs) as pool:
        submitted = {n: pool.submit(guarded, n) for n in start or names}
    futures = [submitted[n] for n in names]
    errors = [f.exception() for f in futures if f.exception()]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


@contextlib.contextmanager
def kernel_env(jobs: int):
    """Kernels started inside inherit HEADLESS_ENV (they draw static grids instead of
    sliders) and, when several run at once, their share of the cores as torch threads."""
    env = {HEADLESS_ENV: "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // jobs))
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(name: str, tag: str, folder: Path, executed: Path, params: dict,
            echo: Callable[[str], None]) -> Result:
    """Run one notebook into executed/<name>.ipynb; NotebookFailed names the failing cell.

    papermill writes its copy as the cells run, so it writes to <name>.running.ipynb: a
    run that finished replaces <name>.ipynb, a failed one becomes <name>.failed.ipynb and
    the last good copy stays.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output, failed = executed / f"{name}.ipynb", executed / f"{name}.failed.ipynb"
    running = executed / f"{name}.running.ipynb"
    last_good = output if output.is_file() else None
    echo(f"{tag} {name} ...")
    t0 = time.monotonic()
    try:
        papermill.execute_notebook(str(folder / f"{name}.ipynb"), str(running),
                                   parameters=params, progress_bar=False,
                                   cwd=str(folder.parent), extra_arguments=QUIET_KERNEL)
    except PapermillExecutionError as e:
        running.replace(failed)
        first_line = next((s for s in e.source.splitlines() if s.strip()), "")
        cell = f"cell {e.exec_count} ({first_line.strip()[:60]!r})"
        raise NotebookFailed(name, cell, f"{e.ename}: {e.evalue}", failed, last_good) from None
    except Exception as e:  # the kernel died or would not start
        if running.is_file():
            running.replace(failed)
        raise NotebookFailed(name, "the kernel", f"{type(e).__name__}: {e}", failed,
                             last_good) from e
    running.replace(output)
    failed.unlink(missing_ok=True)  # an earlier failure's copy: no longer the news
    seconds = time.monotonic() - t0
    echo(f"{tag} {name} ok in {seconds:.1f} s -> {output}")
    return Result(name, output, seconds)
