"""Weight absorption: fold W_uk into the query and W_uv into the output."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import array_module
from ._gemm import batched_matmul


def absorb(w_kv: Any, heads: int, v_dim: int) -> tuple[Any, Any]:
    """Split ``w_kv`` into the absorbed-layout factors W_uk and W_uv.

    Parameters
    ----------
    w_kv : ndarray, shape (L, H*(Dn+Dv)) or (L, H, Dn+Dv)
        Per-head blocks ``[W_uk_h (L x Dn) | W_uv_h (L x Dv)]``.
    heads : int
        H, the number of heads.
    v_dim : int
        Dv, the per-head value dimension.

    Returns
    -------
    w_uk : ndarray, shape (H, Dn, L)
        ``q_latent_nope[h] = q_nope[h] @ w_uk[h]`` (a transposed view, no copy).
    w_uv : ndarray, shape (H, L, Dv)
        ``o[h] = o_latent[h] @ w_uv[h]`` (a view, no copy).

    Raises
    ------
    TypeError
        If ``w_kv`` is not a NumPy or CuPy array.
    ValueError
        If its shape does not split into ``heads`` blocks wider than ``v_dim``.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> w_uk, w_uv = cumla.absorb(np.zeros((512, 4 * 256), np.float32), heads=4, v_dim=128)
    >>> w_uk.shape, w_uv.shape
    ((4, 128, 512), (4, 512, 128))
    """
    array_module(w_kv=w_kv)
    if w_kv.ndim not in (2, 3):
        raise ValueError(f"w_kv must have shape (L, H*(Dn+Dv)) or (L, H, Dn+Dv), got {w_kv.shape}")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    latent = w_kv.shape[0]
    if w_kv.ndim == 3 and w_kv.shape[1] != heads or w_kv.ndim == 2 and w_kv.shape[1] % heads:
        raise ValueError(f"w_kv of shape {w_kv.shape} does not hold heads={heads} blocks")
    w3 = w_kv.reshape(latent, heads, -1)
    if not 1 <= v_dim < w3.shape[2]:
        raise ValueError(f"v_dim must be in [1, {w3.shape[2] - 1}] for w_kv of shape {w_kv.shape}, got {v_dim}")
    nope = w3.shape[2] - v_dim
    return w3[:, :, :nope].transpose(1, 2, 0), w3[:, :, nope:].transpose(1, 0, 2)


def absorb_query(q: Any, w_uk: Any, rope_dim: int, xp: Any, out: Any = None) -> Any:
    """[q_nope @ W_uk | q_rope]: (B, Sq, H, Dn+R) -> (B, Sq, H, L+R).

    NumPy: float32. CuPy: q's dtype, one cuBLAS call accumulating in float32
    and writing the latent part in place (no float32 copies of q or W_uk),
    into ``out`` when it is a C-contiguous array of that dtype and shape.
    """
    batch, q_len, heads, qk_dim = q.shape
    nope, latent = qk_dim - rope_dim, w_uk.shape[2]
    if xp is np:
        qn = q[..., :nope].astype(np.float32).transpose(2, 0, 1, 3).reshape(heads, batch * q_len, nope)
        q_lat = xp.matmul(qn, w_uk.astype(np.float32))  # (H, B*Sq, L)
        q_lat = q_lat.reshape(heads, batch, q_len, latent).transpose(1, 2, 0, 3)
        return xp.concatenate([q_lat, q[..., nope:].astype(np.float32)], axis=-1)
    q = xp.ascontiguousarray(q)
    shape = (batch, q_len, heads, latent + rope_dim)
    q_lat = out
    if q_lat is None or q_lat.dtype != q.dtype or q_lat.shape != shape or not q_lat.flags.c_contiguous:
        q_lat = xp.empty(shape, dtype=q.dtype)
    rows = batch * q_len
    batched_matmul(q.reshape(rows, heads, qk_dim)[:, :, :nope].transpose(1, 0, 2),
                   w_uk.astype(q.dtype, copy=False),
                   q_lat.reshape(rows, heads, latent + rope_dim)[:, :, :latent].transpose(1, 0, 2))
    q_lat[..., latent:] = q[..., nope:]
    return q_lat


def unabsorb(o_lat: Any, w_uv: Any, xp: Any, out: Any = None) -> Any:
    """o_latent @ W_uv per head: (B, Sq, H, L) -> (B, Sq, H, Dv).

    NumPy: float32. CuPy: o_lat's dtype (float32 accumulation), written into
    ``out`` when it is a C-contiguous array of that dtype and shape.
    """
    batch, q_len, heads, latent = o_lat.shape
    v_dim = w_uv.shape[2]
    if xp is np:
        flat = o_lat.astype(np.float32).transpose(2, 0, 1, 3).reshape(heads, batch * q_len, latent)
        o = xp.matmul(flat, w_uv.astype(np.float32))  # (H, B*Sq, Dv)
        return o.reshape(heads, batch, q_len, v_dim).transpose(1, 2, 0, 3)
    shape = (batch, q_len, heads, v_dim)
    if out is None or out.dtype != o_lat.dtype or out.shape != shape or not out.flags.c_contiguous:
        out = xp.empty(shape, dtype=o_lat.dtype)
    rows = batch * q_len
    batched_matmul(xp.ascontiguousarray(o_lat).reshape(rows, heads, latent).transpose(1, 0, 2),
                   w_uv.astype(o_lat.dtype, copy=False), out.reshape(rows, heads, v_dim).transpose(1, 0, 2))
    return out
