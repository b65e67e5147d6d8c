"""A sharded on-disk activation store with a shuffling reader.

Layout of a store directory::

    manifest.json                    what was extracted, d_in, dtype, rows, one entry per shard
    shard-00-00000.safetensors       rows of rank 0: "acts" [N, d_in] + "input_id", "position", "kind"
    shard-00-00000.inputs.jsonl      one JSON record per input the shard covers (text, tokens, path ...)

With ``shard_format="npy"`` the activations of a shard are a plain ``.npy`` file (memory-mappable;
bf16 is kept as its raw 16-bit pattern, ``dtype`` in the manifest says how to read it) and the
row metadata sits beside it in ``.meta.safetensors``.

Each shard entry of the manifest holds the byte size, CRC-32 and SHA-256 of each of its files.
A shard is written to a temporary name and renamed into place, and the manifest is rewritten
(atomically) after every shard, so a killed extraction leaves each shard complete or absent;
:class:`ShardWriter` resumes after the last shard the manifest lists. Readers check the CRC-32
of every shard they load (it costs a few percent of the read) and name the shard whose bytes
do not match; :meth:`ActivationStore.verify` also checks SHA-256.

Several processes (accelerate ranks) each write their own shards and a partial manifest
``manifest.rank-RR.json``; :func:`merge_rank_manifests` (run by rank 0 when all are done)
joins them into ``manifest.json``.

Training reads shuffled float batches::

    store = ActivationStore.open("acts/")
    for x in store.batches(batch_size=4096, seed=0, shuffle=True, loop=True):
        ...  # x: float32 tensor [4096, store.d_in]
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct
import threading
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .errors import InputNotFoundError, UsageError, check_writable_dir, write_failed

try:  # Intel ISA-L's CRC-32: the same checksum as zlib's (IEEE polynomial), several times faster
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # platforms without isal wheels
    _crc32 = zlib.crc32

FORMAT = "visionsae.activation-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
SHARD_FORMATS = ("safetensors", "npy")


class TokenKind(enum.IntEnum):
    """What a row of the store is: stored as a uint8 per row."""

    PATCH = 0  # an image patch token, or one spatial position of a CNN feature map
    CLS = 1  # a ViT class token
    REGISTER = 2  # a ViT register token (DINOv2 with registers)
    START = 3  # the start-of-text token (CLIP <|startoftext|>, BERT [CLS], Llama <s>)
    TEXT = 4  # an ordinary text token
    END = 5  # the end-of-text token (CLIP <|endoftext|>, BERT [SEP]) closing the real text
    PAD = 6  # padding after (or before) the real text
    IMAGE = 7  # an image token in a VLM's language-model residual stream
    POOLED = 8  # a whole input in one vector (a [B, D] hook output)

    @classmethod
    def parse(cls, names: str | Iterable[str | int | "TokenKind"]) -> list["TokenKind"]:
        """``"patch,cls"`` or ``["patch", 1]`` -> [TokenKind.PATCH, TokenKind.CLS]."""
        if isinstance(names, str):
            names = [n for n in names.split(",") if n.strip()]
        out = []
        for n in names:
            if isinstance(n, (int, TokenKind)):
                out.append(cls(int(n)))
                continue
            key = str(n).strip().upper()
            if key not in cls.__members__:
                valid = ", ".join(k.lower() for k in cls.__members__)
                raise UsageError(f"unknown token kind {n!r}; expected some of: {valid}")
            out.append(cls[key])
        return out


@dataclass
class ActivationBatch:
    """Activation rows and where each came from.

    A source yields these; the store writes and reads them.
    """

    acts: torch.Tensor  # [N, d_in] one row per token (or spatial position, or pooled input)
    input_id: torch.Tensor  # [N] int64: index of the input in the extraction's input list
    position: torch.Tensor  # [N] int32: token position in the sequence (h * W + w for feature maps)
    kind: torch.Tensor  # [N] uint8: TokenKind of the row
    records: list[dict] = field(default_factory=list)  # one JSON record per input covered
    skipped: list[dict] = field(default_factory=list)  # inputs that could not be read (skip mode)

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    def select(self, mask: torch.Tensor) -> "ActivationBatch":
        """Rows where ``mask`` [N] bool is true (records and skipped kept as they are)."""
        return ActivationBatch(
            self.acts[mask], self.input_id[mask], self.position[mask], self.kind[mask],
            self.records, self.skipped,
        )


class StoreError(UsageError):
    """A store directory that cannot be read or written as asked."""


class CorruptShardError(StoreError):
    """A shard whose bytes do not match the checksum in the manifest."""


# ----------------------------------------------------------------------------- file helpers


def _atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    _atomic_write_parts(path, data, [])


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _atomic_write_parts(path: Path, head: bytes | memoryview, parts: list[torch.Tensor]) -> dict:
    """Write ``head`` and then the bytes of each tensor in ``parts`` to ``path`` (a temporary
    file, fsync, rename) and return the file's size, CRC-32 and SHA-256.

    The parts are streamed one by one: a shard is never assembled into one more buffer of its
    size (a transient 25-100 MB copy per shard).
    """
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    crc, sha, size = 0, hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as f:
            for chunk in [memoryview(head).cast("B"), *(_tensor_bytes(t) for t in parts)]:
                if not chunk.nbytes:
                    continue
                f.write(chunk)
                crc, size = _crc32(chunk, crc), size + chunk.nbytes
                sha.update(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, no permission: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"bytes": size, "crc32": f"{crc & 0xFFFFFFFF:08x}", "sha256": sha.hexdigest()}


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy())


_ST_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "U16": torch.int16,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items() if k != "U16"}


def _safetensors_parts(tensors: dict[str, list[torch.Tensor]], metadata: dict[str, str] | None = None):
    """The safetensors serialisation of tensors given as lists of row blocks (concatenated on
    the first dim), as (header bytes, the blocks in file order) for :func:`_atomic_write_parts`."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    parts = []
    for name, blocks in tensors.items():
        dtype = blocks[0].dtype
        shape = [sum(b.shape[0] for b in blocks), *blocks[0].shape[1:]]
        n = sum(b.numel() for b in blocks) * blocks[0].element_size()
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": shape, "data_offsets": [offset, offset + n]}
        parts += blocks
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data to 8 bytes
    return struct.pack("<Q", len(head)) + head, parts


def _npy_parts(blocks: list[torch.Tensor], np_dtype: str):
    """A ``.npy`` file of the row blocks (concatenated) with the given numpy dtype string, as
    (header bytes, blocks)."""
    import io

    shape = (sum(b.shape[0] for b in blocks), *blocks[0].shape[1:])
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": np_dtype, "fortran_order": False, "shape": shape})
    return f.getvalue(), blocks


def _readinto(f, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_checked(path: Path, entry: dict, shard: str, verify: bool) -> np.ndarray:
    """Read a whole file (uint8 array), checking size and CRC-32 against its manifest entry."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptShardError(f"shard {shard!r}: file {path} is missing") from None
    if size != entry["bytes"]:
        raise CorruptShardError(
            f"shard {shard!r}: {path.name} has {size} bytes but the manifest says {entry['bytes']}"
        )
    buf = np.empty(size, dtype=np.uint8)  # not zero-filled: readinto writes every byte
    with open(path, "rb", buffering=0) as f:
        _readinto(f, memoryview(buf))
    if verify and f"{_crc32(buf) & 0xFFFFFFFF:08x}" != entry["crc32"]:
        raise CorruptShardError(
            f"shard {shard!r}: {path} does not match its CRC-32 checksum in the manifest (corrupted)"
        )
    return buf


class _TensorFile:
    """Streams the tensors of one shard file (safetensors or .npy) with a running CRC-32; the
    big activation tensor can be read straight into a caller's buffer (no extra copy)."""

    def __init__(self, path: Path, entry: dict, shard: str, verify: bool):
        self.path, self.entry, self.shard, self.verify = path, entry, shard, verify
        self.where = f"shard {shard!r} ({path.name})"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CorruptShardError(f"shard {shard!r}: file {path} is missing") from None
        if size != entry["bytes"]:
            raise CorruptShardError(f"shard {shard!r}: {path.name} has {size} bytes but the manifest says {entry['bytes']}")
        self.f = open(path, "rb", buffering=0)
        self.crc = 0
        self.pos = 0

    def read(self, n: int, into: memoryview | None = None) -> memoryview:
        view = into if into is not None else memoryview(np.empty(n, dtype=np.uint8))
        if len(view) != n:
            raise ValueError("buffer size mismatch")
        if _readinto(self.f, view) != n:
            raise CorruptShardError(f"{self.where}: file ends early")
        if self.verify:
            self.crc = _crc32(view, self.crc)
        self.pos += n
        return view

    def finish(self) -> None:
        self.f.close()
        if self.verify and f"{self.crc & 0xFFFFFFFF:08x}" != self.entry["crc32"]:
            raise CorruptShardError(
                f"shard {self.shard!r}: {self.path} does not match its CRC-32 checksum in the manifest (corrupted)"
            )

    def safetensors(self, dest: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """All tensors of a safetensors file; those named in ``dest`` are read into it."""
        dest = dest or {}
        try:
            (n,) = struct.unpack("<Q", bytes(self.read(8)))
            if n > self.entry["bytes"]:
                raise ValueError(f"header length {n}")
            header = json.loads(bytes(self.read(n)))
            items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
        except CorruptShardError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
            self.f.close()
            raise CorruptShardError(f"{self.where}: not a readable safetensors file ({exc})") from None
        base = 8 + n
        out = {}
        for name, info in items:
            s, e = info["data_offsets"]
            if base + s != self.pos:
                self.read(base + s - self.pos)  # padding between tensors, if any
            dtype = _ST_DTYPES[info["dtype"]]
            shape = info["shape"]
            if name in dest:
                t = dest[name]
                if list(t.shape) != list(shape) or t.dtype != dtype:
                    self.f.close()
                    raise CorruptShardError(f"{self.where}: {name} is {info['dtype']} {shape}, expected {tuple(t.shape)}")
                self.read(e - s, memoryview(t.view(torch.uint8).reshape(-1).numpy()))
            else:
                raw = self.read(e - s)
                t = torch.frombuffer(raw, dtype=dtype) if e > s else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(shape)
        if self.pos != self.entry["bytes"]:
            self.read(self.entry["bytes"] - self.pos)
        self.finish()
        return out

    def npy(self, dtype: str, dest: torch.Tensor | None = None) -> torch.Tensor:
        """The array of a .npy file as a tensor of ``dtype`` (read into ``dest`` when given)."""
        import io

        try:
            head = bytes(self.read(10))
            major = head[6]
            hlen_size = 2 if major == 1 else 4
            rest = bytes(self.read(hlen_size - 2)) if hlen_size > 2 else b""
            hlen = int.from_bytes((head[8:10] + rest), "little")
            header = head + rest + bytes(self.read(hlen))
            f = io.BytesIO(header)
            np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _fortran, _np_dtype = read_header(f)
        except CorruptShardError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.f.close()
            raise CorruptShardError(f"{self.where}: not a readable .npy file ({exc})") from None
        tdtype = DTYPES[dtype]
        nbytes = int(np.prod(shape)) * tdtype.itemsize
        if self.pos + nbytes != self.entry["bytes"]:
            self.f.close()
            raise CorruptShardError(f"{self.where}: header says {shape} but the file has {self.entry['bytes'] - self.pos} data bytes")
        if dest is not None:
            if list(dest.shape) != list(shape):
                self.f.close()
                raise CorruptShardError(f"{self.where}: holds {shape}, expected {tuple(dest.shape)}")
            self.read(nbytes, memoryview(dest.view(torch.uint8).reshape(-1).numpy()))
            t = dest
        else:
            raw = self.read(nbytes)
            t = (torch.frombuffer(raw, dtype=tdtype) if nbytes else torch.empty(0, dtype=tdtype)).reshape(shape)
        self.finish()
        return t


# ----------------------------------------------------------------------------- writer


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
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        if shard_format not in SHARD_FORMATS:
            raise ValueError(f"shard_format {shard_format!r} is not one of {SHARD_FORMATS}")
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
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
            raise ValueError(f"activation rows must be [N, d_in], got shape {tuple(batch.acts.shape)}")
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
            raise ValueError(f"activations have {batch.acts.shape[1]} features but the store holds {d_in}")
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
                np_dtype = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}[self.dtype]  # bf16: its bit pattern
                put("meta", f"{name}.meta.safetensors", *_safetensors_parts(meta, {"format": FORMAT}))
                put("acts", f"{name}.npy", *_npy_parts(acts, np_dtype))
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


# ----------------------------------------------------------------------------- reader


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
        return _read_checked(self.path / entry["file"], entry, shard["name"], verify)

    def read_shard(self, i: int, *, verify: bool = True, out: torch.Tensor | None = None) -> ActivationBatch:
        """Shard ``i`` as an :class:`ActivationBatch` (activations in the stored dtype).

        ``out`` (a contiguous ``[rows, d_in]`` tensor of the stored dtype) receives the
        activations without an extra copy. Raises :class:`CorruptShardError` naming the shard
        when its bytes are not the ones the manifest recorded.
        """
        shard = self._shard_entry(i)
        verify = verify and i not in self._verified
        files = shard["files"]
        rows, d_in = shard["rows"], self.manifest["d_in"] or 0
        if out is not None and (tuple(out.shape) != (rows, d_in) or out.dtype != self.dtype or not out.is_contiguous()):
            raise ValueError(f"out must be a contiguous {self.dtype} tensor of shape {(rows, d_in)}")
        dest = {"acts": out} if out is not None else None

        def open_file(kind: str) -> _TensorFile:
            return _TensorFile(self.path / files[kind]["file"], files[kind], shard["name"], verify)

        if self.manifest["shard_format"] == "safetensors":
            t = open_file("acts").safetensors(dest)
            acts = t.get("acts")
        else:
            t = open_file("meta").safetensors()
            acts = open_file("acts").npy(self.manifest["dtype"], out)
        if acts is None or tuple(acts.shape) != (rows, d_in) or any(t[k].shape[0] != rows for k in ("input_id", "position", "kind")):
            raise CorruptShardError(
                f"shard {shard['name']!r} of {self.path}: holds {None if acts is None else tuple(acts.shape)} "
                f"but the manifest says {rows} rows of {d_in}"
            )
        if verify:
            self._verified.add(i)
        return ActivationBatch(acts, t["input_id"], t["position"], t["kind"])

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
                    buf = _read_checked(self.path / entry["file"], entry, shard["name"], True)
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
        if sequential:
            shuffle = False
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if buffer_shards < 1:
            raise ValueError(f"buffer_shards must be >= 1, got {buffer_shards}")
        keep = None if kinds is None else torch.tensor([int(k) for k in TokenKind.parse(kinds)], dtype=torch.uint8)
        n_shards = self.num_shards
        if n_shards == 0 or len(self) == 0:
            raise StoreError(f"the store at {self.path} holds no rows")
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        def gen_of(key: int) -> torch.Generator:
            return torch.Generator().manual_seed(_mix_seed(seed, key))

        def schedule():  # (epoch, shard ids of a window), then (epoch, None) at the end of a pass
            epoch = 0
            while True:
                order = torch.randperm(n_shards, generator=gen_of(epoch)).tolist() if shuffle else list(range(n_shards))
                order = order[rank::world_size]
                for w in range(0, len(order), buffer_shards):
                    yield epoch, order[w : w + buffer_shards]
                yield epoch, None
                epoch += 1
                if not loop:
                    return

        sched, queue = schedule(), deque()

        def pop():
            return queue.popleft() if queue else next(sched, None)

        def peek_group():  # the next window, without consuming it
            for item in queue:
                if item[1] is not None:
                    return item[1]
            for item in sched:
                queue.append(item)
                if item[1] is not None:
                    return item[1]
            return None

        def load(group: list[int]) -> list[_MappedShard]:
            # a window's shards are mapped (MAP_POPULATE) in parallel threads, and checksummed in
            # parallel too where the CRC releases the GIL (zlib's does; ISA-L's is fast enough alone)
            return list(checker.map(lambda i: self._map_shard(i, verify), group))

        def cached(group: list[int]) -> list[_MappedShard] | None:
            # the window at once when every shard of it is mapped and checked already (no thread
            # to start or hand over to: a fresh generator's first fp16 batch 5.2 -> 2.7 ms, measured)
            shards = [self._cached_shard(i, verify) for i in group]
            return None if any(m is None for m in shards) else shards

        keep_np = None if keep is None else keep.numpy()
        carry: torch.Tensor | None = None  # < batch_size rows left from the previous window
        rows_this_pass = 0
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionsae-store-prefetch")
        checker = ThreadPoolExecutor(max_workers=min(buffer_shards, os.cpu_count() or 1), thread_name_prefix="visionsae-store-crc")
        pending = None
        try:
            while (item := pop()) is not None:
                epoch, group = item
                if group is None:  # a pass ended
                    if rows_this_pass == 0:
                        what = "rows" if kinds is None else f"rows of kinds {kinds!r}"
                        raise StoreError(f"no {what} for rank {rank} of {world_size} in the store at {self.path}")
                    rows_this_pass = 0
                    if not loop and carry is not None and not drop_last:
                        yield carry
                    if not loop or sequential:  # a sequential pass starts at its first row
                        carry = None
                    continue
                if pending is None:
                    shards = cached(group) or load(group)
                else:
                    shards = pending if isinstance(pending, list) else pending.result()
                nxt = peek_group()  # mapped and CRC-checked in the background while this one is served
                pending = None if nxt is None else (cached(nxt) or pool.submit(load, nxt))
                starts = np.cumsum([0] + [m.rows for m in shards])
                sel = None
                if keep_np is not None:
                    sel = np.concatenate([np.flatnonzero(np.isin(m.kind, keep_np)) + starts[j] for j, m in enumerate(shards)])
                count = int(starts[-1]) if sel is None else len(sel)
                rows_this_pass += count
                if count == 0:
                    continue
                if shuffle:
                    perm = torch.randperm(count, generator=gen_of(epoch * 1_000_003 + group[0] + 1)).numpy()
                    order = perm if sel is None else sel[perm]
                else:
                    order = np.arange(count) if sel is None else sel
                need = 0 if carry is None else batch_size - carry.shape[0]
                if shuffle:
                    order = _sort_within_batches(order, int(starts[-1]), need, batch_size)
                pos = 0
                if carry is not None:
                    carry = torch.cat([carry, _gather_mapped(shards, starts, order[:need], dtype)])
                    pos = min(need, count)
                    if carry.shape[0] == batch_size:
                        yield carry
                        carry = None
                while pos + batch_size <= count:
                    yield _gather_mapped(shards, starts, order[pos : pos + batch_size], dtype)
                    pos += batch_size
                if pos < count:
                    carry = _gather_mapped(shards, starts, order[pos:], dtype)
                del shards
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            checker.shutdown(wait=True, cancel_futures=True)

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

    def _map_shard_files(self, i: int, verify: bool) -> "_MappedShard":
        shard = self.manifest["shards"][i]
        files = shard["files"]
        maps = {}
        for kind, entry in files.items():
            if kind == "inputs":
                continue
            path = self.path / entry["file"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CorruptShardError(f"shard {shard['name']!r}: file {path} is missing") from None
            if size != entry["bytes"]:
                raise CorruptShardError(
                    f"shard {shard['name']!r}: {path.name} has {size} bytes but the manifest says {entry['bytes']}"
                )
            mm = _map_file(path) if size else np.zeros(0, np.uint8)
            if verify and f"{_crc32(mm) & 0xFFFFFFFF:08x}" != entry["crc32"]:
                raise CorruptShardError(
                    f"shard {shard['name']!r}: {path} does not match its CRC-32 checksum in the manifest (corrupted)"
                )
            maps[kind] = mm
        where = f"shard {shard['name']!r} of {self.path}"
        np_dtype = _NP_STORED[self.manifest["dtype"]]
        rows, d_in = shard["rows"], self.d_in
        if self.manifest["shard_format"] == "safetensors":
            views = _safetensors_views(maps["acts"], where)
            acts, kind = views.get("acts"), views.get("kind")
            acts = None if acts is None else acts.view(np_dtype)
        else:
            kind = _safetensors_views(maps["meta"], where).get("kind")
            acts = _npy_view(maps["acts"], np_dtype, where)
        if acts is None or kind is None or acts.shape != (rows, d_in) or kind.shape != (rows,):
            raise CorruptShardError(f"{where}: does not hold {rows} rows of {d_in} as the manifest says")
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


_NP_STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16 as its bit pattern
_NP_ST = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


@dataclass
class _MappedShard:
    rows: int
    acts: np.ndarray  # [rows, d_in] memory-mapped, stored dtype (bf16 as uint16)
    kind: np.ndarray  # [rows] uint8
    dtype: torch.dtype  # stored dtype
    table: torch.Tensor  # ``acts`` as a tensor, made once (bf16 as int16: index_select has no uint16 kernel)


def _safetensors_views(mm: np.ndarray, where: str) -> dict[str, np.ndarray]:
    try:
        n = int(mm[:8].view("<u8")[0])
        header = json.loads(mm[8 : 8 + n].tobytes())
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            s, e = info["data_offsets"]
            arr = mm[8 + n + s : 8 + n + e].view(_NP_ST[info["dtype"]])
            out[name] = arr.reshape(info["shape"])
        return out
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise CorruptShardError(f"{where}: not a readable safetensors file ({exc})") from None


def _npy_view(mm: np.ndarray, np_dtype, where: str) -> np.ndarray:
    import io

    try:
        f = io.BytesIO(mm[:65536].tobytes())
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _fortran, _ = read_header(f)
        off = f.tell()
        return mm[off:].view(np_dtype).reshape(shape)
    except Exception as exc:  # noqa: BLE001
        raise CorruptShardError(f"{where}: not a readable .npy file ({exc})") from None


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor view of a read-only (memory-mapped) array, only ever read from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the array is not writable
        return torch.from_numpy(arr)


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


def _gather_mapped(shards: list[_MappedShard], starts: np.ndarray, rows: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``rows`` (window indices, ascending: storage order reads faster, and the reader
    sorts each batch's rows once per window) of the mapped shards as a tensor of ``dtype``.

    One copy out of the page cache with torch's index_select (on an idle 2-core machine 2-4x
    numpy's take: 18-23 GB/s against 5-7)."""
    d = shards[0].acts.shape[1]
    shard_of = np.searchsorted(starts, rows, side="right") - 1
    out = np.empty((len(rows), d), dtype=shards[0].acts.dtype)
    bounds = np.searchsorted(shard_of, np.arange(len(shards) + 1))
    for j, m in enumerate(shards):
        a, b = bounds[j], bounds[j + 1]
        if b > a:
            local = rows[a:b] - starts[j]
            if local[-1] - local[0] == b - a - 1:  # a contiguous run (unshuffled reading): plain copy
                out[a:b] = m.acts[local[0] : local[-1] + 1]
            else:
                dst = torch.from_numpy(out[a:b].view(np.int16) if m.acts.dtype == np.uint16 else out[a:b])
                torch.index_select(m.table, 0, torch.from_numpy(local), out=dst)
    stored = shards[0].dtype
    if stored == torch.bfloat16:
        if dtype == torch.float32:  # bf16 is the top half of an fp32
            return torch.from_numpy((out.astype(np.uint32) << 16).view(np.float32))
        return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).to(dtype)
    if stored == torch.float16 and dtype == torch.float32:
        return torch.from_numpy(out.astype(np.float32))
    return torch.from_numpy(out).to(dtype)


def _mix_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest(), "little") >> 1

