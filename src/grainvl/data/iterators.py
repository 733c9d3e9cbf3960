"""Resumable batch streams: one ``state_dict``/``load_state_dict`` protocol and one cursor implementation.

Every stream the training loop pulls from is a :class:`StatefulIterator`: endless ``next()`` plus a
small, JSON-safe position that a checkpoint stores and a resumed run restores exactly.

* :class:`ShardedStream` is the one implementation of the position bookkeeping for data sets: epoch
  ``e`` visits ``permutation(e)`` of all items, truncated to a multiple of ``world_size`` and dealt
  round-robin (rank r takes entries r, r+W, ...), so ranks never overlap and step in lockstep. The
  cursor is two integers, ``(epoch, position)``; the permutation is recomputed on resume, so a
  batch depends on nothing else. Subclasses say how an epoch is shuffled and how picked items
  become a batch: :class:`RepeatingLoader` (map-style data sets, here) and the pre-training streams
  (:class:`~grainvl.data.pretrain.PretrainStream`).
* :class:`BatchSequence` replays a precomputed list of batches (in-memory fine-tunes): its cursor is
  one integer.
* :class:`StreamDict` draws one batch from each of several streams per step (mixed pre-training).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch.utils.data import default_collate

Pick = tuple[int, int]  # (item index, epoch it was drawn in)


@runtime_checkable
class StatefulIterator(Protocol):
    """An endless batch iterator whose position can be saved and restored exactly."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------- sharded streams
class ShardedStream(ABC):
    """Endless batches of ``num_items`` items for one rank, with an exact ``(epoch, position)`` cursor.

    ``position`` counts this rank's samples consumed in ``epoch``. With ``drop_last`` an epoch yields
    only full batches (its last ``samples_per_rank % batch_size`` samples sit out) and the cursor
    moves to the next epoch right after the epoch's last batch; without it a batch runs on into the
    next epoch, so every batch is full and no sample is skipped.

    ``state_dict()`` holds the cursor plus :meth:`identity` (what must match to resume); the cursor is
    saved under :attr:`position_key` in units of :attr:`position_unit` samples.
    """

    position_key: ClassVar[str] = "position"
    name: str = "stream"

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.samples_per_rank = num_items // world_size
        # Samples of one epoch this rank actually visits.
        self.epoch_length = (
            self.samples_per_rank - self.samples_per_rank % batch_size if drop_last else self.samples_per_rank
        )
        if self.epoch_length < 1:
            raise ValueError(
                f"{self.name}: {num_items} item(s) cannot feed {world_size} rank(s) with batch size {batch_size}"
            )
        self.epoch, self.position = 0, 0
        self._orders: OrderedDict[int, Sequence[int]] = OrderedDict()

    @property
    def position_unit(self) -> int:
        """Samples per saved position unit (1: samples; ``batch_size``: batches)."""
        return 1

    @abstractmethod
    def permutation(self, epoch: int) -> Sequence[int]:
        """The visiting order of all ``num_items`` items in ``epoch``, identical on every rank."""

    @abstractmethod
    def make_batch(self, picks: list[Pick]) -> Any:
        """The batch of the picked ``(index, epoch)`` items; ``self.epoch``/``self.position`` are still its start."""

    def identity(self) -> dict[str, int]:
        """Settings a saved position is only valid for."""
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "batch_size": self.batch_size}

    def epoch_indices(self, epoch: int) -> Sequence[int]:
        """This rank's item indices for ``epoch``, in visiting order (``samples_per_rank`` of them)."""
        if epoch not in self._orders:
            order = self.permutation(epoch)[: self.samples_per_rank * self.world_size]
            self._orders[epoch] = order[self.rank :: self.world_size]
            while len(self._orders) > 2:  # a batch spans at most the current and the next epoch
                self._orders.popitem(last=False)
        return self._orders[epoch]

    def _next_picks(self) -> tuple[list[Pick], int, int]:
        """The next batch's ``(index, epoch)`` pairs and the cursor after it."""
        picks, epoch, position = [], self.epoch, self.position
        while len(picks) < self.batch_size:
            if position == self.epoch_length:
                epoch, position = epoch + 1, 0
            picks.append((int(self.epoch_indices(epoch)[position]), epoch))
            position += 1
        if self.drop_last and position == self.epoch_length:
            epoch, position = epoch + 1, 0
        return picks, epoch, position

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        picks, epoch, position = self._next_picks()
        batch = self.make_batch(picks)
        self.epoch, self.position = epoch, position  # advance only once the batch exists
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, self.position_key: self.position // self.position_unit, **self.identity()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume where :meth:`state_dict` was taken; the stream must be built the same way."""
        for key, mine in self.identity().items():
            if key in state and int(state[key]) != mine:
                raise ValueError(f"cannot resume the {self.name}: saved {key}={state[key]}, this one has {mine}")
        epoch, position = int(state["epoch"]), int(state[self.position_key]) * self.position_unit
        if epoch < 0 or not 0 <= position <= self.epoch_length:
            raise ValueError(f"cannot resume the {self.name}: bad position {dict(state)}")
        self.epoch, self.position = epoch, position


class RepeatingLoader(ShardedStream):
    """Endless batches from a map-style dataset, sharded by rank, reshuffled every epoch, resumable mid-epoch.

    Epoch ``e`` is the permutation drawn from a torch generator seeded with ``seed * 1_000_003 + e``;
    incomplete final batches are dropped. The position is saved as ``(epoch, batch_index)``.
    Loading happens in the calling process; :meth:`sample` is the per-item hook.
    """

    position_key = "batch_index"
    name = "data loader"

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
        if len(dataset) // world_size < batch_size:
            raise ValueError(
                f"dataset of {len(dataset)} samples gives no full batch of {batch_size} on each of {world_size} rank(s)"
            )
        super().__init__(len(dataset), batch_size, seed, rank, world_size, drop_last=True)
        self.dataset = dataset
        self.collate = collate or default_collate
        self.shuffle = shuffle
        self.batches_per_epoch = self.samples_per_rank // batch_size

    @property
    def position_unit(self) -> int:
        return self.batch_size

    @property
    def batch_index(self) -> int:
        return self.position // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch

    def identity(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "dataset_len": self.num_items,
        }

    def permutation(self, epoch: int) -> Sequence[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def sample(self, index: int, epoch: int) -> Any:
        """One item of the batch; subclasses may vary it by epoch (fresh augmentation)."""
        return self.dataset[index]

    def make_batch(self, picks: list[Pick]) -> dict[str, Any]:
        return self.collate([self.sample(index, epoch) for index, epoch in picks])


# ---------------------------------------------------------------------------------------------- other streams
class BatchSequence:
    """Replays ``make_batch(0), make_batch(1), ...`` for ``length`` steps: a precomputed batch order.

    The cursor is the next step's index; running past ``length`` is an error (the order was sized
    for the run), not a silent wrap-around.
    """

    def __init__(self, make_batch: Callable[[int], Any], length: int) -> None:
        self.make_batch, self.length, self.position = make_batch, length, 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.position >= self.length:
            raise StopIteration(f"batch sequence of {self.length} steps is exhausted")
        batch = self.make_batch(self.position)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "length": self.length}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["length"]) != self.length or not 0 <= int(state["position"]) <= self.length:
            raise ValueError(f"cannot resume the batch sequence of {self.length} steps from {dict(state)}")
        self.position = int(state["position"])


class StreamDict:
    """One batch from every stream per step: ``{name: next(stream)}``; its state is every stream's state."""

    def __init__(self, streams: Mapping[str, StatefulIterator]) -> None:
        self.streams = dict(streams)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        return {name: next(stream) for name, stream in self.streams.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])
