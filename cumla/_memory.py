"""KV-cache size of multi-head attention versus MLA's latent cache."""
from __future__ import annotations

from dataclasses import dataclass


from ._arrays import BFLOAT16


@dataclass(frozen=True)
class MemoryReport:
    """Cache bytes for one configuration.

    ``mha_bytes`` counts K and V per head: ``2 * heads * head_dim`` values per
    token and layer. ``mla_bytes`` counts the latent plus the decoupled RoPE
    key: ``latent + rope`` values per token and layer. ``ratio`` is
    ``mha_bytes / mla_bytes``.
    """

    heads: int
    head_dim: int
    latent: int
    rope: int
    seq_len: int
    batch: int
    layers: int
    dtype: str
    mha_bytes: int
    mla_bytes: int

    @property
    def ratio(self) -> float:
        return self.mha_bytes / self.mla_bytes if self.mla_bytes else float("inf")

    def table(self) -> str:
        """A small human-readable table."""
        def gib(n: int) -> str:
            return f"{n / 2**30:10.3f} GiB"

        tokens = max(self.batch * self.seq_len, 1)
        rows = [
            (f"MHA (K+V, {self.heads} heads x {self.head_dim})", f"{gib(self.mha_bytes)}  ({self.mha_bytes // tokens} B/token)"),
            (f"MLA (latent {self.latent} + rope {self.rope})", f"{gib(self.mla_bytes)}  ({self.mla_bytes // tokens} B/token)"),
            ("ratio MHA / MLA", f"{self.ratio:10.2f}x"),
        ]
        width = max(len(label) for label, _ in rows)
        head = f"KV cache for {self.batch} x {self.seq_len} tokens, {self.layers} layers, {self.dtype}"
        return "\n".join([head] + [f"  {label:<{width}} : {value}" for label, value in rows])


def memory_report(
    *,
    heads: int = 128,
    head_dim: int = 128,
    latent: int = 512,
    rope: int = 64,
    seq_len: int = 4096,
    batch: int = 1,
    layers: int = 61,
    dtype: str = "bfloat16",
) -> MemoryReport:
    """Compare the KV-cache bytes of multi-head attention and MLA.

    Parameters
    ----------
    heads, head_dim : int
        MHA heads and per-head K/V width (K and V both counted).
    latent, rope : int
        MLA latent width L and decoupled-RoPE width R.
    seq_len, batch, layers : int
        Tokens per sequence, sequences, transformer layers.
    dtype : str
        Element type name: "bfloat16", "float16", "float32" or "float8".

    Returns
    -------
    MemoryReport

    Raises
    ------
    ValueError
        For a negative size or an unknown dtype.

    Examples
    --------
    >>> import cumla
    >>> round(cumla.memory_report().ratio, 2)
    56.89
    """
    sizes = dict(heads=heads, head_dim=head_dim, latent=latent, rope=rope,
                 seq_len=seq_len, batch=batch, layers=layers)
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    itemsizes = {"bfloat16": BFLOAT16.itemsize, "float16": 2, "float32": 4, "float8": 1}
    if dtype not in itemsizes:
        raise ValueError(f"dtype must be one of {sorted(itemsizes)}, got {dtype!r}")
    per_token_layer = batch * seq_len * layers * itemsizes[dtype]
    return MemoryReport(
        heads, head_dim, latent, rope, seq_len, batch, layers, dtype,
        mha_bytes=2 * heads * head_dim * per_token_layer,
        mla_bytes=(latent + rope) * per_token_layer,
    )
