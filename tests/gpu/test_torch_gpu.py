"""PyTorch CUDA tensors through DLPack, both ways (torch is used here only, as a
peer a user would have; it is never imported by cumla)."""
import numpy as np
import pytest

import cumla
from cumla import reference
from cumla.testing import MLACase, assert_close, make_inputs, to_numpy

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch", reason="torch is a test-time peer only")

DEEPSEEK = dict(latent_dim=512, rope_dim=64, nope_dim=128, v_dim=128)


def test_torch_tensors_in_and_out_without_copies():
    import cupy as cp

    case = MLACase(2, 1, 16, seqlens=(300, 65), capacity=320, block_size=64, causal=True, dtype="bfloat16",
                   scale=None, squeeze=True, seed=13, **DEEPSEEK)
    args = make_inputs(case, cp)
    tensors = {k: torch.from_dlpack(v) if isinstance(v, cp.ndarray) else v for k, v in args.items()}
    out = torch.full((2, 16, 128), float("nan"), dtype=torch.bfloat16, device="cuda")
    o = cumla.decode(**tensors, out=out)
    assert isinstance(o, cp.ndarray) and o.data.ptr == out.data_ptr()  # written in place
    back = torch.from_dlpack(o)  # and handed back without a copy
    assert back.data_ptr() == out.data_ptr()
    ref = reference.decode(**{k: to_numpy(v) if isinstance(v, cp.ndarray) else v for k, v in args.items()})[0]
    assert_close(o, ref, "bfloat16")


def test_cache_appends_torch_rows():
    import cupy as cp

    pool = cumla.PagedLatentCache(4, 64, latent_dim=512, rope_dim=64, max_seqs=1, max_blocks_per_seq=4,
                                  dtype=cumla.bfloat16, xp=cp)
    seq = pool.add_sequence()
    rows = torch.randn(70, 576, dtype=torch.bfloat16, device="cuda")
    pool.append([seq] * 70, rows[:, :512], rows[:, 512:])
    stored = cp.asnumpy(pool.pool[cp.asarray(pool.batch([seq])["block_table"][0, :2])]).reshape(-1, 576)[:70]
    assert np.array_equal(stored.view(np.uint16), rows.cpu().view(torch.int16).numpy().view(np.uint16))
