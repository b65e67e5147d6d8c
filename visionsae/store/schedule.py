"""The order a store's rows are read in: which shards each window holds, pass after pass, and
in which order a window's rows go out (:meth:`ActivationStore.batches` serves them)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


def _mix_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest(), "little") >> 1


def _sort_within_batches(order: np.ndarray, window_rows: int, first: int, batch_size: int) -> np.ndarray:
    """``order`` with each batch's slice (the first ``first`` entries, then ``batch_size`` at a
    time) sorted: the same rows in every batch, in storage order (faster to read).

    One stable sort of the window's rows by batch number (a radix sort for 16-bit keys)
    instead of one comparison sort per batch."""
    n, first = len(order), min(first, len(order))
    rest = n - first
    sizes = [first] * bool(first) + [batch_size] * (rest // batch_size) + [rest % batch_size] * bool(rest % batch_size)
    key_type = np.int16 if len(sizes) < np.iinfo(np.int16).max else np.int64
    batch_no = np.repeat(np.arange(len(sizes), dtype=key_type), sizes)  # (no 64-bit division: 3x faster)
    key = np.full(window_rows, np.iinfo(key_type).max, dtype=key_type)  # rows not in ``order`` go last
    key[order] = batch_no
    return np.argsort(key, kind="stable")[: len(order)]


@dataclass(frozen=True)
class ReadPlan:
    """What :meth:`ActivationStore.batches` was asked for (its parameters, checked)."""

    batch_size: int
    seed: int
    shuffle: bool
    loop: bool
    keep: np.ndarray | None  # the token kinds (uint8) to keep; None: all
    dtype: torch.dtype
    buffer_shards: int
    drop_last: bool
    rank: int
    world_size: int
    sequential: bool

    def _generator(self, key: int) -> torch.Generator:
        return torch.Generator().manual_seed(_mix_seed(self.seed, key))

    def windows(self, n_shards: int) -> Iterator[tuple[int, list[int] | None]]:
        """``(pass, shard ids of a window)`` in reading order, and ``(pass, None)`` where a pass
        ends: each pass visits this rank's share of the shards (every ``world_size``-th of the
        pass's order), ``buffer_shards`` at a time; passes go on forever with ``loop``."""
        epoch = 0
        while True:
            order = torch.randperm(n_shards, generator=self._generator(epoch)).tolist() if self.shuffle else list(range(n_shards))
            order = order[self.rank :: self.world_size]
            for w in range(0, len(order), self.buffer_shards):
                yield epoch, order[w : w + self.buffer_shards]
            yield epoch, None
            epoch += 1
            if not self.loop:
                return

    def kept_rows(self, kinds: list[np.ndarray], starts: np.ndarray) -> np.ndarray | None:
        """The window rows (ascending) of the kinds to keep, given each shard's row kinds and
        where its rows start in the window; None when every row is kept."""
        if self.keep is None:
            return None
        return np.concatenate([np.flatnonzero(np.isin(k, self.keep)) + starts[j] for j, k in enumerate(kinds)])

    def row_order(self, epoch: int, group: list[int], window_rows: int, sel: np.ndarray | None, carry_need: int) -> np.ndarray:
        """The order a window's rows go out in (window row indices): the kept rows ``sel`` (all
        ``window_rows`` when None), shuffled when asked, each batch's slice in storage order;
        ``carry_need`` rows go first to fill the batch the previous window left unfinished."""
        count = window_rows if sel is None else len(sel)
        if not self.shuffle:
            return np.arange(count) if sel is None else sel
        perm = torch.randperm(count, generator=self._generator(epoch * 1_000_003 + group[0] + 1)).numpy()
        order = perm if sel is None else sel[perm]
        return _sort_within_batches(order, window_rows, carry_need, self.batch_size)
