"""The one data-order and seeding system: which sample comes when, and the generator that augments it.

Training walks an endless stream of positions p = 0, 1, 2, ...: position p lies in epoch e = p // n (n samples)
and visits sample `epoch_permutation(n, seed, e)[p % n]`, augmented with `default_rng(mix_seed(seed, p))`.
Every seed is derived from the run seed by `mix_seed`, so the images and their augmentation are a function of
(seed, position) alone -- not of the number of processes, accumulation steps or DataLoader workers, nor of
what ran before. One process with accumulation, N processes and a resumed run therefore see the same samples
with the same augmentation at the same step.

- `StepBatches` cuts the stream into optimiser steps, each process's slice and its accumulation micro-batches of
  (index, seed) pairs; `SeededSamples` turns those pairs into samples (training's DataLoader).
- `seeded(dataset, seed)` reads the same stream by epoch, for loops that iterate epochs themselves:

      train_set = seeded(build_dataset("nyud", root, "train", tasks, transform=train_transform(size, tasks)), seed)
      for epoch in range(start_epoch, epochs):
          train_set.set_epoch(epoch)            # before creating the loader iterator
          order = epoch_order(len(train_set), seed, epoch)
          loader = DataLoader(train_set, batch_size=4, sampler=order, num_workers=2, collate_fn=collate)

  Workers copy the dataset when an iterator is created, so call `set_epoch` before `iter(loader)` (or index with
  `(epoch, i)` keys, which do not depend on worker state at all; persistent workers need that form).
- `shard_indices` splits an evaluation split over processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError
from .sample import Sample

ORDER_SALT = 0x5EED  # keeps an epoch's order seed apart from the augmentation seeds of the positions


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, position, ...) -- stable across machines and Python versions."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of `epoch`: a permutation of range(num_samples) fixed by (seed, epoch)."""
    return np.random.default_rng(mix_seed(seed, epoch, ORDER_SALT)).permutation(num_samples)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """`epoch_permutation` as a list, ready to be a DataLoader sampler."""
    return epoch_permutation(num_samples, seed, epoch).tolist()


@lru_cache(maxsize=2)
def _epoch_slots(num_samples: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, slot) of an epoch: order[k] is the sample visited k-th, slot[i] where sample i is visited."""
    order = epoch_permutation(num_samples, seed, epoch)
    slot = np.empty_like(order)
    slot[order] = np.arange(num_samples)
    return order, slot


def micro_batch_size(global_batch: int, world_size: int, accum_steps: int) -> int:
    """Images per forward pass: the global batch split over processes and accumulation steps (it must divide)."""
    per_step = world_size * accum_steps
    if global_batch % per_step:
        raise ConfigError(f"train.batch_size={global_batch} is not divisible by processes ({world_size}) x "
                          f"train.accum_steps ({accum_steps})")
    return global_batch // per_step


class StepBatches:
    """For each optimiser step from ``start_step``: this process's ``accum_steps`` micro-batches of
    (dataset index, augmentation seed) pairs.

    Global position p = step * batch_size + j walks the stream; process r takes positions [r*A*b, (r+1)*A*b) of
    each global batch, in ``accum_steps`` (A) micro-batches of b. Nothing is padded or dropped, and the order
    depends only on (seed, step).
    """

    def __init__(self, num_samples: int, *, seed: int, batch_size: int, rank: int, world_size: int,
                 accum_steps: int, start_step: int = 0) -> None:
        if num_samples == 0:
            raise ConfigError("the training split is empty")
        self.n, self.seed, self.batch_size = num_samples, seed, batch_size
        self.rank, self.world_size, self.accum = rank, world_size, accum_steps
        self.micro = micro_batch_size(batch_size, world_size, accum_steps)
        self.step = start_step

    def _index(self, position: int) -> int:
        epoch, k = divmod(position, self.n)
        return int(_epoch_slots(self.n, int(self.seed), epoch)[0][k])

    def positions(self, step: int) -> list[list[int]]:
        first = step * self.batch_size + self.rank * self.accum * self.micro
        return [[first + k * self.micro + i for i in range(self.micro)] for k in range(self.accum)]

    def __iter__(self) -> Iterator[list[list[tuple[int, int]]]]:
        while True:
            yield [[(self._index(p), mix_seed(self.seed, p)) for p in micro] for micro in self.positions(self.step)]
            self.step += 1


def micro_batches(steps: StepBatches) -> Iterator[list[tuple[int, int]]]:
    """The micro-batches of every step in turn: a DataLoader `batch_sampler` over `SeededSamples`."""
    for step_batches in steps:
        yield from step_batches


class SeededSamples(Dataset):
    """``ds[(index, seed)]`` -> sample ``index`` with its augmentation drawn from ``default_rng(seed)``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        return self.dataset.get(index, np.random.default_rng(seed))


class SeededDataset(Dataset):
    """Wraps a reader so that `ds[i]` is sample i augmented as the training stream augments it in the current
    epoch; `ds[(e, i)]` picks the epoch explicitly. Attributes of the wrapped reader (tasks, task_channels, ids,
    ...) are forwarded."""

    def __init__(self, dataset, seed: int, epoch: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        n, index = len(self.dataset), int(index)
        position = int(epoch) * n + int(_epoch_slots(n, self.seed, int(epoch))[1][index])  # p of sample i in epoch e
        return self.dataset.get(index, rng=np.random.default_rng(mix_seed(self.seed, position)))

    def __getattr__(self, name: str):
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __repr__(self) -> str:
        return f"seeded({self.dataset!r}, seed={self.seed}, epoch={self.epoch})"


def seeded(dataset, seed: int) -> SeededDataset:
    """Make `dataset`'s random augmentation a pure function of (seed, epoch, index): the training stream's."""
    return SeededDataset(dataset, seed)


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Evaluation sharding: rank r takes r, r + W, r + 2W, ... -- each sample exactly once, no padding."""
    return list(range(rank, num_samples, world_size))
