"""The store's on-disk format: names, row types, errors, checksums, and the shard files'
bytes (safetensors and ``.npy``) in both directions: serialised for writing, parsed as views
of a memory-mapped file for reading."""

from __future__ import annotations

import enum
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import UsageError

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


def _crc_hex(crc: int) -> str:
    """A CRC-32 value as the manifest writes it: 8 hex digits."""
    return f"{crc & 0xFFFFFFFF:08x}"


# ----------------------------------------------------------------------------- writing

_ST_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}
_NPY_DESCR = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}  # bf16: its bit pattern


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy())


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
    shape = (sum(b.shape[0] for b in blocks), *blocks[0].shape[1:])
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": np_dtype, "fortran_order": False, "shape": shape})
    return f.getvalue(), blocks


# ----------------------------------------------------------------------------- reading

_NP_STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16 as its bit pattern
_NP_ST = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def _safetensors_views(mm: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (``mm``: its bytes, uint8) as numpy views of it."""
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
    """The array of a ``.npy`` file (``mm``: its bytes, uint8) as a view of ``np_dtype``."""
    try:
        f = io.BytesIO(mm[:65536].tobytes())
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _fortran, _ = read_header(f)
        off = f.tell()
        return mm[off:].view(np_dtype).reshape(shape)
    except Exception as exc:  # noqa: BLE001
        raise CorruptShardError(f"{where}: not a readable .npy file ({exc})") from None
