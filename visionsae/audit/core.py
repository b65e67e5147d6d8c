"""Blindspot audit: each SAE concept's energy in real images against images generated from
the same captions (Bohacek et al. 2025, "Uncovering Conceptual Blindspots in Generative
Image Models Using Sparse Autoencoders").

For concept k, ``E_k`` is the mean over images of the sum over an image's tokens of the
code; ``delta_k = E_gen / (E_gen + E_real)`` is 0.5 when the generator draws the concept as
often and as strongly as the real images show it, near 0 when it suppresses it, near 1 when
it exaggerates it. Everything is streamed so memory stays flat in the number of images:

1. each image set goes through the backbone into an activation store (resumable: a stopped
   audit restarts where its extraction stopped);
2. an SAE (an RA-SAE trained on the real set unless one is given) encodes each shard's rows;
   per image the code is summed over tokens and folded into running sums, Poisson-bootstrap
   replicates (paired by caption: an image and the images generated from its caption draw the
   same weight), support counts and a running top-m of images per concept; nothing per image
   is kept in memory;
3. a small spatial descriptor of each image's backbone features and a small thumbnail of its
   pixels go to files beside the store; generated images far closer to one real image than to
   the others in either view are memorisation candidates, found by streaming the files in
   blocks (:mod:`visionsae.audit.memorisation`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..sae import SAEConfig, SparseAutoencoder
from ..store import ActivationStore, TokenKind
from ..errors import UsageError
from .memorisation import ThumbnailReader, descriptor, memorisation, write_vectors
from .ranking import concept_table, delta_correlations
from ..sae.io import atomic_write_bytes

# Poisson(1) CDF up to 12 (the rest of the mass, ~1e-10, goes to 12): bootstrap weights.
_POISSON_CDF = torch.tensor([sum(math.exp(-1) / math.factorial(j) for j in range(i + 1)) for i in range(12)],
                            dtype=torch.float64)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class AuditConfig:
    """How the audit measures, ranks and reports; every field is a ``visionsae audit`` flag."""

    t_low: float = 0.1
    """A concept with delta below this is flagged suppressed (the paper's threshold; flags do not change the ranking, which `visionsae eval audit` measured: lost classes at median rank 1)."""
    t_high: float = 0.9
    """A concept with delta above this is flagged exaggerated (the paper's; a class drawn 3x as often reaches only ~0.75, so read the ranking, not the flag)."""
    min_support: int = 5
    """Rank only concepts that fire in at least this many images (real and generated together)."""
    bootstrap: int = 200
    """Bootstrap replicates (Poisson weights over images, paired by caption) for each delta's interval."""
    confidence: float = 0.9
    """Coverage of the bootstrap interval of each delta."""
    top_images: int = 6
    """Images kept per concept and set (highest energy) for the report's example grids."""
    report_concepts: int = 8
    """Suppressed and exaggerated concepts shown with example grids and heatmaps in the report."""
    memorisation_ratio: float = 0.2
    """Flag a generated image as memorised when its feature distance (1 - cosine of centred descriptors) to the nearest real image is at most this fraction of its mean distance to the next real neighbours (the ratio test of Carlini et al. 2023: a copy is far closer to one real image than to the others)."""
    memorisation_neighbours: int = 10
    """How many next-nearest real images the memorisation ratio compares against."""
    descriptor_grid: int = 4
    """Side of the pooled patch grid of the memorisation descriptor (patch features average-pooled to at most this x this)."""
    pixel_side: int = 32
    """Side of the RGB thumbnail of the pixel view of memorisation (0: features only). Pooled features can lose a near-exact copy on a plain background: `visionsae eval audit` measured the zoo's sneaker copies at feature ratio 0.42, above any threshold free of false flags, and at pixel ratio 0.04."""
    pixel_ratio: float = 0.25
    """Flag a generated image as memorised when its pixel distance (Euclidean, thumbnails) to the nearest real image is at most this fraction of its mean distance to the next real neighbours (measured on the zoo, seed 0: faint-noise copies <= 0.04, noise of sigma 16/255 <= 0.31, JPEG quality 30 <= 0.28, blurred or shifted copies >= 0.5 (the feature view's job), plain draws >= 0.45)."""
    kinds: str = ""
    """Token kinds that count (e.g. ``patch``); empty: every token, as the paper sums over all of them."""
    batch_size: int = 32
    """Images per backbone forward pass."""
    shard_rows: int = 16384
    """Rows per store shard: the unit the audit streams (memory scales with it, not with the number of images)."""
    sae_latents: int = 256
    """Latents of the RA-SAE trained on the real set when no SAE is given (the size `visionsae eval audit` measured on 200 real images; more real images can carry more)."""
    sae_k: int = 8
    """Active latents per token of that SAE (TopK; measured with 256 latents)."""
    sae_samples: int = 400_000
    """Training rows of that SAE (the real set's tokens, repeated as needed)."""
    sae_batch: int = 2048
    """Rows per training step of that SAE (also the k-means sample of its candidates)."""
    seed: int = 0
    """Seed of the SAE, the bootstrap and the store reader."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if not 0 <= self.t_low < 0.5 < self.t_high <= 1:
            raise UsageError(f"thresholds must satisfy 0 <= t_low < 0.5 < t_high <= 1, got {self.t_low} and {self.t_high}")
        if not 0 < self.confidence < 1:
            raise UsageError(f"confidence must be in (0, 1), got {self.confidence}")
        for name in ("bootstrap", "top_images", "batch_size", "shard_rows", "descriptor_grid", "sae_latents", "sae_k",
                     "sae_batch", "sae_samples", "memorisation_neighbours"):
            if getattr(self, name) < 1:
                raise UsageError(f"AuditConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("memorisation_ratio", "pixel_ratio"):
            if not getattr(self, name) > 0:
                raise UsageError(f"AuditConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.pixel_side < 0:
            raise UsageError(f"AuditConfig.pixel_side must be >= 0 (0: no pixel view), got {self.pixel_side}")
        if self.kinds:
            TokenKind.parse(self.kinds)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ImageSet:
    """Images of one side of the audit.

    ``items`` are image paths (or PIL images); ``keys`` (optional, one per item) are caption /
    pair identifiers: images with the same key -- a real image and the images generated from its
    caption -- share their bootstrap weight. ``captions`` (optional) are shown in the report.
    ``groups`` (optional, e.g. a class name per image) get their own energy sums, to tell which
    group a concept lives in.
    """

    name: str
    items: list
    keys: list[str] | None = None
    captions: list[str] | None = None
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.items:
            raise UsageError(f"image set {self.name!r} is empty")
        for what in ("keys", "captions", "groups"):
            v = getattr(self, what)
            if v is not None and len(v) != len(self.items):
                raise UsageError(f"image set {self.name!r} has {len(self.items)} images but {len(v)} {what}")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"image set name {self.name!r} must be letters, digits, '-' or '_'")


# ----------------------------------------------------------------------------- helpers
def _key_hashes(keys: Sequence[str]) -> torch.Tensor:
    """Stable 63-bit integers of string keys (same key -> same bootstrap weights in any set)."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") >> 1 for k in keys],
                        dtype=torch.int64)


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic), as uniform doubles in [0, 1)."""
    x = x + (-7046029254386353131)  # 0x9E3779B97F4A7C15
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * (-4658895280553007687)  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * (-7723592293110705685)  # 0x94D049BB133111EB
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return ((x >> 11) & ((1 << 53) - 1)).double() / float(1 << 53)


def poisson_weights(key_hashes: torch.Tensor, replicates: int, seed: int) -> torch.Tensor:
    """Poisson(1) bootstrap weights ``[replicates, n]``: a pure function of (key, replicate, seed)."""
    b = torch.arange(replicates, dtype=torch.int64)[:, None]
    u = _splitmix(key_hashes[None, :] * 1_000_003 + b * 7_919 + int(seed) * 104_729)
    return torch.searchsorted(_POISSON_CDF, u).clamp_max(len(_POISSON_CDF) - 1).float()


def set_keys(image_set: ImageSet) -> list[str]:
    """Pair keys of a set: its own keys, or one key per image unique to the set."""
    return list(image_set.keys) if image_set.keys is not None else [f"{image_set.name}/{i}" for i in range(len(image_set.items))]


class SetStats:
    """Running sums over the images of one set (memory independent of the number of images)."""

    def __init__(self, n_latents: int, replicates: int, top_m: int, group_names: Sequence[str] = ()):
        self.n_images = 0
        self.group_names = list(group_names)
        self.group_sum = torch.zeros(len(group_names), n_latents, dtype=torch.float64)  # energy summed per group
        self.group_n = torch.zeros(len(group_names), dtype=torch.int64)
        self.energy_sum = torch.zeros(n_latents, dtype=torch.float64)  # sum over images of E_image
        self.fires = torch.zeros(n_latents, dtype=torch.int64)  # images where the concept fires
        self.boot_sum = torch.zeros(replicates, n_latents, dtype=torch.float64)
        self.boot_n = torch.zeros(replicates, dtype=torch.float64)
        self.top_energy = torch.full((n_latents, top_m), -1.0)
        self.top_ids = torch.full((n_latents, top_m), -1, dtype=torch.int64)

    def add(self, energy: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        """``energy [n, K]`` of images ``ids [n]`` with bootstrap ``weights [B, n]`` (and group indices [n])."""
        self.n_images += energy.shape[0]
        if groups is not None and self.group_names:
            self.group_sum.index_add_(0, groups, energy.double())
            self.group_n += torch.bincount(groups, minlength=len(self.group_names))
        self.energy_sum += energy.sum(0, dtype=torch.float64)
        self.fires += (energy > 0).sum(0)
        self.boot_sum += (weights.double() @ energy.double())
        self.boot_n += weights.sum(1, dtype=torch.float64)
        m = self.top_energy.shape[1]
        cat_e = torch.cat([self.top_energy, energy.T.float()], 1)
        cat_i = torch.cat([self.top_ids, ids[None, :].expand(energy.shape[1], -1)], 1)
        top = cat_e.topk(min(m, cat_e.shape[1]), dim=1)
        self.top_energy, self.top_ids = top.values, cat_i.gather(1, top.indices)

    @property
    def mean_energy(self) -> torch.Tensor:
        return self.energy_sum / max(1, self.n_images)

    def boot_mean(self) -> torch.Tensor:
        return self.boot_sum / self.boot_n.clamp_min(1)[:, None]


# ----------------------------------------------------------------------------- extraction
def inputs_fingerprint(items: Sequence) -> str:
    """A digest of an image list: each path with its size (in-memory images: their pixels), so a
    store is resumed only by the same inputs (another list is an error naming the store)."""
    h = hashlib.sha1()
    for it in items:
        if isinstance(it, (str, os.PathLike)):
            p = Path(it)
            h.update(f"{p}\0{p.stat().st_size if p.exists() else -1}\0".encode())
        else:
            h.update(it.tobytes() if hasattr(it, "tobytes") else repr(it).encode())
    return h.hexdigest()


def extract_set(source, image_set: ImageSet, store_dir: Path, cfg: AuditConfig) -> ActivationStore:
    """The set's activations in a store at ``store_dir`` (resumes a stopped extraction)."""
    from ..sources.extract import extract

    described = {**source.describe(), "audit_set": image_set.name, "inputs_sha1": inputs_fingerprint(image_set.items)}
    extract(source, image_set.items, store_dir, batch_size=cfg.batch_size, shard_rows=cfg.shard_rows,
            progress=cfg.progress, description=described)
    return ActivationStore.open(store_dir)


def train_audit_sae(store: ActivationStore, out_dir: Path, cfg: AuditConfig, dictionary: str = "archetypal") -> SparseAutoencoder:
    """An RA-SAE (archetypal TopK) trained on the real set's tokens; reused when already there.
    (``dictionary="linear"`` trains the plain TopK SAE of the same size, for comparisons.)"""
    from ..train import Trainer
    from ..train.config import TrainConfig, original_defaults

    sae_cfg = SAEConfig(d_in=store.d_in, n_latents=cfg.sae_latents, k=cfg.sae_k, dictionary=dictionary,
                        hook=store.hook, model=str(store.source.get("model")),
                        extra={"audit": "trained on the real set", "kinds": cfg.kinds or "all",
                               "inputs_sha1": store.source.get("inputs_sha1")})
    final = out_dir / "sae"
    if (final / "cfg.json").exists():
        sae = SparseAutoencoder.from_pretrained(final)
        if sae.cfg.to_dict() == sae_cfg.to_dict():
            return sae
    kinds = cfg.kinds or None
    rows = store.batches(cfg.sae_batch, seed=cfg.seed, shuffle=True, loop=True, kinds=kinds, drop_last=True)
    train = TrainConfig(out_dir=str(out_dir), total_samples=cfg.sae_samples, seed=cfg.seed, progress=cfg.progress,
                        checkpoint_every=0, log_every=50, resume=True,
                        **original_defaults(sae_cfg.n_latents, cfg.sae_samples))  # the settings the audit's figures were measured with
    return Trainer(sae_cfg, train).fit(rows)


# ----------------------------------------------------------------------------- streaming pass
def _image_rows(batch):
    """Per input id of a shard: (start, stop) of its rows (rows of one input are contiguous)."""
    ids = batch.input_id
    change = torch.nonzero(ids[1:] != ids[:-1]).squeeze(1) + 1
    starts = torch.cat([torch.tensor([0]), change])
    stops = torch.cat([change, torch.tensor([len(ids)])])
    return ids[starts], starts, stops


def shard_energies(store: ActivationStore, sae: SparseAutoencoder, cfg: AuditConfig):
    """Yield, shard by shard, ``(batch, records, ids [n], starts [n], stops [n], energy [n, K])``:
    each image's code summed over its tokens (the kinds of ``cfg.kinds``)."""
    keep = None if not cfg.kinds else torch.tensor([int(k) for k in TokenKind.parse(cfg.kinds)], dtype=torch.uint8)
    with torch.no_grad():
        for s in range(store.num_shards):
            batch = store.read_shard(s)
            records = {r["input_id"]: r for r in store.records(s)}
            ids, starts, stops = _image_rows(batch)
            rows = batch.acts.float()
            mask = torch.isin(batch.kind, keep) if keep is not None else torch.ones(len(rows), dtype=torch.bool)
            local = torch.repeat_interleave(torch.arange(len(ids)), stops - starts)
            energy = torch.zeros(len(ids), sae.n_latents)
            chunk = 8192
            for c in range(0, len(rows), chunk):
                m = mask[c : c + chunk]
                if not bool(m.any()):
                    continue
                code = sae.encode(rows[c : c + chunk][m])
                values = code.values.clamp_min(0)  # energies of non-negative codes (TopK); AbsTopK's sign ignored
                owner = local[c : c + chunk][m][:, None].expand_as(code.indices)
                energy.index_put_((owner.reshape(-1), code.indices.reshape(-1)), values.reshape(-1).float(), accumulate=True)
            yield batch, records, ids, starts, stops, energy


def stream_set(store: ActivationStore, sae: SparseAutoencoder, image_set: ImageSet, cfg: AuditConfig,
               stores_dir: Path, load) -> tuple[SetStats, dict]:
    """One pass over a set's store: concept statistics, and the two views of memorisation
    (``stores_dir/<name>.descriptors`` and, with ``cfg.pixel_side``, ``.thumbnails`` of the images
    ``load`` opens; see :mod:`visionsae.audit.memorisation`)."""
    keys = set_keys(image_set)
    hashes = _key_hashes(keys)
    group_names = sorted(set(image_set.groups)) if image_set.groups is not None else []
    group_of = torch.tensor([group_names.index(g) for g in image_set.groups]) if image_set.groups is not None else None
    stats = SetStats(sae.n_latents, cfg.bootstrap, cfg.top_images, group_names)
    desc_dim = None
    desc_sum = None
    n_desc = 0
    files = {"descriptors": stores_dir / f"{image_set.name}.descriptors"}
    if cfg.pixel_side:
        files["thumbnails"] = stores_dir / f"{image_set.name}.thumbnails"
    tmp = {k: f.with_name(f.name + ".tmp") for k, f in files.items()}
    bar = tqdm(total=len(image_set.items), desc=f"audit {image_set.name}", unit="img", disable=not cfg.progress)
    handles = {k: open(t, "wb") for k, t in tmp.items()}
    thumbs = ThumbnailReader(image_set.items, load, cfg.pixel_side) if cfg.pixel_side else None
    try:
        for batch, records, ids, starts, stops, energy in shard_energies(store, sae, cfg):
            stats.add(energy, ids, poisson_weights(hashes[ids], cfg.bootstrap, cfg.seed),
                      group_of[ids] if group_of is not None else None)
            descs = torch.stack([
                descriptor(batch.acts[a:b], batch.kind[a:b], batch.position[a:b], records.get(int(i), {}), cfg.descriptor_grid)
                for i, a, b in zip(ids.tolist(), starts.tolist(), stops.tolist())
            ])
            if desc_dim is None:
                desc_dim, desc_sum = descs.shape[1], torch.zeros(descs.shape[1], dtype=torch.float64)
            desc_sum += descs.sum(0, dtype=torch.float64)
            n_desc += len(descs)
            write_vectors(handles["descriptors"], ids, descs)
            if thumbs is not None:
                write_vectors(handles["thumbnails"], ids, thumbs.take(ids.tolist()))
            bar.update(len(ids))
    finally:
        if thumbs is not None:
            thumbs.close()
        for h in handles.values():
            h.close()
        bar.close()
    for k, f in files.items():
        os.replace(tmp[k], f)
    meta = {"dim": int(desc_dim or 0), "count": n_desc,
            "mean": (desc_sum / max(1, n_desc)).float().tolist() if desc_sum is not None else []}
    return stats, meta


# ----------------------------------------------------------------------------- the audit
@dataclass
class AuditResult:
    """What :func:`run_audit` measured; ``to_json`` is the report's JSON."""

    config: dict
    sets: dict[str, dict]  # name -> {"images", "store"}
    concepts: dict[str, dict]  # generator name -> concept_table
    memorisation: dict[str, dict]  # generator name -> memorisation()
    correlations: dict[str, dict]
    top_images: dict[str, dict] = field(default_factory=dict)  # set name -> {"energy", "ids"} [K, m]
    groups: dict[str, dict] = field(default_factory=dict)  # set name -> {group: mean energy per concept [K]}
    sae: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def run_audit(source, real: ImageSet, generated: Sequence[ImageSet], out_dir: str | os.PathLike,
              sae: SparseAutoencoder | str | os.PathLike | None = None, cfg: AuditConfig = AuditConfig()) -> AuditResult:
    """Audit ``generated`` sets against ``real`` through ``source`` (an :class:`ImageSource`).

    Stores, descriptors, the trained SAE (when none is given) and ``audit.json`` go to
    ``out_dir``; rerunning with the same inputs resumes the extraction and reuses the SAE.
    """
    if not generated:
        raise UsageError("the audit needs at least one generated image set")
    names = [real.name] + [g.name for g in generated]
    if len(set(names)) != len(names):
        raise UsageError(f"image set names must differ, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    stores = {s.name: extract_set(source, s, out / "stores" / s.name, cfg) for s in [real, *generated]}
    if sae is None:
        sae = train_audit_sae(stores[real.name], out / "sae-train", cfg)
    elif not isinstance(sae, SparseAutoencoder):
        sae = SparseAutoencoder.from_pretrained(sae)
    sae = sae.eval()
    if sae.d_in != stores[real.name].d_in:
        raise UsageError(f"the SAE reads {sae.d_in} features but the backbone's hook {source.hook!r} gives {stores[real.name].d_in}")
    stats, metas = {}, {}
    for s in [real, *generated]:
        stats[s.name], metas[s.name] = stream_set(stores[s.name], sae, s, cfg, out / "stores", source.load)
    mean = torch.tensor(metas[real.name]["mean"])
    concepts = {g.name: concept_table(stats[real.name], stats[g.name], cfg) for g in generated}
    mem = {g.name: memorisation(out / "stores", real.name, g.name, metas[real.name]["dim"], mean, cfg) for g in generated}
    result = AuditResult(
        config=cfg.to_dict(),
        sets={s.name: {"images": len(s.items), "store": str(out / "stores" / s.name), "role": "real" if s is real else "generated"}
              for s in [real, *generated]},
        concepts=concepts,
        memorisation=mem,
        correlations=delta_correlations(concepts),
        top_images={n: {"energy": st.top_energy.tolist(), "ids": st.top_ids.tolist()} for n, st in stats.items()},
        groups={n: {g: (st.group_sum[i] / max(1, int(st.group_n[i]))).tolist() for i, g in enumerate(st.group_names)}
                for n, st in stats.items() if st.group_names},
        sae={"n_latents": sae.n_latents, "k": sae.cfg.k, "dictionary": sae.cfg.dictionary, "hook": sae.cfg.hook},
    )
    atomic_write_bytes(out / "audit.json", json.dumps(result.to_json()).encode())
    return result
