"""The sampler's population: everything per-sample in the scale loop, gathered together.

Search methods shrink, reorder and duplicate the population between scales. `Population.select`
gathers every per-sample tensor, the conditioning rows of both CFG halves, the random streams and
the KV cache by the same indices, so every hook sees one consistent population.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..cache import KVCache
from ..transformer import Conditioning

Decoder = Callable[[torch.Tensor], torch.Tensor]  # f_hat (B, C, h, w) -> images (B, 3, H, W) in [0, 1]


def forked_generator(parent: torch.Generator, copy: int, scale_index: int, selection: int = 0) -> torch.Generator:
    """A new random stream for copy `copy` (>= 1) of a sample duplicated after `scale_index`, in the
    scale's `selection`-th select (0: the first).

    Derived from the parent's seed and state without drawing from it, so the parent's own stream
    (copy 0) is unchanged and a run stays reproducible for a seed; a second select in the same scale
    forks other streams than the first.
    """
    tag = f"{copy}:{scale_index}" if selection == 0 else f"{copy}:{scale_index}:{selection}"
    digest = hashlib.blake2b(parent.get_state().numpy().tobytes(), digest_size=8,
                             person=tag.encode()[:16]).digest()
    child = torch.Generator(device=parent.device)
    child.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return child


def cloned_generator(parent: torch.Generator) -> torch.Generator:
    """A generator at the same state as `parent` (the copy continues exactly like the original)."""
    child = torch.Generator(device=parent.device)
    child.set_state(parent.get_state())
    return child


@dataclass
class Population:
    """Per-sample state of one sampling call at the current scale (B = current population size).

    Rows of `cond` are laid out as the cache's: [0, B) conditional, [B, 2B) unconditional (only the
    first half when guidance is off). `group` says which request each sample serves (the label's
    position in the call, unless the caller set groups); `lineage` names each line of descent:
    a sample keeps its id through selections, extra copies of a duplicated sample get new ids.
    """

    labels: torch.Tensor  # (B,)
    cond: Conditioning
    cache: KVCache
    halves: int  # 2 with classifier-free guidance, else 1
    f_hat: torch.Tensor  # (B, C, h, w): accumulated latent through the last drawn scale
    generators: torch.Generator | list[torch.Generator] | None
    group: torch.Tensor  # (B,) long
    lineage: torch.Tensor  # (B,) long
    drawn: list[torch.Tensor] = field(default_factory=list)  # per scale drawn so far, (B, pn^2)
    logits: torch.Tensor | None = None  # (B, l, V) guided, filtered logits of the last scale
    next_map: torch.Tensor | None = None  # (B, C, pn', pn'): the next scale's input latent
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # scale_index -> (B,) recorded scores
    decoder: Decoder | None = None
    inputs: list[torch.Tensor] | None = None  # per scale k >= 1, its input latent (kept only when asked)
    decode_count: int = 0  # images decoded for hooks in this call
    decode_seconds: float = 0.0
    next_lineage: int = 0
    selections: int = 0  # select() calls so far
    selections_this_scale: int = 0
    cache_in_use: bool = True  # False after the last scale: a select then leaves the KV cache alone
    _images: torch.Tensor | None = None  # decoded f_hat, kept until f_hat changes

    def __post_init__(self) -> None:
        self.next_lineage = max(self.next_lineage, int(self.lineage.max()) + 1 if self.lineage.numel() else 0)

    @property
    def batch(self) -> int:
        return self.labels.shape[0]

    @property
    def scale_index(self) -> int:
        """Index of the last scale drawn (-1 before the first)."""
        return len(self.drawn) - 1

    @property
    def tokens(self) -> torch.Tensor:
        """All tokens drawn so far, coarse to fine: (B, L_so_far)."""
        return torch.cat(self.drawn, 1) if self.drawn else self.labels.new_zeros(self.batch, 0)

    def advance(self, idx_Bl: torch.Tensor, logits_BlV: torch.Tensor, f_hat: torch.Tensor,
                next_map: torch.Tensor | None) -> None:
        """Record a newly drawn scale (the sampler calls this once per scale)."""
        self.drawn.append(idx_Bl)
        self.logits, self.f_hat, self.next_map = logits_BlV, f_hat, next_map
        self.selections_this_scale = 0
        if self.inputs is not None and next_map is not None:
            self.inputs.append(next_map)
        self._images = None

    def images(self) -> torch.Tensor:
        """The current partial images in [0, 1], (B, 3, H, W): f_hat decoded once per scale on first request.

        Costs one decoder pass over the population (on CPU the decoder dominates a small model's time);
        hooks that never call it cost nothing.
        """
        if self._images is None:
            if self.decoder is None:
                raise RuntimeError("this sampling call has no decoder: pass decoder= to sample()")
            t = time.perf_counter()
            self._images = self.decoder(self.f_hat)
            self.decode_seconds += time.perf_counter() - t
            self.decode_count += self.batch
        return self._images

    def cached_images(self) -> torch.Tensor | None:
        """The partial images if a hook already decoded the current f_hat, else None (no decode)."""
        return self._images

    def record_score(self, scores: torch.Tensor, scale_index: int | None = None) -> None:
        """Store per-sample scores (B,) for a scale (default: the last drawn); they follow `select`."""
        scores = torch.as_tensor(scores, dtype=torch.float32, device=self.labels.device).flatten()
        if scores.numel() != self.batch:
            raise ValueError(f"{scores.numel()} scores for a population of {self.batch}")
        self.scores[self.scale_index if scale_index is None else scale_index] = scores

    def score_history(self) -> torch.Tensor:
        """Recorded scores as (B, S) in scale order (S = scales with scores)."""
        if not self.scores:
            return torch.empty(self.batch, 0, device=self.labels.device)
        return torch.stack([self.scores[s] for s in sorted(self.scores)], 1)

    def select(self, indices: torch.Tensor | Sequence[int], *, fork_streams: bool = True) -> None:
        """Continue with samples `indices` (repeats allowed; 1 to B of them), gathering everything.

        With per-sample generators, the first copy of a sample keeps its stream and lineage; later
        copies get a stream forked from it (fork_streams, so duplicates diverge) or an exact clone of
        it (fork_streams=False: a copy continues exactly like its original), and new lineage ids.
        """
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device).flatten()
        self.selections += 1
        n = idx.numel()
        if not 1 <= n <= self.cache.batch:
            raise ValueError(f"a population of {self.batch} can continue with 1 to {self.cache.batch} samples, "
                             f"not {n}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.batch:
            raise IndexError(f"population indices must be in [0, {self.batch}), got {idx.tolist()}")
        copies = Counter()
        copy_number = []
        for i in idx.tolist():
            copy_number.append(copies[i])
            copies[i] += 1
        if isinstance(self.generators, list):
            gens = []
            for i, c in zip(idx.tolist(), copy_number):
                parent = self.generators[i]
                if c == 0:
                    gens.append(parent)
                else:
                    gens.append(forked_generator(parent, c, self.scale_index, self.selections_this_scale)
                                if fork_streams
                                else cloned_generator(parent))
            self.generators = gens
        lineage = self.lineage.index_select(0, idx).clone()
        for j, c in enumerate(copy_number):
            if c > 0:
                lineage[j] = self.next_lineage
                self.next_lineage += 1
        rows = torch.cat([idx + h * self.batch for h in range(self.halves)])
        self.cond = self.cond.index_select(rows)
        if self.cache_in_use:
            self.cache.reindex(idx)
        else:
            self.cache.batch = n
        self.labels = self.labels.index_select(0, idx)
        self.group = self.group.index_select(0, idx)
        self.lineage = lineage
        self.f_hat = self.f_hat.index_select(0, idx)
        self.drawn = [d.index_select(0, idx) for d in self.drawn]
        if self.inputs is not None:
            self.inputs = [m.index_select(0, idx) for m in self.inputs]
        self.scores = {s: v.index_select(0, idx) for s, v in self.scores.items()}
        if self.logits is not None:
            self.logits = self.logits.index_select(0, idx)
        if self.next_map is not None:
            self.next_map = self.next_map.index_select(0, idx)
        if self._images is not None:
            self._images = self._images.index_select(0, idx)
        self.selections_this_scale += 1
