import pytest
import torch

from var_engine.errors import ConfigError
from var_engine.evaluator import Evaluator, EvaluatorConfig, FeatureExtractor, load_evaluator, save_evaluator
from var_engine.metrics import batches, frechet_distance


@pytest.fixture(scope="module")
def evaluator():
    torch.manual_seed(0)
    return Evaluator(EvaluatorConfig(num_classes=3, image_size=16, width=8, num_features=6)).eval()


def test_reward_is_log_probability_of_label(evaluator):
    images = torch.rand(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0])
    r = evaluator.reward(images, labels)
    assert r.shape == (4,) and (r <= 0).all()
    expected = evaluator(images).softmax(-1)[torch.arange(4), labels]
    assert torch.allclose(r.exp(), expected, atol=1e-6)


def test_features_accept_any_size_and_uint8(evaluator):
    with torch.no_grad():
        # uint8 pixels are read as value / 255
        u8 = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
        torch.testing.assert_close(evaluator.features(u8), evaluator.features(u8.float() / 255))
        # other sizes are resized to the trained one: a uniform image is the same at any size
        colours = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]]).view(2, 3, 1, 1)
        f64, f16 = (evaluator.features(colours.expand(2, 3, s, s)) for s in (64, 16))
        assert f64.shape == (2, 6)
        torch.testing.assert_close(f64, f16)
        assert not torch.allclose(f16[0], f16[1])  # and the features see the colour


def test_fid_is_zero_for_identical_sets_and_positive_otherwise(evaluator):
    feats = FeatureExtractor(evaluator)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 3, 16, 16, generator=g)
    b = torch.rand(64, 3, 16, 16, generator=g).mul(0.3)
    assert abs(frechet_distance(feats, batches(a, 32), batches(a, 32))) < 1e-3
    assert frechet_distance(feats, batches(a, 32), batches(b, 32)) > 1e-3


def test_save_load_roundtrip(evaluator, tmp_path):
    save_evaluator(tmp_path, evaluator)
    again = load_evaluator(tmp_path)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(again(x), evaluator(x))


def test_standard_inception_fid_without_weights_is_a_clear_error():
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed here; the missing-weights path cannot be exercised")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="Inception FID is unavailable"):
        frechet_distance(2048, [torch.rand(2, 3, 32, 32)], [torch.rand(2, 3, 32, 32)])
