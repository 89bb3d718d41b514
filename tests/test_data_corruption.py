"""Every corruption of a dataset gives a DataError naming the file; check-data reports all of them at once."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from taskprompter.cli import main
from taskprompter.data import NYUD, PascalContext
from taskprompter.errors import DataError

ALL_NYUD = ["semseg", "depth", "normals", "edge"]
ALL_PASCAL = ["semseg", "human_parts", "sal", "normals", "edge"]


@pytest.fixture
def nyud(synthetic_nyud_root, tmp_path):
    return shutil.copytree(synthetic_nyud_root, tmp_path / "nyud")


@pytest.fixture
def pascal(synthetic_pascal_root, tmp_path):
    return shutil.copytree(synthetic_pascal_root, tmp_path / "pascal")


def _error(ds, index: int) -> str:
    with pytest.raises(DataError) as info:
        ds.load_raw(index)
    return str(info.value)


def test_missing_label_file(nyud):
    (nyud / "depth" / "000001.npy").unlink()
    msg = _error(NYUD(nyud, "train", ALL_NYUD), 1)
    assert str(nyud / "depth" / "000001.npy") in msg and "missing" in msg


def test_truncated_png_and_jpeg(nyud, pascal):
    for path in (nyud / "images" / "000000.png", pascal / "JPEGImages" / "000000.jpg"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    assert str(nyud / "images" / "000000.png") in _error(NYUD(nyud, "train", ["depth"]), 0)
    assert str(pascal / "JPEGImages" / "000000.jpg") in _error(PascalContext(pascal, "train", ["sal"]), 0)


def test_wrong_shape(nyud):
    path = nyud / "segmentation" / "000002.png"
    Image.fromarray(np.ones((32, 40), dtype=np.uint8)).save(path)
    msg = _error(NYUD(nyud, "train", ["semseg"]), 2)
    assert str(path) in msg and "32x40" in msg and "64x80" in msg


def test_out_of_range_label_names_value_task_and_file(nyud, pascal):
    path = nyud / "segmentation" / "000000.png"
    seg = np.asarray(Image.open(path)).copy()
    seg[0, :3] = 45
    Image.fromarray(seg).save(path)
    msg = _error(NYUD(nyud, "train", ["semseg"]), 0)
    assert str(path) in msg and "45" in msg and "semseg" in msg
    path = pascal / "semseg" / "pascal-context" / "000001.png"
    seg = np.asarray(Image.open(path)).copy()
    seg[5, 5] = 30
    Image.fromarray(seg).save(path)
    msg = _error(PascalContext(pascal, "train", ["semseg"]), 1)
    assert str(path) in msg and "30" in msg and "semseg" in msg and "0..20" in msg


def test_non_finite_depth(nyud):
    path = nyud / "depth" / "000003.npy"
    depth = np.load(path)
    depth[10, 10] = np.nan
    np.save(path, depth)
    msg = _error(NYUD(nyud, "train", ["depth"]), 3)
    assert str(path) in msg and "non-finite" in msg


def test_split_id_without_files(nyud):
    with open(nyud / "gt_sets" / "val.txt", "a") as f:
        f.write("ghost\n")
    ds = NYUD(nyud, "val", ["depth"])
    assert ds.ids[-1] == "ghost"
    assert str(nyud / "images" / "ghost.png") in _error(ds, len(ds) - 1)


def test_bad_context_and_part_mats(pascal):
    path = pascal / "pascal-context" / "trainval" / "000000.mat"
    scipy.io.savemat(str(path), {"LabelMap": np.full((64, 80), 600, dtype=np.uint16)})
    msg = _error(PascalContext(pascal, "train", ["edge"]), 0)
    assert str(path) in msg and "600" in msg
    scipy.io.savemat(str(path), {"Labels": np.zeros((64, 80))})
    assert "no 'LabelMap'" in _error(PascalContext(pascal, "train", ["normals"]), 0)
    part = pascal / "human_parts" / "000001.mat"
    part.write_bytes(b"not a mat file")
    assert str(part) in _error(PascalContext(pascal, "train", ["human_parts"]), 1)


def test_check_data_reports_every_problem_then_exits_nonzero(nyud, capsys):
    (nyud / "depth" / "000001.npy").unlink()
    (nyud / "edge" / "000001.png").unlink()  # a second problem in the same sample
    img = nyud / "images" / "000004.png"
    img.write_bytes(img.read_bytes()[:100])
    with open(nyud / "gt_sets" / "train.txt", "a") as f:
        f.write("ghost\n")
    code = main(["check-data", "--format", "nyud", "--root", str(nyud)])
    out = capsys.readouterr()
    assert code == 1
    for path in ("depth/000001.npy", "edge/000001.png", "images/000004.png", "images/ghost.png"):
        assert str(nyud / path) in out.out
    assert "problem(s)" in out.err


def test_check_data_clean_tree_is_one_line_and_zero(synthetic_pascal_root, capsys):
    code = main(["check-data", "--format", "pascal_context", "--root", str(synthetic_pascal_root)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1 and "6 sample(s)" in out[0]


def test_check_data_missing_split_is_a_problem(nyud, capsys):
    code = main(["check-data", "--format", "nyud", "--root", str(nyud), "--split", "test", "--tasks", "depth"])
    assert code == 1 and "test.txt" in capsys.readouterr().out
