"""FP8 latent cache rows: e4m3 latent values with float32 scales, bfloat16 RoPE.

A row of ``Fp8Format(L, R, group)`` is ``row_bytes = L + 4 * (L // group) +
2 * R`` bytes: the L latent values as e4m3 (each group of ``group`` values
divided by its own scale, amax / 448), the L // group float32 scales, then
the R RoPE values as bfloat16. ``Fp8Format(512, 64, 128)`` is FlashMLA's
656-byte row; ``group = L`` gives one scale per token. Rows are stored as
uint8 because CuPy has no float8 arrays: the e4m3 codes are made and read
with array operations (a table of the 256 code values, a sorted search with
ties to even), the same on NumPy and CuPy, bit for bit ml_dtypes' rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ._arrays import BFLOAT16

from ._arrays import array_module

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_MAX = 448.0
#: Value of every e4m3 code (0x7F and 0xFF are NaN); codes 0..126 are the
#: finite non-negative values in increasing order.
E4M3_VALUES = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)


def e4m3_encode(x: Any) -> Any:
    """float32 -> uint8 e4m3 codes, round to nearest with ties to even, magnitudes
    clamped to 448, NaN to 0x7F (NumPy or CuPy)."""
    xp = array_module(x=x)
    finite = xp.asarray(E4M3_VALUES[:127])
    a = xp.minimum(xp.abs(x), np.float32(E4M3_MAX))
    hi = xp.minimum(xp.searchsorted(finite, a), 126)  # first code whose value >= a
    lo = xp.maximum(hi - 1, 0)
    below, above = a - finite[lo], finite[hi] - a
    # Consecutive codes are consecutive values: the even code has the even mantissa.
    code = xp.where((below < above) | ((below == above) & (lo % 2 == 0)), lo, hi)
    code = xp.where(xp.isnan(x), 127, code) | (xp.signbit(x).astype(code.dtype) << 7)
    return code.astype(np.uint8)


def e4m3_decode(codes: Any) -> Any:
    """uint8 e4m3 codes -> float32 (NumPy or CuPy)."""
    xp = array_module(codes=codes)
    return xp.asarray(E4M3_VALUES)[codes]


@dataclass(frozen=True)
class Fp8Format:
    """Byte layout of FP8 cache rows (see the module docstring)."""

    latent_dim: int
    rope_dim: int
    group: int

    def __post_init__(self):
        for name in ("latent_dim", "rope_dim", "group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "rope_dim" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'rope_dim' else 'positive'} int, "
                                 f"got {value!r}")
        if self.latent_dim % self.group:
            raise ValueError(f"group ({self.group}) must divide latent_dim ({self.latent_dim})")

    @property
    def groups(self) -> int:
        return self.latent_dim // self.group

    @property
    def row_bytes(self) -> int:
        return self.latent_dim + 4 * self.groups + 2 * self.rope_dim

    @property
    def width(self) -> int:
        """L + R: the width of a dequantised row."""
        return self.latent_dim + self.rope_dim

    def quantize(self, rows: Any) -> Any:
        """(..., L+R) floats -> (..., row_bytes) uint8, on the rows' array module."""
        xp = array_module(rows=rows)
        if rows.shape[-1] != self.width:
            raise ValueError(f"rows must have L+R = {self.width} columns, got shape {rows.shape}")
        lead = rows.shape[:-1]
        latent = rows[..., : self.latent_dim].astype(np.float32).reshape(lead + (self.groups, self.group))
        amax = xp.abs(latent).max(axis=-1, keepdims=True)
        scale = xp.where(amax > 0, amax / np.float32(E4M3_MAX), np.float32(1)).astype(np.float32)
        codes = e4m3_encode(latent / scale).reshape(lead + (self.latent_dim,))
        scales = xp.ascontiguousarray(scale.reshape(lead + (self.groups,))).view(np.uint8)
        rope = xp.ascontiguousarray(rows[..., self.latent_dim:].astype(BFLOAT16)).view(np.uint8)
        return xp.concatenate([codes, scales, rope], axis=-1)

    def dequantize(self, data: Any, dtype: Any = np.float32) -> Any:
        """(..., row_bytes) uint8 -> (..., L+R) in ``dtype``, on the data's array module."""
        xp = array_module(data=data)
        data = xp.ascontiguousarray(data)
        if data.dtype != np.uint8 or data.shape[-1] != self.row_bytes:
            raise ValueError(f"FP8 rows must be uint8 with {self.row_bytes} bytes, got {data.dtype} {data.shape}")
        lead = data.shape[:-1]
        L, G = self.latent_dim, self.groups
        values = e4m3_decode(data[..., :L]).reshape(lead + (G, self.group))
        scale = xp.ascontiguousarray(data[..., L : L + 4 * G]).view(np.float32).reshape(lead + (G, 1))
        rope = xp.ascontiguousarray(data[..., L + 4 * G :]).view(BFLOAT16).astype(np.float32)
        latent = (values * scale).reshape(lead + (L,))
        return xp.concatenate([latent, rope], axis=-1).astype(dtype)


def fp8_format(latent_dim: int = 512, rope_dim: int = 64, group: int = 128) -> Fp8Format:
    """The FP8 row layout for L, R and the number of latent values per scale.

    Parameters
    ----------
    latent_dim, rope_dim : int
        L and R.
    group : int
        Latent values sharing one float32 scale; 128 is FlashMLA's layout,
        ``latent_dim`` one scale per token.

    Returns
    -------
    Fp8Format
        With ``quantize``/``dequantize`` and ``row_bytes``; pass it as
        ``cache_format=`` to :func:`cumla.decode` with a uint8 cache.

    Examples
    --------
    >>> import cumla
    >>> cumla.fp8_format().row_bytes
    656
    """
    return Fp8Format(latent_dim, rope_dim, group)
