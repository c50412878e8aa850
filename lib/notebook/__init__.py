"""What the notebooks call, as `from lib import notebook as nb`.

A notebook cell stays a few lines because the decisions live here: outputs go to
`/kaggle/working` on Kaggle and to the project's `outputs/` elsewhere (`paths`); a
preset is found by path or by name and overridden by the parameters that are set
(`params`); a run folder is resumed rather than overwritten, and a run from
elsewhere (a previous Kaggle session's output) is copied in and continued (`runs`);
pictures, GIFs and tables are shown so that they survive export to HTML (`display`).
The report, the explorers and their sliders are modules of this package too.
"""

from lib.notebook.display import (
    DISPLAY_WIDTH,
    config_fields,
    device_note,
    html_table,
    image_bytes,
    markdown_table,
    media_bundle,
    show,
    table,
)
from lib.notebook.params import config_from_parameters, preset_changes, set_parameters
from lib.notebook.paths import (
    KAGGLE_WORKING,
    Paths,
    find_preset,
    interactive,
    on_kaggle,
    project_root,
    resolve_paths,
)
from lib.notebook.runs import (
    find_run,
    history_figure,
    read_json,
    run_summary,
    snapshot_strip,
    train_or_resume,
    trained_model,
)

__all__ = ["DISPLAY_WIDTH", "KAGGLE_WORKING", "Paths", "config_fields", "config_from_parameters",
           "device_note", "find_preset", "find_run", "history_figure", "html_table",
           "image_bytes", "interactive", "markdown_table", "media_bundle", "on_kaggle",
           "preset_changes", "project_root", "read_json", "resolve_paths", "run_summary",
           "set_parameters", "show", "snapshot_strip", "table", "train_or_resume",
           "trained_model"]
