"""What the drop-in classes share: an SAE or concept set given as an object or a path, and the
folder of SAEs, concept sets and settings that their ``save_pretrained`` writes beside the model.

The folder (``itd/`` of a saved pipeline, ``sauce/`` of a saved LLaVA) holds one
``<key>/`` SAE folder (cfg.json + sae.safetensors) and one ``<key>.json`` concept set per
part, and a manifest ``<name>.json`` naming them with the settings that rebuild the edits.
It is written in a temporary folder and swapped in, so a crash leaves the old folder or the
new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from visionsae.concepts import ConceptSet
from visionsae.sae import SparseAutoencoder
from visionsae.sae.io import atomic_write_bytes
from visionsae.errors import UsageError

PARTS_VERSION = 1


def as_sae(sae: SparseAutoencoder | str | os.PathLike) -> SparseAutoencoder:
    """``sae`` itself, or the SAE saved at that path (or Hugging Face repo id)."""
    return sae if isinstance(sae, SparseAutoencoder) else SparseAutoencoder.from_pretrained(sae)


def as_concepts(concepts: ConceptSet | str | os.PathLike) -> ConceptSet:
    """``concepts`` itself, or the concept set saved at that path."""
    return concepts if isinstance(concepts, ConceptSet) else ConceptSet.load(concepts)


def write_parts(folder: str | os.PathLike, manifest: dict[str, Any], saes: dict[str, SparseAutoencoder],
                concept_sets: dict[str, ConceptSet]) -> Path:
    """Write ``folder`` (replacing it): each SAE under ``folder/<key>/``, each concept set as
    ``folder/<key>.json``, and ``manifest`` as ``folder/<folder name>.json``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for key, sae in saes.items():
            sae.save_pretrained(tmp / key, fold_input_scale=False)  # as it is: the edits reload bit for bit
        for key, cs in concept_sets.items():
            cs.save(tmp / f"{key}.json")
        atomic_write_bytes(tmp / f"{folder.name}.json",
                           json.dumps({"format_version": PARTS_VERSION, **manifest}, indent=2).encode())
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def remove_parts(folder: str | os.PathLike) -> None:
    """Remove a parts folder left by an earlier save (only one that holds its manifest)."""
    folder = Path(folder)
    if (folder / f"{folder.name}.json").is_file():
        shutil.rmtree(folder)


def read_parts(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None where the folder does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return None
    file = folder / f"{folder.name}.json"
    if not file.is_file():
        raise UsageError(f"{folder} has no {file.name}: it was not written by save_pretrained, or only in part")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file} is not valid JSON: {exc}") from exc
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > PARTS_VERSION:
        raise UsageError(f"{file} has format_version {version!r}; this visionsae reads up to {PARTS_VERSION}")
    return manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
