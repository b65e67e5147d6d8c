"""Training state on disk without pickle: the zoo's training scripts resume from these.

``save_state(path, state)`` writes a nested structure of dicts, lists, tuples, tensors and
JSON scalars (a model's ``state_dict()``, an optimizer's ``state_dict()``, RNG states, the
step) as one safetensors file: every tensor is stored under its path in the tree
(``"/optimizer/state/3/exp_avg"``) and the rest of the tree, with a placeholder where a
tensor was, is JSON in the file's metadata. ``load_state(path)`` rebuilds the structure.
The file is written under a temporary name and renamed, so a killed run leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from ..errors import UsageError

_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"  # optimizer states are keyed by int parameter indices
_TUPLE = "__tuple__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        if not int_keys and not all(isinstance(k, str) for k in obj):
            raise TypeError(f"state at {prefix or '/'} has keys that are neither all str nor all int")
        node = {str(k): _flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {_INT_KEYS: node} if int_keys else node
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix or '/'} in a checkpoint")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if _TENSOR in node:
            return tensors[node[_TENSOR]]
        if _INT_KEYS in node:
            return {int(k): _unflatten(v, tensors) for k, v in node[_INT_KEYS].items()}
        if _TUPLE in node:
            return tuple(_unflatten(v, tensors) for v in node[_TUPLE])
        return {k: _unflatten(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    return node


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to the safetensors file ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    # safetensors refuses tensors that share memory; checkpoints are small, so copy.
    tensors = {k: v.clone() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"tree": json.dumps(tree)})
    os.replace(tmp, path)


def load_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state saved at ``path`` by :func:`save_state`, or None when there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if "tree" not in metadata:
            raise UsageError(f"{path} is not a visionsae training checkpoint (no 'tree' metadata)")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return _unflatten(json.loads(metadata["tree"]), tensors)


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed torch / numpy / random and fix the thread count (results depend on it on CPU)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
