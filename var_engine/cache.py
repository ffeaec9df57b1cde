"""Static KV cache: preallocated per-layer key/value buffers that the sampler owns.

Rows are laid out as CFG halves: rows [0, B) are the conditional samples, rows [B, 2B) their
unconditional twins (only the first half exists when guidance is off). Each layer has its own
token capacity, so a layer that later scales skip (VARiant) holds only the tokens it will see.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


class KVCache:
    """Keys/values of shape (rows, heads, capacity, head_dim) per layer, written scale by scale."""

    def __init__(self, *, batch: int, num_heads: int, head_dim: int, capacities: Sequence[int],
                 cfg_factor: int = 2, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", transient_tail: bool = False, static: bool = False):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if cfg_factor not in (1, 2):
            raise ValueError(f"cfg_factor must be 1 or 2, got {cfg_factor}")
        self.batch, self.cfg_factor = batch, cfg_factor
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.capacities = [int(c) for c in capacities]
        self.k: list[torch.Tensor | None] = [None] * len(self.capacities)
        self.v: list[torch.Tensor | None] = [None] * len(self.capacities)
        self.peak_bytes = 0
        # transient_tail: a write that starts exactly at a layer's capacity (the final scale) is
        # attended without being stored; only one layer's concatenation exists at a time
        self.transient_tail = transient_tail
        # static: buffers never move or get freed (release only stops their use), so captured CUDA
        # graphs and compiled code that hold their addresses stay valid from call to call
        self.static = static
        self.full_batch = batch
        self.released: set[int] = set()
        for layer, cap in enumerate(self.capacities):
            if cap > 0:
                self.allocate(layer, cap)

    @property
    def rows(self) -> int:
        return self.batch * self.cfg_factor

    @property
    def num_layers(self) -> int:
        return len(self.capacities)

    def allocate(self, layer: int, capacity: int) -> None:
        """(Re)allocate one layer's buffers for `capacity` tokens (contents are not kept)."""
        shape = (self.rows, self.num_heads, capacity, self.head_dim)
        self.k[layer] = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.v[layer] = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.capacities[layer] = capacity
        self.released.discard(layer)
        self._track_peak()

    def release(self, layers: Iterable[int]) -> None:
        """Free the buffers of `layers` (a static cache keeps them); they can no longer be used."""
        for layer in layers:
            self.released.add(layer)
            if not self.static:
                self.k[layer] = self.v[layer] = None
                self.capacities[layer] = 0

    def reset(self) -> None:
        """Make a static cache ready for a new sampling call: full batch, every layer usable again."""
        if not self.static:
            raise RuntimeError("only a static cache can be reused; make a new KVCache instead")
        self.batch = self.full_batch
        self.released.clear()
        self.peak_bytes = self.nbytes()

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (rows, H, l, D) at token offset `start`; return views of tokens [0, start + l)."""
        if layer in self.released:
            raise RuntimeError(f"layer {layer}: its cache was released")
        try:
            return self.write_buffers(self.k[layer], self.v[layer], start, k, v)
        except RuntimeError as e:
            raise RuntimeError(f"layer {layer}: {e}") from None

    def write_buffers(self, kb: torch.Tensor | None, vb: torch.Tensor | None, start: int, k: torch.Tensor,
                      v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`write` into one layer's buffers `kb`, `vb` (the part that does not depend on the layer's index)."""
        end = start + k.shape[2]
        rows = self.rows
        if kb is None or end > kb.shape[2]:
            cap = 0 if kb is None else kb.shape[2]
            if self.transient_tail and kb is not None and start == cap:
                k_all, v_all = torch.cat((kb[:rows, :, :start], k), 2), torch.cat((vb[:rows, :, :start], v), 2)
                transient = 2 * k_all.numel() * k_all.element_size()
                self.peak_bytes = max(self.peak_bytes, self.nbytes() + transient)
                return k_all, v_all
            raise RuntimeError(f"writing tokens [{start}, {end}) beyond a layer's capacity {cap}")
        kb[:rows, :, start:end] = k
        vb[:rows, :, start:end] = v
        return kb[:rows, :, :end], vb[:rows, :, :end]

    def layer(self, layer: int) -> "LayerCache":
        """One layer's view of this cache (see LayerCache)."""
        if layer in self.released:
            raise RuntimeError(f"layer {layer}: its cache was released")
        return LayerCache(self, self.k[layer], self.v[layer])

    def reindex(self, idx_B: torch.Tensor) -> None:
        """Gather samples by `idx_B` (any length <= allocated batch, repeats allowed), both CFG halves.

        One index_select per layer writes into the same buffers; the active batch becomes len(idx_B).
        """
        idx_B = idx_B.to(device=self.device, dtype=torch.long)
        n = idx_B.numel()
        capacity_rows = next((kb.shape[0] for kb in self.k if kb is not None), self.rows)
        if n < 1 or n * self.cfg_factor > capacity_rows:
            raise ValueError(f"reindex to {n} samples does not fit a cache of {capacity_rows // self.cfg_factor}")
        if n and (int(idx_B.min()) < 0 or int(idx_B.max()) >= self.batch):
            raise IndexError(f"reindex indices must be in [0, {self.batch})")
        rows_idx = torch.cat([idx_B + h * self.batch for h in range(self.cfg_factor)])
        for buffers in (self.k, self.v):
            for buf in buffers:
                if buf is not None:
                    buf[: rows_idx.numel()] = buf.index_select(0, rows_idx)
        self.batch = n

    def nbytes(self) -> int:
        """Bytes held by the buffers right now."""
        return sum(b.numel() * b.element_size() for b in (*self.k, *self.v) if b is not None)

    def _track_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.nbytes())


class LayerCache:
    """One layer's buffers of a KVCache behind the cache's `write` interface; the layer argument of
    `write` is ignored. Compiled code that receives it sees the buffers as inputs and never the
    layer's index, so one compiled graph serves every layer of the same shape."""

    def __init__(self, cache: KVCache, kb: torch.Tensor | None, vb: torch.Tensor | None):
        self.cache, self.kb, self.vb = cache, kb, vb

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.write_buffers(self.kb, self.vb, start, k, v)


def analytic_kv_bytes(*, batch: int, embed_dim: int, capacities: Sequence[int], cfg_factor: int = 2,
                      dtype: torch.dtype = torch.float32) -> int:
    """2 (k, v) * rows * C * element size * sum of per-layer token capacities."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * batch * cfg_factor * embed_dim * elem * sum(capacities)
