"""The editing forcing rule: teacher-force the input's tokens outside the mask at every scale."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..sampling.forcing import ForceStep
from ..tokenizer.quantizer import MultiScaleQuantizer
from .masks import FEATHER_POSITIONS, SCALE_MASK_RULES, dilate, keep_maps

log = logging.getLogger(__name__)

LOOPS = ("open", "closed")


@dataclass
class EditConfig:
    """How an edit forces the kept region and blends the result (defaults: the best measured in bench.edit).

    loop: 'open' forces the input's own tokens (its residual chain, as the official notebook does);
    'closed' re-quantizes the kept region's residual against the running f_hat at each scale.
    scale_mask: how the keep map is made at coarser scales ('bilinear', the notebook's, or 'inside').
    force_first_scale: always force the 1x1 first scale (the notebook does).
    dilate: pixels added around the regenerated region before the token maps are made.
    paste_back: blend the input's kept pixels into the result, with a ramp of 2 * feather + 1 px
    placed by feather_position ('centred' on the edge, 'inside' the regenerated region, 'outside' it).
    """

    loop: str = "closed"
    scale_mask: str = "bilinear"
    force_first_scale: bool = True
    dilate: int = 0
    paste_back: bool = True
    feather: int = 2
    feather_position: str = "inside"

    def __post_init__(self) -> None:
        if self.loop not in LOOPS:
            raise ConfigError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.scale_mask not in SCALE_MASK_RULES:
            raise ConfigError(f"scale_mask must be one of {SCALE_MASK_RULES}, got {self.scale_mask!r}")
        if self.feather_position not in FEATHER_POSITIONS:
            raise ConfigError(f"feather_position must be one of {FEATHER_POSITIONS}, got {self.feather_position!r}")
        for name in ("dilate", "feather"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
                raise ConfigError(f"{name} must be an integer number of pixels in [0, 64], got {value!r}")

    @classmethod
    def official(cls) -> "EditConfig":
        """The official notebook's mechanics: open loop, bilinear keep maps, 1x1 forced, no paste-back."""
        return cls(loop="open", scale_mask="bilinear", force_first_scale=True, paste_back=False)


class EditForcer:
    """A `TokenForcer` for a batch of edit requests: where the keep map of a scale says so, the drawn
    token and embedding are replaced by the input's (open loop) or by the quantized residual of the
    input's latent against the running f_hat (closed loop). Samples find their request through the
    population's `group`, so search methods may select and duplicate samples freely.
    """

    def __init__(self, quantizer: MultiScaleQuantizer, latent: torch.Tensor, mask: torch.Tensor,
                 config: EditConfig):
        """latent: (R, C, H, H) encoder latents of the R requests' inputs; mask: (R, 1, S, S), 1 = regenerate."""
        self.quantizer, self.config = quantizer, config
        self.latent = latent  # (R, C, H, H)
        self.keep = keep_maps(dilate(mask.float(), config.dilate), quantizer.patch_nums, config.scale_mask,
                              config.force_first_scale)  # per scale (R, pn*pn) bool
        self.own_tokens = quantizer.f_to_idx(latent) if config.loop == "open" else None
        thin = (~self.keep[-1].any(1)).nonzero().flatten().tolist()
        if thin:
            cell = mask.shape[-1] // quantizer.patch_nums[-1]
            log.warning("the kept region of request(s) %s holds no whole %dx%d-pixel token cell: only the first scale "
                        "and the paste-back keep it", thin[:8], cell, cell)

    def forced_tokens(self, step: ForceStep) -> torch.Tensor:
        """The input's tokens (B, pn*pn) for the step's samples under this rule (whatever the keep map)."""
        si, pn, group = step.scale_index, step.patch_num, step.group_B
        if self.own_tokens is not None:
            return self.own_tokens[si].index_select(0, group)
        rest = self.latent.index_select(0, group).to(step.f_hat_BChw.dtype) - step.f_hat_BChw  # (B, C, H, H)
        if pn != rest.shape[-1]:
            rest = F.interpolate(rest, size=(pn, pn), mode="area")
        C = rest.shape[1]
        return self.quantizer.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C)).view(-1, pn * pn)

    def force(self, step: ForceStep) -> tuple[torch.Tensor, torch.Tensor]:
        keep = self.keep[step.scale_index].index_select(0, step.group_B)  # (B, pn*pn)
        if not bool(keep.any()):
            return step.idx_Bl, step.h_BChw
        forced = self.forced_tokens(step)
        idx = torch.where(keep, forced, step.idx_Bl)
        h_forced = self.quantizer.embed(forced, step.patch_num).to(step.h_BChw.dtype)
        pn = step.patch_num
        h = torch.where(keep.view(-1, 1, pn, pn), h_forced, step.h_BChw)
        return idx, h

