"""k-means (k-means++ seeding, restarts) in torch, and the member nearest each centre."""
from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator | None = None, restarts: int = 10,
           iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of x (N, D) into k groups: (centres (k, D), assignment (N,)), lowest inertia of `restarts`."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} points, got {k}")
    x = x.float()
    best = None
    for _ in range(restarts):
        centres = _plus_plus(x, k, generator)
        for _ in range(iterations):
            assign = torch.cdist(x, centres).argmin(1)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)  # (k, 1)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # an empty cluster stays put
            if torch.equal(moved, centres):
                break
            centres = moved
        assign = torch.cdist(x, centres).argmin(1)
        inertia = (x - centres[assign]).pow(2).sum().item()
        if best is None or inertia < best[0]:
            best = (inertia, centres, assign)
    return best[1], best[2]


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    chosen = [first]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point coincides with a chosen centre: take any unchosen point
            rest = [i for i in range(n) if i not in chosen]
            nxt = rest[int(torch.randint(len(rest), (1,), generator=generator, device=x.device))]
        else:
            nxt = int(torch.multinomial(d2 / total, 1, generator=generator))
        chosen.append(nxt)
        d2 = torch.minimum(d2, (x - x[nxt]).pow(2).sum(1))
    return x[chosen].clone()


def representatives(x: torch.Tensor, k: int, generator: torch.Generator | None = None, restarts: int = 4) -> torch.Tensor:
    """k distinct row indices of x: the member nearest each k-means centre.

    An empty cluster, or a member already taken, is replaced by the point farthest from those chosen,
    so exactly k distinct rows come back even when points coincide.
    """
    centres, assign = kmeans(x, k, generator, restarts)
    x = x.float()
    dist = torch.cdist(centres, x)  # (k, N)
    chosen: list[int] = []
    for j in range(k):
        members = (assign == j).nonzero().flatten().tolist()
        members = [m for m in members if m not in chosen]
        if members:
            chosen.append(min(members, key=lambda m: (dist[j, m].item(), m)))
    while len(chosen) < k:
        rest = [i for i in range(x.shape[0]) if i not in chosen]
        far = torch.cdist(x[rest], x[chosen]).min(1).values if chosen else torch.zeros(len(rest))
        chosen.append(rest[int(far.argmax())])
    return torch.tensor(sorted(chosen), dtype=torch.long)
