"""The ItD edit's memory: a 2^19-latent SAE on 77 tokens never holds the dense
[tokens x latents] pre-activations (154 MB); the probe that reports it can tell. On a T5's
long sequence (Flux: 512 tokens) the edit stays as small."""

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


def test_edit_of_a_t5_length_prompt_stays_sparse():
    """Flux's 512 T5 tokens through a 2^17-latent SAE: the dense pre-activations would be 256 MB;
    the edit's largest allocation stays at the 16 MB chunk, its peak rise far below the matrix
    (benchmarks/erasure_memory.py measures 2^19 latents at 77, 256 and 512 tokens)."""
    long = sae_memory_probe(n_latents=1 << 17, tokens=512)
    assert long["dense_pre_acts_mb"] == 256.0
    assert long["largest_allocation_mb"] <= 16.5, long
    assert long["peak_extra_mb"] < 0.25 * long["dense_pre_acts_mb"], long
