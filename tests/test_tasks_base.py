"""iter_shard_batches: this rank's share of an evaluation set, batched, collated and on the device."""

from __future__ import annotations

from typing import Any

import torch

from grainvl.tasks.base import iter_shard_batches


class _Toy:
    """Item ``i`` is ``{"x": tensor([i]), "i": i}``; collate stacks ``x`` and lists ``i``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": torch.tensor([float(index)]), "i": index}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"x": torch.stack([item["x"] for item in items]), "i": [item["i"] for item in items]}


def _run(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[list[int], list[int], list[float]]]:
    out = []
    for indices, items, batch in iter_shard_batches(_Toy(n), batch_size, torch.device("cpu"), rank, world_size):
        assert [item["i"] for item in items] == indices == batch["i"]
        assert batch["x"].shape == (len(indices), 1)
        out.append((indices, batch["i"], batch["x"][:, 0].tolist()))
    return out


def test_single_rank_batches_cover_the_set_in_order() -> None:
    runs = _run(5, 2, 0, 1)
    assert [r[0] for r in runs] == [[0, 1], [2, 3], [4]]
    assert [r[2] for r in runs] == [[0.0, 1.0], [2.0, 3.0], [4.0]]


def test_two_ranks_stride_and_pad_to_equal_batches() -> None:
    # 5 items on 2 ranks: rank 0 gets 0, 2, 4 and rank 1 gets 1, 3 and a padding repeat of 0.
    assert [r[0] for r in _run(5, 2, 0, 2)] == [[0, 2], [4]]
    assert [r[0] for r in _run(5, 2, 1, 2)] == [[1, 3], [0]]


def test_empty_set_yields_nothing() -> None:
    assert _run(0, 4, 0, 1) == []
