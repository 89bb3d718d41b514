"""Read dataset files, turning every failure into a DataError that names the file.

Nothing here writes: readers open files read-only and never create caches next to the data.
"""

from __future__ import annotations

import struct
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


# What a file must end with: a file cut short (a copy or download that stopped) lacks it. A JPEG's end-of-image marker
# cannot occur inside its entropy-coded data, so finding it in the last few KiB tolerates trailing metadata.
END_MARKERS = {".png": (b"IEND", 64), ".jpg": (b"\xff\xd9", 4096), ".jpeg": (b"\xff\xd9", 4096)}


def header_size(path: Path, *, what: str) -> tuple[int, int] | None:
    """(H, W) of an image, label PNG, .npy or .mat file read from its header alone -- no pixel is decoded -- or
    None where the header holds no single 2-D map. A missing, unidentifiable or truncated file is a DataError naming
    it (`problems` finds the rest: label values, NaNs, struct contents)."""
    if not path.is_file():
        raise _missing(path, what)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _npy_header_size(path)
        if suffix == ".mat":
            import scipy.io

            if _mat_cut_short(path):
                raise DataError(f"truncated {what}: {path} (its last variable ends after the end of the file: cut "
                                "short by a copy or download?)")
            arrays = [shape for _, shape, kind in scipy.io.whosmat(str(path))
                      if kind not in ("struct", "cell", "char") and len(shape) == 2 and shape != (1, 1)]
            return tuple(arrays[0]) if len(arrays) == 1 else None
        with Image.open(path) as img:  # reads the header only
            width, height = img.size
        marker, tail = END_MARKERS.get(suffix, (b"", 0))
        if marker:
            with open(path, "rb") as fh:
                fh.seek(max(path.stat().st_size - tail, 0))
                if marker not in fh.read():
                    raise DataError(f"truncated {what}: {path} (it does not end like a {suffix[1:].upper()} file: "
                                    "cut short by a copy or download?)")
        return height, width
    except DataError:
        raise
    except Exception as err:  # PIL, NumPy and SciPy raise OSError, ValueError, IndexError ... for bad files
        raise DataError(f"unreadable {what}: {path} ({type(err).__name__}: {err})") from err


MI_COMPRESSED = 15  # MATLAB v5 data type of a zlib-compressed variable


def _mat_cut_short(path: Path) -> bool:
    """Whether a MATLAB v5 file ends before its last variable does: each top-level data element's tag holds its byte
    count, so walking the tags finds a truncation without reading the data. Other versions: False."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = fh.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return False
        order = "<" if header[126:128] == b"IM" else ">"
        position = 128
        while position < size:
            fh.seek(position)
            tag = fh.read(8)
            if len(tag) < 8:
                return True
            kind, nbytes = struct.unpack(f"{order}II", tag)
            if kind >> 16:  # a small data element: tag and data in these 8 bytes
                position += 8
                continue
            end = position + 8 + nbytes
            if end > size:
                return True
            position = end if kind == MI_COMPRESSED else end + (-nbytes % 8)  # others are padded to 8 bytes
    return False


def _npy_header_size(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        data_start = fh.tell()
    if dtype.hasobject:
        raise ValueError("holds Python objects (pickles are refused)")
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < expected:
        raise ValueError(f"file is {path.stat().st_size} bytes, its header promises {expected}: truncated")
    dims = [n for n in shape if n != 1] if len(shape) == 3 else list(shape)
    return (int(dims[0]), int(dims[1])) if len(dims) == 2 else None


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
