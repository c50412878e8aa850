"""Progress bars: a widget only where a person watches a notebook, plain text elsewhere."""

import io
import sys
import types

import pytest
from tqdm.std import tqdm as text_tqdm

from lib.core import progress


class FakeShell:
    kernel = object()  # what ipykernel's shell has and a terminal IPython lacks


@pytest.fixture
def in_a_kernel(monkeypatch):
    ipython = types.SimpleNamespace(get_ipython=lambda: FakeShell())
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    for var in (progress.HEADLESS_ENV, "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)


def test_a_live_notebook_gets_the_widget(in_a_kernel):
    assert progress.live_notebook()
    bar = progress.progress_bar(10, disable=True)
    assert type(bar).__module__ == "tqdm.notebook"


@pytest.mark.parametrize("var, value", [(progress.HEADLESS_ENV, "1"),
                                        ("KAGGLE_KERNEL_RUN_TYPE", "Batch")])
def test_papermill_kernels_get_text_on_stdout_redrawn_rarely(in_a_kernel, monkeypatch, var,
                                                             value):
    monkeypatch.setenv(var, value)  # the runner / Kaggle's "Save & Run All"
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    bar = progress.progress_bar(400, initial=100, desc="dcgan demo")
    assert type(bar) is text_tqdm and bar.mininterval == progress.LOG_INTERVAL_S
    bar.update(1)
    bar.close()
    assert "dcgan demo" in out.getvalue() and "101/400" in out.getvalue()  # not pink stderr


def test_outside_a_kernel_the_bar_stays_on_stderr(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress.progress_bar(iterable=range(3), total=3, desc="decoding", unit="img")
    assert list(bar) == [0, 1, 2]
    assert bar.mininterval == progress.LOG_INTERVAL_S  # a pipe, not a terminal
    assert "3/3" in err.getvalue()


def test_a_line_beside_the_bar_in_an_executed_notebook_draws_the_bar_once(in_a_kernel,
                                                                           monkeypatch):
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress.progress_bar(4, desc="dcgan demo")
    bar.update(4)
    progress.write_beside(bar, "step 4: diversity 0.09 is below 0.3")
    bar.close()
    assert err.getvalue() == "step 4: diversity 0.09 is below 0.3\n"
    # tqdm.write would clear the bar and draw it again: a second "4/4" line in the notebook
    assert out.getvalue().count("4/4") == 1


def test_a_line_beside_a_bar_on_stderr_goes_through_tqdm(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress.progress_bar(4, desc="decoding")
    progress.write_beside(bar, "a note")
    bar.close()
    assert "a note\n" in err.getvalue()
