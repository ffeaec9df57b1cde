"""Dataclass configs of the tokenizer, the transformer and the sampler."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

OFFICIAL_PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
OFFICIAL_PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def _check_patch_nums(patch_nums: tuple[int, ...]) -> tuple[int, ...]:
    patch_nums = tuple(int(p) for p in patch_nums)
    if len(patch_nums) < 2:
        raise ConfigError(f"patch_nums needs at least 2 scales, got {patch_nums}")
    if any(p < 1 for p in patch_nums) or list(patch_nums) != sorted(set(patch_nums)):
        raise ConfigError(f"patch_nums must be strictly increasing positive ints, got {patch_nums}")
    return patch_nums


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
    return cls(**data)


@dataclass
class TokenizerConfig:
    """Multi-scale residual VQVAE; defaults are the official release (vae_ch160v4096z32)."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    beta: float = 0.25  # commitment loss weight
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  # phi(h) = (1 - r) * h + r * conv(h)
    share_quant_resi: int = 4  # 0: one phi per scale, 1: one for all, n: n shared phis
    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS_256

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = _check_patch_nums(self.patch_nums)
        for name in ("vocab_size", "z_channels", "ch", "num_res_blocks", "norm_groups", "quant_conv_ks"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TokenizerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.ch_mult:
            raise ConfigError("TokenizerConfig.ch_mult must not be empty")
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups:
                raise ConfigError(
                    f"channel count {self.ch * m} (ch={self.ch} x ch_mult {m}) is not divisible "
                    f"by norm_groups={self.norm_groups}")
        if self.share_quant_resi < 0:
            raise ConfigError(f"share_quant_resi must be >= 0, got {self.share_quant_resi}")
        if not math.isfinite(self.quant_resi):
            raise ConfigError(f"quant_resi must be finite, got {self.quant_resi}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenizerConfig":
        return _from_dict(cls, data)


@dataclass
class TransformerConfig:
    """AdaLN VAR transformer; width defaults to 64 * depth and heads to depth, as released."""

    depth: int = 16
    embed_dim: int = 0  # 0: 64 * depth
    num_heads: int = 0  # 0: depth
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1
    vocab_size: int = 4096
    z_channels: int = 32
    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS_256

    def __post_init__(self) -> None:
        self.patch_nums = _check_patch_nums(self.patch_nums)
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")
        if self.embed_dim <= 0:
            self.embed_dim = 64 * self.depth
        if self.num_heads <= 0:
            self.num_heads = self.depth
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.cond_drop_rate <= 1.0:
            raise ConfigError(f"cond_drop_rate must be in [0, 1], got {self.cond_drop_rate}")
        if not (self.mlp_ratio > 0 and math.isfinite(self.mlp_ratio)):
            raise ConfigError(f"mlp_ratio must be a positive number, got {self.mlp_ratio}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TransformerConfig":
        """Official layouts: 'd16', 'd20', 'd24', 'd30' (256px) and 'd36' (512px, shared AdaLN)."""
        presets = {
            "d16": dict(depth=16), "d20": dict(depth=20), "d24": dict(depth=24), "d30": dict(depth=30),
            "d36": dict(depth=36, shared_aln=True, patch_nums=OFFICIAL_PATCH_NUMS_512),
        }
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def scale_ranges(self) -> list[tuple[int, int]]:
        """(begin, end) token offsets of every scale in the flattened sequence."""
        out, cur = [], 0
        for p in self.patch_nums:
            out.append((cur, cur + p * p))
            cur += p * p
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerConfig":
        return _from_dict(cls, data)


# "release": the official code's top-p arithmetic and multinomial draw (its tokens for a seed);
# "fast": the same distribution, drawn by inverse CDF from the whole vocabulary with rows outside
# the top-p set redrawn (no sort), one uniform number per token and round
DRAW_METHODS = ("release", "fast")


@dataclass
class SamplingConfig:
    """Sampling settings. cfg ramps linearly from 0 at the first scale to cfg at the last."""

    cfg: float = 1.5
    top_k: int = 900  # 0: off
    top_p: float = 0.96  # 0: off
    more_smooth: bool = False  # gumbel-softmax smoothing (visualisation only)
    draw: str = "release"  # one of DRAW_METHODS

    def __post_init__(self) -> None:
        if isinstance(self.cfg, bool) or not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg):
            raise ConfigError(f"cfg must be a finite number, got {self.cfg!r}")
        if self.cfg < 0:
            raise ConfigError(f"cfg must be >= 0, got {self.cfg}")
        if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        self.top_k = int(self.top_k)
        if not isinstance(self.top_p, (int, float)) or not (0.0 <= self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in [0, 1], got {self.top_p!r}")
        if self.draw not in DRAW_METHODS:
            raise ConfigError(f"draw must be one of {DRAW_METHODS}, got {self.draw!r}")


@dataclass
class ModelConfig:
    """What a var-engine checkpoint directory describes: tokenizer + transformer."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        t, v = self.tokenizer, self.transformer
        if t.patch_nums != v.patch_nums:
            raise ConfigError(f"tokenizer patch_nums {t.patch_nums} != transformer patch_nums {v.patch_nums}")
        if t.vocab_size != v.vocab_size or t.z_channels != v.z_channels:
            raise ConfigError(
                f"tokenizer (vocab {t.vocab_size}, z {t.z_channels}) and transformer "
                f"(vocab {v.vocab_size}, z {v.z_channels}) do not match")

    @property
    def depth(self) -> int:
        return self.transformer.depth

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.transformer.patch_nums

    @property
    def num_classes(self) -> int:
        return self.transformer.num_classes

    @property
    def image_size(self) -> int:
        return self.tokenizer.image_size

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict(), "transformer": self.transformer.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        try:
            return cls(TokenizerConfig.from_dict(dict(data["tokenizer"])),
                       TransformerConfig.from_dict(dict(data["transformer"])))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed model config: {e}") from e
