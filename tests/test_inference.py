"""Predictor: real photos of odd sizes and modes give maps of the original size; fit/un-pad geometry is exact;
sliding windows cover the image; `taskprompter predict` writes maps, panels and affinity figures."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from taskprompter.cli import main
from taskprompter.engine.checkpoint import save_checkpoint
from taskprompter.errors import DataError
from taskprompter.inference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Predictor,
    as_float_rgb,
    class_map_dtype,
    find_images,
    logits_to_map,
    read_image,
)
from taskprompter.model.build import build_model


class Echo(nn.Module):
    """Stand-in whose 'depth' output is the red channel of its (normalised, padded) input."""

    def __init__(self) -> None:
        super().__init__()
        self.img_size, self.task_names, self.grid = (64, 64), ["depth"], (4, 4)
        self.init_kwargs = {"tasks": {"depth": 1}}

    def forward(self, images, return_affinities=False):
        out = {"depth": images[:, :1].clone()}
        return (out, [None]) if return_affinities else out


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Predictor(build_model("taskprompter_tiny"))


def _photos(tmp_path):
    cam16 = skimage.data.camera().astype(np.uint16) * 257  # a real 16-bit grey image
    Image.fromarray(cam16).save(tmp_path / "camera16.png")
    Image.fromarray(skimage.data.logo()).save(tmp_path / "logo_rgba.png")
    Image.fromarray(skimage.data.page()).save(tmp_path / "page_grey.png")
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "chelsea.jpg")
    return {"camera16.png": (512, 512), "logo_rgba.png": (500, 500), "page_grey.png": (191, 384),
            "chelsea.jpg": (300, 451)}


def test_read_image_modes(tmp_path):
    _photos(tmp_path)
    cam = read_image(tmp_path / "camera16.png")
    assert cam.shape == (512, 512, 3) and cam.dtype == np.float32
    np.testing.assert_allclose(cam[..., 0], skimage.data.camera() / 255.0, atol=1e-6)  # v*257/65535 = v/255
    logo = read_image(tmp_path / "logo_rgba.png")
    np.testing.assert_allclose(logo, skimage.data.logo()[..., :3] / 255.0, atol=1e-6)  # alpha dropped
    page = read_image(tmp_path / "page_grey.png")
    assert np.array_equal(page[..., 0], page[..., 2])
    assert as_float_rgb(np.zeros((3, 4, 2), np.uint8)).shape == (3, 4, 3)
    with pytest.raises(DataError, match="cannot read image"):
        (tmp_path / "bad.png").write_bytes(b"not a png")
        read_image(tmp_path / "bad.png")


def test_class_maps_use_the_smallest_unsigned_type():
    """int64 class maps were 8 bytes a pixel (437 MB of .npy for one 4000 x 3000 photo); one or two now."""
    assert class_map_dtype(21) == np.uint8 and class_map_dtype(256) == np.uint8
    assert class_map_dtype(257) == np.uint16 and class_map_dtype(459) == np.uint16
    logits = torch.zeros(300, 2, 3)
    logits[299] = 1.0
    ids = logits_to_map("semseg", logits)
    assert ids.dtype == np.uint16 and ids.max() == 299
    assert logits_to_map("human_parts", torch.zeros(7, 2, 3)).dtype == np.uint8
    for task, c in (("depth", 1), ("sal", 2), ("edge", 1), ("normals", 3)):
        assert logits_to_map(task, torch.zeros(c, 2, 3, dtype=torch.float64)).dtype == np.float32, task


def test_fit_geometry_keeps_aspect_and_centres():
    p = Predictor(Echo())
    fit = p.fit((300, 451))
    assert fit.resized == (43, 64) and fit.pad == (10, 11, 0, 0)  # 300 * 64/451 = 42.6 -> 43
    fit = p.fit((20, 10))
    assert fit.resized == (64, 32) and fit.pad == (0, 0, 16, 16)


def test_unpad_never_leaks_padding():
    """A white image through the echo model must come back white everywhere (padding would be 0)."""
    p = Predictor(Echo())
    white = np.full((300, 451, 3), 255, np.uint8)
    depth = p.predict(white).maps["depth"]
    assert depth.shape == (300, 451)
    np.testing.assert_allclose(depth, (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rtol=1e-5)


def test_sliding_window_covers_every_pixel_once_averaged():
    p = Predictor(Echo())
    img = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    depth = p.predict(img, sliding_window=True).maps["depth"]
    expected = (img[..., 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(depth, expected, atol=1e-5)  # full resolution, no resizing
    small = p.predict(img[:30, :40], sliding_window=True).maps["depth"]  # smaller than a window: padded
    np.testing.assert_allclose(small, expected[:30, :40], atol=1e-5)


def test_tiny_model_on_photos_of_odd_sizes_and_modes(tmp_path, tiny):
    sizes = _photos(tmp_path)
    for name, (H, W) in sizes.items():
        pred = tiny.predict(tmp_path / name, affinity=name == "chelsea.jpg")
        assert pred.maps["semseg"].shape == (H, W) and pred.maps["semseg"].dtype == np.uint8  # 21 classes
        assert pred.maps["semseg"].max() < 21 and pred.maps["human_parts"].max() < 7
        assert pred.maps["normals"].shape == (H, W, 3)
        np.testing.assert_allclose(np.linalg.norm(pred.maps["normals"], axis=-1), 1.0, atol=1e-4)
        for t in ("sal", "edge"):
            assert pred.maps[t].shape == (H, W) and 0.0 <= pred.maps[t].min() <= pred.maps[t].max() <= 1.0
    levels = len(tiny.model.decode_blocks)
    assert set(pred.spatial_affinity) == set(tiny.tasks)
    assert all(len(v) == levels and v[0].shape == (300, 451) for v in pred.spatial_affinity.values())
    assert pred.channel_affinity[0].shape == (5, 64)  # (T, C)


def test_predict_cli_writes_maps_panels_and_affinities(tmp_path):
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", tasks={"semseg": 40, "depth": 1, "normals": 3, "edge": 1})  # NYUD set
    save_checkpoint(tmp_path / "ckpt", model=model,
                    meta={"step": 0})
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.coins()).save(photos / "coins.png")
    Image.fromarray(skimage.data.chelsea()).save(photos / "cat.jpg")
    assert len(find_images([str(photos / "*.png")])) == 1
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--input", str(photos), "--out", str(out),
                 "--affinity", "--device", "cpu"]) == 0
    assert np.load(out / "coins" / "semseg.npy").shape == (303, 384)
    assert np.load(out / "cat" / "depth.npy").shape == (300, 451)
    assert np.load(out / "cat" / "normals.npy").shape == (300, 451, 3)
    with Image.open(out / "cat" / "semseg.png") as im:
        assert im.size == (451, 300) and im.mode == "RGB"
    for f in ("panel.png", "affinity/spatial.png", "affinity/edge_level4.png", "affinity/channel_level1.png"):
        assert (out / "cat" / f).is_file(), f
    assert sorted(p.name for p in out.iterdir()) == ["cat", "coins"]  # only the images' folders
    assert main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--input", str(tmp_path / "none*.jpg"),
                 "--out", str(out)]) == 2
