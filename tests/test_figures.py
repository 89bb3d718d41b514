"""Figures a reader can read: every title, legend, colour bar and key lies inside the saved canvas (constrained
layout); continuous maps have perceptual colour maps with colour bars; normals have a colour key; ignored ground
truth is striped and keyed, never blank white; one small plot per validation metric, with its direction."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from taskprompter import visualize as vis
from taskprompter.tasks import IGNORE_INDEX

H, W = 60, 80
NUM_CLASSES = {"semseg": 21, "depth": 1, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}


def _all_axes(fig: Figure) -> list:
    """The figure's axes and their inset axes (colour bars and keys drawn under a picture)."""
    found = []
    for ax in fig.get_axes():
        found += [ax, *ax.child_axes]
    return found


def _visible_texts(fig: Figure) -> list:
    """Titles, suptitles, legends (and their entries), axis labels and the texts placed on axes or the figure."""
    found = [t for t in (fig._suptitle, *fig.texts) if t is not None]
    for sub in fig.subfigs:
        found += [t for t in (sub._suptitle, *sub.texts) if t is not None]
    found += [*fig.legends, *[t for leg in fig.legends for t in leg.get_texts()]]
    for ax in _all_axes(fig):
        found += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:
            found += [ax.xaxis.label, ax.yaxis.label]
        legend = ax.get_legend()
        if legend is not None:
            found += [legend, *legend.get_texts()]
    return [a for a in found if a.get_visible() and (not hasattr(a, "get_text") or a.get_text())]


def assert_readable(fig: Figure) -> Image.Image:
    """Draw ``fig`` and check that its tight bounding box (everything drawn) and every title and legend lie inside
    the canvas; then save it with the library's function and return the PNG, which must hold the whole layout."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    tight = fig.get_tightbbox(renderer)  # inches
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01, tight
    assert tight.x1 <= fig.get_figwidth() + 0.01 and tight.y1 <= fig.get_figheight() + 0.01, tight
    texts = _visible_texts(fig)
    assert texts
    for artist in texts:
        box = artist.get_window_extent(renderer)
        assert (box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1 and box.x1 <= canvas.x1 + 1
                and box.y1 <= canvas.y1 + 1), (artist, box, canvas)
    buffer = io.BytesIO()
    vis.save_figure(fig, buffer)
    buffer.seek(0)
    png = Image.open(buffer)
    png.load()
    width, height = fig.get_size_inches() * vis.DPI
    assert png.size[0] <= width + 2 and png.size[1] <= height + 2  # trimmed margins only, never grown past
    return png


def _texts(fig: Figure) -> set[str]:
    return {a.get_text() for a in _visible_texts(fig) if hasattr(a, "get_text")}


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    maps = {"semseg": rng.integers(0, 21, (H, W)).astype(np.uint8), "depth": rng.uniform(0.5, 6.0, (H, W)),
            "human_parts": rng.integers(0, 7, (H, W)).astype(np.uint8), "sal": rng.random((H, W)),
            "normals": rng.normal(size=(H, W, 3)), "edge": rng.random((H, W))}
    maps["semseg"][:, :20], maps["human_parts"][:, :20] = 15, 1  # the largest classes: person, head
    raw = {"image": rng.uniform(0, 255, (H, W, 3)), "semseg": maps["semseg"].copy(),
           "depth": maps["depth"].copy(), "human_parts": maps["human_parts"].copy(),
           "sal": (rng.random((H, W)) > 0.5).astype(np.uint8), "normals": maps["normals"].copy(),
           "edge": (rng.random((H, W)) > 0.9).astype(np.uint8), "meta": {"id": "2008_000123"}}
    raw["semseg"][:15] = IGNORE_INDEX
    raw["sal"][-10:] = IGNORE_INDEX
    raw["depth"][:, :5] = 0.0
    return raw["image"] / 255.0, maps, raw


def test_prediction_panel_keeps_titles_legends_and_keys_inside(sample):
    """Was: the predict panel cut titles and the semseg legend (21 VOC classes under a short figure)."""
    image, maps, raw = sample
    for ground_truth in (None, raw):
        fig = vis.prediction_panel(image, maps, num_classes=NUM_CLASSES, ground_truth=ground_truth,
                                   title="validation image 2008_000123 after 40000 iterations, all six tasks")
        assert_readable(fig)
        texts = _texts(fig)
        assert {"Semseg", "Depth", "Parsing", "Saliency", "Normal", "Boundary", "person", "head"} <= texts
        assert any(t.startswith("+") and t.endswith("smaller classes") for t in texts)  # long legends are capped
        legends = [ax.get_legend() for ax in fig.get_axes() if ax.get_legend()]
        assert sorted(len(leg.get_texts()) for leg in legends) == [7, vis.LEGEND_ENTRIES + 1]  # parts, semseg


def test_depth_has_a_colour_bar_in_metres(sample):
    image, maps, _ = sample
    fig = vis.prediction_panel(image, maps, num_classes=NUM_CLASSES)
    assert_readable(fig)
    bars = [ax for ax in _all_axes(fig) if ax.get_xlabel() == "depth (m)"]
    assert len(bars) == 1
    lo, hi = vis.depth_limits(maps["depth"])
    assert bars[0].get_xlim() == pytest.approx((lo, hi))
    assert vis.DEPTH_CMAP == "magma_r" and any(c.get_cmap().name == "magma_r" for c in bars[0].collections)


def test_normals_have_a_colour_key(sample):
    """Was: no key for normal colours. Now a sphere seen from the camera, coloured by the same rule."""
    image, maps, _ = sample
    fig = vis.prediction_panel(image, maps, num_classes=NUM_CLASSES)
    keys = [ax for ax in _all_axes(fig) if any(isinstance(i, AxesImage) and i.get_array().shape == (64, 64, 4)
                                               for i in ax.images)]
    assert len(keys) == 1 and "normal colours" in keys[0].get_xlabel()
    key = vis.normals_key(64)
    facing = vis.colorize_normals(np.array([[[0.0, 0.0, -1.0]]]))[0, 0]  # (128, 128, 0)
    assert np.abs(key[32, 32, :3].astype(int) - facing).max() <= 2  # the centre faces the camera
    assert key[32, 62, 0] > 240 and key[62, 32, 1] > 240  # right: +x (red), bottom: +y (green)
    assert key[0, 0, 3] == 0 and key[32, 32, 3] == 255  # transparent outside the disc


def test_ignored_ground_truth_is_striped_and_keyed(sample):
    """Was: ignored ground truth was blank white (and ignored saliency looked 'not salient')."""
    image, maps, raw = sample
    pictures = vis.ground_truth_pictures(raw, NUM_CLASSES)
    stripes = {tuple(c) for c in vis.IGNORE_STRIPES}
    for task, region in (("semseg", (slice(0, 15), slice(None))), ("sal", (slice(-10, None), slice(None))),
                         ("depth", (slice(None), slice(0, 5)))):
        colours = {tuple(c) for c in pictures[task][region].reshape(-1, 3)}
        assert colours == stripes, task  # both greys, nothing else: not white, not a class colour
    labelled = {tuple(c) for c in pictures["semseg"][15:].reshape(-1, 3)}
    assert not labelled & stripes
    fig = vis.prediction_panel(image, maps, num_classes=NUM_CLASSES, ground_truth=raw)
    assert_readable(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ignored (not labelled)"]
    clean = {**raw, "semseg": maps["semseg"], "sal": raw["sal"].clip(0, 1), "depth": maps["depth"]}
    assert not vis.prediction_panel(image, maps, num_classes=NUM_CLASSES, ground_truth=clean).legends


def test_affinity_maps_use_a_perceptual_map_with_a_colour_bar(sample):
    """Was: jet, without a colour bar."""
    image, _, _ = sample
    rng = np.random.default_rng(1)
    maps = {t: [rng.random((H, W)) for _ in range(4)] for t in NUM_CLASSES}
    fig = vis.make_affinity_grid(image, maps, title="spatial task-prompt affinity (rows: tasks, columns: levels)")
    assert_readable(fig)
    assert {"Semseg", "Boundary", "level 1", "level 4"} <= _texts(fig)
    bars = [ax for ax in fig.get_axes() if "affinity" in ax.get_ylabel()]
    assert len(bars) == 1
    assert vis.AFFINITY_CMAP in ("magma", "viridis", "cividis", "inferno")
    value = rng.random((H, W))
    np.testing.assert_array_equal(vis.heatmap_overlay(image, value), vis.heatmap_overlay(image, value,
                                                                                          cmap=vis.AFFINITY_CMAP))
    fig = vis.make_channel_affinity(rng.random((6, 64)), list(NUM_CLASSES), vis.pick_channels(64),
                                    title="channel task-prompt affinity, level 1")
    assert_readable(fig)
    assert any(ax.get_ylabel() == "min to max per task" for ax in fig.get_axes())


def _records():
    train = [{"step": s, "split": "train", "loss/total": 2.0 / s, "loss/semseg": 1.0 / s, "loss/depth": 0.5 / s}
             for s in range(1, 41)]
    val = [{"step": s, "split": "val", "semseg/mIoU": 10.0 + s, "semseg/pixel_acc": 50.0 + s,
            "semseg/iou_person": 3.0, "depth/rmse": 2.0 / s, "normals/mean": 40.0 - s / 4, "edge/odsF": 30.0 + s}
           for s in (10, 20, 30, 40)]
    return train + val


def test_one_small_plot_per_metric_with_its_direction():
    """Was: one axis for every validation metric, higher- and lower-is-better together."""
    fig = vis.make_training_curves(_records())
    assert_readable(fig)
    titled = {ax.get_title(): ax for ax in fig.get_axes() if ax.get_title()}
    assert {"Semseg mIoU ↑", "Depth rmse ↓", "Normal mean ↓", "Boundary odsF ↑"} <= set(titled)
    for title in ("Semseg mIoU ↑", "Depth rmse ↓", "Normal mean ↓", "Boundary odsF ↑"):
        assert len(titled[title].get_lines()) == 1  # one metric per axis
    assert not any("pixel_acc" in t or "iou_person" in t for t in titled)  # primary metrics by default
    assert vis.metric_title("depth/abs_rel") == "Depth abs_rel ↓"
    fig = vis.make_training_curves(_records(), metrics=["semseg/mIoU", "semseg/pixel_acc"])
    assert {"Semseg mIoU ↑", "Semseg pixel_acc ↑"} <= {ax.get_title() for ax in fig.get_axes()}
    only_train = [r for r in _records() if r["split"] == "train"]
    assert_readable(vis.make_training_curves(only_train))


def test_saved_figures_hold_the_whole_layout(tmp_path, sample):
    """The file functions write what the make_* functions lay out (the PNG's tight box holds every text)."""
    image, maps, raw = sample
    vis.save_panel(tmp_path / "panel.png", image, {"semseg": vis.colorize("semseg", maps["semseg"],
                                                                          num_classes=21)},
                   labels={"semseg": maps["semseg"]}, num_classes={"semseg": 21}, title="t")
    keys = vis.plot_training_curves(tmp_path / "curves.png", _records())
    assert keys == ["loss/depth", "loss/semseg", "loss/total", "depth/rmse", "edge/odsF", "normals/mean",
                    "semseg/mIoU"]
    for name in ("panel.png", "curves.png"):
        with Image.open(tmp_path / name) as im:
            pixels = np.asarray(im.convert("L"))
        assert (pixels[0] == 255).all() and (pixels[-1] == 255).all()  # a white margin on every side:
        assert (pixels[:, 0] == 255).all() and (pixels[:, -1] == 255).all()  # nothing runs off the edge
    assert matplotlib.get_backend()  # (no pyplot state was needed)
