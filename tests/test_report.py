"""What a person reads: numbers in tables, the one metrics figure, pictures that survive
`nbconvert --to html`, and the report's layout (captions, twins shown once, FID axes)."""

import base64
import io
import json
import re
from pathlib import Path

import nbformat
import pytest
import torch
from nbconvert import HTMLExporter
from PIL import Image

from lib import notebook as nb
from lib.config import load_config
from lib.core import viz
from lib.notebook import report


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def dcgan_history(evals=(100, 200), lr=lambda s: 2e-4) -> list[dict]:
    """Log lines every 25 steps, scores at `evals`, with the metadata a real run carries."""
    history = []
    for step in range(25, 225, 25):
        record = {"step": step, "loss_d": 0.5 + step / 1000, "loss_g": 3 - step / 100,
                  "d_real": 0.9, "d_fake": 0.1 + step / 1000, "lr": lr(step),
                  "images_per_sec": 500.0, "images_seen": step * 64, "train_seconds": step / 10}
        if step in evals:
            record.update(fid=600 - step, fid_low=590 - step, fid_high=610 - step, kid=40.0,
                          kid_std=2.0, diversity=step / 400, ssim_nearest=0.4,
                          features="classifier", image_size=32, n_real=500, n_fake=500,
                          feature_dim=64, warnings=[])
        history.append(record)
    return history


# ---------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(("value", "key", "text"), [
    (15.47933487299997, "train_seconds", "15.5"), (1654.3, "images_per_sec", "1,654"),
    (12800, "images_seen", "12,800"), (8.97e-05, "", "8.97e-5"), (2e-4, "lr", "2e-4"),
    (0.4513, "", "0.451"), (628.96, "", "629"), (0.0, "", "0"), (float("nan"), "", "-"),
    (None, "", "-"), (True, "", "yes"), ([], "warnings", "-"), ("cpu", "", "cpu"),
])
def test_fmt_writes_numbers_for_people(value, key, text):
    assert viz.fmt(value, key) == text


def test_tables_format_their_numbers():
    md = nb.markdown_table({"train_seconds": 15.47933487299997, "images_per_sec": 1654.3,
                            "lr": 8.97e-05, "note": "a|b"})
    assert "| train_seconds | 15.5 |" in md and "| images_per_sec | 1,654 |" in md
    assert "| lr | 8.97e-5 |" in md and "a\\|b" in md  # a pipe cannot break the table
    rows = nb.markdown_table([{"run": "x", "FID": 21.73282}])
    assert rows.splitlines()[-1] == "| x | 21.7 |"


def test_config_summary_names_what_a_student_changes():
    fields = nb.config_fields(load_config("configs/cvae_demo.json"))
    assert fields["steps"] == "400 (4 epochs x 100)" and fields["kl_weight"] == 1.0
    assert fields["lr"].startswith("2e-3") and fields["model"] == "cvae (CVAE)"
    assert len(fields) < 20  # a summary, not the 60-line config
    gan = nb.config_fields(load_config("configs/dcgan_demo.json"))
    assert {"lr (generator)", "lr (discriminator)"} <= gan.keys()


# ---------------------------------------------------------------------------
# The metrics figure


def test_metrics_figure_draws_only_series_that_change():
    fig = viz.metrics_figure(dcgan_history(), title="run")
    assert titles(fig) == ["training losses", "discriminator outputs", "FID", "KID",
                           "diversity", "SSIM"]
    drawn = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert not drawn & {"image_size", "n_real", "n_fake", "feature_dim", "images_seen"}
    assert "classifier features, 32 px, 500 generated vs 500 real" in fig._suptitle.get_text()
    fid_axis = fig.axes[titles(fig).index("FID")]
    assert len(fid_axis.collections) == 1  # the 95% interval, shaded


def test_a_single_evaluation_is_a_value_not_a_dot():
    fig = viz.metrics_figure(dcgan_history(evals=(200,)))
    assert titles(fig) == ["training losses", "discriminator outputs",
                           "evaluated once (step 200)"]
    assert "FID: 400 [390, 410]" in texts(fig) and "KID: 40 ± 2" in texts(fig)


def test_lr_is_drawn_when_it_moved_and_rollbacks_are_marked():
    history = dcgan_history(lr=lambda s: 2e-4 if s < 100 else 1e-4)
    history.append({"step": 100, "event": "rollback", "diverged_at": 150, "reason": "nan",
                    "diversity": 0.01})  # an event's numbers are not a curve's
    fig = viz.metrics_figure(history)
    assert "learning rate" in titles(fig)
    losses = fig.axes[0]
    assert any(list(line.get_xdata()) == [150, 150] for line in losses.get_lines())
    diversity = fig.axes[titles(fig).index("diversity")]
    assert all(0.01 not in line.get_ydata() for line in diversity.get_lines())


def test_notebook_and_report_draw_the_same_figure(tmp_path):
    run = fake_run(tmp_path, "a", "dcgan", dcgan_history())
    from_notebook = nb.history_figure(run)
    from_report = report.run_curves_figure(report.load_run(run))
    assert titles(from_notebook) == titles(from_report)


# ---------------------------------------------------------------------------
# Pictures in exported notebooks


def gif(path: Path, colors=("red", "blue")) -> Path:
    frames = [Image.new("RGB", (40, 30), c) for c in colors]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_a_gif_is_inline_html_with_a_png_still(tmp_path):
    bundle = nb.media_bundle(gif(tmp_path / "evolution.gif"), caption="evolution")
    assert 'src="data:image/gif;base64,' in bundle["text/html"]
    assert "max-width:100%" in bundle["text/html"] and "evolution" in bundle["text/html"]
    still = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert still.convert("RGB").getpixel((0, 0)) == (0, 0, 255)  # the last frame
    assert "IPython" not in bundle["text/plain"]


def test_pictures_survive_nbconvert_to_html(tmp_path):
    outputs = [nbformat.v4.new_output("display_data", data=nb.media_bundle(obj))
               for obj in (gif(tmp_path / "a.gif"), torch.zeros(3, 36, 274, dtype=torch.uint8),
                           viz.metrics_figure(dcgan_history()))]
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("show()",
                                                                      outputs=outputs)])
    page, _ = HTMLExporter().from_notebook_node(book)
    assert page.count("data:image/gif;base64,") == 1
    assert page.count("data:image/png;base64,") >= 2
    assert "IPython.core.display" not in page


def test_tiny_grids_are_upscaled_within_the_page():
    data, kind = nb.image_bytes(torch.zeros(3, 36, 274, dtype=torch.uint8))  # a slerp strip
    assert kind == "png" and Image.open(io.BytesIO(data)).size == (1096, 144)
    big, _ = nb.image_bytes(torch.zeros(3, 600, 1000, dtype=torch.uint8))
    assert Image.open(io.BytesIO(big)).size == (1000, 600)


# ---------------------------------------------------------------------------
# The report


def fake_run(root: Path, name: str, family: str, history: list[dict], size: int = 32) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"dataset": "digits",
                                                          "image_size": size}}))
    (run / "summary.json").write_text(json.dumps({"step": 200, "family": family}))
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return run


def test_identical_media_are_shown_once_with_captions(tmp_path):
    run = fake_run(tmp_path, "v", "cvae", dcgan_history())
    gif(run / "generation.gif")
    gif(run / "evolution.gif")  # the CVAE's two names for one file
    gif(run / "reconstruction.gif", colors=("green", "white"))
    media = report.run_media(report.load_run(run))
    assert [p.name for p, _ in media] == ["reconstruction.gif", "generation.gif"]
    assert "also saved as evolution.gif" in media[1][1]
    assert all(len(caption) > 40 for _, caption in media)  # says what it shows


def test_fid_of_different_sizes_never_shares_an_axis(tmp_path):
    fake_run(tmp_path, "big", "dcgan", dcgan_history(), size=32)
    fake_run(tmp_path, "small", "ddpm", dcgan_history(), size=16)
    fig = report.quality_compute_figure(report.load_runs(tmp_path))
    assert titles(fig) == ["classifier features, 16 px", "classifier features, 32 px"]
    assert "not comparable" in fig._suptitle.get_text()


def test_report_page_fits_the_page_and_explains_kid(tmp_path):
    fake_run(tmp_path, "a", "dcgan", dcgan_history())
    page = report.export_html(report.load_runs(tmp_path), tmp_path / "report" / "r.html")
    text = page.read_text()
    assert "img{max-width:100%" in text and "KID is the squared MMD" in text


def test_report_of_a_read_only_root_goes_somewhere_writable(tmp_path, monkeypatch):
    inputs = tmp_path / "input"
    inputs.mkdir()
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # /kaggle/input is a read-only mount
        if inputs in self.parents or self == inputs:
            raise OSError(30, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setattr(report, "on_kaggle", lambda: True)
    monkeypatch.setattr(report, "KAGGLE_WORKING", tmp_path / "working")
    assert report.report_dir(inputs) == tmp_path / "working" / "outputs" / "report"
    monkeypatch.setattr(report, "on_kaggle", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert report.report_dir(inputs) == tmp_path / "report"
    assert report.report_dir(tmp_path / "writable") == tmp_path / "writable" / "report"


def test_every_media_file_of_a_run_has_a_caption():
    from lib.core.rundir import MEDIA

    assert set(report.MEDIA_CAPTIONS) == set(MEDIA)


# ---------------------------------------------------------------------------
# A page that reads clean


def test_titles_fit_inside_the_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    once = dcgan_history(evals=(25,))[:1]  # a run scored once: a one-panel figure
    for history in (once, dcgan_history()):
        fig = viz.metrics_figure(history, title="dcgan_cats_course_preset_session_two")
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()
        for text in [fig._suptitle, *(ax.title for ax in fig.axes if ax.get_visible())]:
            box = text.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width, text.get_text()


def test_grids_and_gifs_show_at_one_width_strips_and_figures_at_their_own(tmp_path):
    def width(obj):
        found = re.search(r'<img [^>]*width="(\d+)"', nb.media_bundle(obj)["text/html"])
        return int(found[1]) if found else None

    big_grid = torch.zeros(3, 1060, 1060, dtype=torch.uint8)  # a final grid saved at 2x
    assert width(gif(tmp_path / "a.gif")) == width(big_grid) == nb.DISPLAY_WIDTH
    assert width(torch.zeros(3, 36, 274, dtype=torch.uint8)) is None  # a strip
    assert width(viz.metrics_figure(dcgan_history())) is None
    run = fake_run(tmp_path, "r", "dcgan", dcgan_history())
    gif(run / "evolution.gif")
    page = report.export_html(report.load_runs(tmp_path), tmp_path / "report.html").read_text()
    assert f'width="{nb.DISPLAY_WIDTH}"' in page


def test_numbers_in_tables_never_wrap():
    page = nb.html_table([{"run": "a long run name", "FID": "400 [390, 410]", "lr": 8.97e-5,
                           "SSIM": "0.451 (recon)"}])
    nowrap = re.findall(r'<td style="white-space:nowrap">([^<]*)</td>', page)
    assert nowrap == ["400 [390, 410]", "8.97e-5", "0.451 (recon)"]
    assert "<td>a long run name</td>" in page


def test_without_a_gpu_the_notebook_names_the_settings_that_fit_a_cpu(monkeypatch, capsys):
    gpu_preset = load_config(nb.find_preset("dcgan_train"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    nb.device_note(gpu_preset)
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and note.startswith("no GPU")
    assert "cats at 64 px, 100,000 steps" in note and 'preset="dcgan_demo"' in note
    nb.device_note(load_config(nb.find_preset("ddpm_demo")))
    assert "digits at 16 px, 250 steps fit it" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    nb.device_note(gpu_preset)
    assert capsys.readouterr().out == ""  # a GPU session hears nothing


def test_the_report_table_keeps_to_short_cells_and_scrolls_when_wider_than_the_page(tmp_path):
    protocol = {"features": "inception", "weights_sha256": "7ff4a85c3a63", "n_fake": 500,
                "n_real": 500, "reference": "train", "resize": "tf1-bilinear 64->299",
                "duplicates_removed": 6447}
    fake_run(tmp_path, "dcgan_train_long_name", "dcgan",
             [{"step": 200, "fid": 41.234, "fid_low": 38.02, "fid_high": 44.91, "kid": 0.0123,
               "kid_std": 0.0011, "diversity": 0.91, "features": "inception",
               "protocol": protocol}])
    runs = report.load_runs(tmp_path)
    row = report.table_rows(runs)[0]
    # the protocol (~100 characters) has a table of its own; every other cell is short
    assert "FID protocol" not in row and max(len(v) for v in row.values()) <= 24
    assert report.protocol_rows(runs)[0]["FID protocol"].startswith("inception 7ff4a85c3a63;")
    page = nb.html_table(report.table_rows(runs))
    assert page.startswith('<div style="overflow-x:auto') and page.endswith("</table></div>")
    assert '<td style="white-space:nowrap">41.2 [38, 44.9]</td>' in page
    html_page = report.export_html(runs, tmp_path / "report.html").read_text()
    assert "FID protocol" in html_page and "6447 dups removed" in html_page
