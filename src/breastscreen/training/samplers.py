"""Per-epoch samplers of the training recipes, deterministic in (seed, epoch) and DDP-aware.

Each sampler draws a new list of dataset indices for every epoch from a NumPy generator seeded
with ``(seed, epoch)``, so an epoch's composition does not depend on what ran before it (a
resumed run sees exactly the epochs an uninterrupted one would). Under DDP every rank draws the
same list, pads it by wrapping around to a multiple of the world size and keeps every
``world_size``-th index starting at its rank, like ``torch.utils.data.DistributedSampler``.

* :class:`ClassCompositionSampler`: a fixed number of items per class each epoch (the patch
  classifier's 20 malignant / 35 benign / 5,000 outside / 4,945 negative patches, Wu et al.
  2019 SI), optionally scaled to a smaller epoch.
* :class:`BiopsyBalancedSampler`: every exam with a biopsy plus an equal number of exams
  without, drawn at random each epoch (the breast-level cancer model's epochs).
* :class:`ShuffleSampler`: every item once per epoch in a seeded random order.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The generator of one epoch (``stream`` separates independent uses within an epoch)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)])


def shard_indices(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share: pad by wrapping to a multiple of ``world_size``, then take ``rank::world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size == 1 or len(indices) == 0:
        return indices
    total = -(-len(indices) // world_size) * world_size
    padded = np.resize(indices, total)  # np.resize repeats from the start
    return padded[rank::world_size]


class EpochSampler(Sampler[int]):
    """Base class: subclasses implement :meth:`epoch_indices`; call :meth:`set_epoch` each epoch."""

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        shard_indices(np.zeros(0, dtype=np.int64), self.rank, self.world_size)  # validates rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose indices :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All ranks' indices of ``epoch`` in order (before sharding)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(self.epoch_indices(self.epoch), self.rank, self.world_size).tolist())

    def __len__(self) -> int:
        n = len(self.epoch_indices(self.epoch))
        return -(-n // self.world_size) if n else 0


class ShuffleSampler(EpochSampler):
    """Every one of ``n`` items once per epoch, in an order drawn from ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = int(n)
        self.shuffle = shuffle

    def epoch_indices(self, epoch: int) -> np.ndarray:
        idx = np.arange(self.n, dtype=np.int64)
        if self.shuffle:
            epoch_rng(self.seed, epoch).shuffle(idx)
        return idx


def scale_composition(composition: Mapping[str, int], epoch_size: int, min_per_class: int = 1) -> dict[str, int]:
    """Scale per-class counts to a total of ``epoch_size`` keeping their ratios.

    Uses largest-remainder rounding so the counts sum to ``epoch_size`` exactly; classes with a
    positive count keep at least ``min_per_class`` (taken from the largest classes). With
    ``epoch_size <= 0`` the composition is returned unchanged.
    """
    comp = {k: int(v) for k, v in composition.items()}
    if any(v < 0 for v in comp.values()):
        raise ValueError(f"class counts must be >= 0, got {comp}")
    total = sum(comp.values())
    if total == 0:
        raise ValueError(f"composition must have at least one positive count, got {comp}")
    if epoch_size <= 0 or epoch_size == total:
        return comp
    positive = [k for k, v in comp.items() if v > 0]
    if epoch_size < len(positive) * min_per_class:
        raise ValueError(
            f"epoch_size {epoch_size} is too small to hold {min_per_class} item(s) of each of {len(positive)} classes"
        )
    exact = {k: comp[k] * epoch_size / total for k in comp}
    out = {k: int(np.floor(v)) for k, v in exact.items()}
    short = epoch_size - sum(out.values())
    for k in sorted(comp, key=lambda k: (-(exact[k] - out[k]), k))[:short]:
        out[k] += 1
    for k in positive:
        while out[k] < min_per_class:
            donor = max((d for d in positive if out[d] > min_per_class), key=lambda d: out[d])
            out[donor] -= 1
            out[k] += 1
    return out


class ClassCompositionSampler(EpochSampler):
    """A fixed number of items of each class per epoch (Wu et al. 2019 SI patch epochs).

    ``labels`` gives each dataset item's class index; ``counts`` maps class index to the number
    of items of that class per epoch. A class is drawn without replacement while its pool is
    large enough, with replacement otherwise (small synthetic sets). A class with no items in
    ``labels`` but a positive count raises, naming the class.
    """

    def __init__(
        self,
        labels: Sequence[int],
        counts: Mapping[int, int],
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, rank, world_size)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.counts = {int(c): int(n) for c, n in counts.items() if int(n) > 0}
        self.pools = {c: np.flatnonzero(self.labels == c) for c in self.counts}
        for c, pool in self.pools.items():
            if len(pool) == 0:
                name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
                raise ValueError(f"class {name!r} has no items but {self.counts[c]} are requested per epoch")

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = epoch_rng(self.seed, epoch)
        parts = []
        for c in sorted(self.counts):
            pool, k = self.pools[c], self.counts[c]
            parts.append(rng.choice(pool, size=k, replace=k > len(pool)))
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        rng.shuffle(idx)
        return idx.astype(np.int64)


class BiopsyBalancedSampler(EpochSampler):
    """Every positive (biopsied) item plus an equal number of negatives drawn afresh each epoch.

    When there are fewer negatives than positives, all negatives are used. ``ratio`` scales the
    number of negatives (1.0 = equal numbers, as in Wu et al. 2019 SI).
    """

    def __init__(
        self,
        positive: Sequence[bool],
        seed: int = 0,
        ratio: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, rank, world_size)
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio}")
        flags = np.asarray(positive, dtype=bool)
        self.positives = np.flatnonzero(flags)
        self.negatives = np.flatnonzero(~flags)
        self.ratio = float(ratio)

    def n_negatives(self) -> int:
        """Negatives drawn per epoch."""
        return min(len(self.negatives), int(round(self.ratio * len(self.positives))))

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = epoch_rng(self.seed, epoch)
        neg = rng.choice(self.negatives, size=self.n_negatives(), replace=False) if len(self.negatives) else self.negatives
        idx = np.concatenate([self.positives, neg]).astype(np.int64)
        rng.shuffle(idx)
        return idx
