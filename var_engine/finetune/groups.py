"""Which transformer tensors a subject fine-tune trains, and how: full tensors or low-rank updates.

Groups are named by what they do (official parameter names):
- class: the subject's class-embedding row (one new row for a new class id; the rest stay untouched);
- ffn: every block's feed-forward layers; adaln: the AdaLN projections (`ada_lin`, `head_nm.ada_lin`,
  shared ones); attn: self-attention; head: the output head; embed: token, position and level embeddings;
- all: every group.
With rank > 0 the 2-D weights of the chosen groups get a trainable update W + (B @ A) * scale (LoRA-style,
B starts at zero) and the adapter stores A and B; 1-D tensors (biases, gains) are trained as they are.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..checkpoints import CLASS_ROWS_KEY
from ..errors import ConfigError
from ..transformer import VARTransformer

GROUP_PATTERNS = {
    "ffn": r"blocks\.\d+\.ffn\.",
    "adaln": r"(blocks\.\d+\.ada_lin\.|blocks\.\d+\.ada_gss$|head_nm\.ada_lin\.|shared_ada_lin\.)",
    "attn": r"blocks\.\d+\.attn\.",
    "head": r"head\.",
    "embed": r"(word_embed\.|pos_start$|pos_1LC$|lvl_embed\.)",
}
GROUPS = ("class", *GROUP_PATTERNS)
DEFAULT_GROUPS = ("class", "ffn", "adaln")


def parse_groups(groups: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'class,ffn,adaln' or a sequence; 'all' expands to every group. ConfigError for unknown names."""
    names = [g.strip() for g in (groups.split(",") if isinstance(groups, str) else groups) if g.strip()]
    if "all" in names:
        names = list(GROUPS)
    bad = [g for g in names if g not in GROUPS]
    if bad or not names:
        raise ConfigError(f"unknown trainable group(s) {bad or names}; choose from {', '.join(GROUPS)} or all")
    return tuple(g for g in GROUPS if g in names)


def group_parameter_names(model: VARTransformer, groups: tuple[str, ...]) -> list[str]:
    """Parameter names of `model` in `groups` (the class group is handled separately)."""
    patterns = [GROUP_PATTERNS[g] for g in groups if g != "class"]
    return [n for n, _ in model.named_parameters() if any(re.match(p, n) for p in patterns)]


class LowRankUpdate(nn.Module):
    """Parametrization W -> W + (B @ A) * scale with trainable A (rank, in) and B (out, rank), B = 0 at start."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.scale = scale
        self.A = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return merge_low_rank(W, self.A, self.B, self.scale)


def merge_low_rank(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """W + (B @ A) * scale: the one formula training and adapter loading both use (bit-identical results)."""
    return W + (B @ A) * scale


class ClassRows(nn.Module):
    """Parametrization of the class-embedding table: rows `ids` replaced by trainable vectors, the table grown
    for ids past its end (new classes); every other row, the null row included, is the base row."""

    def __init__(self, ids: list[int], init: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.rows = nn.Parameter(init.detach().clone())

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return set_class_rows(W, self.ids, self.rows)


def set_class_rows(W: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The base table W (N+1, C) grown to max(ids)+1 rows (zeros) with rows `ids` set."""
    total = max(W.shape[0], int(ids.max()) + 1)
    if total > W.shape[0]:
        W = torch.cat((W, W.new_zeros(total - W.shape[0], W.shape[1])))
    return W.index_copy(0, ids.to(W.device), rows.to(W.dtype))


class TrainableSet:
    """The parametrized model's trainable tensors, and the adapter tensors they become."""

    def __init__(self, model: VARTransformer, groups: tuple[str, ...], rank: int, class_id: int,
                 class_init: torch.Tensor | None, lora_alpha: float = 1.0, seed: int = 0):
        if rank < 0:
            raise ConfigError(f"rank must be >= 0 (0: full tensors), got {rank}")
        self.model, self.groups, self.rank, self.class_id = model, groups, rank, class_id
        self.lora_scale = lora_alpha / max(rank, 1)
        g = torch.Generator().manual_seed(seed)
        self.full: dict[str, nn.Parameter] = {}
        self.low_rank: dict[str, LowRankUpdate] = {}
        params = dict(model.named_parameters())
        for name in group_parameter_names(model, groups):
            p = params[name]
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            if rank > 0 and p.ndim == 2 and isinstance(module, nn.Linear):
                update = LowRankUpdate(p.shape[0], p.shape[1], rank, self.lora_scale, g).to(p.device)
                parametrize.register_parametrization(module, attr, update)
                self.low_rank[name] = update
            else:
                self.full[name] = p
        self.class_rows: ClassRows | None = None
        if "class" in groups:
            init = model.class_emb.weight[class_id] if class_init is None else class_init
            self.class_rows = ClassRows([class_id], init.view(1, -1))
            parametrize.register_parametrization(model.class_emb, "weight", self.class_rows, unsafe=True)

    def parameters(self) -> list[nn.Parameter]:
        out = list(self.full.values())
        for u in self.low_rank.values():
            out += [u.A, u.B]
        if self.class_rows is not None:
            out.append(self.class_rows.rows)
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Name -> tensor as stored in an adapter file."""
        out = {name: p.detach().clone() for name, p in self.full.items()}
        for name, u in self.low_rank.items():
            out[name + ".lora_A"] = u.A.detach().clone()
            out[name + ".lora_B"] = u.B.detach().clone()
        if self.class_rows is not None:
            out[CLASS_ROWS_KEY] = self.class_rows.rows.detach().clone()
        return out

    def class_row_ids(self) -> list[int]:
        return [self.class_id] if self.class_rows is not None else []
