"""The cost model behind ``strategy="auto"``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    """FLOPs of each strategy and the bytes both must move, for one call.

    Attributes
    ----------
    absorbed_flops, decompressed_flops : int
        Multiply-adds count 2 (DESIGN's formulas).
    bytes : int
        Cache read once, plus q, o and the weights.
    """

    absorbed_flops: int
    decompressed_flops: int
    bytes: int

    @property
    def best(self) -> str:
        """The strategy with fewer FLOPs ("absorbed" on ties)."""
        return "decompressed" if self.decompressed_flops < self.absorbed_flops else "absorbed"


def cost(
    *,
    batch: int,
    seq_len: int,
    heads: int,
    q_len: int = 1,
    latent_dim: int = 512,
    rope_dim: int = 64,
    nope_dim: int = 128,
    v_dim: int = 128,
    itemsize: int = 2,
) -> Cost:
    """FLOPs and bytes of an MLA decode call under each strategy.

    Parameters
    ----------
    batch, seq_len, heads, q_len : int
        B, S (cached tokens per request), H and Sq.
    latent_dim, rope_dim, nope_dim, v_dim : int
        L, R, Dn, Dv (DeepSeek-V2/V3 defaults).
    itemsize : int
        Bytes per element of q, cache, weights and output.

    Returns
    -------
    Cost
        ``cost(...).best`` is the strategy ``decode(strategy="auto")`` runs.

    Examples
    --------
    >>> import cumla
    >>> cumla.cost(batch=1, seq_len=4096, heads=128).best
    'absorbed'
    >>> cumla.cost(batch=1, seq_len=4096, heads=128, q_len=256).best
    'decompressed'
    """
    for name, value in (("batch", batch), ("seq_len", seq_len), ("heads", heads), ("q_len", q_len),
                        ("latent_dim", latent_dim), ("rope_dim", rope_dim), ("nope_dim", nope_dim),
                        ("v_dim", v_dim), ("itemsize", itemsize)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    L, R, Dn, Dv, S, H, Sq = latent_dim, rope_dim, nope_dim, v_dim, seq_len, heads, q_len
    absorbed = Sq * H * (2 * L * Dn + S * 2 * (L + R) + S * 2 * L + 2 * L * Dv)
    decompressed = S * 2 * L * H * (Dn + Dv) + Sq * H * S * (2 * (Dn + R) + 2 * Dv)
    moved = (S * (L + R) + Sq * H * (Dn + R + Dv)) * batch + L * H * (Dn + Dv)
    return Cost(absorbed * batch, decompressed * batch, moved * itemsize)
