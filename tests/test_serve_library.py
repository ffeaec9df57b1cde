"""What the web demo relies on in the library: the generation lock, returned seeds, class names, and the
server-side request checks (no gradio needed)."""
import threading

import pytest
import torch

from var_engine import Pipeline
from var_engine.class_names import class_label, class_names_for, imagenet_class_names, resolve_class
from var_engine.errors import InputError
from var_engine_serve import Limits, parse_request


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained()


class Recorder:
    """Records (thread, scale) after every scale, the order in which scales ran across threads."""

    def __init__(self, log):
        self.log = log

    def after_scale(self, step):
        self.log.append((threading.get_ident(), step.scale_index))


def test_two_threads_get_the_images_of_two_sequential_calls(pipe):
    calls = [dict(labels=[3, 7], seed=11, cfg=1.5), dict(labels=[1, 1, 4], seed=5, cfg=3.0, top_k=50)]
    sequential = [pipe.generate(**c).images for c in calls]
    results, log = [None, None], []
    barrier = threading.Barrier(2)

    def run(i):
        barrier.wait()
        results[i] = pipe.generate(**calls[i], hooks=[Recorder(log)]).images

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential):
        assert torch.equal(got, want)
    K = pipe.config.transformer.num_scales
    assert len(log) == 2 * K
    first, second = log[:K], log[K:]  # one generation ran whole before the other began
    assert len({t for t, _ in first}) == 1 and len({t for t, _ in second}) == 1
    assert [s for _, s in first] == [s for _, s in second] == list(range(K))


def test_the_lock_is_reentrant_for_hooks_that_generate(pipe):
    class Nested:
        def __init__(self):
            self.inner = None

        def after_scale(self, step):
            if step.scale_index == 0:
                self.inner = pipe.generate([2], seed=0).images

    hook = Nested()
    pipe.generate([5], seed=0, hooks=[hook])
    assert torch.equal(hook.inner, pipe.generate([2], seed=0).images)


def test_a_random_seed_is_returned_and_reproduces_the_call(pipe):
    out = pipe.generate([4, 4], seed=None)
    assert isinstance(out.seed, int) and 0 <= out.seed < 2**32
    assert torch.equal(pipe.generate([4, 4], seed=out.seed).images, out.images)
    assert pipe.generate([4], seed=9).seed == 9
    assert pipe.generate([4, 5], seed=[1, 2]).seed == [1, 2]


def test_class_names_of_the_default_model_are_stored_with_it(pipe):
    assert pipe.meta["class_names"] == [str(i) for i in range(10)]
    assert pipe.class_names == tuple(str(i) for i in range(10))
    assert pipe.class_id("7") == 7 and pipe.class_id(7) == 7 and pipe.class_id("null") == -1
    assert pipe.parse_labels(["3", "null", 5]).tolist() == [3, 10, 5]


def test_imagenet_names_for_official_thousand_class_models():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 999 and names[134] == names[517] == "crane"
    assert names[0] == "tench, Tinca tinca" and names[207] == "golden retriever" and names[999].startswith("toilet")
    assert class_names_for(1000, {"source": "official"}) is names
    assert class_names_for(1000, {}) == tuple(str(i) for i in range(1000))  # not an official model: ids
    assert class_names_for(3, {"class_names": ["a", "b", "c"]}) == ("a", "b", "c")
    assert class_names_for(3, {"class_names": ["a", "b"]}) == ("0", "1", "2")  # wrong count: ignored
    assert resolve_class("Golden Retriever", names) == 207
    assert resolve_class("  tinca   tinca ", names) == 0  # any synonym, any case and spacing
    assert resolve_class(" great white shark ", names) == 2
    assert resolve_class("207", names) == 207 and resolve_class(207.0, names) == 207
    assert resolve_class("crane", names) == 134 and resolve_class("517: crane", names) == 517
    labels = [class_label(i, names) for i in range(1000)]
    assert len(set(labels)) == 1000 and [resolve_class(label, names) for label in labels] == list(range(1000))
    assert class_label(3, class_names_for(10)) == "3"


@pytest.mark.parametrize("value", ["golden doodle", "207: tench", "1000: crane", "", "   ", 1000, -2, 2.5, True,
                                   None, [3], {"a": 1}, "9" * 30])
def test_unknown_classes_are_input_errors(value):
    with pytest.raises(InputError):
        resolve_class(value, imagenet_class_names())


def test_parse_request_normalises_client_values(pipe):
    req = parse_request(pipe, Limits(), "3", "2", 7.0, "1.5", top_k=100.0, depth=8, switch_scale=4)
    assert (req.label, req.num_images, req.seed, req.cfg, req.top_k) == (3, 2, 7, 1.5, 100)
    assert req.depth is None and req.switch_scale is None  # full depth: no plan
    assert req.search is None and req.budget is None
    req = parse_request(pipe, Limits(), 5, 1, -1, 0, depth=2, switch_scale=3, search="tts", budget=2)
    assert 0 <= req.seed < 2**32 and (req.depth, req.switch_scale, req.search, req.budget) == (2, 3, "tts", 2.0)
    assert parse_request(pipe, Limits(), 5, 4, 0, 1.5, memory_budget_mib=1).memory_budget_bytes == 2**20


@pytest.mark.parametrize("kwargs", [
    dict(class_=10), dict(class_="ten"), dict(class_=None), dict(class_="x" * 1000), dict(num_images=0),
    dict(num_images=17), dict(num_images=2.5), dict(num_images=float("nan")), dict(num_images="many"),
    dict(num_images=True), dict(seed=-5), dict(seed=2**40), dict(seed=float("inf")), dict(seed="1e3"),
    dict(cfg=float("nan")), dict(cfg=-1), dict(cfg=1e9), dict(cfg=[1.5]), dict(top_k=-1), dict(top_k=10**6),
    dict(top_p=1.5), dict(top_p=float("nan")), dict(more_smooth="yes"), dict(depth=0), dict(depth=9),
    dict(switch_scale=0, depth=2), dict(memory_budget_mib=-1), dict(memory_budget_mib=1, depth=2),
    dict(search="beam"), dict(search="tts", budget=0.5), dict(search="tts", budget=100),
    dict(search="tts", budget=float("nan")), dict(randomize_seed="maybe"),
])
def test_parse_request_refuses_bad_values(pipe, kwargs):
    base = dict(class_=3, num_images=2, seed=0, cfg=1.5)
    with pytest.raises(InputError) as e:
        parse_request(pipe, Limits(), **{**base, **kwargs})
    assert str(e.value) and "\n" not in str(e.value)


def test_an_official_thousand_class_model_takes_imagenet_names(official):
    pipe = official("tiny64_d2")[0]
    assert pipe.meta["source"] == "official" and pipe.class_names == imagenet_class_names()
    assert pipe.parse_labels(["golden retriever", "Tinca tinca", "517: crane", 3]).tolist() == [207, 0, 517, 3]
    req = parse_request(pipe, Limits(), "golden retriever", 1, 0, 4.0)
    assert req.label == 207
    out = pipe.generate(["golden retriever"], seed=0, cfg=4.0)
    assert out.labels.tolist() == [207] and torch.equal(out.images, pipe.generate([207], seed=0, cfg=4.0).images)


def _editor(painted: bool, size: int = 64):
    import numpy as np

    background = np.full((size, size, 3), 200, np.uint8)
    layer = np.zeros((size, size, 4), np.uint8)
    if painted:
        layer[: size // 2, :, 3] = 255
    return {"background": background, "layers": [layer], "composite": background}


def test_parse_edit_request_reads_the_painted_mask_and_the_class(pipe):
    from var_engine_serve.validation import NO_CLASS, parse_edit_request

    req = parse_edit_request(pipe, Limits(), _editor(True), NO_CLASS, 2, 5, 1.5, 0, False)
    assert req.label is None and req.num_images == 2 and req.seed == 5 and req.outpaint == 0
    assert req.mask.shape == (64, 64) and req.mask[:32].min() == 1 and req.mask[32:].max() == 0
    assert req.image.shape == (64, 64, 3) and abs(float(req.image.max()) - 200 / 255) < 1e-6
    req = parse_edit_request(pipe, Limits(), _editor(False), "7", 1, -1, 0, 3, False)
    assert req.label == 7 and req.outpaint == 3 and 0 <= req.seed < 2**32


@pytest.mark.parametrize("editor, class_, kwargs, message", [
    (None, "3", {}, "no image"),
    ("painted", "3", {"outpaint": 16}, "out-paint border"),
    ("plain", "3", {}, "paint over"),
    ("painted", "42", {}, "42"),
    ("painted", "3", {"cfg": float("nan")}, "cfg"),
    ("painted", "3", {"num_images": 99}, "number of images"),
])
def test_parse_edit_request_refuses_bad_values(pipe, editor, class_, kwargs, message):
    from var_engine_serve.validation import parse_edit_request

    value = {"painted": _editor(True), "plain": _editor(False)}.get(editor)
    with pytest.raises(InputError, match=message):
        parse_edit_request(pipe, Limits(), value, class_, **kwargs)


def test_parse_edit_request_refuses_oversized_images(pipe):
    from var_engine_serve.validation import parse_edit_request

    with pytest.raises(InputError, match="pixel limit"):
        parse_edit_request(pipe, Limits(max_upload_pixels=64 * 64), _editor(True, size=96), "3")
