"""The sampler's population: one select() gathers everything, hooks compose, stats tell the truth."""
import pytest
import torch


class Select:
    """Select `indices` after scale `at` (optionally keeping duplicates' streams identical)."""

    def __init__(self, at, indices, fork_streams=True):
        self.at, self.indices, self.fork = at, indices, fork_streams

    def after_scale(self, step):
        if step.scale_index != self.at:
            return None
        if self.fork:
            return torch.tensor(self.indices)
        step.population.select(self.indices, fork_streams=False)
        return None


class Record:
    """Keep what a hook sees, cloned and as handed over (to check nothing changes it later)."""

    def __init__(self):
        self.steps = []

    def after_scale(self, step):
        pop = step.population
        self.steps.append(dict(si=step.scale_index, K=step.num_scales, labels=step.labels_B.clone(),
                               group=step.group_B.clone(), idx=step.idx_Bl.clone(), logits=step.logits_BlV.clone(),
                               tokens=step.tokens_BL.clone(), f_hat=step.f_hat_BChw, f_hat_copy=step.f_hat_BChw.clone(),
                               lineage=pop.lineage.clone(), batch=pop.batch))


@pytest.mark.parametrize("seed", [3, [4, 5, 6]])
def test_identity_selection_changes_nothing(tiny_pipeline, seed):
    ref = tiny_pipeline.generate([1, 2, 3], seed=seed, cfg=2.0)
    out = tiny_pipeline.generate([1, 2, 3], seed=seed, cfg=2.0, hooks=[Select(s, [0, 1, 2]) for s in range(4)])
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.images, ref.images)


def test_duplicate_with_the_same_stream_continues_exactly_like_its_original(tiny_pipeline):
    ref = tiny_pipeline.generate([1, 2, 3], seed=[7, 8, 9], cfg=1.5)
    out = tiny_pipeline.generate([1, 2, 3], seed=[7, 8, 9], cfg=1.5,
                                 hooks=[Select(1, [0, 0, 2], fork_streams=False)])
    assert torch.equal(out.tokens, ref.tokens[[0, 0, 2]])
    assert torch.equal(out.images[0], out.images[1]) and torch.equal(out.images[2], ref.images[2])


def test_duplicates_with_forked_streams_share_the_prefix_then_diverge(tiny_pipeline):
    ref = tiny_pipeline.generate([1, 2], seed=[7, 8], cfg=1.5, top_k=0, top_p=0.0)
    out = tiny_pipeline.generate([1, 2], seed=[7, 8], cfg=1.5, top_k=0, top_p=0.0, hooks=[Select(1, [0, 0])])
    prefix = 1 + 4  # scales 0 and 1
    assert torch.equal(out.tokens[:, :prefix], ref.tokens[[0, 0], :prefix])
    assert torch.equal(out.tokens[0], ref.tokens[0])  # the first copy keeps the original stream
    assert not torch.equal(out.tokens[0, prefix:], out.tokens[1, prefix:])  # 25 tokens over 64 codes
    again = tiny_pipeline.generate([1, 2], seed=[7, 8], cfg=1.5, top_k=0, top_p=0.0, hooks=[Select(1, [0, 0])])
    assert torch.equal(out.tokens, again.tokens)  # forks are deterministic


def test_two_hooks_compose_on_a_consistent_population(tiny_pipeline):
    labels = [1, 2, 3, 4]
    ref = tiny_pipeline.generate(labels, seed=11, cfg=2.0)
    seen = Record()
    out = tiny_pipeline.generate(labels, seed=11, cfg=2.0, hooks=[Select(1, [2, 0, 0]), seen, Select(1, [1, 2])])
    at1 = seen.steps[1]
    assert at1["si"] == 1 and at1["K"] == 4 and at1["batch"] == 3
    # the second hook sees the first one's selection in every field
    assert at1["labels"].tolist() == [3, 1, 1] and at1["group"].tolist() == [2, 0, 0]
    assert torch.equal(at1["tokens"], ref.tokens[[2, 0, 0], :5]) and torch.equal(at1["idx"], at1["tokens"][:, 1:5])
    assert at1["logits"].shape[:2] == (3, 4)
    assert at1["lineage"].tolist() == [2, 0, 4]  # the extra copy of sample 0 gets a new id
    # the third hook selects from the population the second one saw: two copies of sample 0
    assert out.labels.tolist() == [1, 1] and torch.equal(out.tokens[:, :5], ref.tokens[[0, 0], :5])
    assert [s.batch for s in out.stats.per_scale] == [4, 4, 2, 2]
    assert [s.selected for s in out.stats.per_scale] == [None, 2, None, None]
    assert [st["batch"] for st in seen.steps] == [4, 3, 2, 2]
    assert all(s.hook_seconds <= s.seconds for s in out.stats.per_scale)


def test_f_hat_handed_to_a_hook_is_never_changed_afterwards(tiny_pipeline):
    seen = Record()
    tiny_pipeline.generate([0, 1], seed=2, cfg=1.5, hooks=[seen])
    assert all(torch.equal(st["f_hat"], st["f_hat_copy"]) for st in seen.steps)
    assert not torch.equal(seen.steps[0]["f_hat"], seen.steps[-1]["f_hat"])


def test_decode_on_request_matches_the_decoder_and_follows_selection(tiny_pipeline):
    pipe = tiny_pipeline
    images = {}

    class DecodeThenSelect:
        def after_scale(self, step):
            if step.scale_index == 2:
                images["partial"] = step.decode()
                images["f_hat"] = step.f_hat_BChw
                return torch.tensor([1])
            return None

    class DecodeAgain:
        def after_scale(self, step):
            if step.scale_index == 2:
                images["again"] = step.decode()  # reuses the gathered decode
            return None

    out = pipe.generate([0, 1, 2], seed=4, cfg=1.5, hooks=[DecodeThenSelect(), DecodeAgain()])
    expected = pipe.tokenizer.fhat_to_images(images["f_hat"]).add(1).mul(0.5)
    assert torch.allclose(images["partial"], expected, atol=1e-6)
    assert torch.equal(images["again"], images["partial"][[1]])
    assert out.stats.decodes == 3  # one decode of the population of three, none for the second hook


def test_final_decode_reuses_a_hooks_decode_of_the_last_scale(tiny_pipeline):
    class DecodeLast:
        def after_scale(self, step):
            if step.is_last:
                step.decode()
            return None

    plain = tiny_pipeline.generate([0, 3], seed=9, cfg=1.5)
    out = tiny_pipeline.generate([0, 3], seed=9, cfg=1.5, hooks=[DecodeLast()])
    assert out.stats.decodes == 2 and torch.allclose(out.images, plain.images, atol=1e-6)


@pytest.mark.parametrize("indices, error", [([], ValueError), ([0, 1, 2, 0], ValueError), ([5], IndexError),
                                            ([-1], IndexError)])
def test_bad_selections_are_refused(tiny_pipeline, indices, error):
    with pytest.raises(error):
        tiny_pipeline.generate([0, 1, 2], seed=0, hooks=[Select(0, indices)])


def test_scores_follow_the_population(tiny_pipeline):
    final = {}

    class Score:
        def after_scale(self, step):
            pop = step.population
            if step.scale_index == 1:
                pop.record_score(torch.arange(pop.batch, dtype=torch.float32) * 10)
                return torch.tensor([2, 2, 0])
            if step.is_last:
                pop.record_score(torch.ones(pop.batch))
                final["history"] = pop.score_history()
            return None

    tiny_pipeline.generate([0, 1, 2], seed=0, hooks=[Score()])
    assert final["history"].tolist() == [[20.0, 1.0], [20.0, 1.0], [0.0, 1.0]]


def test_stats_record_a_selection_a_hook_makes_itself(tiny_pipeline):
    out = tiny_pipeline.generate([1, 2, 3], seed=[7, 8, 9], hooks=[Select(1, [0, 0], fork_streams=False)])
    assert [s.batch for s in out.stats.per_scale] == [3, 3, 2, 2]
    assert [s.selected for s in out.stats.per_scale] == [None, 2, None, None]


def test_two_selections_in_one_scale_fork_distinct_streams():
    """A sample duplicated by two hooks in the same scale gives each extra copy its own stream."""
    from var_engine.sampling.population import forked_generator

    parent = torch.Generator().manual_seed(3)
    first = forked_generator(parent, 1, 2, 0).initial_seed()
    second = forked_generator(parent, 1, 2, 1).initial_seed()
    assert first != second
    assert forked_generator(parent, 1, 2).initial_seed() == first  # the first select keeps its streams


def test_final_selection_leaves_the_cache_alone(tiny_pipeline):
    calls = []

    class Spy:
        def after_scale(self, step):
            cache = step.population.cache
            if step.scale_index == 0:
                original = cache.reindex
                cache.reindex = lambda idx: (calls.append(len(step.population.drawn) - 1), original(idx))
            if step.scale_index in (1, step.num_scales - 1):
                return torch.tensor([0])
            return None

    out = tiny_pipeline.generate([1, 2], seed=[5, 6], hooks=[Spy()])
    assert calls == [1] and out.tokens.shape[0] == 1
