"""Sampler invariants on a small random model."""
import pytest
import torch

from var_engine.sampling import sample, top_k_top_p_
from var_engine.config import SamplingConfig


def test_cached_steps_equal_teacher_forced_forward(tiny_pipeline):
    pipe = tiny_pipeline
    seen = []

    class Record:  # with cfg 0 and no filtering, hooks see the raw cached-step logits
        def after_scale(self, step):
            seen.append(step.logits_BlV.clone())

    out = pipe.generate([0, 3, 4], seed=1, cfg=0.0, top_k=0, top_p=0.0, hooks=[Record()])
    logits_tf = pipe.transformer(out.labels, pipe.tokenizer.teacher_input(out.tokens))
    cached = torch.cat(seen, dim=1)
    assert (cached - logits_tf).abs().max() < 1e-4  # float32, different op order


def test_hook_identity_reindex_changes_nothing(tiny_pipeline):
    class Identity:
        def after_scale(self, step):
            return torch.arange(step.idx_Bl.shape[0])

    a = tiny_pipeline.generate([1, 2], seed=3, cfg=2.0)
    b = tiny_pipeline.generate([1, 2], seed=3, cfg=2.0, hooks=[Identity()])
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)


def test_hook_can_duplicate_and_shrink_population(tiny_pipeline):
    class KeepFirstTwice:
        def after_scale(self, step):
            if step.scale_index == 1:
                return torch.tensor([0, 0])
            return None

    out = tiny_pipeline.generate([1, 2, 3], seed=3, cfg=2.0, hooks=[KeepFirstTwice()])
    ref = tiny_pipeline.generate([1, 2, 3], seed=3, cfg=2.0)
    assert out.tokens.shape[0] == 2 and out.labels.tolist() == [1, 1]
    assert torch.equal(out.tokens[:, :5], ref.tokens[[0, 0], :5])  # scales 0-1 (1 + 4 tokens) carried over
    # the batch that generated each scale, and the population the hooks left
    assert [s.batch for s in out.stats.per_scale] == [3, 3, 2, 2]
    assert [s.selected for s in out.stats.per_scale] == [None, 2, None, None]


def test_kv_bytes_match_analytic_size(tiny_pipeline):
    out = tiny_pipeline.generate([0, 1, 2, 3], seed=0, cfg=1.5)
    assert out.stats.kv_bytes == 4 * tiny_pipeline.kv_bytes_per_image(cfg=1.5)
    out = tiny_pipeline.generate([0, 1], seed=0, cfg=0.0)
    assert out.stats.kv_bytes == 2 * tiny_pipeline.kv_bytes_per_image(cfg=0.0)
    # one record per scale: its batch, the batch * pn^2 tokens it drew, every layer run; with the full network
    # the whole cache is allocated up front and held to the end
    assert [(s.scale_index, s.patch_num, s.batch, s.tokens, s.layers) for s in out.stats.per_scale] == [
        (i, pn, 2, 2 * pn * pn, 4) for i, pn in enumerate((1, 2, 3, 4))]
    assert all(s.kv_bytes == out.stats.kv_bytes for s in out.stats.per_scale)


def test_zero_cfg_skips_unconditional_half_with_identical_tokens(tiny_pipeline):
    """cfg=0 runs only the conditional rows: the tokens equal the doubled-batch computation."""
    pipe = tiny_pipeline
    labels = pipe.parse_labels([0, 4])
    g1 = torch.Generator().manual_seed(9)
    fast = sample(pipe.transformer, pipe.tokenizer.quantize, labels, SamplingConfig(cfg=0.0), generator=g1)
    g2 = torch.Generator().manual_seed(9)
    tiny_cfg = SamplingConfig(cfg=1e-30)  # doubled batch, guidance numerically zero
    slow = sample(pipe.transformer, pipe.tokenizer.quantize, labels, tiny_cfg, generator=g2)
    assert torch.equal(fast.tokens, slow.tokens)
    assert fast.kv_peak_bytes * 2 == slow.kv_peak_bytes


def test_top_k_top_p_keep_expected_tokens():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    assert torch.isinf(top_k_top_p_(logits.clone(), top_k=2)).tolist() == [[[True, True, False, False]]]
    kept = ~torch.isinf(top_k_top_p_(logits.clone(), top_p=0.5))
    assert kept.tolist() == [[[False, False, False, True]]]  # the top token alone holds 64% of the mass
    kept = ~torch.isinf(top_k_top_p_(logits.clone(), top_p=0.9))
    assert kept.tolist() == [[[False, True, True, True]]]  # 0.64 + 0.24 = 0.88 < 0.9 needs a third
    for k in (4, 900):  # top_k >= vocabulary keeps everything
        assert torch.equal(top_k_top_p_(logits.clone(), top_k=k), logits)


def test_random_labels_are_drawn_from_the_seed(tiny_pipeline):
    a = tiny_pipeline.generate(batch=5, seed=11)
    b = tiny_pipeline.generate(batch=5, seed=11)
    assert torch.equal(a.labels, b.labels) and a.labels.max() < 5


def test_per_sample_seeds_make_a_batch_equal_single_runs(tiny_pipeline):
    batch = tiny_pipeline.generate([1, 2, 3], seed=[10, 11, 12], cfg=1.5)
    for i, (label, seed) in enumerate(zip([1, 2, 3], [10, 11, 12])):
        single = tiny_pipeline.generate([label], seed=[seed], cfg=1.5)
        assert torch.equal(single.tokens[0], batch.tokens[i])
        assert (single.images[0] - batch.images[i]).abs().max() < 1e-5  # conv batching may differ in last bits


def test_sort_ascending_matches_torch_sort():
    from var_engine.sampling.logits import sort_ascending

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=g) * 7
    x[:, :40] = -torch.inf  # top-k masked tokens
    x[:, 50:60] = 0.0
    x[:, 60:65] = -0.0
    x[3, 100:110] = 2.5  # exact ties
    values, idx = sort_ascending(x)
    expected, _ = x.sort(dim=-1)
    assert torch.equal(values, expected)
    assert torch.equal(x.gather(-1, idx), values)
    assert torch.equal(idx.sort(dim=-1).values, torch.arange(300).expand(64, -1))  # a permutation


def _logits_of_every_sharpness(rows: int = 600, V: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    temperature = torch.logspace(-1.5, 1.0, rows).unsqueeze(1)  # flat rows (sorted path) to peaked ones
    return (torch.randn(rows, V, generator=g) / temperature).unsqueeze(0)


def test_fast_top_p_keeps_the_release_tokens():
    from var_engine.sampling.logits import TOP_P_CANDIDATES, top_p_from_candidates_

    logits = _logits_of_every_sharpness()
    for top_p in (0.3, 0.9, 0.96, 0.999):
        release = torch.isinf(top_k_top_p_(logits.clone(), top_p=top_p))
        fast = torch.isinf(top_p_from_candidates_(logits.clone(), top_p))
        assert torch.equal(fast, release), top_p
        kept = (~release).sum(-1)
        assert kept.min() <= TOP_P_CANDIDATES < kept.max()  # both the partial top-k and the sorted rows ran
    for top_p in (0.0, 1.0):  # off, and every token stays
        assert torch.equal(top_p_from_candidates_(logits.clone(), top_p), logits)


def test_inverse_cdf_draw_follows_the_probabilities():
    from var_engine.sampling.logits import draw_inverse_cdf

    logits = torch.tensor([0.0, 1.0, -torch.inf, 2.0, -torch.inf]).log_softmax(0)
    n = 40_000
    tokens = draw_inverse_cdf(logits.expand(1, n, 5).contiguous(), torch.Generator().manual_seed(3))
    counts = torch.bincount(tokens.flatten(), minlength=5).double()
    p = logits.exp().double()
    assert counts[2] == counts[4] == 0  # masked tokens are never drawn, also not the last one
    expected = n * p
    chi2 = ((counts - expected)[p > 0] ** 2 / expected[p > 0]).sum()
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001


def test_rejection_draw_follows_the_top_p_distribution():
    from var_engine.sampling.logits import draw_top_p_by_rejection

    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
    n = 40_000
    logits = probs.log().expand(1, n, 6).contiguous()
    tokens = draw_top_p_by_rejection(logits, 0.8, torch.Generator().manual_seed(5))
    counts = torch.bincount(tokens.flatten(), minlength=6).double()
    assert counts[3:].sum() == 0  # 0.4 + 0.3 + 0.15 already hold 0.8: the rest is outside the set
    expected = n * probs[:3].double() / probs[:3].sum()
    chi2 = ((counts[:3] - expected) ** 2 / expected).sum()
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize("max_rounds", [8, 0])  # 0: every row takes the sorted fallback
@pytest.mark.parametrize("per_sample", [False, True])
def test_rejection_draw_stays_in_the_release_top_p_set(max_rounds, per_sample):
    from var_engine.sampling.logits import draw_top_p_by_rejection

    logits = _logits_of_every_sharpness().view(6, 100, -1)
    generator = ([torch.Generator().manual_seed(i) for i in range(6)] if per_sample
                 else torch.Generator().manual_seed(0))
    for top_p in (0.05, 0.3, 0.96):
        kept = ~torch.isinf(top_k_top_p_(logits.clone(), top_p=top_p))
        tokens = draw_top_p_by_rejection(logits, top_p, generator, max_rounds=max_rounds)
        assert kept.gather(-1, tokens.unsqueeze(-1)).all(), top_p
    if per_sample:  # a sample's tokens do not depend on the rest of its batch
        alone = draw_top_p_by_rejection(logits[2:3], 0.3, [torch.Generator().manual_seed(2)], max_rounds=max_rounds)
        both = draw_top_p_by_rejection(logits, 0.3, [torch.Generator().manual_seed(i) for i in range(6)],
                                       max_rounds=max_rounds)
        assert torch.equal(alone[0], both[2])


def test_fast_draw_is_seeded_and_per_sample_seeds_stay_independent(tiny_pipeline):
    a = tiny_pipeline.generate([1, 2, 3], seed=[10, 11, 12], cfg=1.5, draw="fast")
    b = tiny_pipeline.generate([1, 2, 3], seed=[10, 11, 12], cfg=1.5, draw="fast")
    assert torch.equal(a.tokens, b.tokens)
    single = tiny_pipeline.generate([2], seed=[11], cfg=1.5, draw="fast")
    assert torch.equal(single.tokens[0], a.tokens[1])
    release = tiny_pipeline.generate([1, 2, 3], seed=[10, 11, 12], cfg=1.5)
    assert not torch.equal(release.tokens, a.tokens)  # another use of the random stream
