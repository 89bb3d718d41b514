"""Bit-reproducible, resumable augmentation: sample i at epoch e always gets the generator (seed, e, i).

    train_set = seeded(build_dataset("nyud", root, "train", tasks, transform=train_transform(size, tasks)), seed)
    for epoch in range(start_epoch, epochs):
        train_set.set_epoch(epoch)            # before creating the loader iterator
        order = epoch_order(len(train_set), seed, epoch)
        loader = DataLoader(train_set, batch_size=4, sampler=order, num_workers=2, collate_fn=collate)

The augmentation then depends neither on the number of workers, nor on which worker loads a sample, nor on
what ran before: resuming at (epoch, step) reproduces the same batches, because the visiting order is also a
function of (seed, epoch). Workers copy the dataset when an iterator is created, so call `set_epoch` before
`iter(loader)` (or index with `(epoch, i)` keys, which do not depend on worker state at all; persistent
workers need that form).
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .sample import Sample


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of sample `index` at `epoch` (NumPy's SeedSequence: same stream everywhere)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def epoch_order(num: int, seed: int, epoch: int) -> list[int]:
    """A shuffled visiting order of `num` samples that depends only on (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 0x0DE5]).permutation(num).tolist()


class SeededDataset(Dataset):
    """Wraps a reader so that `ds[i]` is augmented with `sample_rng(seed, epoch, i)`; `ds[(e, i)]` picks the epoch
    explicitly. Attributes of the wrapped reader (tasks, task_channels, ids, ...) are forwarded."""

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
        return self.dataset.get(int(index), rng=sample_rng(self.seed, epoch, int(index)))

    def __getattr__(self, name: str):
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __repr__(self) -> str:
        return f"seeded({self.dataset!r}, seed={self.seed}, epoch={self.epoch})"


def seeded(dataset, seed: int) -> SeededDataset:
    """Make `dataset`'s random augmentation a pure function of (seed, epoch, index)."""
    return SeededDataset(dataset, seed)
