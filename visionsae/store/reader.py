"""Reading a store: :class:`ActivationStore` and its one shard reader (every shard file is
memory-mapped after one check of its presence, size and CRC-32; whole shards, input records,
:meth:`~ActivationStore.verify` and the training batches all read through it)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputNotFoundError, UsageError
from .format import (DTYPES, FORMAT, FORMAT_VERSION, MANIFEST, _NP_STORED, ActivationBatch, CorruptShardError, StoreError,
                     TokenKind, _crc32, _crc_hex, _npy_view, _safetensors_views)
from .gather import _MappedShard, serve_batches
from .prefetch import WindowPrefetcher
from .schedule import ReadPlan


def _map_file(path: Path) -> np.ndarray:
    """A read-only memory map of ``path`` as uint8; on Linux its page tables are filled at once
    (MAP_POPULATE, in the prefetch thread) instead of one fault per page while rows are gathered."""
    import mmap

    with open(path, "rb") as f:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0) if hasattr(mmap, "MAP_SHARED") else 0
        if flags:
            m = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        else:  # Windows
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(m, dtype=np.uint8)


def _map_checked(path: Path, entry: dict, shard: str, verify: bool) -> np.ndarray:
    """One file of a shard, memory-mapped (uint8), once it is there with the size its manifest
    ``entry`` records and (with ``verify``) the CRC-32; else a :class:`CorruptShardError`
    naming the shard. Every read of a shard file goes through here."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptShardError(f"shard {shard!r}: file {path} is missing") from None
    if size != entry["bytes"]:
        raise CorruptShardError(f"shard {shard!r}: {path.name} has {size} bytes but the manifest says {entry['bytes']}")
    mm = _map_file(path) if size else np.zeros(0, np.uint8)
    if verify and _crc_hex(_crc32(mm)) != entry["crc32"]:
        raise CorruptShardError(f"shard {shard!r}: {path} does not match its CRC-32 checksum in the manifest (corrupted)")
    return mm


def _shard_views(root: Path, manifest: dict, shard: dict, verify: bool) -> dict[str, np.ndarray]:
    """The arrays of a shard (``acts`` in the stored dtype, bf16 as uint16; ``input_id``,
    ``position``, ``kind``) as views of its mapped, checked files; the caller checks shapes."""
    views: dict[str, np.ndarray] = {}
    np_dtype = _NP_STORED[manifest["dtype"]]
    for kind, entry in shard["files"].items():
        if kind == "inputs":
            continue
        mm = _map_checked(root / entry["file"], entry, shard["name"], verify)
        where = f"shard {shard['name']!r} ({entry['file']})"
        if kind == "acts" and manifest["shard_format"] == "npy":
            views["acts"] = _npy_view(mm, np_dtype, where)
        else:  # the safetensors file: all of the shard, or its row metadata beside the .npy
            views.update(_safetensors_views(mm, where))
    if "acts" in views:
        views["acts"] = views["acts"].view(np_dtype)
    return views


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor view of a read-only (memory-mapped) array, only ever read from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the array is not writable
        return torch.from_numpy(arr)


def _copied(arr: np.ndarray, dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """A mapped array copied out as a tensor (into ``out`` when given); ``dtype`` bfloat16 reads
    the array's 16-bit patterns as bf16."""
    t = _readonly_tensor(arr.view(np.int16)).view(torch.bfloat16) if dtype == torch.bfloat16 else _readonly_tensor(arr)
    return t.clone() if out is None else out.copy_(t)


class ActivationStore:
    """Read access to a store directory: its manifest, whole shards, and shuffled batches.

    ``ActivationStore.open(path)`` reads and checks the manifest; shards are read (and their
    CRC-32 checked) only when asked for.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._verified: set[int] = set()
        self._mapped: "OrderedDict[int, tuple[_MappedShard, int]]" = OrderedDict()
        self._mapped_lock = threading.Lock()
        self._map_cache_bytes = 2 << 30

    @property
    def map_cache_bytes(self) -> int:
        """Shards stay memory-mapped between :meth:`batches` passes (each new generator, or
        the next epoch) while their files total at most this many bytes (default 2 GiB),
        least recently used out first: a pass then serves its first window at once instead of
        mapping it (fp16 benchmark store: later passes 0.61 -> 0.70 of numpy's rate). The
        mappings are of the page cache (no copy), shared with every other reader of the files."""
        return self._map_cache_bytes

    @map_cache_bytes.setter
    def map_cache_bytes(self, value: int) -> None:
        with self._mapped_lock:
            self._map_cache_bytes = int(value)
            self._trim_mapped()

    def _trim_mapped(self) -> None:  # holding _mapped_lock
        total = sum(n for _, n in self._mapped.values())
        while self._mapped and total > self._map_cache_bytes:
            _, (_, n) = self._mapped.popitem(last=False)
            total -= n

    @classmethod
    def open(cls, path: str | os.PathLike, *, allow_incomplete: bool = False) -> "ActivationStore":
        """Open the store at ``path``.

        ``allow_incomplete`` opens a store whose extraction has not finished (the shards
        written so far); otherwise such a store is an error.
        """
        p = Path(path)
        mp = p / MANIFEST
        if not mp.exists():
            partial = sorted(p.glob("manifest.rank-*.json")) if p.is_dir() else []
            hint = " (per-rank manifests are there: the multi-process extraction did not finish)" if partial else ""
            raise InputNotFoundError(f"{p} is not an activation store: {mp} is missing{hint}")
        try:
            manifest = json.loads(mp.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{mp} is not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{mp} is not a visionsae activation-store manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"{mp} has format version {manifest['format_version']}; this visionsae reads up to {FORMAT_VERSION}"
            )
        if not manifest["complete"] and not allow_incomplete:
            raise StoreError(f"the extraction into {p} has not finished (rerun it to resume)")
        return cls(p, manifest)

    # -- facts ----------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        if self.manifest.get("d_in") is None:
            raise StoreError(
                f"the store at {self.path} holds no rows, so its width (d_in) is unknown: no input of its extraction "
                f"gave an activation row ({len(self.skipped)} were skipped as unreadable)"
            )
        return int(self.manifest["d_in"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    @property
    def hook(self) -> str:
        return self.manifest["hook"]

    @property
    def source(self) -> dict:
        return self.manifest["source"]

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def skipped(self) -> list[dict]:
        """Inputs left out because they could not be read (with ``on_error="skip"``)."""
        return [s for sh in self.manifest["shards"] for s in sh["skipped"]] + self.manifest.get("skipped", [])

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, rows={len(self)}, d_in={self.manifest['d_in']}, "
            f"dtype={self.manifest['dtype']}, shards={self.num_shards}, hook={self.hook!r})"
        )

    # -- shards ---------------------------------------------------------------------------
    def _shard_entry(self, i: int) -> dict:
        """The manifest entry of shard ``i``, or a StoreError naming the valid range."""
        n = self.num_shards
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
            raise StoreError(f"no shard {i!r} in the store at {self.path}: it has {n} shards (0 to {n - 1})"
                             if n else f"no shard {i!r}: the store at {self.path} has no shards")
        return self.manifest["shards"][int(i)]


    def _load_file(self, i: int, kind: str, verify: bool) -> np.ndarray:
        shard = self._shard_entry(i)
        entry = shard["files"][kind]
        return _map_checked(self.path / entry["file"], entry, shard["name"], verify)

    def read_shard(self, i: int, *, verify: bool = True, out: torch.Tensor | None = None) -> ActivationBatch:
        """Shard ``i`` as an :class:`ActivationBatch` (activations in the stored dtype).

        ``out`` (a contiguous ``[rows, d_in]`` tensor of the stored dtype) receives the
        activations without an extra copy. Raises :class:`CorruptShardError` naming the shard
        when its bytes are not the ones the manifest recorded.
        """
        shard = self._shard_entry(i)
        verify = verify and i not in self._verified
        rows, d_in = shard["rows"], self.manifest["d_in"] or 0
        if out is not None and (tuple(out.shape) != (rows, d_in) or out.dtype != self.dtype or not out.is_contiguous()):
            raise UsageError(f"out must be a contiguous {self.dtype} tensor of shape {(rows, d_in)}")
        views = _shard_views(self.path, self.manifest, shard, verify)
        acts = views.get("acts")
        meta = ("input_id", "position", "kind")
        if acts is None or acts.shape != (rows, d_in) or any(k not in views or views[k].shape[0] != rows for k in meta):
            raise CorruptShardError(
                f"shard {shard['name']!r} of {self.path}: holds {None if acts is None else tuple(acts.shape)} "
                f"but the manifest says {rows} rows of {d_in}"
            )
        if verify:
            self._verified.add(i)
        return ActivationBatch(_copied(acts, self.dtype, out), *(_copied(views[k]) for k in meta))
    def records(self, i: int) -> list[dict]:
        """The input records (text, tokens, image path ...) of shard ``i``'s inputs."""
        raw = self._load_file(i, "inputs", True)
        return [json.loads(line) for line in raw.tobytes().decode().splitlines() if line]

    def input_records(self, input_ids: Iterable[int]) -> dict[int, dict]:
        """Records of the given input ids, read from the shards that cover them."""
        want = sorted(set(int(i) for i in input_ids))
        out: dict[int, dict] = {}
        for i, sh in enumerate(self.manifest["shards"]):
            if any(sh["input_start"] <= j < sh["input_end"] for j in want):
                for r in self.records(i):
                    if r.get("input_id") in want:
                        out[r["input_id"]] = r
        return out

    def iter_shards(self, *, verify: bool = True) -> Iterator[ActivationBatch]:
        """Every shard in order (ranks in order, then shard index)."""
        for i in range(self.num_shards):
            yield self.read_shard(i, verify=verify)

    def nonfinite_rows(self, first: int = 3, progress: bool = False) -> dict:
        """Where the store holds NaN or Inf: ``{"rows": count, "first": [{"shard", "row",
        "input_id"}, ...]}`` (the first ``first`` of them). Reads every shard once."""
        from tqdm.auto import tqdm

        count, found = 0, []
        for i in tqdm(range(self.num_shards), desc="search the store for NaN", unit="shard", disable=not progress):
            batch = self.read_shard(i)
            bad = (~torch.isfinite(batch.acts)).any(-1).nonzero().flatten()
            count += int(bad.numel())
            for r in bad[: max(0, first - len(found))].tolist():
                found.append({"shard": self.manifest["shards"][i]["name"], "row": r, "input_id": int(batch.input_id[r])})
        return {"rows": count, "first": found}

    def verify(self, *, full: bool = True) -> list[str]:
        """Check every file of every shard (size, CRC-32 and with ``full`` SHA-256).

        Returns the list of problems, one line each, naming the shard (empty when all is well).
        """
        problems = []
        for i, shard in enumerate(self.manifest["shards"]):
            for entry in shard["files"].values():
                try:
                    buf = _map_checked(self.path / entry["file"], entry, shard["name"], True)
                    if full and hashlib.sha256(buf).hexdigest() != entry["sha256"]:
                        raise CorruptShardError(
                            f"shard {shard['name']!r}: {entry['file']} does not match its SHA-256 checksum"
                        )
                except CorruptShardError as exc:
                    problems.append(str(exc))
        return problems


    # -- training batches -----------------------------------------------------------------
    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        loop: bool = False,
        kinds: str | Sequence[str | int] | None = None,
        dtype: torch.dtype = torch.float32,
        buffer_shards: int = 4,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        verify: bool = True,
        sequential: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield activation rows as float tensors ``[batch_size, d_in]``.

        Parameters
        ----------
        batch_size:
            Rows per batch. Every batch is full except possibly the last of a pass when
            ``loop`` is false and ``drop_last`` is false.
        seed:
            Seeds the shard order and the row shuffle; pass ``seed`` and you get the same
            batches in the same order. Pass ``n`` of the ``n``-th pass with ``loop``: pass
            ``p`` uses seed ``(seed, p)``.
        shuffle:
            Shuffle: each pass visits the shards in a random order, ``buffer_shards`` at a
            time, and yields the rows of those shards in a random permutation (a batch is a
            random draw from the buffered shards; inside a batch, rows come in storage order).
            Without it rows come in store order.
        loop:
            Start another pass when one ends (forever); the trainer stops when it has seen
            enough samples.
        kinds:
            Keep only rows of these token kinds (``"patch"``, ``["patch", "cls"]`` ...); for
            example register tokens never reach patch statistics with ``kinds="patch"``.
        dtype:
            The dtype of the yielded batches (on the CPU).
        buffer_shards:
            How many shards are mapped at once. Shards are memory-mapped (page cache, not
            process heap) and the next ``buffer_shards`` are checked in a background thread
            while the current ones are served: at most ``2 * buffer_shards`` shards are mapped.
        drop_last:
            Leave out the last partial batch of a pass (no effect with ``loop``, where batches
            run across passes).
        rank, world_size:
            Read only every ``world_size``-th shard of each pass's order, starting at
            ``rank`` (data-parallel training reads disjoint shards per process: with as many
            rows in every shard and a shard count divisible by ``world_size``, each process
            reads an equal share).
        verify:
            Check each shard's CRC-32 the first time this reader maps it; a corrupted shard
            raises :class:`CorruptShardError` (naming it) before any of its rows is served.
        sequential:
            FAST-style reading (Li et al. 2025, "Training Superior Sparse Autoencoders for
            Instruct Models"): whole sequences in their order, each one's tokens in position
            order, every token kind the store holds (special tokens included) unless ``kinds``
            says otherwise. Rows come in store order (``shuffle`` is not applied); a batch is
            ``batch_size`` consecutive rows, so a sequence may run on into the next batch; with
            ``loop`` every pass starts again at the first row (the last partial batch of each
            pass is dropped), so every pass yields the same batches.
        """
        for name, value in (("batch_size", batch_size), ("buffer_shards", buffer_shards)):
            if value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")
        keep = None if kinds is None else np.array([int(k) for k in TokenKind.parse(kinds)], dtype=np.uint8)
        if self.num_shards == 0 or len(self) == 0:
            raise StoreError(f"the store at {self.path} holds no rows")
        plan = ReadPlan(batch_size, seed, shuffle and not sequential, loop, keep, dtype, buffer_shards, drop_last, rank, world_size, sequential)
        what = "rows" if kinds is None else f"rows of kinds {kinds!r}"
        no_rows = f"no {what} for rank {rank} of {world_size} in the store at {self.path}"
        windows = WindowPrefetcher(plan.windows(self.num_shards), lambda i: self._map_shard(i, verify),
                                   lambda i: self._cached_shard(i, verify), buffer_shards)
        try:
            yield from serve_batches(plan, windows, no_rows)
        finally:
            windows.close()

    def _cached_shard(self, i: int, verify: bool) -> "_MappedShard | None":
        """Shard ``i`` from the reader's cache of mappings (see ``map_cache_bytes``), or None
        when it is not there or still has to be CRC-checked."""
        if verify and i not in self._verified:
            return None
        with self._mapped_lock:
            hit = self._mapped.get(i)
            if hit is not None:
                self._mapped.move_to_end(i)
            return None if hit is None else hit[0]

    def _map_shard(self, i: int, verify: bool) -> "_MappedShard":
        """Shard ``i``'s activations and token kinds, memory-mapped (CRC-checked on first use),
        from the reader's cache of mappings when it holds them."""
        if (hit := self._cached_shard(i, verify)) is not None:
            return hit
        verify = verify and i not in self._verified
        mapped = self._map_shard_files(i, verify)
        size = sum(e["bytes"] for kind, e in self.manifest["shards"][i]["files"].items() if kind != "inputs")
        with self._mapped_lock:
            self._mapped[i] = (mapped, size)
            self._mapped.move_to_end(i)
            self._trim_mapped()
        return mapped

    def _map_shard_files(self, i: int, verify: bool) -> _MappedShard:
        shard = self.manifest["shards"][i]
        views = _shard_views(self.path, self.manifest, shard, verify)
        acts, kind = views.get("acts"), views.get("kind")
        rows, d_in = shard["rows"], self.d_in
        if acts is None or kind is None or acts.shape != (rows, d_in) or kind.shape != (rows,):
            raise CorruptShardError(f"shard {shard['name']!r} of {self.path}: does not hold {rows} rows of {d_in} as the manifest says")
        if verify:
            self._verified.add(i)
        table = _readonly_tensor(acts.view(np.int16) if acts.dtype == np.uint16 else acts)
        return _MappedShard(rows, acts, kind.view(np.uint8), self.dtype, table)

    def kind_counts(self) -> dict[str, int]:
        """Rows per token kind over the whole store (reads every shard's metadata)."""
        counts = torch.zeros(len(TokenKind), dtype=torch.int64)
        for b in self.iter_shards():
            counts += torch.bincount(b.kind.long(), minlength=len(TokenKind))[: len(TokenKind)]
        return {k.name.lower(): int(counts[k]) for k in TokenKind if counts[k]}
