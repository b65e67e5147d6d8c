"""The ItD edit's memory: a 2^19-latent SAE on 77 tokens never holds the dense
[tokens x latents] pre-activations (154 MB); the probe that reports it can tell."""

from visionsae.eval.erasure import sae_memory_probe


def test_sparse_edit_stays_far_below_the_dense_matrix_and_the_probe_sees_the_dense_one():
    sparse = sae_memory_probe()
    assert sparse["dense_pre_acts_mb"] == 154.0
    assert sparse["largest_allocation_mb"] <= 16.5, sparse
    assert sparse["peak_extra_mb"] < 0.4 * sparse["dense_pre_acts_mb"], sparse
    # the same probe on one unchunked encode sees the whole matrix: it is not blind
    dense = sae_memory_probe(chunk_elements=1 << 40)
    assert dense["largest_allocation_mb"] >= 150, dense
    assert dense["peak_extra_mb"] >= 150, dense
