"""Test-time search: schedules, compute units, clustering, resampling statistics, the hook end to end."""
import logging
import math

import pytest
import torch

from var_engine import ConfigError, InputError
from var_engine.search import (BestOfNConfig, Schedule, TTSConfig, kmeans, layout_signature, plain_sample_flops,
                               potential, representatives, resample, resampling_weights, run_cost, scale_flops,
                               schedule_for_budget)


def brightness(images, labels):
    """A reward decided at coarse scales: mean brightness (the tiny model has no evaluator)."""
    return images.mean(dim=(1, 2, 3))


def flat(images):
    return images.flatten(1)


# ------------------------------------------------------------------ schedules and compute units
def test_schedules_must_not_increase():
    assert Schedule((4, 4, 2, 1)).after(1) == 2 and Schedule((4, 4, 2, 1)).after(3) == 1
    for bad in [(2, 3, 1), (0, 0), (), (2.5, 1)]:
        with pytest.raises(ConfigError):
            Schedule(bad)


def test_scale_flops_by_hand(tiny_pipeline):
    cfg = tiny_pipeline.config.transformer  # C 32, V 64, scales 1,2,3,4 -> tokens end at 1, 5, 14, 30
    C, V = 32, 64
    assert scale_flops(cfg, 2, 4) == 9 * (4 * (24 * C * C + 4 * C * 14) + 2 * C * V)
    assert run_cost(cfg, (1, 1, 1, 1)) == pytest.approx(1.0)
    assert run_cost(cfg, (3, 3, 3, 3)) == pytest.approx(3.0)
    half = run_cost(cfg, (1, 1, 1, 1), layers=(4, 4, 2, 2))
    assert half == pytest.approx(sum(scale_flops(cfg, k, n) for k, n in enumerate((4, 4, 2, 2)))
                                 / plain_sample_flops(cfg))
    assert 0.5 < half < 1


def test_budget_schedule_is_the_largest_that_fits(tiny_pipeline):
    cfg = tiny_pipeline.config.transformer
    for budget in (1.5, 4.0, 9.0):
        s = schedule_for_budget(budget, cfg, selection_scales=(0, 1))
        assert s.cost(cfg) <= budget + 1e-9
        assert list(s.batches) == sorted(s.batches, reverse=True)
    assert schedule_for_budget(1.0, cfg, (0, 1)).batches == (1, 1, 1, 1)
    with pytest.raises(ConfigError, match="below one sample"):
        schedule_for_budget(0.5, cfg, (0, 1))
    # a subnet's cheaper scales buy a larger population for the same budget
    full = schedule_for_budget(4.0, cfg, (0, 1))
    sub = schedule_for_budget(4.0, cfg, (0, 1), layers=(4, 1, 1, 1))
    assert sum(sub.batches) > sum(full.batches)


# ------------------------------------------------------------------ clustering
def test_representatives_take_one_member_of_each_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(4, 2, generator=g) for c in centres])  # rows 0-3, 4-7, 8-11
    kept = representatives(x, 3, torch.Generator().manual_seed(1))
    assert sorted(int(i) // 4 for i in kept) == [0, 1, 2]
    # the kept member is the one nearest its cluster's mean
    for i in kept.tolist():
        members = x[(i // 4) * 4:(i // 4) * 4 + 4]
        assert i % 4 == int((members - members.mean(0)).norm(dim=1).argmin())
    assert torch.equal(kept, representatives(x, 3, torch.Generator().manual_seed(1)))


def test_representatives_are_distinct_even_for_identical_points():
    x = torch.zeros(6, 3)
    x[5] = 1.0
    kept = representatives(x, 4, torch.Generator().manual_seed(0))
    assert len(set(kept.tolist())) == 4 and 5 in kept.tolist()
    with pytest.raises(ValueError):
        kmeans(x, 7)


def test_layout_signature_is_sign_canonical():
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 16, 8, generator=g)
    patches[:, :4] += 5.0  # a "foreground" of 4 patches
    s = layout_signature(patches)
    assert s.shape == (2, 16)
    flipped = layout_signature(-patches)  # the same layout, components of the other sign
    assert torch.allclose(s, flipped, atol=1e-4)
    assert (s[:, :4].mean(1) * s[:, 4:].mean(1) < 0).all()  # the foreground stands apart


# ------------------------------------------------------------------ potentials and resampling
def test_potentials_by_hand():
    h = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    assert potential(h, "value").tolist() == [2.0, 4.0]
    assert potential(h, "diff").tolist() == [-1.0, 5.0]
    assert potential(h, "sum").tolist() == [6.0, 3.0]
    assert potential(h, "max").tolist() == [3.0, 4.0]
    assert potential(h[:, :1], "diff").tolist() == [1.0, 0.0]  # one score: every potential is the value
    with pytest.raises(ValueError):
        potential(h, "median")


def test_resampling_frequencies_follow_exp_lambda_potential():
    p = torch.tensor([0.0, math.log(3.0)])
    draws = resample(p, 20000, lam=1.0, generator=torch.Generator().manual_seed(0))
    share = (draws == 1).float().mean().item()
    assert abs(share - 0.75) < 0.02  # binomial s.e. 0.003
    sharp = resample(torch.tensor([0.0, 1.0, 0.5]), 2000, lam=10.0, generator=torch.Generator().manual_seed(1))
    assert (sharp == 1).float().mean() > 0.99  # e^-5 = 0.7% for the runner-up


def test_resampling_weights_fall_back_safely(caplog):
    with caplog.at_level(logging.WARNING, logger="var_engine.search.selection"):
        w = resampling_weights(torch.tensor([float("nan"), 1.0, 1.0]), 10.0)
        assert w.tolist() == [0.0, 0.5, 0.5]
        w = resampling_weights(torch.tensor([float("nan"), float("-inf")]), 10.0)
        assert w.tolist() == [0.5, 0.5]
    assert "uniformly" in caplog.text and "NaN" in caplog.text
    assert resampling_weights(torch.tensor([float("inf"), 1.0, float("inf")]), 1.0).tolist() == [0.5, 0.0, 0.5]
    assert resampling_weights(torch.tensor([1e6, -1e6]), 10.0).tolist() == [1.0, 0.0]  # no overflow


# ------------------------------------------------------------------ the search end to end
def tts(**kw):
    return TTSConfig(**{"batches": (6, 4, 2, 2), "cluster_scales": (0,), "resample_scales": (1,), "reward": brightness,
                        "features": flat, "budget": None, **kw})


def test_tts_runs_its_schedule_per_request(tiny_pipeline):
    out = tiny_pipeline.generate([1, 3], seed=5, search=tts(keep_candidates=True))
    assert out.images.shape[0] == 2 and out.labels.tolist() == [1, 3]
    assert [s.batch for s in out.stats.per_scale] == [12, 8, 4, 4]  # the schedule times two requests
    trace = out.search
    assert [(s.scale_index, s.kind, s.before, len(s.kept)) for s in trace.selections] == [
        (0, "cluster", 12, 8), (1, "resample", 8, 4), (3, "final", 4, 2)]
    assert trace.compute_per_request == pytest.approx(run_cost(tiny_pipeline.config.transformer, (6, 4, 2, 2)))
    assert out.stats.compute == pytest.approx(2 * trace.compute_per_request)
    # clustering keeps distinct candidates within each request; resampling stays within the request
    cluster, resampled = trace.selections[0], trace.selections[1]
    assert len(set(cluster.kept)) == 8 and sorted(i // 6 for i in cluster.kept) == [0] * 4 + [1] * 4
    assert sorted(i // 4 for i in resampled.kept) == [0, 0, 1, 1]
    # the winner is each request's best final candidate, and its image is the one returned
    cand = trace.candidates
    for g in range(2):
        scores = cand["final_scores"][cand["groups"] == g]
        assert trace.winner_scores[g] == pytest.approx(scores.max().item())
    assert torch.allclose(brightness(out.images, out.labels), torch.tensor(trace.winner_scores), atol=1e-6)
    assert out.stats.decodes == 12 + 8 + 4 and out.stats.search_overhead_seconds > 0


def test_search_is_deterministic_for_a_seed(tiny_pipeline):
    a = tiny_pipeline.generate([0, 2], seed=9, search=tts())
    b = tiny_pipeline.generate([0, 2], seed=9, search=tts())
    c = tiny_pipeline.generate([0, 2], seed=10, search=tts())
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert [s.kept for s in a.search.selections] == [s.kept for s in b.search.selections]
    assert not torch.equal(a.tokens, c.tokens)
    d = tiny_pipeline.generate([0, 2], seed=[3, 4], search=tts())
    e = tiny_pipeline.generate([0, 2], seed=[3, 4], search=tts())
    assert torch.equal(d.tokens, e.tokens)


def test_best_of_n_picks_the_best_of_n_plain_samples(tiny_pipeline):
    out = tiny_pipeline.generate([4], seed=[7], search=BestOfNConfig(n=5, reward=brightness, keep_candidates=True))
    assert [s.batch for s in out.stats.per_scale] == [5] * 4
    cand = out.search.candidates
    assert out.search.winner_scores[0] == pytest.approx(cand["final_scores"].max().item())
    # candidate 0 uses the request's own seed: it is the plain sample
    plain = tiny_pipeline.generate([4], seed=[7])
    assert torch.allclose(brightness(plain.images, plain.labels), cand["final_scores"][:1], atol=1e-6)
    one = tiny_pipeline.generate([4], seed=[7], search="best_of_n", budget=1.0, reward=brightness)
    assert torch.equal(one.tokens, plain.tokens)


def test_search_on_a_subnet_buys_more_candidates(tiny_pipeline):
    full = tiny_pipeline.generate([1], seed=0, search="best_of_n", budget=3.0, reward=brightness)
    sub = tiny_pipeline.generate([1], seed=0, search="best_of_n", budget=3.0, reward=brightness, depth=1,
                                 switch_scale=1)
    assert full.search.batches[0] == 3 and sub.search.batches[0] > 3
    assert sub.search.compute_per_request <= 3.0 and sub.stats.compute == pytest.approx(sub.search.compute_per_request)


def test_k_larger_than_the_population_keeps_everyone(tiny_pipeline):
    out = tiny_pipeline.generate([1], seed=0, search=tts(batches=(3, 3, 3, 3), resample_scales=()))
    assert [s.kind for s in out.search.selections] == ["final"]


def test_nan_rewards_fall_back_to_uniform_resampling(tiny_pipeline, caplog):
    def nan_reward(images, labels):
        return torch.full((images.shape[0],), float("nan"))

    with caplog.at_level(logging.WARNING, logger="var_engine.search.selection"):
        out = tiny_pipeline.generate([1], seed=0, search=tts(reward=nan_reward))
    assert out.images.shape[0] == 1 and "uniformly" in caplog.text


def test_bad_configs_are_refused_when_made():
    with pytest.raises(ConfigError, match="potential"):
        TTSConfig(potential="median")
    with pytest.raises(ConfigError, match="lam"):
        TTSConfig(lam=float("inf"))
    with pytest.raises(ConfigError, match="exactly one"):
        BestOfNConfig(n=2, budget=2.0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(search=TTSConfig(batches=(2, 3, 1, 1), budget=None, reward=brightness, features=flat)), ConfigError,
     "must not increase"),
    (dict(search="tts", budget=0.3, reward=brightness), ConfigError, "below one sample"),
    (dict(search="best_of_n", budget=float("nan"), reward=brightness), ConfigError, "finite"),
    (dict(search="beam", reward=brightness), InputError, "unknown search"),
    (dict(search="tts"), ConfigError, "no evaluator"),
    (dict(search="best_of_n", budget=2.0, reward=lambda im, lab: torch.zeros(3)), InputError, "shape"),
    (dict(search="best_of_n", budget=2.0, reward=brightness, seed=[1, 2, 3]), InputError, "seeds for 2 labels"),
    (dict(budget=2.0), InputError, "belong to a search"),
    (dict(search=TTSConfig(batches=(4, 2, 2, 2), cluster_scales=(1,), resample_scales=(), budget=None,
                           reward=brightness, features=flat)), ConfigError, "no selection runs"),
    (dict(search=TTSConfig(budget=2.0, cluster_scales=(3,), reward=brightness, features=flat)), ConfigError,
     "final pick"),
])
def test_bad_search_settings_are_clear_errors(tiny_pipeline, kwargs, error, message):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        tiny_pipeline.generate([1, 2], **kwargs)


# ------------------------------------------------------------------ decode-free scoring
def test_partial_latents_equal_the_samplers_f_hat_at_every_scale(tiny_pipeline):
    from var_engine.search.latent import partial_fhats

    seen = []

    class Record:
        def after_scale(self, step):
            seen.append(step.f_hat_BChw.clone())

    out = tiny_pipeline.generate([0, 1, 2], seed=1, hooks=[Record()])
    for k, f_hat in enumerate(seen):
        ks = torch.full((3,), k)
        assert torch.allclose(partial_fhats(tiny_pipeline.tokenizer, out.tokens, ks), f_hat, atol=1e-5)
    mixed = partial_fhats(tiny_pipeline.tokenizer, out.tokens, torch.tensor([0, 3, 1]))
    assert torch.allclose(mixed, torch.stack([seen[0][0], seen[3][1], seen[1][2]]), atol=1e-5)


def test_latent_reward_trains_saves_loads_and_searches_without_decoding(tiny_pipeline, tmp_path):
    from torch.utils.data import TensorDataset

    from var_engine.search import LatentFeatures, load_latent_reward, train_latent_reward
    from var_engine.training import TrainConfig

    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 16, 16, generator=g) * 2 - 1
    labels = torch.arange(40) % 5
    cfg = TrainConfig(out_dir=str(tmp_path), steps=4, batch_size=8, warmup_steps=1, log_every=2, eval_every=4,
                      ckpt_every=4)
    model = train_latent_reward(tiny_pipeline.tokenizer, 5, cfg, TensorDataset(images, labels), (images, labels),
                                width=16, progress=False)
    reward = load_latent_reward(tmp_path)
    f_hat = torch.randn(2, 8, 4, 4, generator=g)
    expected = model(model.planes(f_hat, 2)).log_softmax(-1)[[0, 1], [3, 4]]
    assert torch.allclose(reward(f_hat, torch.tensor([3, 4]), 2), expected, atol=1e-5)  # round trip
    assert (tmp_path / "latent_reward_run" / "train.csv").is_file()
    search = TTSConfig(batches=(4, 3, 2, 2), cluster_scales=(0,), resample_scales=(1,), budget=None, reward=reward,
                       features=LatentFeatures(grid=2))
    out = tiny_pipeline.generate([1, 4], seed=3, search=search)
    assert out.stats.decodes == 0 and out.images.shape[0] == 2
    assert [s.kind for s in out.search.selections] == ["cluster", "resample", "final"]
    assert load_latent_reward(tmp_path / "nothing") is None


def test_a_request_searched_in_a_batch_equals_it_searched_alone(tiny_pipeline):
    """With one seed per label, each request's population and search streams are its own."""
    alone = tiny_pipeline.generate([3], seed=[6], search=tts())
    for labels, seeds in (([1, 3], [5, 6]), ([3, 4], [6, 9])):
        batch = tiny_pipeline.generate(labels, seed=seeds, search=tts())
        i = labels.index(3)
        assert torch.equal(batch.tokens[i], alone.tokens[0]) and torch.equal(batch.images[i], alone.images[0])


def test_zero_lambda_resamples_uniformly_whatever_the_potentials():
    assert resampling_weights(torch.tensor([float("inf"), 1.0, 5.0, float("nan")]), 0.0).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 1 / 3, 0.0])


def test_one_dimensional_features_cluster(tiny_pipeline):
    out = tiny_pipeline.generate([2], seed=0, search=tts(features=lambda images: images.mean(dim=(1, 2, 3))))
    assert [s.kind for s in out.search.selections] == ["cluster", "resample", "final"]


def test_default_selection_scales_never_collide_on_short_models(tiny_pipeline):
    out = tiny_pipeline.generate([2], seed=0, search=TTSConfig(budget=3.0, reward=brightness, features=flat))
    cluster, resample_at = set(out.search.cluster_scales), set(out.search.resample_scales)
    assert cluster and not cluster & resample_at


def test_all_nan_final_rewards_warn(tiny_pipeline, caplog):
    def nan_reward(images, labels):
        return torch.full((images.shape[0],), float("nan"))

    with caplog.at_level(logging.WARNING, logger="var_engine.search.hook"):
        out = tiny_pipeline.generate([1], seed=0, search=BestOfNConfig(n=3, reward=nan_reward))
    assert out.images.shape[0] == 1 and "every final reward" in caplog.text
