"""Writing a store: :class:`ShardWriter` (one process's shards, resumable), the per-rank
manifests of a multi-process extraction and :func:`merge_rank_manifests`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write_chunks
from ..errors import UsageError, check_writable_dir
from .format import (DTYPES, FORMAT, FORMAT_VERSION, MANIFEST, SHARD_FORMATS, _NPY_DESCR, ActivationBatch, StoreError,
                     TokenKind, _crc32, _crc_hex, _npy_parts, _safetensors_parts, _tensor_bytes)


def _tmp_name(path: Path) -> str:
    """The temporary name a store file is written under: ``NAME.tmpPID``, which
    :meth:`ShardWriter._remove_strays` knows to delete after a kill."""
    return path.name + f".tmp{os.getpid()}"


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_chunks(path, [(json.dumps(obj, indent=1) + "\n").encode()], tmp_name=_tmp_name(path))


def _atomic_write_parts(path: Path, head: bytes | memoryview, parts: list[torch.Tensor]) -> dict:
    """Write ``head`` and then the bytes of each tensor in ``parts`` to ``path`` (atomically:
    :func:`~visionsae.atomic.atomic_write_chunks`) and return the file's size, CRC-32 and SHA-256.

    The parts are streamed one by one: a shard is never assembled into one more buffer of its
    size (a transient 25-100 MB copy per shard).
    """
    crc, sha, size = 0, hashlib.sha256(), 0

    def chunks():
        nonlocal crc, size
        for chunk in [memoryview(head).cast("B"), *(_tensor_bytes(t) for t in parts)]:
            if not chunk.nbytes:
                continue
            yield chunk
            crc, size = _crc32(chunk, crc), size + chunk.nbytes
            sha.update(chunk)

    atomic_write_chunks(path, chunks(), tmp_name=_tmp_name(path))
    return {"bytes": size, "crc32": _crc_hex(crc), "sha256": sha.hexdigest()}


def _rank_manifest_name(rank: int) -> str:
    return f"manifest.rank-{rank:02d}.json"


class ShardWriter:
    """Writes one process's activation rows into shards of a store directory, resumably.

    Parameters
    ----------
    out_dir:
        The store directory (created if missing).
    source:
        A JSON-able description of where the activations come from (model, options); a resumed
        run must describe the same source.
    hook:
        The hook point (module path) the activations were taken at.
    num_inputs:
        How many inputs the whole extraction covers (all ranks together).
    dtype:
        ``"float32"``, ``"float16"`` or ``"bfloat16"``: how activations are kept on disk.
    shard_format:
        ``"safetensors"`` or ``"npy"``.
    shard_rows:
        A shard is closed once it holds at least this many rows (it ends at an input boundary,
        so it can hold up to one source batch more).
    rank, world_size:
        This process and how many write the store together; each rank covers the contiguous
        block of inputs ``input_range(num_inputs, rank, world_size)``.
    overwrite:
        Start afresh, deleting what the directory holds, instead of resuming.
    extra:
        More JSON-able facts for the manifest (patch grid, token kinds present ...).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        source: dict,
        hook: str,
        num_inputs: int,
        dtype: str = "float32",
        shard_format: str = "safetensors",
        shard_rows: int = 65536,
        rank: int = 0,
        world_size: int = 1,
        overwrite: bool = False,
        extra: dict | None = None,
        inputs_fingerprint: Callable[[int, int], str] | None = None,
    ):
        if dtype not in DTYPES:
            raise UsageError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        if shard_format not in SHARD_FORMATS:
            raise UsageError(f"shard_format {shard_format!r} is not one of {SHARD_FORMATS}")
        if shard_rows < 1:
            raise UsageError(f"shard_rows must be >= 1, got {shard_rows}")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dir = check_writable_dir(out_dir, "store directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size = rank, world_size
        self._fingerprint = inputs_fingerprint
        self.dtype, self.shard_format, self.shard_rows = dtype, shard_format, shard_rows
        self.input_start, self.input_end = input_range(num_inputs, rank, world_size)
        self._manifest_path = self.dir / (MANIFEST if world_size == 1 else _rank_manifest_name(rank))
        self.manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": source,
            "hook": hook,
            "d_in": None,
            "dtype": dtype,
            "shard_format": shard_format,
            "num_inputs": num_inputs,
            "world_size": world_size,
            "rank": rank if world_size > 1 else None,
            "input_range": [self.input_start, self.input_end],
            "rows": 0,
            "complete": False,
            "skipped": [],  # unreadable inputs of a rank that wrote no shard (else listed per shard)
            "token_kinds": {k.name.lower(): int(k) for k in TokenKind},
            "extra": extra or {},
            "shards": [],
        }
        if overwrite:
            self._clear()
        elif self._manifest_path.exists():
            self._resume()
        elif (self.dir / MANIFEST).exists() and world_size > 1:
            raise StoreError(f"{self.dir} already holds a finished single-process store; pass overwrite to replace it")
        self._remove_strays()
        self._buf: list[ActivationBatch] = []  # buffered inputs' metadata (their rows are in _stage)
        self._pending_empty: list[ActivationBatch] = []
        self._buf_rows = 0
        # The buffered rows, in the store's dtype, in one buffer reused for every shard (the
        # files are streamed from it): a shard's rows are copied once, and held once.
        self._stage: torch.Tensor | None = None
        self._next_input = self.next_input

    # -- resume ---------------------------------------------------------------------------
    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.is_file() and (p.name.startswith(("shard-", "manifest")) or ".tmp" in p.name):
                p.unlink()

    def _resume(self) -> None:
        try:
            old = json.loads(self._manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self._manifest_path} is not valid JSON ({exc}); overwrite the store to start afresh") from None
        keys = ("source", "hook", "dtype", "shard_format", "num_inputs", "world_size")
        diff = [k for k in keys if old.get(k) != self.manifest[k]]
        if diff:
            k = diff[0]
            raise StoreError(
                f"{self.dir} holds an extraction with a different {k} ({old.get(k)!r}, now {self.manifest[k]!r}); "
                "use another output directory or overwrite it"
            )
        if self._fingerprint is not None:
            for shard in old["shards"]:
                then = shard.get("inputs_sha256")
                now = then and self._fingerprint(shard["input_start"], shard["input_end"])
                if then != now:
                    raise StoreError(
                        f"{self.dir} holds an extraction of other inputs: its shard {shard['name']!r} covers inputs "
                        f"{shard['input_start']} to {shard['input_end'] - 1}, whose fingerprint was {then[:16]}, and these "
                        f"give {now[:16]} (same count, different content); resuming would mix the two. Use another "
                        "output directory, or overwrite it (--overwrite)"
                    )
        self.manifest.update(d_in=old["d_in"], rows=old["rows"], shards=old["shards"], complete=old["complete"])
        self.manifest["extra"] = {**old.get("extra", {}), **self.manifest["extra"]}

    def _remove_strays(self) -> None:
        """Delete temp files and shards of this rank that the manifest does not list (written
        by a run killed between renaming a shard and rewriting the manifest)."""
        listed = {f["file"] for s in self.manifest["shards"] for f in s["files"].values()}
        prefix = f"shard-{self.rank:02d}-"
        for p in self.dir.iterdir():
            stray_tmp = ".tmp" in p.name and (p.name.startswith(prefix) or p.name.startswith("manifest"))
            if stray_tmp or (p.name.startswith(prefix) and p.name not in listed):
                p.unlink()

    @property
    def next_input(self) -> int:
        """The first input not yet in a shard of this rank (``input_end`` when all are done)."""
        shards = self.manifest["shards"]
        return shards[-1]["input_end"] if shards else self.input_start

    @property
    def done(self) -> bool:
        return self.next_input >= self.input_end

    # -- writing --------------------------------------------------------------------------
    def add(self, batch: ActivationBatch, inputs_end: int) -> None:
        """Buffer ``batch``, which covers the inputs up to (not including) ``inputs_end``;
        write a shard when enough rows are buffered."""
        if batch.acts.ndim != 2:
            raise UsageError(f"activation rows must be [N, d_in], got shape {tuple(batch.acts.shape)}")
        if len(batch) == 0 and self.manifest["d_in"] is None:
            batch = ActivationBatch(batch.acts.reshape(0, 0), batch.input_id, batch.position, batch.kind,
                                    batch.records, batch.skipped)
            self._pending_empty.append(batch)
            self._next_input = inputs_end
            return
        d_in = self.manifest["d_in"]
        if d_in is None:
            self.manifest["d_in"] = d_in = int(batch.acts.shape[1])
        if batch.acts.shape[1] != d_in:
            raise UsageError(f"activations have {batch.acts.shape[1]} features but the store holds {d_in}")
        for p in self._pending_empty:  # inputs with no rows before d_in was known: keep their records
            self._buf.append(self._typed(p, d_in))
        self._pending_empty = []
        rows = batch.acts.detach().reshape(-1, d_in)
        end = self._buf_rows + rows.shape[0]
        if self._stage is None or self._stage.shape[0] < end:
            grown = torch.empty(max(end, self.shard_rows) + rows.shape[0], d_in, dtype=DTYPES[self.dtype])
            if self._stage is not None:
                grown[: self._buf_rows] = self._stage[: self._buf_rows]
            self._stage = grown
        self._stage[self._buf_rows : end] = rows  # converts to the store's dtype on the way
        self._buf.append(self._typed(batch, d_in))
        self._buf_rows = end
        self._next_input = inputs_end
        if self._buf_rows >= self.shard_rows:
            self.flush()

    def _typed(self, batch: ActivationBatch, d_in: int) -> ActivationBatch:
        """The batch's metadata in stored dtypes; its rows (kept in ``_stage``) left out."""
        return ActivationBatch(
            torch.empty(0, d_in, dtype=DTYPES[self.dtype]),
            batch.input_id.to("cpu", torch.int64),
            batch.position.to("cpu", torch.int32),
            batch.kind.to("cpu", torch.uint8),
            list(batch.records),
            list(batch.skipped),
        )

    def flush(self) -> None:
        """Write the buffered rows as one shard (nothing if no input is buffered)."""
        if not self._buf:
            return
        b = self._buf
        rows = self._buf_rows
        acts = [self._stage[:rows] if rows else torch.empty(0, self.manifest["d_in"] or 0, dtype=DTYPES[self.dtype])]
        meta = {"input_id": [x.input_id for x in b], "position": [x.position for x in b], "kind": [x.kind for x in b]}
        records = [r for x in b for r in x.records]
        skipped = [s for x in b for s in x.skipped]
        index = len(self.manifest["shards"])
        name = f"shard-{self.rank:02d}-{index:05d}"
        files: dict[str, dict] = {}

        def put(kind: str, filename: str, head: bytes, parts: list[torch.Tensor]) -> None:
            files[kind] = {"file": filename, **_atomic_write_parts(self.dir / filename, head, parts)}

        try:
            put("inputs", f"{name}.inputs.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode(), [])
            if self.shard_format == "safetensors":
                put("acts", f"{name}.safetensors", *_safetensors_parts({"acts": acts, **meta}, {"format": FORMAT}))
            else:
                put("meta", f"{name}.meta.safetensors", *_safetensors_parts(meta, {"format": FORMAT}))
                put("acts", f"{name}.npy", *_npy_parts(acts, _NPY_DESCR[self.dtype]))
        except BaseException:  # a shard is whole or absent: its files written so far go too
            for entry in files.values():
                (self.dir / entry["file"]).unlink(missing_ok=True)
            raise
        first = self.manifest["shards"][-1]["input_end"] if self.manifest["shards"] else self.input_start
        entry = {
            "name": name,
            "rank": self.rank,
            "rows": rows,
            "input_start": first,
            "input_end": self._next_input,
            "skipped": skipped,
            "files": files,
        }
        if self._fingerprint is not None:  # what a resume checks: the shard's inputs are still these
            entry["inputs_sha256"] = self._fingerprint(first, self._next_input)
        self.manifest["shards"].append(entry)
        self.manifest["rows"] += rows
        _atomic_write_json(self._manifest_path, self.manifest)
        self._buf, self._buf_rows = [], 0

    def close(self) -> dict:
        """Write what is buffered, mark this rank complete and return its manifest."""
        self.flush()
        for p in self._pending_empty:  # no input of this rank gave a row
            self.manifest["skipped"] += p.skipped
        self._pending_empty = []
        if self._next_input < self.input_end:
            raise StoreError(
                f"closing the writer of rank {self.rank} after input {self._next_input} "
                f"but it covers inputs up to {self.input_end}"
            )
        self.manifest["complete"] = True
        _atomic_write_json(self._manifest_path, self.manifest)
        self._stage = None
        return self.manifest


def input_range(num_inputs: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous block ``[start, end)`` of inputs that ``rank`` of ``world_size`` covers."""
    return num_inputs * rank // world_size, num_inputs * (rank + 1) // world_size


def merge_rank_manifests(out_dir: str | os.PathLike, world_size: int) -> dict:
    """Join the finished ``manifest.rank-RR.json`` of all ranks into ``manifest.json``."""
    d = Path(out_dir)
    parts = []
    for r in range(world_size):
        p = d / _rank_manifest_name(r)
        if not p.exists():
            raise StoreError(f"{p} is missing: rank {r} has not written its shards")
        m = json.loads(p.read_text())
        if not m["complete"]:
            raise StoreError(f"rank {r} has not finished its shards ({p} says complete: false)")
        parts.append(m)
    d_ins = {m["d_in"] for m in parts if m["d_in"] is not None}
    if len(d_ins) > 1:
        raise StoreError(f"ranks disagree on d_in: {sorted(d_ins)}")
    merged = dict(parts[0])
    merged.update(
        d_in=d_ins.pop() if d_ins else None,
        rank=None,
        input_range=[0, merged["num_inputs"]],
        rows=sum(m["rows"] for m in parts),
        shards=[s for m in parts for s in m["shards"]],
        skipped=[s for m in parts for s in m.get("skipped", [])],
        complete=True,
    )
    for m in parts[1:]:
        for k, v in m.get("extra", {}).items():
            merged["extra"].setdefault(k, v)
    _atomic_write_json(d / MANIFEST, merged)
    return merged
