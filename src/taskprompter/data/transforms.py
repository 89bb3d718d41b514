"""Augmentation on the whole raw sample (NumPy, channels last), as the released training used it.

Every transform is a callable `t(sample, rng) -> sample` taking a `numpy.random.Generator`; all randomness comes
from that generator, so a sample's augmentation is fixed by how the generator was seeded (see `sampling.py`: training
and `seeded(dataset, seed)` derive it from (seed, position in the data stream)). Each modality's treatment is in
two tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

from ..errors import DataError
from ..tasks import IGNORE_INDEX, check_task_names
from .sample import Sample

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

INTERP = {"image": "bilinear", "semseg": "nearest", "depth": "nearest", "human_parts": "nearest",
          "sal": "nearest", "normals": "nearest", "edge": "nearest"}
PAD_VALUE = {"image": 0.0, "semseg": IGNORE_INDEX, "depth": 0.0, "human_parts": IGNORE_INDEX,
             "sal": IGNORE_INDEX, "normals": 0.0, "edge": IGNORE_INDEX}  # image 0 = the mean after Normalize


# entries of a sample that are not pixel maps: metadata, per-object records (Cityscapes-3D boxes) and the
# {task: bool} labelled flags (partial labels), which every transform carries through unchanged
NON_MAPS = ("meta", "3ddet", "labelled")


def _arrays(sample: Sample) -> list[str]:
    return [k for k in sample if k not in NON_MAPS]


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear resampling with half-pixel centres (align_corners=False)."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W, C) float32 in NumPy: same result on any thread count or worker (unlike a
    multi-threaded kernel), which keeps seeded augmentation bit-reproducible."""
    r0, r1, wr = _linear_taps(image.shape[0], size[0])
    c0, c1, wc = _linear_taps(image.shape[1], size[1])
    rows = image[r0] * (1 - wr)[:, None, None] + image[r1] * wr[:, None, None]  # (nH, W, C)
    return (rows[:, c0] * (1 - wc)[None, :, None] + rows[:, c1] * wc[None, :, None]).astype(np.float32)


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize every map to `size`: the image bilinearly (align_corners False), every label nearest."""
    out = dict(sample)
    h, w = sample["image"].shape[:2]
    nh, nw = size
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)  # nearest source pixel
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    for key in _arrays(sample):
        if INTERP.get(key, "nearest") == "bilinear":
            out[key] = resize_bilinear(np.asarray(sample[key], dtype=np.float32), (nh, nw))
        else:
            out[key] = sample[key][rows][:, cols]
    return out


class ResizeTo:
    """The released Cityscapes-3D input pipeline's geometry: the image resized (bilinear) to ``size`` and every
    label map (nearest) to ``label_size`` -- labels at half the input size, as the released model predicts them.
    Values are not rescaled (disparity stays in full-resolution pixels, as released); 3-D boxes are untouched (they
    live in the original camera's pixels, which the camera in ``meta`` describes)."""

    def __init__(self, size: tuple[int, int], label_size: tuple[int, int]) -> None:
        self.size, self.label_size = (int(size[0]), int(size[1])), (int(label_size[0]), int(label_size[1]))

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        out = dict(sample)
        image = sample["image"]
        if image.shape[:2] != self.size:
            out["image"] = resize_bilinear(np.asarray(image, dtype=np.float32), self.size)
        labels = {k: v for k, v in sample.items() if k not in NON_MAPS and k != "image"}
        if labels:
            h, w = next(iter(labels.values())).shape[:2]
            if (h, w) != self.label_size:
                nh, nw = self.label_size
                rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)  # nearest source pixel
                cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
                out.update({k: v[rows][:, cols] for k, v in labels.items()})
        return out


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class RandomScale:
    """Scale by s ~ U[low, high]: image bilinear, labels nearest; depth values divided by s (a scaled-up image
    looks like a closer scene)."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        self.scale = scale

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        s = float(rng.uniform(*self.scale))
        h, w = sample["image"].shape[:2]
        out = resize(sample, (max(1, int(round(h * s))), max(1, int(round(w * s)))))
        if "depth" in out:
            out["depth"] = out["depth"] / np.float32(s)
        return out


class RandomCrop:
    """Crop to `size` where the sample is larger; re-drawn up to `attempts` times until no semseg class covers
    more than `max_ratio` of the crop's labelled pixels (needs >= 2 classes)."""

    def __init__(self, size: tuple[int, int], max_ratio: float = 0.75, attempts: int = 10) -> None:
        self.size, self.max_ratio, self.attempts = size, max_ratio, attempts

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["image"].shape[:2]
        ch, cw = min(h, self.size[0]), min(w, self.size[1])
        if (ch, cw) == (h, w):
            return sample

        def draw() -> tuple[int, int]:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))

        top, left = draw()
        if "semseg" in sample and self.max_ratio < 1.0:
            for _ in range(self.attempts):
                crop = sample["semseg"][top : top + ch, left : left + cw]
                _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.max_ratio:
                    break
                top, left = draw()
        out = dict(sample)
        for key in _arrays(sample):
            out[key] = sample[key][top : top + ch, left : left + cw]
        return out


class HFlip:
    """Mirror left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        if "3ddet" in sample:
            raise DataError("HFlip does not mirror 3-D boxes: train Cityscapes-3D without flipping (data.flip=false)")
        out = {k: (v if k in NON_MAPS else np.ascontiguousarray(v[:, ::-1])) for k, v in sample.items()}
        if "normals" in out:
            out["normals"][..., 0] *= -1  # a mirrored scene has mirrored surface orientation
        return out


class PhotometricDistortion:
    """Image only, each step with p = 0.5: brightness +-32, contrast x[0.5, 1.5] (before or after the colour
    steps), saturation x[0.5, 1.5], hue +-18 on OpenCV's 0-180 scale (+-36 degrees). Values clipped to [0, 255]."""

    def __init__(self, brightness: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue: float = 18.0) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample["image"].astype(np.float32)
        if rng.random() < 0.5:
            img = np.clip(img + rng.uniform(-self.brightness, self.brightness), 0, 255)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < 0.5:
            img = np.clip(img * rng.uniform(*self.contrast), 0, 255)
        do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
        if do_sat or do_hue:
            hsv = rgb_to_hsv(np.clip(img / 255.0, 0.0, 1.0))  # resizing can overshoot 255 by float error
            if do_sat:
                hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*self.saturation), 0, 1)
            if do_hue:
                hsv[..., 0] = (hsv[..., 0] + rng.uniform(-self.hue, self.hue) / 180.0) % 1.0
            img = np.clip(hsv_to_rgb(hsv) * 255.0, 0, 255).astype(np.float32)
        if not contrast_first and rng.random() < 0.5:
            img = np.clip(img * rng.uniform(*self.contrast), 0, 255)
        return {**sample, "image": img.astype(np.float32)}


class Normalize:
    """ImageNet mean/std on an image in [0, 255]."""

    def __init__(self, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD) -> None:
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return {**sample, "image": ((sample["image"] / 255.0 - self.mean) / self.std).astype(np.float32)}


class PadTo:
    """Centred padding to `size` with each modality's fill value (PAD_VALUE); meta["pad"] accumulates
    (top, bottom, left, right). A sample larger than `size` is an error when `strict`, else left as is."""

    def __init__(self, size: tuple[int, int], strict: bool = True) -> None:
        self.size, self.strict = (int(size[0]), int(size[1])), strict

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        h, w = sample["image"].shape[:2]
        th, tw = self.size
        if h > th or w > tw:
            if not self.strict:
                return sample
            sid = sample.get("meta", {}).get("id", "?")
            raise DataError(f"sample {sid!r} is {h}x{w}, larger than the padded size {th}x{tw}; evaluation never "
                            "resizes or crops: raise the evaluation size (data.eval_size) or use eval_transform(None)"
                            " with batch size 1")
        top, left = (th - h) // 2, (tw - w) // 2
        bottom, right = th - h - top, tw - w - left
        out = dict(sample)
        for key in _arrays(sample):
            widths = ((top, bottom), (left, right)) + ((0, 0),) * (sample[key].ndim - 2)
            out[key] = np.pad(sample[key], widths, constant_values=PAD_VALUE.get(key, 0))
        if "meta" in sample:
            t0, b0, l0, r0 = sample["meta"].get("pad", (0, 0, 0, 0))
            out["meta"] = {**sample["meta"], "pad": (t0 + top, b0 + bottom, l0 + left, r0 + right)}
        return out


class IgnoreRegions:
    """A parts map without any part pixel is ignored entirely (255), as the released code does; invalid depth (0)
    and normals (all-zero) already mark themselves."""

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        parts = sample.get("human_parts")
        if parts is None or ((parts > 0) & (parts != IGNORE_INDEX)).any():
            return sample
        return {**sample, "human_parts": np.full_like(parts, IGNORE_INDEX)}


def train_transform(size: tuple[int, int], tasks: Sequence[str] = (), *, scale: tuple[float, float] = (0.5, 2.0),
                    crop_max_ratio: float = 0.75, flip_p: float = 0.5, photometric: bool = True) -> Compose:
    """The released training pipeline: scale, crop (75 % rule), flip, photometric, normalise, centred pad,
    ignore regions. Output: every map exactly `size`."""
    check_task_names(tasks)
    steps: list = [RandomScale(scale), RandomCrop(size, crop_max_ratio), HFlip(flip_p)]
    if photometric:
        steps.append(PhotometricDistortion())
    return Compose(steps + [Normalize(), PadTo(size), IgnoreRegions()])


def fixed_size_transform(size: tuple[int, int], label_size: tuple[int, int], *, photometric: bool = False
                         ) -> Compose:
    """Cityscapes-3D (released): no geometric augmentation -- the image resized to ``size``, labels to
    ``label_size`` -- then ImageNet normalisation; ``photometric`` adds the image-only colour distortion (not
    released). The same pipeline serves training and evaluation."""
    steps: list = [ResizeTo(size, label_size)]
    if photometric:
        steps.append(PhotometricDistortion())
    return Compose(steps + [Normalize()])


def eval_transform(size: tuple[int, int] | None = None) -> Compose:
    """Evaluation: ImageNet-normalise and pad (centred) to `size`, never resize; a larger image raises a DataError.
    size None: normalise only (any image size; batch size 1)."""
    steps: list = [Normalize()]
    if size is not None:
        steps.append(PadTo(size, strict=True))
    return Compose(steps + [IgnoreRegions()])
