"""VARiant depth plans: layer sets, KV arithmetic, exact training/sampling equality, memory planner."""
import logging

import pytest
import torch

from var_engine.errors import ConfigError, InputError
from var_engine.variant import DepthPlan, SupernetPlan, SupernetSchedule, subnet_layers


def test_subnet_layers_are_equidistant_with_first_and_last():
    assert subnet_layers(30, 2) == (0, 29)
    assert subnet_layers(30, 16) == tuple((i * 29) // 15 for i in range(16))
    assert subnet_layers(8, 4) == (0, 2, 4, 7)
    assert subnet_layers(8, 8) == tuple(range(8))
    assert subnet_layers(8, 1) == (0,)
    for bad in (0, 9):
        with pytest.raises(ConfigError):
            subnet_layers(8, bad)


def test_plan_validation():
    with pytest.raises(ConfigError, match="switch scale"):
        DepthPlan(4, 2, 0, (1, 2, 3, 4))
    with pytest.raises(ConfigError, match="switch scale"):
        DepthPlan(4, 2, 5, (1, 2, 3, 4))


def test_kv_entries_follow_the_paper_arithmetic():
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    plan = DepthPlan(30, 16, 6, pn)
    assert plan.switch_tokens == 91 and plan.kv_entries() == (30 - 16) * 91 + 16 * 680
    assert abs(DepthPlan(30, 8, 6, pn).kv_entries() / (30 * 680) - 0.37) < 0.01  # paper: 64% less
    assert abs(DepthPlan(30, 2, 6, pn).kv_entries() / (30 * 680) - 0.19) < 0.01  # paper: 81% less


def test_measured_kv_bytes_equal_analytic_and_layers_are_released(tiny_pipeline):
    pipe = tiny_pipeline  # depth 4, C 32, patch_nums (1, 2, 3, 4): 30 tokens
    plan = pipe.depth_plan(2, 2)
    out = pipe.generate([0, 1], seed=0, cfg=1.5, layer_plan=plan)
    analytic = 2 * 4 * 32 * 2 * ((4 - 2) * 5 + 2 * 30)  # 2 (k,v) * fp32 * C * cfg rows * entries
    assert out.stats.kv_bytes == 2 * analytic == 2 * pipe.kv_bytes_per_image(1.5, plan)
    per_scale = [s.kv_bytes for s in out.stats.per_scale]
    assert per_scale[0] == 2 * analytic  # all allocated up front, nothing grows
    # skipped layers are freed once the last full-depth scale (index 1) is done
    assert per_scale[1] == per_scale[2] == per_scale[3] == 2 * 2 * 4 * 32 * 2 * (2 * 30)
    assert [s.layers for s in out.stats.per_scale] == [4, 4, 2, 2]


def test_full_depth_plan_equals_plain_sampler_bit_for_bit(tiny_pipeline):
    a = tiny_pipeline.generate([1, 3], seed=2)
    b = tiny_pipeline.generate([1, 3], seed=2, depth=4, switch_scale=2)
    c = tiny_pipeline.generate([1, 3], seed=2, layer_plan=lambda k: range(4))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("depth, switch", [(2, 1), (2, 3), (3, 2), (1, 4)])
def test_teacher_forced_plan_equals_cached_sampler(tiny_pipeline, depth, switch):
    pipe = tiny_pipeline
    plan = pipe.depth_plan(depth, switch)
    seen = []

    class Record:
        def after_scale(self, step):
            seen.append(step.logits_BlV.clone())

    out = pipe.generate([0, 2, 4], seed=5, cfg=0.0, top_k=0, top_p=0.0, layer_plan=plan, hooks=[Record()])
    tf = pipe.transformer(out.labels, pipe.tokenizer.teacher_input(out.tokens), plan.block_tokens())
    assert (torch.cat(seen, 1) - tf).abs().max() < 1e-4  # float32, different op order
    full = pipe.transformer(out.labels, pipe.tokenizer.teacher_input(out.tokens))
    if depth < 4 and switch < 4:
        assert (full - tf).abs().max() > 1e-3  # the plan really changes the function


def test_memory_planner_picks_deepest_plan_that_fits(tiny_pipeline):
    pipe = tiny_pipeline
    full = pipe.kv_bytes_per_image(1.5)
    assert pipe.plan_for_memory(2, 2 * full) is None
    plan = pipe.plan_for_memory(2, 2 * full - 1)
    assert plan.depth == 3 and plan.switch_scale == 3  # the deepest subnet, latest switch that fits
    assert 2 * pipe.kv_bytes_per_image(1.5, plan) <= 2 * full - 1
    with pytest.raises(InputError, match="no depth plan fits"):
        pipe.plan_for_memory(2, 100)
    lean = pipe.kv_bytes_per_image(1.5, None, transient_last_scale=True)
    assert pipe.plan_for_memory(2, 2 * lean, transient_last_scale=True) is None  # the full network fits then
    # without it: 86 tokens' worth per layer-row (4 x 14 + 30) fit neither depth 3 (at least 90 + 1) nor depth 2
    # after scale 3 (2 x 14 + 2 x 30 = 88); depth 2 after scale 2 holds 2 x 5 + 2 x 30 = 70
    plan = pipe.plan_for_memory(2, 2 * lean)
    assert (plan.depth, plan.switch_scale) == (2, 2) and 2 * pipe.kv_bytes_per_image(1.5, plan) <= 2 * lean


def test_subnet_on_plain_checkpoint_warns(tiny_pipeline, caplog):
    with caplog.at_level(logging.WARNING):
        tiny_pipeline.generate([0], seed=0, depth=2)
    assert "not trained as a supernet" in caplog.text


def test_bad_depth_requests(tiny_pipeline):
    for kwargs in (dict(depth=0), dict(depth=5), dict(depth=2, switch_scale=0), dict(depth=2, switch_scale=5),
                   dict(switch_scale=2)):
        with pytest.raises(InputError):
            tiny_pipeline.generate([0], seed=0, **kwargs)


def test_supernet_schedule_and_plan():
    s = SupernetSchedule()
    assert s.subnet_probability(0.0) == 0.2 and s.subnet_probability(0.9) == 0.5
    assert abs(s.subnet_probability(0.5) - 0.45) < 1e-9
    assert SupernetSchedule.parse("fixed:0.3").subnet_probability(0.7) == 0.3
    with pytest.raises(ConfigError):
        SupernetSchedule.parse("fixed:2")
    plan = SupernetPlan(8, (1, 2, 3, 4), depths=(4, 2), switch_scales=(2,), total_steps=100, seed=1)
    picks = [plan.plan_at(s) for s in range(100)]
    assert picks == [plan.plan_at(s) for s in range(100)]  # a function of (seed, step)
    frac = sum(p is not None for p in picks) / 100
    assert 0.2 < frac < 0.7


@pytest.mark.parametrize("depth", [None, 2])
def test_transient_last_scale_saves_memory_with_identical_tokens(tiny_pipeline, depth):
    pipe = tiny_pipeline
    plan = pipe.depth_plan(depth, 2) if depth else None
    a = pipe.generate([0, 1, 2], seed=4, layer_plan=plan)
    b = pipe.generate([0, 1, 2], seed=4, layer_plan=plan, transient_last_scale=True)
    assert torch.equal(a.tokens, b.tokens)
    assert b.stats.kv_bytes == 3 * pipe.kv_bytes_per_image(1.5, plan, transient_last_scale=True)
    assert b.stats.kv_bytes < a.stats.kv_bytes
    unit = 2 * 2 * 32 * 4  # k,v * cfg rows * C * fp32 bytes per cached token
    if depth is None:  # 4 layers hold 14 tokens instead of 30, plus one layer's 30 transient
        assert pipe.kv_bytes_per_image(1.5, None, True) == unit * (4 * 14 + 30)
    else:  # peak at the start: 2 skipped layers x 5 tokens + 2 subnet layers x 14
        assert pipe.kv_bytes_per_image(1.5, plan, True) == unit * max(2 * 5 + 2 * 14, 2 * 14 + 30)


def test_progressive_schedule_from_text():
    s = SupernetSchedule.parse("progressive:0.2,1,1@0.2,0.6")
    assert s.ratios == (0.2, 1.0, 1.0) and s.boundaries == (0.2, 0.6)
    assert s.subnet_probability(0.1) == 0.2 and s.subnet_probability(0.7) == 1.0
    assert SupernetSchedule.parse("progressive:0,0.5,0.5").boundaries == SupernetSchedule().boundaries
    for bad in ("progressive:0.2,1", "progressive:a,b,c", "progressive:0.2,1,1@0.7,0.2", "fixed:", "cosine"):
        with pytest.raises(ConfigError):
            SupernetSchedule.parse(bad)


def test_heldout_loss_of_a_full_depth_plan_equals_the_full_network(tiny_pipeline):
    from var_engine.train_transformer import evaluate_tokens

    pipe = tiny_pipeline
    D, pn = pipe.config.depth, pipe.config.patch_nums
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, pipe.config.transformer.vocab_size, (4, pipe.config.transformer.num_tokens), generator=g)
    labels = torch.tensor([0, 1, 0, 1])
    full = evaluate_tokens(pipe.transformer, pipe.tokenizer, tokens, labels)
    same = evaluate_tokens(pipe.transformer, pipe.tokenizer, tokens, labels,
                           block_tokens=DepthPlan(D, D, 1, pn).block_tokens())
    sub = evaluate_tokens(pipe.transformer, pipe.tokenizer, tokens, labels,
                          block_tokens=DepthPlan(D, 1, 1, pn).block_tokens())
    assert same == full and sub != full


def test_finish_scale_validation_and_layers():
    plan = DepthPlan(4, 2, 1, (1, 2, 3, 4), finish_scale=3)
    assert [plan(k) for k in range(4)] == [None, (0, 3), (0, 3), None]
    assert plan.kv_entries() == 4 * 30
    for bad in (1, 4, 0):
        with pytest.raises(ConfigError, match="finish scale"):
            DepthPlan(4, 2, 1, (1, 2, 3, 4), finish_scale=bad)
    with pytest.raises(ConfigError, match="for sampling"):
        plan.block_tokens()


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_finishing_plan_refills_the_full_network_cache(tiny_pipeline, cfg):
    """After the refill the full-depth scales see exactly the full network's keys/values of the tokens drawn
    on the subnet: their logits equal the teacher-forced full network's on those tokens."""
    pipe = tiny_pipeline
    seen = []

    class Record:
        def after_scale(self, step):
            seen.append(step.logits_BlV.clone())

    out = pipe.generate([0, 2, 4], seed=5, cfg=cfg, top_k=0, top_p=0.0, depth=2, switch_scale=1, finish_scale=3,
                        hooks=[Record()])
    assert [s.layers for s in out.stats.per_scale] == [4, 2, 2, 4]
    assert [s.refilled for s in out.stats.per_scale] == [0, 0, 0, 3]
    rows = torch.cat((out.labels, torch.full_like(out.labels, pipe.config.num_classes))) if cfg else out.labels
    x = pipe.tokenizer.teacher_input(out.tokens)
    full = pipe.transformer(rows, x.repeat(2, 1, 1) if cfg else x)
    if cfg:
        from var_engine.sampling import cfg_mix, guidance_scale
        full = cfg_mix(full, guidance_scale(cfg, 3, 4))
    last = full[:, 14:]  # scale 3 of patch_nums (1, 2, 3, 4)
    assert (seen[3] - last).abs().max() < 1e-4  # float32, different op order
    sub = pipe.transformer(out.labels, x, DepthPlan(4, 2, 1, pipe.config.patch_nums).block_tokens())
    if not cfg:  # the subnet scales really ran the subnet, and the finish really changes the function
        assert (seen[1] - sub[:, 1:5]).abs().max() < 1e-4
        assert (sub[:, 14:] - last).abs().max() > 1e-3
    # compute counts the refill: 3 samples re-run scales 0-2 (14 tokens) at full depth
    t = pipe.config.transformer
    from var_engine.search.compute import run_cost
    assert out.stats.compute == pytest.approx(run_cost(t, [3] * 4, [4, 2, 2, 4], [0, 0, 0, 3]))
    assert out.stats.compute > run_cost(t, [3] * 4, [4, 2, 2, 4])


def test_finishing_plan_with_search_refills_only_survivors(tiny_pipeline):
    pipe = tiny_pipeline
    from var_engine.search import TTSConfig
    reward = lambda images, labels: images.mean((1, 2, 3))  # noqa: E731
    seen = {}

    class Record:
        def after_scale(self, step):
            if step.scale_index == 3:
                seen.update(logits=step.logits_BlV.clone(), tokens=step.tokens_BL.clone(), labels=step.labels_B.clone())

    out = pipe.generate([1, 2], seed=[3, 4], cfg=0.0, top_k=0, top_p=0.0, depth=2, switch_scale=1, finish_scale=3,
                        search=TTSConfig(batches=(4, 4, 2, 2), cluster_scales=(), resample_scales=(1,),
                                         reward=reward), hooks=[Record()])
    # the survivors' refilled caches are their own: the full network's logits on each survivor's tokens
    full = pipe.transformer(seen["labels"], pipe.tokenizer.teacher_input(seen["tokens"]))
    assert (seen["logits"] - full[:, 14:]).abs().max() < 1e-4
    assert [s.batch for s in out.stats.per_scale] == [8, 8, 4, 4]
    assert [s.refilled for s in out.stats.per_scale] == [0, 0, 0, 4]
    assert out.search.compute_per_request == pytest.approx(out.stats.compute / 2)
    again = pipe.generate([1, 2], seed=[3, 4], cfg=0.0, top_k=0, top_p=0.0, depth=2, switch_scale=1, finish_scale=3,
                          search=TTSConfig(batches=(4, 4, 2, 2), cluster_scales=(), resample_scales=(1,),
                                           reward=reward))
    assert torch.equal(out.tokens, again.tokens)


def test_plans_that_resume_and_skip_again_are_refused(tiny_pipeline):
    plan = lambda k: None if k in (0, 2) else (0, 3)  # noqa: E731
    with pytest.raises(ValueError, match="only for good"):
        tiny_pipeline.generate([0], seed=0, layer_plan=plan)
