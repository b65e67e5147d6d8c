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

The package: :mod:`.format` (names, row types, errors, the shard files' bytes), :mod:`.writer`
(:class:`ShardWriter`, rank manifests), :mod:`.reader` (:class:`ActivationStore`, the shard
reader), :mod:`.schedule` (the reading order), :mod:`.prefetch` (windows mapped ahead) and
:mod:`.gather` (batches cut out of mapped windows).
"""

from .format import (DTYPES, FORMAT, FORMAT_VERSION, MANIFEST, SHARD_FORMATS, ActivationBatch, CorruptShardError,
                     StoreError, TokenKind)
from .format import _crc32  # noqa: F401  (the tests check this one and the next, by these names)
from .reader import ActivationStore
from .schedule import _sort_within_batches  # noqa: F401
from .writer import ShardWriter, input_range, merge_rank_manifests

__all__ = [
    "DTYPES", "FORMAT", "FORMAT_VERSION", "MANIFEST", "SHARD_FORMATS", "ActivationBatch", "ActivationStore",
    "CorruptShardError", "ShardWriter", "StoreError", "TokenKind", "input_range", "merge_rank_manifests",
]
