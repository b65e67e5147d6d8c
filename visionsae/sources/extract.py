"""Run a source over a list of inputs into an activation store (resumable, multi-process)."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from visionsae.sources.base import ActivationSource
from visionsae.store import MANIFEST, ShardWriter, merge_rank_manifests


def _dist() -> tuple[int, int, Any]:
    """(rank, world_size, accelerate state or None) of this process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # cpu=True lets accelerate run several CPU processes (gloo) under torchrun / accelerate launch
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != int(os.environ["WORLD_SIZE"]):  # launched in a way accelerate does not join
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]), None
    return state.process_index, state.num_processes, state


class _InlineExecutor:
    """The executor interface, running each call at once in the calling thread."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through result()
            done.set_exception(exc)
        return done


def _one_torch_thread() -> None:
    """The prepare thread's own tensor work (to-tensor, normalise, stack) runs on one thread:
    torch's thread count is per thread, and a second parallel team would compete with the
    model's for the same cores."""
    import torch

    torch.set_num_threads(1)


def extract(
    source: ActivationSource,
    inputs: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    dtype: str = "float32",
    shard_format: str = "safetensors",
    shard_rows: int = 65536,
    overwrite: bool = False,
    description: dict | None = None,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict:
    """Extract the activations of ``inputs`` into the store at ``out_dir`` and return its manifest.

    A run stopped in any way (killed, crashed) resumes where it stopped when called again with
    the same source, inputs and options: shards already written are kept, the rest are made.
    Each shard records a fingerprint of the inputs it covers (:func:`inputs_fingerprint`), and a
    resume whose inputs differ from those already extracted (a prompt file edited in place) is
    refused.
    Under ``accelerate launch`` (or with ``rank`` / ``world_size``), each process extracts a
    contiguous block of the inputs into its own shards; the last to finish merges the manifests
    (rank 0 after a barrier under accelerate).

    Parameters
    ----------
    source:
        Any :class:`~visionsae.sources.base.ActivationSource`.
    inputs:
        What the source takes: prompts, image paths, ``{"image", "question"}`` records, tensors.
    out_dir:
        The store directory.
    batch_size:
        Inputs per forward pass. A resumed run must use the same batch size to give the same
        shards (the rows are the same either way).
    dtype, shard_format, shard_rows, overwrite:
        As :class:`~visionsae.store.ShardWriter`.
    description:
        What the manifest records as the source (default ``source.describe()``); a resumed run
        must describe the same.
    progress:
        Show a progress bar (tqdm) over the inputs.
    """
    from tqdm.auto import tqdm

    from visionsae.memory import keep_freed_memory

    keep_freed_memory()  # else the model's intermediates are page-faulted in again every batch
    state = None
    if rank is None or world_size is None:
        rank, world_size, state = _dist()
    described = dict(description if description is not None else source.describe())
    described.setdefault("input_type", source.input_type)
    writer = ShardWriter(
        out_dir, source=described, hook=source.hook, num_inputs=len(inputs), dtype=dtype,
        shard_format=shard_format, shard_rows=shard_rows, rank=rank, world_size=world_size,
        overwrite=overwrite, extra={"input_type": source.input_type, "batch_size": batch_size},
        inputs_fingerprint=lambda a, b: inputs_fingerprint(inputs[a:b], files=source.input_type != "text"),
    )
    start, end = writer.next_input, writer.input_end
    bar = tqdm(total=end - writer.input_start, initial=start - writer.input_start, unit="input",
               desc=f"extract {source.hook}" + (f" [rank {rank}]" if world_size > 1 else ""),
               disable=not progress, dynamic_ncols=True)
    with bar:
        _run_batches(source, inputs, writer, start, end, batch_size, bar)
    manifest = writer.close()
    if world_size > 1:
        manifest = _merged(out_dir, rank, world_size, state, manifest)
    return manifest


def _run_batches(source: ActivationSource, inputs: Sequence[Any], writer: ShardWriter, start: int, end: int,
                 batch_size: int, bar) -> None:
    """Inputs ``start`` .. ``end`` through the source into the writer, a batch at a time. The next
    batch is prepared (decoded) in a thread while the model runs this one, where the source says
    that pays (ActivationSource.prepare_in_thread)."""
    starts = list(range(start, end, batch_size))
    pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionsae-prepare", initializer=_one_torch_thread)
            if source.prepare_in_thread else _InlineExecutor())
    with pool:
        def submit(i: int):
            return pool.submit(source.prepare, inputs[i : min(i + batch_size, end)], i)

        pending = submit(starts[0]) if starts else None
        for n, i in enumerate(starts):
            prepared = pending.result()
            pending = submit(starts[n + 1]) if n + 1 < len(starts) else None
            j = min(i + batch_size, end)
            writer.add(source.run(prepared), j)
            bar.update(j - i)


def _merged(out_dir, rank: int, world_size: int, state, manifest: dict) -> dict:
    """The merged manifest of all ranks' shards: under accelerate rank 0 merges after a barrier;
    otherwise the last rank to finish does (the others return their own)."""
    if state is not None:
        state.wait_for_everyone()
        if rank == 0:
            merge_rank_manifests(out_dir, world_size)
        state.wait_for_everyone()
        return json.loads((Path(out_dir) / MANIFEST).read_text())
    try:
        return merge_rank_manifests(out_dir, world_size)
    except ValueError:
        return manifest  # other ranks are still running; the last one merges


def inputs_fingerprint(inputs: Sequence[Any], files: bool = True) -> str:
    """SHA-256 of the inputs' content, in order: prompt text, records (as canonical JSON),
    tensor bytes, images' pixels. With ``files``, a string naming a file (an image path) is
    fingerprinted by its path, size and modification time (reading every image again on each
    resume would cost as much as a pass of the extraction)."""
    import hashlib

    h = hashlib.sha256()
    for item in inputs:
        h.update(_input_bytes(item, files))
        h.update(b"\x00")
    return h.hexdigest()


def _input_bytes(item: Any, files: bool = True) -> bytes:
    if isinstance(item, os.PathLike) or (files and isinstance(item, str) and _is_file(item)):
        st = os.stat(item)
        return f"file:{os.fspath(item)}:{st.st_size}:{st.st_mtime_ns}".encode("utf-8", "surrogatepass")
    if isinstance(item, str):
        return b"text:" + item.encode("utf-8", "surrogatepass")
    if isinstance(item, dict):
        stats = {k: _input_bytes(v).decode("utf-8", "surrogatepass") for k, v in item.items()
                 if files and isinstance(v, (str, os.PathLike)) and _is_file(v)}
        return b"record:" + json.dumps([item, stats], sort_keys=True, default=repr).encode("utf-8", "surrogatepass")
    try:
        import torch

        if isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            return f"tensor:{t.dtype}:{tuple(t.shape)}:".encode() + t.view(-1).view(torch.uint8).numpy().tobytes()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if hasattr(item, "tobytes"):  # PIL images, numpy arrays
        head = f"{type(item).__name__}:{getattr(item, 'mode', '')}:{getattr(item, 'size', '')}:{getattr(item, 'shape', '')}:"
        return head.encode() + item.tobytes()
    return b"repr:" + repr(item).encode("utf-8", "surrogatepass")


def _is_file(value: Any) -> bool:
    try:
        return os.path.isfile(value)
    except (OSError, ValueError, TypeError):
        return False
