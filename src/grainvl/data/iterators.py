"""TODO docstring."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import default_collate


# ---------------------------------------------------------------------------------------------- data
@runtime_checkable
class StatefulIterator(Protocol):
    """An endless batch iterator whose position can be saved and restored exactly."""

    def __next__(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RepeatingLoader:
    """Endless batches from a map-style dataset, sharded by rank, reshuffled every epoch, resumable mid-epoch.

    Epoch ``e`` is the permutation drawn from a generator seeded with ``(seed, e)``, truncated to a
    multiple of ``world_size`` and dealt round-robin (rank r takes positions r, r+W, ...), so every
    rank gets the same number of batches (DDP needs that) and the ranks never overlap. Incomplete
    final batches are dropped. The position is just ``(epoch, batch_index)``: the permutation is
    recomputed on resume. Loading happens in the calling process.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], dict[str, Any]] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate or default_collate
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.per_rank = len(dataset) // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"dataset of {len(dataset)} samples gives no full batch of {batch_size} on each of {world_size} rank(s)"
            )
        self.epoch = 0
        self.batch_index = 0
        self._order: list[int] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def _rank_indices(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __next__(self) -> dict[str, Any]:
        if self._order is None:
            self._order = self._rank_indices()
        start = self.batch_index * self.batch_size
        batch = self.collate([self.dataset[i] for i in self._order[start : start + self.batch_size]])
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.epoch, self.batch_index, self._order = self.epoch + 1, 0, None
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "dataset_len": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "batch_size", "world_size", "dataset_len"):
            mine = len(self.dataset) if key == "dataset_len" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"cannot resume the data position: saved {key}={state[key]}, this loader has {mine}")
        self.epoch, self.batch_index, self._order = int(state["epoch"]), int(state["batch_index"]), None
