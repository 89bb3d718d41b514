"""`taskprompter predict` on real-world folders: a bad file does not stop the run and is listed at the end (exit 1);
hidden files and non-images are skipped; a progress bar; class maps in the smallest unsigned type; EXIF orientation;
one folder per image with collision-free names; affinity figures only with --affinity, in the image's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from taskprompter.cli import main
from taskprompter.engine.checkpoint import save_checkpoint
from taskprompter.errors import DataError
from taskprompter.inference import find_images, output_names, read_image
from taskprompter.model.build import build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", tasks={"semseg": 40, "depth": 1, "normals": 3, "edge": 1})  # NYUD set
    path = tmp_path_factory.mktemp("predict") / "ckpt"
    save_checkpoint(path, model=model, meta={"step": 0})
    return path


def _photo(path: Path, size=(32, 24), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def exif_rotated_jpeg(path: Path, width: int = 40, height: int = 20) -> Path:
    """A landscape JPEG (red left half) stored with EXIF orientation 6: viewers show it turned 90 degrees clockwise,
    (width x height) -> (height x width), the red half on top."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return path


def _predict(checkpoint, out, *inputs, affinity=False):
    argv = ["predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs), "--out", str(out),
            "--device", "cpu"]
    return main(argv + (["--affinity"] if affinity else []))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _stderr_lines(capsys) -> list[str]:
    """stderr without the progress bar's redrawn lines."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("taskprompter")]


def test_bad_files_are_listed_at_the_end_and_the_run_goes_on(checkpoint, tmp_path, capsys):
    """Was: one corrupt file stopped the whole folder. Now every good image is written, each bad one is one line on
    stderr at the end (its path and why), the exit status is 1, and a bad file leaves nothing on disk."""
    photos = tmp_path / "photos"
    _photo(photos / "a_good.png")
    (photos / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (photos / "c_empty.jpg").write_bytes(b"")
    _photo(photos / "d_good.jpg", seed=1)
    out = tmp_path / "out"
    assert _predict(checkpoint, out, photos) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "d_good"]  # nothing for the bad ones
    lines = _stderr_lines(capsys)
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"taskprompter predict: skipped: cannot read image {photos / 'b_corrupt.png'}: ")
    assert lines[1].startswith(f"taskprompter predict: skipped: cannot read image {photos / 'c_empty.jpg'}: ")
    assert lines[2] == f"taskprompter predict: 2 of 4 image(s) failed; the other 2 are in {out}"


def test_only_bad_files_exit_1_and_write_nothing(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert _predict(checkpoint, out, photos) == 1
    assert not out.exists()
    lines = _stderr_lines(capsys)
    assert lines[-1] == "taskprompter predict: 1 of 1 image(s) failed; nothing was written"


def test_hidden_files_and_non_images_are_skipped(checkpoint, tmp_path, capsys):
    """Was: a zero-byte ``._x.png`` (macOS metadata) and non-images matched by a glob aborted the run."""
    photos = tmp_path / "photos"
    _photo(photos / "cat.png")
    (photos / "._cat.png").write_bytes(b"")
    (photos / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (photos / "notes.txt").write_text("shot on a phone")
    (photos / "raw").mkdir()  # a folder matched by the glob
    assert find_images([str(photos)]) == [photos / "cat.png"]
    assert find_images([str(photos / "*")]) == [photos / "cat.png"]
    for inputs in ([photos], [photos / "*"]):
        out = tmp_path / f"out{len(str(inputs[0]))}"
        assert _predict(checkpoint, out, *inputs) == 0
        assert sorted(p.name for p in out.iterdir()) == ["cat"]
        assert _stderr_lines(capsys) == []


def test_no_image_at_all_is_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "._cat.png").write_bytes(b"")
    (photos / "notes.txt").write_text("x")
    out = tmp_path / "out"
    assert _predict(checkpoint, out, photos) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"taskprompter predict: error: no images found in {photos} ")
    assert not out.exists()


def test_a_progress_bar_counts_the_images(checkpoint, tmp_path, capsys):
    """Was: a folder of photos ran for minutes in silence."""
    photos = tmp_path / "photos"
    _photo(photos / "a.png")
    _photo(photos / "b.png", seed=1)
    assert _predict(checkpoint, tmp_path / "out", photos) == 0
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "2/2" in err


def test_maps_are_stored_compactly(checkpoint, tmp_path):
    """Was: class maps as int64 .npy (437 MB for one 4000 x 3000 photo). Now the smallest unsigned type (40 NYUD
    classes: uint8, one byte a pixel); continuous maps stay float32."""
    _photo(tmp_path / "photo.png", size=(48, 40))
    out = tmp_path / "out"
    assert _predict(checkpoint, out, tmp_path / "photo.png") == 0
    semseg = np.load(out / "photo" / "semseg.npy")
    assert semseg.dtype == np.uint8 and semseg.shape == (40, 48) and semseg.nbytes == 40 * 48
    assert np.load(out / "photo" / "depth.npy").dtype == np.float32
    assert np.load(out / "photo" / "normals.npy").dtype == np.float32


def test_exif_orientation_is_applied(checkpoint, tmp_path):
    """Was: a portrait phone photo was predicted lying on its side."""
    upright = read_image(exif_rotated_jpeg(tmp_path / "stored.jpg"))
    assert upright.shape == (40, 20, 3)  # (H, W): portrait, as viewers show it
    assert upright[5, 10, 0] > 0.9 and upright[35, 10, 0] < 0.1  # the red half is on top
    out = tmp_path / "out"
    assert _predict(checkpoint, out, exif_rotated_jpeg(tmp_path / "phone.jpg")) == 0
    assert np.load(out / "phone" / "semseg.npy").shape == (40, 20)  # upright (H, W), not the stored (20, 40)
    with Image.open(out / "phone" / "semseg.png") as im:
        assert im.size == (20, 40)


def test_same_names_get_distinct_predictable_folders(checkpoint, tmp_path):
    """Was: ``coffee_3``, ``coffee_4``, depending on the order and count. Now the path relative to the inputs'
    common folder names a shared stem, whatever the order."""
    a, b = _photo(tmp_path / "a" / "coffee.png"), _photo(tmp_path / "b" / "coffee.png", seed=1)
    tea = _photo(tmp_path / "b" / "tea.png", seed=2)
    expected = {a: "a__coffee", b: "b__coffee", tea: "tea"}
    assert output_names([a, b, tea]) == expected and output_names([tea, b, a]) == expected
    png, jpg = _photo(tmp_path / "c" / "coffee.png"), _photo(tmp_path / "c" / "coffee.jpg", seed=3)
    assert output_names([png, jpg]) == {png: "coffee.png", jpg: "coffee.jpg"}
    with pytest.raises(DataError, match="would share an output folder"):
        output_names([tmp_path / "a__coffee.png", a, b])  # a__coffee.png is what a/coffee.png would become
    out = tmp_path / "out"
    assert _predict(checkpoint, out, tmp_path / "b", tmp_path / "a") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a__coffee", "b__coffee", "tea"]
    assert (out / "a__coffee" / "panel.png").is_file() and (out / "b__coffee" / "panel.png").is_file()


def test_affinity_figures_only_with_the_flag_and_in_the_image_folder(checkpoint, tmp_path):
    """Was: per-level channel affinity figures landed in the output root. Now nothing of affinity without
    --affinity, and with it everything under ``<out>/<image>/affinity/``; the root holds only image folders."""
    photos = tmp_path / "photos"
    _photo(photos / "a.png")
    _photo(photos / "b.png", seed=1)
    plain = tmp_path / "plain"
    assert _predict(checkpoint, plain, photos) == 0
    assert not [f for f in _files(plain) if "affinity" in f]
    out = tmp_path / "out"
    assert _predict(checkpoint, out, photos, affinity=True) == 0
    assert all(p.is_dir() for p in out.iterdir()) and sorted(p.name for p in out.iterdir()) == ["a", "b"]
    affinity = [f for f in _files(out) if "affinity" in f]
    assert affinity and all(f.split("/")[1] == "affinity" for f in affinity)
    for name in ("a", "b"):
        assert {"spatial.png", "channel_level1.png", "edge_level1.png"} <= {p.name for p in (out / name /
                                                                                          "affinity").iterdir()}
