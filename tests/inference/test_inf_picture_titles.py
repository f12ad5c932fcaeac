"""Picture titles fit their figure: both probabilities and the exam id are drawn in full."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from breastscreen.viz.overlay import fit_suptitle, us_breast_figure

TITLE = "busbra0006-normal unknown side breast: benign 0.67, malignant 0.78"


def _extent(fig: Figure):
    return fig._suptitle.get_window_extent(fig.canvas.get_renderer())


def test_long_title_is_broken_between_words_and_fits():
    fig = Figure(figsize=(3.0, 4.0))
    lines = fit_suptitle(fig, TITLE)
    text = fig._suptitle.get_text()
    assert lines == text.count("\n") + 1 >= 2
    # Nothing is lost or reordered: the lines joined by spaces are the title.
    assert text.replace("\n", " ") == TITLE
    box = _extent(fig)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_short_title_stays_on_one_line():
    fig = Figure(figsize=(12.0, 4.0))
    assert fit_suptitle(fig, TITLE) == 1
    assert fig._suptitle.get_text() == TITLE


def test_one_image_ultrasound_picture_grows_for_the_wrapped_title(tmp_path):
    import cv2

    img = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1))
    sal = np.zeros_like(img)
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    us_breast_figure([img], [sal], [1.0], "left breast", short)
    us_breast_figure([img], [sal], [1.0], TITLE, long)
    hs, ws = cv2.imread(str(short)).shape[:2]
    hl, wl = cv2.imread(str(long)).shape[:2]
    assert ws == wl == 300  # 3 inches at 100 dpi: the width never changes
    assert hl > hs  # extra title lines add height instead of shrinking the image


def test_dollar_signs_in_exam_ids_are_drawn_as_text(tmp_path):
    img = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1))
    us_breast_figure([img], [None], [1.0], r"P$\foo$ left breast: benign 0.10, malignant 0.20", tmp_path / "p.png")
    fig = Figure(figsize=(3.0, 4.0))
    fit_suptitle(fig, r"P$\foo$ x")
    assert fig._suptitle.get_text() == r"P$\foo$ x"
