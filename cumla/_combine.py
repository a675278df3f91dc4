"""Exact merge of attention partials over disjoint token sets by their LSE."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._arrays import array_module


def combine(outputs: Sequence[Any], lses: Sequence[Any]) -> tuple[Any, Any]:
    """Merge partial attention results computed over disjoint token sets.

    Parameters
    ----------
    outputs : sequence of ndarray, each shape (..., V)
        Softmax-normalised partial outputs (zeros where a part saw nothing).
    lses : sequence of ndarray, each shape (...)
        Their natural-log sum-exp of scaled scores (-inf where empty).

    Returns
    -------
    o : ndarray, shape (..., V), float32
        Equal to attending over the union of the token sets; NaN where a
        part's LSE is NaN (a NaN in its rows), zeros where every part is empty.
    lse : ndarray, shape (...), float32
        -inf where every part is empty, NaN where a part's is.

    Raises
    ------
    ValueError
        If no parts are given or their shapes disagree.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> o, lse = cumla.combine([np.ones((1, 2)), np.zeros((1, 2))], [np.zeros(1), np.full(1, -np.inf)])
    >>> o.tolist(), lse.tolist()
    ([[1.0, 1.0]], [0.0])
    """
    if len(outputs) == 0 or len(outputs) != len(lses):
        raise ValueError(f"need as many outputs as lses, at least one; got {len(outputs)} and {len(lses)}")
    xp = array_module(**{f"outputs[{i}]": o for i, o in enumerate(outputs)},
                      **{f"lses[{i}]": s for i, s in enumerate(lses)})
    for i, (o, s) in enumerate(zip(outputs, lses)):
        if o.shape != outputs[0].shape or s.shape != o.shape[:-1]:
            raise ValueError(
                f"outputs[{i}] {o.shape} and lses[{i}] {s.shape} must match outputs[0] "
                f"{outputs[0].shape} and its shape without the last axis"
            )
    lse = xp.stack([s.astype(np.float32) for s in lses])
    peak = lse.max(axis=0)
    safe = xp.where(xp.isfinite(peak), peak, np.float32(0))
    weights = xp.exp(lse - safe)
    total = weights.sum(axis=0)
    seen = total != 0  # a part's NaN LSE stays NaN
    norm = xp.where(seen, total, np.float32(1))
    o = sum(w[..., None] * part.astype(np.float32) for w, part in zip(weights, outputs))
    o = xp.where(seen[..., None], o / norm[..., None], np.float32(0))
    merged = xp.where(seen, safe + xp.log(norm), np.float32(-np.inf))
    return o.astype(np.float32), merged.astype(np.float32)
