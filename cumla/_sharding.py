"""Which rank holds which cached token, for context parallelism."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUTS = ("round_robin", "contiguous")


@dataclass(frozen=True)
class TokenSharding:
    """How the tokens of every request are spread over ``world`` ranks.

    ``round_robin``: stripes of ``stripe`` consecutive tokens go to ranks
    0, 1, ..., world-1, 0, ... (a growing sequence keeps every rank busy).
    ``contiguous``: rank r holds tokens ``[r * stripe, (r + 1) * stripe)``
    (``stripe`` is then the tokens per rank).

    Either way a rank's tokens of one request are a prefix-closed subsequence:
    the tokens a query may see (a global prefix) are a prefix of every rank's
    local tokens, so a shard runs the ordinary kernels on its local lengths.

    Examples
    --------
    >>> from cumla.distributed import TokenSharding
    >>> s = TokenSharding(world=2, layout="round_robin", stripe=2)
    >>> s.owner([0, 1, 2, 3, 4]).tolist()
    [0, 0, 1, 1, 0]
    >>> s.local_count([5, 5], rank=1).tolist()
    [2, 2]
    """

    world: int
    layout: str = "round_robin"
    stripe: int = 64

    def __post_init__(self):
        if isinstance(self.world, bool) or not isinstance(self.world, int) or self.world < 1:
            raise ValueError(f"world must be a positive int, got {self.world!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if isinstance(self.stripe, bool) or not isinstance(self.stripe, int) or self.stripe < 1:
            raise ValueError(f"stripe must be a positive int, got {self.stripe!r}")

    def owner(self, positions: Any) -> np.ndarray:
        """Rank holding each global token position (host int64 array)."""
        positions = np.asarray(positions, dtype=np.int64)
        if (positions < 0).any():
            raise ValueError("token positions must be non-negative")
        if self.layout == "round_robin":
            return (positions // self.stripe) % self.world
        ranks = positions // self.stripe
        if (ranks >= self.world).any():
            raise ValueError(f"position {int(positions.max())} is past the last rank's tokens "
                             f"({self.world} ranks x {self.stripe} tokens, contiguous)")
        return ranks

    def local_count(self, visible: Any, rank: int) -> np.ndarray:
        """How many of rank ``rank``'s tokens lie among the first ``visible`` global ones."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank must be in [0, {self.world}), got {rank}")
        visible = np.maximum(np.asarray(visible, dtype=np.int64), 0)
        if self.layout == "contiguous":
            return np.clip(visible - rank * self.stripe, 0, self.stripe)
        cycle = self.stripe * self.world
        return visible // cycle * self.stripe + np.clip(visible % cycle - rank * self.stripe, 0, self.stripe)
