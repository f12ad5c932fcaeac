"""Film mammograms: bright film-edge strips and scanner borders never join the breast crop."""

from __future__ import annotations

import numpy as np
import pytest

from breastscreen.preprocess.mammo import preprocess_image, segment_breast


def film(h: int = 600, w: int = 420, *, top: int = 18, bottom: int = 22, side_border: int = 10, gap: int = 0,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A digitised-film-like image: a breast against the left edge reaching into bright full-width
    film-edge strips at the top and bottom (touching them unless ``gap``), a bright scanner border
    along the right edge, a burned-in label and film grain. Returns (image, true breast mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, ry, rx = h / 2, h / 2 - top - gap + 6, 0.62 * w
    d = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2
    breast = d <= 1.0
    img = 0.04 + 0.01 * rng.standard_normal((h, w))
    img[breast] = 0.45 + 0.3 * (1 - xx[breast] / rx) + 0.03 * rng.standard_normal(int(breast.sum()))
    img[:top] = 0.97
    img[h - bottom:] = 0.95
    img[:, w - side_border:] = 0.9
    img[40:70, 300:360] = 1.0  # burned-in label
    breast[:top] = False
    breast[h - bottom:] = False
    return (np.clip(img, 0, 1) * 4095).astype(np.float32), breast


def _tissue_kept(box: tuple[int, int, int, int], truth: np.ndarray) -> float:
    x0, y0, x1, y1 = box
    return truth[y0:y1, x0:x1].sum() / truth.sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_touching_film_strips_are_cut_off(seed: int) -> None:
    img, truth = film(seed=seed)
    seg = segment_breast(img, name="film.png")
    x0, y0, x1, y1 = seg.box
    assert y0 >= 15 and y1 <= img.shape[0] - 18, seg.box  # the strips are outside the crop
    assert x1 <= img.shape[1] - 10, seg.box  # so is the scanner border
    assert _tissue_kept(seg.box, truth) > 0.99
    crop_truth = truth[y0:y1, x0:x1]
    assert crop_truth.mean() > 0.55  # the breast fills the crop (it was ~40 % with the strips joined)
    assert not seg.mask[:15].any() and not seg.mask[-18:].any()


def test_strips_separated_by_a_gap_are_dropped_too() -> None:
    with_gap, truth = film(gap=8)
    seg = segment_breast(with_gap)
    assert _tissue_kept(seg.box, truth) > 0.99 and seg.box[1] >= 15


def test_breast_filling_the_whole_height_keeps_its_chest_wall() -> None:
    """A mediolateral-oblique film whose breast spans every row (mini-MIAS style): the chest-wall
    columns are full of breast and must not be mistaken for a film strip."""
    h, w = 600, 420
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    breast = xx <= 0.7 * w * np.sqrt(np.clip(1 - ((yy - h / 2) / (0.75 * h)) ** 2, 0, 1))
    img = np.where(breast, 0.5 + 0.3 * (1 - xx / w), 0.03).astype(np.float32) * 4095
    seg = segment_breast(img)
    assert seg.box[0] == 0 and seg.box[1] == 0 and seg.box[3] == h
    assert _tissue_kept(seg.box, breast) > 0.99


def test_preprocessed_film_keeps_breast_and_drops_strips() -> None:
    img, truth = film()
    res = preprocess_image(img, (0.1, 0.1), 0.5, laterality_hint="L", name="film.png")
    x0, y0, x1, y1 = res.record["crop_box"]
    assert y0 >= 15 and y1 <= img.shape[0] - 18
    # After background suppression nothing of the strips survives in the output.
    assert res.image[: 3].max() < 0.9 * 4095 and res.image[-3:].max() < 0.9 * 4095


def test_mini_mias_films_with_border_strips(shared_data) -> None:  # noqa: ANN001 - fixture
    """Two mini-MIAS films whose bright scanner/film strips used to join the breast mask, so that
    the crop was the whole film: now the strip side is left out and the breast kept."""
    from breastscreen.data.readers import load_image

    folder = shared_data / "mini-mias" / "images"
    if not folder.is_dir():
        pytest.skip("no mini-MIAS")
    right_strip = segment_breast(load_image(folder / "mdb280.png").pixels)
    assert right_strip.box[2] < 900 and right_strip.box[0] == 0, right_strip.box
    left_film = segment_breast(load_image(folder / "mdb153.png").pixels)
    assert left_film.box[0] > 200 and left_film.box[2] == 1024, left_film.box
    for seg in (right_strip, left_film):
        x0, y0, x1, y1 = seg.box
        assert seg.mask[y0:y1, x0:x1].mean() > 0.4  # the crop is mostly breast
