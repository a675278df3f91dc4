"""Rotary position embedding (rotate-half convention) for the decoupled RoPE part."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import ingest


def rope(x: Any, positions: Any, *, base: float = 10000.0) -> Any:
    """Rotate the last axis of ``x`` by integer ``positions`` (rotate-half convention).

    For R = x.shape[-1] (even), frequency i < R/2 is ``base ** (-2i / R)``;
    with ``a = position * freq`` duplicated over both halves,
    ``out = x * cos(a) + rotate_half(x) * sin(a)``, ``rotate_half([x1, x2]) = [-x2, x1]``.

    Parameters
    ----------
    x : ndarray, shape (..., R)
        Query or key RoPE parts (any float dtype; computed in float32).
    positions : ndarray of integers
        Broadcastable to ``x.shape[:-1]`` (e.g. (n,) for x of shape (n, R) or
        (n, H, R) with positions[:, None]).
    base : float, optional
        RoPE base (10000 for DeepSeek's unscaled RoPE).

    Returns
    -------
    ndarray
        Same shape and dtype as ``x``, on the same array module.

    Raises
    ------
    TypeError, ValueError
        Non-integer positions, odd R, or shapes that do not broadcast.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> x = np.ones((1, 4), np.float32)
    >>> np.allclose(cumla.rope(x, np.array([0])), x)
    True
    """
    xp, a = ingest(x=x, positions=positions)
    x, positions = a["x"], a["positions"]
    if positions.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers, got {positions.dtype}")
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"the RoPE part must have an even width, got {dim}")
    if not np.isfinite(base) or base <= 0:
        raise ValueError(f"base must be positive and finite, got {base}")
    try:
        np.broadcast_shapes(tuple(positions.shape), tuple(x.shape[:-1]))
    except ValueError:
        raise ValueError(f"positions {tuple(positions.shape)} do not broadcast to x's {tuple(x.shape[:-1])}") from None
    freqs = xp.asarray(base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim))
    angles = positions.astype(np.float64)[..., None] * freqs  # (..., R/2); float64: long positions
    cos = xp.concatenate([xp.cos(angles)] * 2, axis=-1).astype(np.float32)
    sin = xp.concatenate([xp.sin(angles)] * 2, axis=-1).astype(np.float32)
    x32 = x.astype(np.float32)
    half = dim // 2
    rotated = xp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)
