"""Time the SEISM-style boundary evaluation (NMS + 101 thresholds x (thin + match)) per image, on one core.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_boundary.py [--images 5] [--height 480] [--width 640]

The soft maps are realistic stand-ins for a network's output: region boundaries of random polygons, jittered
by a few pixels, blurred, with weaker texture edges and low-level noise, quantised to uint8 / 255 like the
published PNGs. Prints seconds per image for each stage and the resulting odsF / oisF / AP.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from taskprompter.data.thinning import thin
from taskprompter.metrics.boundary import DEFAULT_MAX_DIST, SEISM_THRESHOLDS, image_counts, summarize
from taskprompter.metrics.boundary_nms import nms_boundaries


def polygon_labels(rng: np.random.Generator, h: int, w: int, n: int, jitter: float = 0.0, seed_shapes=None):
    """A label map of n random polygons painted over each other; returns (labels, shapes)."""
    shapes = seed_shapes or [
        (rng.uniform([0, 0], [w, h], size=(rng.integers(3, 8), 2)), int(rng.integers(1, 255))) for _ in range(n)
    ]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for points, label in shapes:
        pts = points + rng.normal(0, jitter, points.shape) if jitter else points
        draw.polygon([tuple(p) for p in pts], fill=label)
    return np.asarray(canvas), shapes


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """A pixel is a boundary where its label differs from its east, south or south-east neighbour."""
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    b[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]
    return thin(b)


def synthetic_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    labels, shapes = polygon_labels(rng, h, w, n=14)
    gt = region_boundaries(labels)
    seen, _ = polygon_labels(rng, h, w, n=14, jitter=4.0, seed_shapes=shapes)  # edges off by a few pixels
    texture, _ = polygon_labels(rng, h, w, n=12)  # spurious (texture) edges
    strength = ndimage.zoom(rng.uniform(0.2, 1.0, (6, 8)), (h / 6, w / 8), order=1)[:h, :w]  # faint and strong parts
    soft = strength * ndimage.gaussian_filter(region_boundaries(seen).astype(np.float32), 1.5) * 4
    soft += 0.5 * ndimage.gaussian_filter(region_boundaries(texture).astype(np.float32), 2.0) * 4
    soft += np.abs(rng.normal(0, 0.05, soft.shape))  # low-level noise everywhere, as network outputs have
    prob = np.clip(soft, 0, 1)
    return np.floor(prob * 255).astype(np.uint8).astype(np.float32) / 255, gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--max-dist", type=float, default=DEFAULT_MAX_DIST)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = [synthetic_pair(rng, args.height, args.width) for _ in range(args.images)]
    t0 = time.perf_counter()
    for pred, _ in pairs:
        nms_boundaries(pred)
    t_nms = (time.perf_counter() - t0) / len(pairs)
    total, ois = np.zeros((SEISM_THRESHOLDS.size, 4)), np.zeros(4)
    t0 = time.perf_counter()
    for pred, gt in pairs:
        counts = image_counts(pred, gt, max_dist=args.max_dist, thresholds=SEISM_THRESHOLDS)
        total += counts
        ois += counts[int(np.argmax(2 * counts[:, 0] / np.maximum(counts[:, 1] + counts[:, 3], 1)))]
    t_all = (time.perf_counter() - t0) / len(pairs)
    scores = summarize(total, ois)
    print(f"{args.images} images {args.height}x{args.width}, max_dist {args.max_dist}, 101 thresholds")
    print(f"  NMS only:        {t_nms:.3f} s/image")
    print(f"  full evaluation: {t_all:.3f} s/image")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
