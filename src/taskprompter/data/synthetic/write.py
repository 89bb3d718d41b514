"""Write rendered synthetic scenes as the released NYUD-v2 or PASCAL-Context trees (released-code.md section 5).

Each sample is rendered from (seed, index) alone, so samples can be written in any order or in parallel and the
files never depend on the number of workers. The trees are read back by `NYUD` / `PascalContext` unchanged.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import ConfigError
from ...tasks import DATASET_SPECS
from ..classes import VOC_CLASSES, VOC_PALETTE
from ..partial import PARTIAL_SETTINGS, record_path, write_labelled_tasks
from .render import CLASSES, CONTEXT_IDS, FIGURE_PARTS, NYU40_STORED, VOC_IDS, render_scene
from .scene import PERSON

JPEG_QUALITY = 95


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> RGB uint8 with v = round((n + 1) / 2 * 255) (decoded as n = 2 v / 255 - 1)."""
    return np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)


def sample_ids(num: int) -> list[str]:
    return [f"{i:06d}" for i in range(num)]


def split_ids(num: int, split_ratio: float) -> tuple[list[str], list[str]]:
    """train / val ids: the first round(num * ratio) train, the rest val (each non-empty when num >= 2)."""
    ids = sample_ids(num)
    n_train = int(round(num * split_ratio))
    if num >= 2:
        n_train = min(max(n_train, 1), num - 1)
    return ids[:n_train], ids[n_train:]


def _png(array: np.ndarray, path: Path, *, palette: np.ndarray | None = None) -> None:
    """Save uint8 (H, W) or (H, W, 3); with a palette, a VOC-style indexed PNG whose indices are the labels."""
    if palette is None:
        Image.fromarray(array).save(path)
        return
    img = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    img.putpalette(flat.ravel().tolist())
    img.save(path)


def _part_struct(scene: dict) -> dict:
    """The PASCAL-Part `anno` struct: one object per visible object / figure, persons with named part masks."""
    part_dtype = [("part_name", "O"), ("mask", "O")]
    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    objects = []
    for inst in np.unique(scene["instance"]):
        mask = scene["instance"] == inst
        label = int(scene["semseg"][mask][0])
        voc = int(VOC_IDS[label])
        if voc == 0:  # room surfaces are background, not PASCAL-Part objects
            continue
        parts = []
        if label == PERSON:
            codes = scene["part_names"] * mask
            for code in np.unique(codes[codes > 0]):
                parts.append((FIGURE_PARTS[code - 1], (codes == code).astype(np.uint8)))
        part_arr = np.zeros((1, len(parts)), dtype=part_dtype)
        for j, part in enumerate(parts):
            part_arr[0, j] = part
        objects.append((VOC_CLASSES[voc], np.array([[float(voc)]]), mask.astype(np.uint8), part_arr))
    obj_arr = np.zeros((1, len(objects)), dtype=obj_dtype)
    for k, obj in enumerate(objects):
        obj_arr[0, k] = obj
    return {"objects": obj_arr}


def write_nyud_sample(root: Path, sample_id: str, scene: dict) -> None:
    Image.fromarray(scene["image"]).save(root / "images" / f"{sample_id}.png")
    _png(NYU40_STORED[scene["semseg"]].astype(np.uint8), root / "segmentation" / f"{sample_id}.png")
    np.save(root / "depth" / f"{sample_id}.npy", scene["depth"].astype(np.float32))
    _png(encode_normals(scene["normals"]), root / "normals" / f"{sample_id}.png")
    _png((scene["edge"] * 255).astype(np.uint8), root / "edge" / f"{sample_id}.png")


def write_pascal_sample(root: Path, sample_id: str, scene: dict) -> None:
    import scipy.io

    Image.fromarray(scene["image"]).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=JPEG_QUALITY,
                                          subsampling=0)  # 4:4:4 keeps thin coloured parts
    _png(VOC_IDS[scene["semseg"]].astype(np.uint8), root / "semseg" / "pascal-context" / f"{sample_id}.png",
         palette=VOC_PALETTE)
    anno = _part_struct(scene)
    anno["imname"] = f"{sample_id}.jpg"
    scipy.io.savemat(root / "human_parts" / f"{sample_id}.mat", {"anno": anno}, do_compression=True)
    scipy.io.savemat(root / "pascal-context" / "trainval" / f"{sample_id}.mat",
                     {"LabelMap": CONTEXT_IDS[scene["semseg"]].astype(np.uint16)}, do_compression=True)
    _png(encode_normals(scene["normals"]), root / "normals_distill" / f"{sample_id}.png")
    _png((scene["sal"] * 255).astype(np.uint8), root / "sal_distill" / f"{sample_id}.png")


LAYOUT = {
    "nyud": (("images", "segmentation", "depth", "normals", "edge", "gt_sets"), "gt_sets", write_nyud_sample),
    "pascal_context": (("JPEGImages", "semseg/pascal-context", "human_parts", "pascal-context/trainval",
                        "normals_distill", "sal_distill", "ImageSets/Context"), "ImageSets/Context",
                       write_pascal_sample),
}  # format -> (folders to create, folder of the split lists, sample writer)
FORMATS: tuple[str, ...] = (*LAYOUT, "cityscapes3d")  # cityscapes3d: its own layout (synthetic/cityscapes3d.py)


def _write_one(job: tuple[str, str, int, int, tuple[int, int]]) -> str:
    root, fmt, seed, index, size = job
    sample_id = sample_ids(index + 1)[index]
    LAYOUT[fmt][2](Path(root), sample_id, render_scene(seed, index, size))
    return sample_id


def generate(out_dir: str | Path, *, format: str, num: int, size: tuple[int, int] = (128, 160), seed: int = 0,
             split_ratio: float = 0.8, workers: int = 1, progress: bool = False, partial_labels: str | None = None,
             partial_seed: int | None = None) -> Path:
    """Write `num` synthetic samples as a released-format tree in `out_dir` and return that root.

    The first round(num * split_ratio) ids go to `train`, the rest to `val` (at least one each when num >= 2).
    `workers` > 1 renders in that many processes (the bytes do not depend on it). ``partial_labels`` "one" or
    "random" also writes ``labelled_tasks.json`` for the train split (MTPSL's one-label / random-labels settings,
    `partial.py`, drawn with ``partial_seed``, default ``seed``); every label file is written all the same, so the
    tree trains fully labelled with ``data.labelled_tasks=all``, and val stays fully labelled."""
    root = Path(out_dir)
    if format not in FORMATS:
        raise ConfigError(f"unknown synthetic format {format!r}; choose one of {list(FORMATS)}")
    if partial_labels is not None and partial_labels not in PARTIAL_SETTINGS:
        raise ConfigError(f"unknown partial-labels setting {partial_labels!r}; choose one of {list(PARTIAL_SETTINGS)}")
    if partial_labels is not None and format not in LAYOUT:
        raise ConfigError(f"--partial-labels is for the nyud and pascal_context trees (MTPSL's settings); "
                          f"{format}'s 3ddet cannot be partially labelled")
    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ConfigError(f"synthetic images must be at least 16x16, got {h}x{w}")
    if not 0.0 < split_ratio <= 1.0:
        raise ConfigError(f"split_ratio must be in (0, 1], got {split_ratio}")
    if format == "cityscapes3d":  # street scenes in the Cityscapes tree, a folder per split
        from .cityscapes3d import generate_cityscapes3d

        return generate_cityscapes3d(root, num=num, size=(h, w), seed=seed, split_ratio=split_ratio, workers=workers,
                                     progress=progress)
    folders, split_dir, _ = LAYOUT[format]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), format, int(seed), i, (h, w)) for i in range(num)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num, desc=f"synth {format}", unit="img")
    if workers > 1 and num > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=8):
                bar and bar.update()
    else:
        for job in jobs:
            _write_one(job)
            bar and bar.update()
    if bar:
        bar.close()
    train, val = split_ids(num, split_ratio)
    (root / split_dir / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (root / split_dir / "val.txt").write_text("".join(f"{i}\n" for i in val))
    info = {"generator": "taskprompter.data.synthetic", "format": format, "num": num, "size": [h, w], "seed": seed,
            "split_ratio": split_ratio, "classes": list(CLASSES), "train": len(train), "val": len(val)}
    if partial_labels is not None:
        tasks = list(DATASET_SPECS[format].tasks)
        draw = seed if partial_seed is None else int(partial_seed)
        record = PARTIAL_SETTINGS[partial_labels](train, tasks, seed=draw)
        write_labelled_tasks(record_path(root), {"train": record})
        info["partial_labels"] = {"setting": partial_labels, "seed": draw, "split": "train"}
    (root / "synthetic.json").write_text(json.dumps(info, indent=1) + "\n")
    return root
