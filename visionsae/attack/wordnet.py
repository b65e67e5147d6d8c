"""WordNet for nlpaug's synonym augmenter, offline.

nlpaug's ``SynonymAug(aug_src="wordnet")`` reads WordNet through NLTK (``nltk.corpus.wordnet``)
and tags parts of speech with ``nltk.pos_tag``; both download their data on first use, which
cannot happen here. What works offline:

* the WordNet 3.0 database of Debian's ``wordnet-base`` (``/usr/share/wordnet``). NLTK reads
  only files inside its data folders (it refuses symlinks out of them), and wants two files
  Debian leaves out: ``lexnames`` (the 45 lexicographer file names of WordNet 3.0, as the
  ``lexnames(5WN)`` manual page lists them: :data:`LEXNAMES`) and ``index.sense`` (sense keys; left
  empty, synonyms do not use it). So the database is copied once into a cache folder
  (``$VISIONSAE_NLTK_DATA``, default ``~/.cache/visionsae/nltk_data``) with those two files;
* no part-of-speech tagger: every word is looked up under all its parts of speech (nlpaug
  does this itself for a tag it does not know).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from ..errors import InputNotFoundError

WORDNET_DIR = Path("/usr/share/wordnet")
# WordNet 3.0's lexicographer files in file-number order (lexnames(5WN))
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def data_dir() -> Path:
    return Path(os.environ.get("VISIONSAE_NLTK_DATA", Path.home() / ".cache" / "visionsae" / "nltk_data"))


def _lexnames() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def ensure_wordnet() -> Path:
    """The NLTK data folder holding ``corpora/wordnet`` (made from Debian's WordNet on first
    use), put first on ``nltk.data.path``."""
    import nltk

    root = data_dir()
    corpus = root / "corpora" / "wordnet"
    if not (corpus / "lexnames").exists():
        if not WORDNET_DIR.is_dir():
            raise InputNotFoundError(f"{WORDNET_DIR} not found: the synonym attack needs Debian's wordnet-base "
                                    "(apt-get install wordnet-base; make test installs it)")
        tmp = corpus.with_name(f"wordnet.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in WORDNET_DIR.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        (tmp / "index.sense").write_text("")
        (tmp / "lexnames").write_text(_lexnames())
        shutil.rmtree(corpus, ignore_errors=True)
        tmp.rename(corpus)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def synonym_augmenter(stopwords=(), aug_max: int = 1):
    """nlpaug's WordNet ``SynonymAug`` working offline (see the module docstring)."""
    ensure_wordnet()
    import nlpaug.augmenter.word as naw

    aug = naw.SynonymAug(aug_src="wordnet", aug_min=1, aug_max=aug_max, stopwords=list(stopwords))
    aug.model.pos_tag = lambda tokens: [(t, "") for t in tokens]  # no tagger offline: every part of speech
    return aug
