"""Putting an adapter's tensors into a loaded transformer and taking them out again, bit for bit."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoints import CLASS_ROWS_KEY, Adapter, model_fingerprint, read_adapter
from ..transformer import VARTransformer
from .groups import merge_low_rank, set_class_rows


class AdapterSwitch:
    """Swaps adapters in and out of one transformer; the base tensors are kept and restored exactly.

    Same-shape tensors are overwritten in place (their storage stays, so captured kernels keep working); a
    class-embedding table grown for new class ids replaces the parameter and the original object comes back.
    Not thread-safe by itself: callers serialise (the pipeline holds its generation lock).
    """

    def __init__(self, model: VARTransformer):
        self.model = model
        self.fingerprint = model_fingerprint(model)  # of the base: no adapter is in yet
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        self.base: dict[str, torch.Tensor] = {}  # clones of the base values of every tensor an adapter changed
        self.base_class_emb = model.class_emb.weight
        self.active: Adapter | None = None

    def load(self, adapter: Adapter | str | Path) -> Adapter:
        """An Adapter (read from a path if needed), checked against this base model."""
        if not isinstance(adapter, Adapter):
            adapter = read_adapter(adapter)
        adapter.check_fits(self.shapes, self.model.num_classes, self.fingerprint)
        return adapter

    @torch.no_grad()
    def apply(self, adapter: Adapter | None) -> None:
        """Make `adapter` (checked with `load`) the active one; None restores the base model."""
        if adapter is self.active:
            return
        self._restore()
        if adapter is None:
            return
        params = dict(self.model.named_parameters())
        try:
            for key, t in adapter.tensors.items():
                if key == CLASS_ROWS_KEY or key.endswith(".lora_B"):
                    continue
                if key.endswith(".lora_A"):
                    name = key[: -len(".lora_A")]
                    p = params[name]
                    self._keep(name, p)
                    value = merge_low_rank(self.base[name], t.to(p), adapter.tensors[name + ".lora_B"].to(p),
                                           float(adapter.meta.get("lora_scale", 1.0)))
                else:
                    name, p = key, params[key]
                    self._keep(name, p)
                    value = t
                p.copy_(value.to(p))
            if adapter.class_rows:
                base = self.base_class_emb
                ids = torch.tensor(adapter.class_rows, dtype=torch.long, device=base.device)
                table = set_class_rows(base.detach(), ids, adapter.tensors[CLASS_ROWS_KEY].to(base))
                self.model.class_emb.weight = nn.Parameter(table, requires_grad=False)
        except BaseException:
            self._restore()
            raise
        self.active = adapter

    def _keep(self, name: str, p: torch.Tensor) -> None:
        if name not in self.base:
            self.base[name] = p.detach().clone()

    @torch.no_grad()
    def _restore(self) -> None:
        params = dict(self.model.named_parameters())
        for name, value in self.base.items():
            params[name].copy_(value)
        self.model.class_emb.weight = self.base_class_emb
        self.active = None

    def new_class_ids(self) -> list[int]:
        """Class ids past the null class that the active adapter adds."""
        n = self.model.num_classes
        return [i for i in (self.active.class_rows if self.active else []) if i > n]
