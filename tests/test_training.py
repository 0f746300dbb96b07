"""helpers.training: the progress bar a saved notebook keeps, and the widget stand-in text."""
from unittest import mock

import pytest

from helpers import training
from helpers.plotting import show_interactive


class FakeHandle:
    def __init__(self):
        self.shown = []

    def update(self, data, raw=False):
        self.shown.append(data["text/plain"])


def test_notebook_bar_ends_in_its_finished_state():
    handle = FakeHandle()
    with mock.patch("IPython.display.display", lambda data, raw, display_id: handle.shown.append(data["text/plain"]) or handle):
        bar = training._NotebookBar(total=4, desc="sweep")
        for _ in range(4):
            bar.update(1)
        bar.set_postfix(d=10)
        bar.close()
    assert handle.shown[0].startswith("sweep: ") and " 0/4 " in handle.shown[0]
    assert handle.shown[-1].startswith("sweep: " + "█" * 24 + " 4/4 [done in ") and handle.shown[-1].endswith("d=10")


def test_outside_a_notebook_the_bar_is_tqdm_and_can_be_silent(capsys):
    bar = training.progress_bar(3, "train", enabled=False)
    bar.update(3)
    bar.set_postfix(test_acc="0.9")
    bar.close()
    assert capsys.readouterr().err == ""


def test_show_interactive_displays_a_short_note_beside_the_widget_view():
    shown = []
    with mock.patch("IPython.display.display", lambda data, raw: shown.append(data)):
        widget = show_interactive(lambda x=1: None, x=[1, 2])
    assert shown[0]["text/plain"] == "interactive: run the notebook to use it"
    assert shown[0]["application/vnd.jupyter.widget-view+json"]["model_id"] == widget.model_id


@pytest.mark.parametrize("shell, expected", [(None, False), (type("TerminalInteractiveShell", (), {})(), False),
                                             (type("ZMQInteractiveShell", (), {})(), True)])
def test_notebook_detection(shell, expected):
    with mock.patch("IPython.get_ipython", lambda: shell):
        assert training._in_notebook() is expected
