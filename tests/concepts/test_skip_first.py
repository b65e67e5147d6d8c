"""A concept score leaves the first token out only where the tokenizer puts a special token there
(CLIP's start token, BERT's [CLS]); T5 starts with the prompt's first word, which must count."""

import torch

from visionsae.concepts import ConceptClassifier, ConceptSet
from visionsae.concepts.conceptset import starts_with_special
from visionsae.sae import SAEConfig, SparseAutoencoder
from visionsae.zoo.t2i import load_minilm_tokenizer


def test_bert_starts_with_a_special_token():
    assert starts_with_special(load_minilm_tokenizer())


def test_a_t5_tokenizer_does_not(t5_tok):
    assert not starts_with_special(t5_tok)


def test_the_classifier_reads_the_first_token_when_the_set_says_so(tmp_path):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, n_latents=16, k=2)).eval()
    h = torch.zeros(1, 3, 8)
    h[0, 0] = sae.W_dec[5] * 10  # only the first token carries latent 5
    from visionsae.concepts.conceptset import Concept, sae_fingerprint

    concept = Concept("c", [5], [1.0], 0.5, {}, {}, weights=[1.0], bias=0.0)
    for skip in (True, False):
        cs = ConceptSet("h", sae_fingerprint(sae), 16, {"c": concept}, "linear", skip)
        cs = ConceptSet.load(cs.save(tmp_path / f"{skip}.json"))
        assert cs.skip_first is skip
        _, flagged = ConceptClassifier(sae, cs).classify(h)
        assert bool(flagged[0, 0]) is (not skip)
