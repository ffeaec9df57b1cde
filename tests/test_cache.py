import pytest
import torch

from var_engine.cache import KVCache, analytic_kv_bytes


def make(batch=3, caps=(10, 10, 4), halves=2):
    return KVCache(batch=batch, num_heads=2, head_dim=4, capacities=caps, cfg_factor=halves)


def test_nbytes_is_exact_and_matches_analytic():
    cache = make()
    expected = 2 * (3 * 2) * 2 * 4 * 4 * (10 + 10 + 4)  # k,v * rows * heads * head_dim * fp32 * tokens
    assert cache.nbytes() == expected == analytic_kv_bytes(batch=3, embed_dim=8, capacities=[10, 10, 4])
    assert cache.peak_bytes == expected


def test_write_returns_prefix_views_without_reallocation():
    cache = make()
    ptr = cache.k[0].data_ptr()
    k1, v1 = torch.randn(6, 2, 1, 4), torch.randn(6, 2, 1, 4)
    k2, v2 = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 4, 4)
    cache.write(0, 0, k1, v1)
    k, v = cache.write(0, 1, k2, v2)
    assert k.shape == (6, 2, 5, 4) and cache.k[0].data_ptr() == ptr
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))
    with pytest.raises(RuntimeError, match="capacity"):
        cache.write(2, 2, k2, v2)  # layer 2 holds 4 tokens only


def test_reindex_gathers_both_cfg_halves_and_shrinks_batch():
    cache = make(batch=3)
    k = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 2, 4).contiguous()
    cache.write(0, 0, k, k)
    cache.reindex(torch.tensor([2, 2]))
    assert cache.batch == 2 and cache.rows == 4
    got = cache.k[0][:4, 0, 0, 0].tolist()
    assert got == [2.0, 2.0, 5.0, 5.0]  # cond rows 2,2 then their unconditional twins 3+2


def test_reindex_identity_changes_nothing():
    cache = make(batch=3)
    k = torch.randn(6, 2, 3, 4)
    cache.write(1, 0, k, k)
    before = cache.k[1][:, :, :3].clone()
    cache.reindex(torch.arange(3))
    assert torch.equal(cache.k[1][:, :, :3], before)


def test_reindex_rejects_bad_indices():
    cache = make(batch=2)
    with pytest.raises(IndexError):
        cache.reindex(torch.tensor([0, 2]))
    with pytest.raises(ValueError):
        cache.reindex(torch.tensor([0, 1, 1]))  # more samples than allocated


def test_release_frees_layers():
    cache = make()
    full = cache.nbytes()
    cache.release([0])
    assert cache.k[0] is None and cache.nbytes() == full * 14 // 24
    assert cache.peak_bytes == full
    with pytest.raises(RuntimeError):
        cache.write(0, 0, torch.zeros(6, 2, 1, 4), torch.zeros(6, 2, 1, 4))
