"""Arrays from any DLPack producer are taken without a copy (host memory here)."""
import numpy as np
import pytest

import cumla
from cumla import reference
from cumla.testing import DLPackProducer as Producer, MLACase, assert_close, make_inputs


def test_decode_takes_dlpack_producers_and_writes_out_in_place():
    case = MLACase(2, 2, 3, 32, 16, 16, 16, (20, 7), 20, 4, True, "float32", None, False, 3)
    args = make_inputs(case)
    wrapped = {k: Producer(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    target = np.full((2, 2, 3, 16), np.nan, np.float32)
    o, lse = cumla.decode(**wrapped, out=Producer(target), return_lse=True)
    assert isinstance(o, np.ndarray) and np.shares_memory(o, target)
    ref_o, ref_lse = reference.decode(**args)
    assert_close(target, ref_o, "float32", lse, ref_lse)


def test_latent_attention_and_plan_take_dlpack():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 24), dtype=np.float32)
    cache = rng.standard_normal((2, 9, 24), dtype=np.float32)
    lengths = np.array([9, 3], np.int32)
    plan = cumla.plan(Producer(lengths), heads=4, v_dim=16)
    o = cumla.latent_attention(Producer(q), Producer(cache), v_dim=16, scale=0.3, seqlens=Producer(lengths), plan=plan)
    np.testing.assert_allclose(o, cumla.latent_attention(q, cache, v_dim=16, scale=0.3, seqlens=lengths), rtol=1e-6)


def test_objects_without_dlpack_are_refused():
    with pytest.raises(TypeError, match="q must be a numpy.ndarray, a cupy.ndarray or a DLPack-capable array"):
        cumla.decode(object(), np.zeros((1, 2, 8), np.float32), np.zeros((8, 16), np.float32))


def test_unsupported_dlpack_device_is_a_type_error():
    class OnOtherDevice(Producer):
        def __dlpack_device__(self):
            return (14, 0)  # DLPack's kDLOneAPI

    with pytest.raises(TypeError, match="q could not be taken through DLPack"):
        cumla.decode(OnOtherDevice(np.zeros((1, 1, 8), np.float32)), np.zeros((1, 2, 8), np.float32),
                     np.zeros((8, 16), np.float32))
