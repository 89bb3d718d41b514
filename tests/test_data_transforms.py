"""Training / evaluation transforms and seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch.utils.data import DataLoader

from taskprompter.data import build_dataset, collate, epoch_order, seeded, to_tensors
from taskprompter.data.sample import new_meta
from taskprompter.data.sampling import SeededSamples, StepBatches, micro_batches
from taskprompter.data.transforms import (
    HFlip,
    IgnoreRegions,
    Normalize,
    PadTo,
    PhotometricDistortion,
    RandomCrop,
    RandomScale,
    eval_transform,
    resize_bilinear,
    train_transform,
)
from taskprompter.errors import DataError

LABELS = ("semseg", "human_parts", "sal", "edge")


def make_sample(h: int = 12, w: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return {
        "image": rng.uniform(0, 255, (h, w, 3)).astype(np.float32),
        "semseg": rng.choice([0, 3, 7, 255], (h, w)).astype(np.int64),
        "human_parts": rng.choice([0, 1, 6], (h, w)).astype(np.int64),
        "sal": rng.integers(0, 2, (h, w)).astype(np.int64),
        "edge": rng.integers(0, 2, (h, w)).astype(np.int64),
        "depth": rng.uniform(0.5, 9.0, (h, w)).astype(np.float32),
        "normals": normals,
        "meta": new_meta("s", (h, w)),
    }


def test_bilinear_resize_matches_torch_interpolate():
    import torch.nn.functional as F

    image = make_sample(13, 17)["image"]
    for size in ((26, 34), (7, 9), (13, 40)):
        ours = resize_bilinear(image, size)
        ref = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size, mode="bilinear",
                            align_corners=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_flip_twice_is_identity_and_once_mirrors_and_negates_normals_x():
    s = make_sample()
    flip = HFlip(p=1.0)
    once, twice = flip(s, np.random.default_rng(0)), flip(flip(s, np.random.default_rng(0)), np.random.default_rng(0))
    for key in s:
        if key != "meta":
            assert np.array_equal(twice[key], s[key])
    for key in (*LABELS, "image", "depth"):
        assert np.array_equal(once[key], s[key][:, ::-1])
    assert np.array_equal(once["normals"][..., 0], -s["normals"][:, ::-1, 0])
    assert np.array_equal(once["normals"][..., 1:], s["normals"][:, ::-1, 1:])
    assert HFlip(p=0.0)(s, np.random.default_rng(0)) is s


def test_scale_by_two_replicates_labels_and_halves_depth():
    s = make_sample()
    out = RandomScale((2.0, 2.0))(s, np.random.default_rng(0))
    up = lambda a: np.repeat(np.repeat(a, 2, 0), 2, 1)  # noqa: E731  nearest upsampling by 2, by hand
    for key in LABELS:
        assert np.array_equal(out[key], up(s[key]))
    np.testing.assert_allclose(out["depth"], up(s["depth"]) / 2, rtol=1e-6)
    assert np.array_equal(out["normals"], up(s["normals"]))
    assert out["image"].shape == (24, 20, 3)


@pytest.mark.parametrize("seed", range(5))
def test_random_scale_keeps_label_sets_and_rescales_depth(seed):
    s = make_sample(17, 23, seed)
    rng = np.random.default_rng(seed)
    factor = np.random.default_rng(seed).uniform(0.5, 2.0)  # the draw RandomScale makes
    out = RandomScale((0.5, 2.0))(s, rng)
    assert out["image"].shape[:2] == (round(17 * factor), round(23 * factor))
    for key in LABELS:
        assert set(np.unique(out[key])) <= set(np.unique(s[key]))
    assert np.isin(np.round(out["depth"] * np.float32(factor), 4), np.round(s["depth"], 4)).all()


def _reference_crop(semseg, size, seed, max_ratio=0.75, attempts=10):
    """The crop rule written out by hand: draw; re-draw up to 10 times while one class covers >= 75 %."""
    rng = np.random.default_rng(seed)
    h, w = semseg.shape
    top, left = rng.integers(0, h - size[0] + 1), rng.integers(0, w - size[1] + 1)
    for _ in range(attempts):
        crop = semseg[top : top + size[0], left : left + size[1]]
        vals, counts = np.unique(crop[crop != 255], return_counts=True)
        if len(vals) > 1 and counts.max() / counts.sum() < max_ratio:
            break
        top, left = rng.integers(0, h - size[0] + 1), rng.integers(0, w - size[1] + 1)
    return top, left


def test_crop_redraws_until_no_class_covers_75_percent():
    s = make_sample(100, 100)
    s["semseg"] = np.zeros((100, 100), dtype=np.int64)
    s["semseg"][50:, 50:] = 1  # a crop at (top, left) holds top * left pixels of class 1
    s["depth"] = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)  # identifies the crop position
    ok = 0
    for seed in range(100):
        out = RandomCrop((50, 50))(s, np.random.default_rng(seed))
        top, left = _reference_crop(s["semseg"], (50, 50), seed)
        assert np.array_equal(out["depth"], s["depth"][top : top + 50, left : left + 50])
        assert np.array_equal(out["semseg"], s["semseg"][top : top + 50, left : left + 50])
        ok += 625 < top * left < 1875
    assert ok >= 95  # without the rule about 40 % of the crops qualify
    small = make_sample(20, 30)
    assert RandomCrop((50, 50))(small, np.random.default_rng(0)) is small  # only where larger


def test_padding_is_centred_with_per_task_fill_values():
    s = make_sample(5, 7)
    out = PadTo((10, 12))(s)
    top, bottom, left, right = out["meta"]["pad"]
    assert (top, bottom, left, right) == (2, 3, 2, 3)
    fills = {"image": 0.0, "semseg": 255, "human_parts": 255, "sal": 255, "edge": 255, "depth": 0.0, "normals": 0.0}
    for key, fill in fills.items():
        assert out[key].shape[:2] == (10, 12)
        assert np.array_equal(out[key][2:7, 2:9], s[key])
        border = np.ones((10, 12), dtype=bool)
        border[2:7, 2:9] = False
        assert (out[key][border] == fill).all()
    twice = PadTo((12, 12))(out)
    assert twice["meta"]["pad"] == (3, 4, 2, 3)


def test_normalize_uses_imagenet_statistics():
    s = {"image": np.array([[[124.0, 116.0, 104.0], [255.0, 0.0, 51.0]]], dtype=np.float32)}
    out = Normalize()(s)["image"]
    expected = [[(124 / 255 - 0.485) / 0.229, (116 / 255 - 0.456) / 0.224, (104 / 255 - 0.406) / 0.225],
                [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]]
    np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-6)


def test_ignore_regions_parts_without_any_part_pixel():
    s = make_sample()
    s["human_parts"][:] = 0
    s["human_parts"][0, 0] = 255
    assert (IgnoreRegions()(s)["human_parts"] == 255).all()
    s["human_parts"][1, 1] = 2
    assert IgnoreRegions()(s) is s


def test_photometric_distortion_changes_only_the_image():
    s = make_sample()
    changed = 0
    for seed in range(10):
        out = PhotometricDistortion()(s, np.random.default_rng(seed))
        for key in s:
            if key != "image":
                assert out[key] is s[key]
        assert out["image"].min() >= 0 and out["image"].max() <= 255
        changed += not np.allclose(out["image"], s["image"])
    assert changed >= 8


def test_train_transform_always_gives_the_training_size():
    t = train_transform((16, 20), ["semseg", "depth", "normals"])
    for seed in range(8):
        s = make_sample(int(9 + 3 * seed), int(31 - 2 * seed), seed)
        out = t(s, np.random.default_rng(seed))
        for key in s:
            if key != "meta":
                assert out[key].shape[:2] == (16, 20)
        for key in LABELS:
            assert set(np.unique(out[key])) <= set(np.unique(s[key])) | {255}


def test_real_photo_through_the_evaluation_transform():
    photo = skdata.astronaut()  # (512, 512, 3) uint8
    raw = {"image": photo.astype(np.float32), "meta": new_meta("astronaut", photo.shape[:2])}
    out = to_tensors(eval_transform((520, 530))(raw, np.random.default_rng(0)))
    assert out["image"].shape == (3, 520, 530) and out["image"].dtype == torch.float32
    assert out["meta"]["pad"] == (4, 4, 9, 9)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = (torch.from_numpy(photo).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(out["image"][:, 4:516, 9:521], expected)
    assert (out["image"][:, :4] == 0).all() and (out["image"][:, :, -9:] == 0).all()
    with pytest.raises(DataError, match="astronaut.*512x512.*500x500"):
        eval_transform((500, 500))(raw, np.random.default_rng(0))
    assert eval_transform(None)(raw, np.random.default_rng(0))["image"].shape == (512, 512, 3)


def test_seeded_sample_depends_only_on_seed_epoch_index(synthetic_nyud_root):
    tasks = ["semseg", "depth", "normals", "edge"]
    ds = seeded(build_dataset("nyud", synthetic_nyud_root, "train", tasks,
                              transform=train_transform((48, 56), tasks)), seed=7)
    a, b = ds[2], ds[2]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in ("meta", "labelled"))
    ds.set_epoch(1)
    c = ds[2]
    assert not torch.equal(a["image"], c["image"])
    d = ds[(0, 2)]
    assert all(torch.equal(a[k], d[k]) for k in a if k not in ("meta", "labelled"))
    assert a["labelled"] == d["labelled"] == dict.fromkeys(tasks, torch.tensor(True))
    assert ds.tasks == tasks and ds.task_channels["semseg"] == 40  # attributes forwarded


def test_seeded_batches_do_not_depend_on_the_number_of_workers(synthetic_nyud_root):
    tasks = ["depth", "normals"]
    ds = seeded(build_dataset("nyud", synthetic_nyud_root, "train", tasks,
                              transform=train_transform((40, 48), tasks)), seed=3)
    ds.set_epoch(2)
    order = epoch_order(len(ds), 3, 2)
    assert sorted(order) == list(range(len(ds))) and order == epoch_order(len(ds), 3, 2)
    runs = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, sampler=order, num_workers=workers, collate_fn=collate)
        runs.append([batch["image"] for batch in loader])
    assert all(torch.equal(x, y) for x, y in zip(*runs))


class _RngProbe:
    """A dataset whose sample is (index, first draw of its augmentation generator)."""

    def __len__(self) -> int:
        return 7

    def get(self, index: int, rng: np.random.Generator) -> tuple[int, int]:
        return index, int(rng.integers(1 << 60))


def test_seeded_reads_the_training_stream_by_epoch():
    """One seeding system: `seeded` + `epoch_order` give every sample the generator training gives it."""
    steps = StepBatches(7, seed=5, batch_size=1, rank=0, world_size=1, accum_steps=1)
    stream = SeededSamples(_RngProbe())
    trained = [stream[pair] for micro, _ in zip(micro_batches(steps), range(21)) for pair in micro]
    ds = seeded(_RngProbe(), seed=5)
    by_epoch = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        by_epoch += [ds[i] for i in epoch_order(len(ds), 5, epoch)]
    assert by_epoch == trained


def test_resize_to_puts_labels_at_the_label_size_without_touching_values():
    from taskprompter.data.transforms import ResizeTo, fixed_size_transform

    rng = np.random.default_rng(0)
    semseg = np.repeat(np.repeat(rng.integers(0, 19, (4, 8)), 4, 0), 4, 1)  # (16, 32) in 4x4 blocks
    depth = np.repeat(np.repeat(rng.uniform(0, 60, (4, 8)).astype(np.float32), 4, 0), 4, 1)
    sample = {"image": rng.uniform(0, 255, (16, 32, 3)).astype(np.float32), "semseg": semseg, "depth": depth,
              "3ddet": {"label": np.array([0])}, "meta": new_meta("a", (16, 32))}
    out = ResizeTo((8, 16), (4, 8))(sample)
    assert out["image"].shape == (8, 16, 3) and out["semseg"].shape == out["depth"].shape == (4, 8)
    np.testing.assert_array_equal(out["semseg"], semseg[::4, ::4])  # nearest: one pixel per 4x4 block
    np.testing.assert_array_equal(out["depth"], depth[::4, ::4])  # disparity values are not rescaled
    assert out["3ddet"] is sample["3ddet"]
    np.testing.assert_allclose(out["image"], resize_bilinear(sample["image"], (8, 16)))
    normalised = fixed_size_transform((8, 16), (4, 8))(sample, rng)
    np.testing.assert_allclose(normalised["image"], Normalize()(out)["image"], rtol=1e-6)
    with pytest.raises(DataError, match="3-D boxes"):
        HFlip(1.0)(sample, rng)
