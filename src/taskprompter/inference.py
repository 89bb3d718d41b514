"""Prediction on your own images of any size and mode, and `taskprompter predict`.

    predictor = Predictor.from_pretrained("runs/demo/train/last")   # or any model directory
    pred = predictor.predict(image)        # image: (H, W), (H, W, 3|4) uint8 / uint16 / float, or a file path
    pred.maps["semseg"]                    # (H, W) class ids at the original size

    taskprompter predict --checkpoint runs/x/last --input photos/ --out preds/ [--affinity] [--sliding-window]

The model sees a fixed grid, so the image is resized (aspect kept) until its longer side fits, padded in the
centre, predicted, un-padded and resized back -- never distorted. ``sliding_window`` instead runs windows of the
model's size over the image at its own resolution and averages the overlapping logits.
Map conventions: semseg / human_parts (H, W) class ids in the smallest unsigned type that holds them (uint8 up to 256
classes, else uint16); sal, edge (H, W) float32 probabilities; normals (H, W, 3) float32 unit vectors; depth (H, W)
float32 metres. Files are read with their EXIF orientation applied, as a photo viewer shows them.
"""

from __future__ import annotations

import glob
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.geometry import CITYSCAPES_SENSOR, Camera
from .engine.precision import choose_precision
from .errors import DataError
from .model.build import load_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any image file -> (H, W, 3) float32 in [0, 1] (16-bit scaled by 65535, alpha dropped, grey replicated), turned
    upright by its EXIF orientation. Any decoding failure is a one-line DataError naming the file."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # a phone's portrait photo is stored landscape plus an EXIF flag
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
            mode = im.mode
    except (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"cannot read image {path}: {reason}") from err
    if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
        return as_float_rgb(arr.astype(np.uint16))
    if mode in ("I", "F"):
        arr = arr.astype(np.float32)
        return as_float_rgb(arr / 255.0 if arr.max(initial=0) > 1.0 else arr)
    return as_float_rgb(arr)


def as_float_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) uint8 / uint16 / float -> (H, W, 3) float32 in [0, 1]."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype == bool:
        img = img.astype(np.float32)
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"image must be (H, W) or (H, W, 1-4 channels), got shape {image.shape}")
    if img.shape[-1] in (1, 2):  # grey (+ alpha)
        img = np.repeat(img[..., :1], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def logits_to_map(task: str, logits: torch.Tensor) -> np.ndarray:
    """One image's logits (C, H, W) -> the task's map (see the module docstring)."""
    x = logits.float()
    if task == "sal":
        p = x.softmax(0)[1] if x.shape[0] == 2 else x[0].sigmoid()
        return p.numpy()
    if task == "edge":
        return x[0].sigmoid().numpy()
    if task == "normals":
        return F.normalize(x, dim=0).permute(1, 2, 0).numpy()  # (H, W, 3)
    if task == "depth":
        return x[0].numpy()
    return x.argmax(0).numpy().astype(class_map_dtype(x.shape[0]))  # semseg, human_parts


def class_map_dtype(num_classes: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type for ids 0..num_classes-1: a 4000x3000 class map is 12 MB as uint8, 96 as int64."""
    return np.uint8 if num_classes <= 256 else np.uint16


@dataclass
class Fit:
    """How an image of ``size`` was placed in the model's input: resized to ``resized``, padded by ``pad``."""

    size: tuple[int, int]  # (H0, W0)
    resized: tuple[int, int]  # (h, w)
    pad: tuple[int, int, int, int]  # (top, bottom, left, right)


@dataclass
class Prediction:
    maps: dict[str, np.ndarray]  # {task: map at the original size}
    logits: dict[str, torch.Tensor] | None = None  # {task: (C, H0, W0)} when asked for
    spatial_affinity: dict[str, list[np.ndarray]] = field(default_factory=dict)  # {task: [(H0, W0) per level]}
    channel_affinity: list[np.ndarray | None] = field(default_factory=list)  # per level (T, C) or None
    boxes3d: dict[str, np.ndarray] | None = None  # 3-D detection: label, score, center_V, dimensions, rotation,
    #                                              box_modal (xyxy, original pixels) -- the official JSON's fields
    camera: Any = None  # the image's camera (data.geometry.Camera) the boxes were decoded with


class Predictor:
    """Runs a TaskPrompter on arbitrary images; keeps pre/post-processing apart from the nn.Module.

    ``amp``: auto | bf16 | fp16 | off, as ``train.amp`` (`engine/precision.py`): auto = bf16 autocast where the device
    multiplies bf16 natively, else fp32. Only the model's forward runs under autocast; maps, logits and affinities
    are fp32."""

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cpu", amp: str = "auto",
                 compile: bool = False) -> None:
        self.device = torch.device(device)
        self.precision = choose_precision(amp, self.device, option="amp")
        self.model = model.to(self.device).eval()
        # torch.compile: compiled on the first call (each distinct call -- plain, with affinities -- compiles once)
        self.forward_fn = torch.compile(self.model) if compile else self.model
        self.img_size: tuple[int, int] = tuple(model.img_size)
        self.tasks: list[str] = list(model.task_names)
        channels = getattr(model, "init_kwargs", {}).get("tasks", {})
        self.num_classes: dict[str, int] = {t: int(channels[t]) for t in channels}
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "auto", amp: str = "auto",
                        compile: bool = False) -> Predictor:
        """A Predictor for the model saved at ``path``: a model directory (``save_pretrained``, `convert`), a training
        checkpoint, or a run directory (its ``last``)."""
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        choose_precision(amp, dev, option="amp")  # a precision the device lacks fails before the model loads
        return cls(load_model(path, device=dev), device=dev, amp=amp, compile=compile)

    # -- geometry ---------------------------------------------------------------------------------------------
    def fit(self, size: tuple[int, int]) -> Fit:
        H, W = self.img_size
        H0, W0 = size
        if "3ddet" in self.tasks:  # 3-D boxes need the whole image under one camera: resized, never padded
            return Fit(size=(H0, W0), resized=(H, W), pad=(0, 0, 0, 0))
        scale = min(H / H0, W / W0)  # the longer side (relative to the grid) fills the input
        h, w = min(H, max(1, round(H0 * scale))), min(W, max(1, round(W0 * scale)))
        top, left = (H - h) // 2, (W - w) // 2
        return Fit(size=(H0, W0), resized=(h, w), pad=(top, H - h - top, left, W - w - left))

    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(as_float_rgb(image)).permute(2, 0, 1)  # (3, H0, W0) in [0, 1]
        return (x - self.mean) / self.std

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Fit]:
        """(1, 3, H, W) model input (resized, centred padding = 0 after normalisation) and its Fit."""
        x = self._normalise(image)
        fit = self.fit(tuple(x.shape[-2:]))
        x = F.interpolate(x[None], size=fit.resized, mode="bilinear", align_corners=False,
                          antialias=True)  # (1, 3, h, w)
        top, bottom, left, right = fit.pad
        return F.pad(x, (left, right, top, bottom)), fit  # (1, 3, H, W)

    def _restore(self, t: torch.Tensor, fit: Fit) -> torch.Tensor:
        """(B, C, H, W) on the model grid -> (B, C, H0, W0): crop the padding, resize to the original size."""
        if tuple(t.shape[-2:]) != self.img_size:  # outputs at the label size (Swin: half the input)
            t = F.interpolate(t.float(), size=self.img_size, mode="bilinear", align_corners=False)  # (B, C, H, W)
        top, bottom, left, right = fit.pad
        t = t[..., top:t.shape[-2] - bottom, left:t.shape[-1] - right]  # (B, C, h, w)
        return F.interpolate(t.float(), size=fit.size, mode="bilinear", align_corners=False)

    # -- prediction -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: np.ndarray | str | os.PathLike, *, sliding_window: bool = False,
                affinity: bool = False, return_logits: bool = False, camera: Any = None) -> Prediction:
        """``camera``: the image's camera for 3-D detection (a `data.geometry.Camera` or a Cityscapes-3D JSON
        ``sensor`` block, in the image's own pixels); default: Cityscapes' camera scaled to the image's size."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if sliding_window and "3ddet" in self.tasks:
            raise ValueError("sliding_window cannot decode 3-D boxes (one camera per window): predict whole images")
        x, fit = self.preprocess(image)
        aff_levels = None
        if sliding_window:
            logits = self._sliding(image)
        else:
            out = self._forward(x, return_affinities=affinity)
            out, aff_levels = out if affinity else (out, None)
            logits = {t: self._restore(v.float().cpu(), fit)[0] for t, v in out.items()
                      if torch.is_tensor(v)}  # (C, H0, W0) fp32; detection features are not maps
        if affinity and aff_levels is None:
            _, aff_levels = self._forward(x, return_affinities=True)
        pred = Prediction(maps={t: logits_to_map(t, v) for t, v in logits.items()},
                          logits=logits if return_logits else None)
        if aff_levels is not None:
            pred.spatial_affinity, pred.channel_affinity = self._affinities(aff_levels, fit)
        if "3ddet" in self.tasks and not sliding_window:
            pred.boxes3d, pred.camera = self._boxes3d(out["3ddet"], fit, camera)
        return pred

    def _boxes3d(self, outputs: Any, fit: Fit, camera: Any) -> tuple[dict[str, np.ndarray], Any]:
        """Decode the detector's outputs with the camera of the model's input (the image's camera scaled by the
        resize), the modal boxes mapped back to the image's pixels (half-pixel centres, as `Camera.scaled`)."""
        (H0, W0), (H, W) = fit.size, self.img_size
        if camera is None:
            camera = Camera.from_json(CITYSCAPES_SENSOR).scaled(W0 / 2048, H0 / 1024)  # assumed: say so in docs
        elif not isinstance(camera, Camera):
            camera = Camera.from_json(camera)
        sx, sy = W / W0, H / H0
        head = self.model.heads["3ddet"]
        boxes = head.decode(outputs, [camera.scaled(sx, sy)], image_sizes=[(H, W)])[0]
        modal = np.asarray(boxes["box_modal"], dtype=np.float64).reshape(-1, 4)
        modal = (modal + 0.5) / np.array([sx, sy, sx, sy]) - 0.5  # input pixels -> the image's pixels
        boxes["box_modal"] = np.clip(modal, 0, [W0 - 1, H0 - 1, W0 - 1, H0 - 1])
        return boxes, camera

    def _forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        """The model on ``x`` (moved to the device), under this Predictor's autocast."""
        with self.precision.autocast():
            return self.forward_fn(x.to(self.device), **kwargs)

    def _sliding(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """Windows of the model's size at the image's own resolution, overlapping by >= 1/3, logits averaged."""
        x = self._normalise(image)[None]  # (1, 3, H0, W0)
        H0, W0 = x.shape[-2:]
        H, W = self.img_size
        ph, pw = max(H - H0, 0), max(W - W0, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))  # small sides padded in the centre
        Hs, Ws = x.shape[-2:]
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros(1, 1, Hs, Ws)
        for top in _starts(Hs, H):
            for left in _starts(Ws, W):
                out = self._forward(x[..., top:top + H, left:left + W])
                for t, v in out.items():
                    if not torch.is_tensor(v):  # detection features
                        continue
                    if tuple(v.shape[-2:]) != (H, W):  # outputs at the label size
                        v = F.interpolate(v.float(), size=(H, W), mode="bilinear", align_corners=False)
                    acc = sums.setdefault(t, torch.zeros(1, v.shape[1], Hs, Ws))
                    acc[..., top:top + H, left:left + W] += v.float().cpu()
                count[..., top:top + H, left:left + W] += 1
        crop = (slice(ph // 2, ph // 2 + H0), slice(pw // 2, pw // 2 + W0))
        return {t: (s / count)[0][:, crop[0], crop[1]] for t, s in sums.items()}  # (C, H0, W0)

    def _affinities(self, levels: list[Any], fit: Fit) -> tuple[dict[str, list[np.ndarray]], list]:
        """Spatial task-prompt affinity per task and level: each head's attention over the N patch tokens, averaged
        over heads, at the original size; channel affinity (T, C): the attention over channels averaged over windows,
        per level. Both are the same maps whether the model decodes logits or probabilities (``Affinity``)."""
        h, w = self.model.grid
        spatial: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        channel: list[np.ndarray | None] = []
        if not isinstance(levels, (list, tuple)):  # task-specific encoders: one encoder per task, no shared map
            return {}, channel
        for aff in levels:
            if aff is None or aff.spatial is None:
                channel.append(None)
                continue
            a = aff.spatial_over_tokens()[0].mean(0)  # (T, N): prompt rows, heads averaged
            a = a.reshape(len(self.tasks), 1, *getattr(aff, "grid", (h, w))).cpu()  # (T, 1, h, w); Swin: per level
            a = F.interpolate(a, size=self.img_size, mode="bilinear", align_corners=False)  # (T, 1, H, W)
            a = self._restore(a, fit)[:, 0]  # (T, H0, W0)
            for i, t in enumerate(self.tasks):
                spatial[t].append(a[i].numpy())
            channel.append(None if aff.channel is None else
                           aff.channel_over_channels()[0].mean(dim=(-2, -1)).cpu().numpy())  # (T, C)
        return spatial, channel


def _starts(length: int, window: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / (window * 2 / 3)) + 1
    return sorted({round(i * (length - window) / (n - 1)) for i in range(n)})


def is_image_file(path: Path) -> bool:
    """An image suffix and not hidden: folders and globs skip ``._x.png`` (macOS metadata), ``.DS_Store``, notes."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_images(inputs: list[str]) -> list[Path]:
    """Files, directories (their images, sorted) and glob patterns -> image paths, each once, in order. Directories
    and glob matches keep only visible files with an image suffix; a file named explicitly is always tried."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q))
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"--input {item}: no such file, directory or matching files")
            found += [m for m in matches if m.is_file() and is_image_file(m)]
    if not found:
        raise DataError(f"no images found in {' '.join(inputs)} (hidden files skipped; suffixes "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_names(paths: list[Path]) -> dict[Path, str]:
    """One output folder name per image, fixed by the set of inputs (never by their order): the file's stem; where
    several inputs share a stem, the path relative to their common folder without the suffix, "/" written "__"
    (``a/coffee.png``, ``b/coffee.png`` -> ``a__coffee``, ``b__coffee``); where that is still shared (``coffee.png``,
    ``coffee.jpg``), the suffix is kept (``coffee.png``, ``coffee.jpg``)."""
    absolute = {p: Path(os.path.abspath(p)) for p in paths}
    common = Path(os.path.commonpath([a.parent for a in absolute.values()]))
    relative = {p: absolute[p].relative_to(common) for p in paths}
    names = {p: p.stem for p in paths}
    for name_of in (lambda p: "__".join(relative[p].with_suffix("").parts), lambda p: "__".join(relative[p].parts)):
        count = Counter(names.values())
        for p in [p for p in paths if count[names[p]] > 1]:
            names[p] = name_of(p)
    count = Counter(names.values())
    clash = [str(p) for p in paths if count[names[p]] > 1]
    if clash:
        raise DataError(f"inputs {', '.join(clash)} would share an output folder; rename one of them")
    return names
