"""Where things live: Kaggle or local, the project root, presets found by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lib
from lib.config import ConfigError
from lib.core.progress import live_notebook

# Kaggle's writable output folder: where it exists, the notebooks write there (on_kaggle);
# GENLAB_KAGGLE_WORKING points it elsewhere (a test's fake session, an unusual mount)
KAGGLE_WORKING = Path(os.environ.get("GENLAB_KAGGLE_WORKING", "/kaggle/working"))

def on_kaggle() -> bool:
    return KAGGLE_WORKING.is_dir()


def interactive() -> bool:
    """True in a live notebook session (Jupyter, Kaggle's editor), where sliders can move.

    False under the suite's runner, Kaggle's "Save & Run All" and plain Python: there the
    notebooks draw static grids, which the executed copy keeps.
    """
    return live_notebook()


def project_root() -> Path | None:
    """The folder holding `configs/`: beside the `lib` package (clone, Kaggle dataset) or cwd."""
    for candidate in (Path(lib.__file__).resolve().parent.parent, Path.cwd(), Path.cwd().parent):
        if (candidate / "configs").is_dir():
            return candidate
    return None


@dataclass
class Paths:
    out_root: Path  # one folder per run
    data_root: Path  # datasets and their caches (must be writable)


def resolve_paths(out_root: str = "auto", data_root: str = "auto") -> Paths:
    """"auto": /kaggle/working/{outputs,data} on Kaggle, else the project's outputs/ and data/."""
    base = KAGGLE_WORKING if on_kaggle() else (project_root() or Path.cwd())
    out = Path(out_root) if out_root != "auto" else base / "outputs"
    data = Path(data_root) if data_root != "auto" else base / "data"
    out.mkdir(parents=True, exist_ok=True)
    return Paths(out_root=out.resolve(), data_root=data.resolve())


def find_preset(preset: str | Path) -> Path:
    """A preset path as given, else relative to the project root, else a name under configs/.

    Notebooks run from anywhere, so `configs/dcgan_train.json`, `dcgan_train.json` and
    `dcgan_train` all find the project's configs/dcgan_train.json.
    """
    path = Path(preset)
    root = project_root()
    candidates = [path]
    if root is not None and not path.is_absolute():
        json_name = path.name if path.suffix == ".json" else f"{path.name}.json"
        candidates += [root / path, root / "configs" / json_name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in (root / "configs").glob("*.json")
                   if not p.stem.startswith("notebooks_")) if root else []  # runner presets
    looked = [str(path)] + ([f"{root} and {root / 'configs'}"] if root else [])
    raise ConfigError(f"preset {str(preset)!r} not found (looked at {', '.join(looked)}); give "
                      f"a JSON config path or a preset name: {', '.join(names) or 'none found'}")
