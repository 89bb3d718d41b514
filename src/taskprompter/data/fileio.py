"""Read dataset files, turning every failure into a DataError that names the file.

Nothing here writes: readers open files read-only and never create caches next to the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"missing {what}: {path} does not exist")


def read_image(path: Path, *, mode: str | None = None, what: str = "image") -> np.ndarray:
    """Decode an image file completely (a truncated file fails here, not later). mode: PIL mode to convert to,
    e.g. "RGB" or "L"; None keeps the stored values (palette PNGs give their indices)."""
    if not path.is_file():
        raise _missing(path, what)
    try:
        with Image.open(path) as img:
            img.load()  # forces the full decode: truncated / corrupt data raises here
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            return np.asarray(img).copy()
    except DataError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise DataError(f"unreadable {what}: {path} ({type(err).__name__}: {err})") from err


def read_label_png(path: Path, *, what: str) -> np.ndarray:
    """A single-channel label PNG (gray or palette) as int64 (H, W)."""
    arr = read_image(path, what=what)
    if arr.ndim == 3:  # an RGB label map whose three channels agree is accepted; anything else is ambiguous
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(f"{path}: {what} must be a single-channel (gray or palette) PNG, got {arr.shape[2]} "
                            "different channels")
        arr = arr[..., 0]
    return arr.astype(np.int64)


def read_npy(path: Path, *, what: str) -> np.ndarray:
    """A NumPy array file, without pickles (a .npy can otherwise run code)."""
    if not path.is_file():
        raise _missing(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"unreadable {what}: {path} ({type(err).__name__}: {err})") from err


def read_depth_npy(path: Path) -> np.ndarray:
    """Metric depth (H, W) float32; non-finite or negative values are errors (0 means invalid)."""
    depth = read_npy(path, what="depth")
    if depth.ndim == 3 and 1 in (depth.shape[0], depth.shape[-1]):
        depth = depth.reshape(depth.shape[1:] if depth.shape[0] == 1 else depth.shape[:2])
    if depth.ndim != 2:
        raise DataError(f"{path}: depth must be a 2-D array (H, W), got shape {depth.shape} (wrong shape)")
    depth = depth.astype(np.float32)
    finite = np.isfinite(depth)
    if not finite.all():
        raise DataError(f"{path}: depth has {int((~finite).sum())} non-finite value(s) (NaN/inf); "
                        "store invalid pixels as 0")
    if (depth < 0).any():
        raise DataError(f"{path}: depth has negative value(s), min {float(depth.min()):g}; store invalid pixels as 0")
    return depth


def read_mat(path: Path, *, what: str) -> dict:
    """A MATLAB .mat file as scipy.io.loadmat returns it (structs as record arrays, no squeezing)."""
    import scipy.io

    if not path.is_file():
        raise _missing(path, what)
    try:
        return scipy.io.loadmat(str(path))
    except Exception as err:
        raise DataError(f"unreadable {what}: {path} ({type(err).__name__}: {err})") from err


def read_normals_png(path: Path) -> np.ndarray:
    """Released normals encoding: RGB PNG, n = 2 v / 255 - 1. (H, W, 3) float32."""
    arr = read_image(path, what="normals")
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DataError(f"{path}: normals must be an RGB PNG, got shape {arr.shape} (wrong shape)")
    return arr[..., :3].astype(np.float32) * (2.0 / 255.0) - 1.0


def read_split(path: Path, *, available: list[str] | None = None) -> list[str]:
    """Sample ids listed one per line (blank lines and surrounding spaces ignored)."""
    if not path.is_file():
        hint = f"; available splits: {available}" if available else ""
        raise DataError(f"missing split file: {path} does not exist{hint}")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DataError(f"split file {path} lists no sample ids")
    return ids


def list_splits(folder: Path) -> list[str]:
    """Split names available in a folder of `<split>.txt` files."""
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
