"""The CuPy backend's host side (validation, plans, parameter blocks, launch
shapes) against a NumPy-backed stand-in for CuPy: runs without a GPU.
Numerical results of the kernels are checked by the GPU tests."""
import ctypes
import math
import sys

import numpy as np
import pytest

import cumla
import fake_cupy
from cumla import _absorb, _kernels, _libs, _pdl, _tma
from cumla._launch import ATTN_PARAMS

L, R, DN, DV = 512, 64, 128, 128


def use_fake(monkeypatch, fake):
    """Route cumla's GPU backend to ``fake``; TMA descriptors are recorded, not encoded."""
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delitem(sys.modules, "cumla._gpu", raising=False)
    monkeypatch.delattr(cumla, "_gpu", raising=False)
    fake.tma_maps = []

    def rows_map(address, rows, width, box_rows, depth=1):
        fake.tma_maps.append((address, rows, width, box_rows, depth))
        return np.zeros((), _tma.TMA_MAP)[()]

    monkeypatch.setattr(_tma, "rows_map", rows_map)

    fake.gemms = []

    def batched_matmul(a, b, out):  # cuBLAS stand-in: records its operands, computes in float32
        fake.gemms.append((a, b, out))
        out[...] = (a.astype(np.float32) @ b.astype(np.float32)).astype(out.dtype)
        return out

    monkeypatch.setattr(_absorb, "batched_matmul", batched_matmul)

    def launch_dependent(function, grid, block, args, stream, shared_mem=0):  # recorded as a dependent launch
        _pdl.argument_buffers(args)  # what the driver call would take
        fake.functions[function].record(grid, block, args, shared_mem, dependent=True)

    monkeypatch.setattr(_pdl, "launch_dependent", launch_dependent)
    return fake


@pytest.fixture()
def cp(monkeypatch):
    return use_fake(monkeypatch, fake_cupy.make())


def device(cp, a):
    return np.ascontiguousarray(a).view(cp.ndarray)


def inputs(cp, batch=3, q_len=1, heads=16, seq=300, dtype=cumla.bfloat16, block=64):
    rng = np.random.default_rng(0)
    blocks = batch * -(-seq // block)
    return dict(
        q=device(cp, rng.standard_normal((batch, q_len, heads, DN + R), dtype=np.float32).astype(dtype)),
        cache=device(cp, rng.standard_normal((blocks, block, L + R), dtype=np.float32).astype(dtype)),
        w_kv=device(cp, rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32).astype(dtype)),
        seqlens=device(cp, np.array([seq, 1, 0][:batch], np.int32)),
        block_table=device(cp, rng.permutation(blocks).astype(np.int32).reshape(batch, -1)),
        rope_dim=R,
    )


def field(launch, name):
    return launch.args[0][name]


def test_batches_past_65535_requests_launch_the_combine_with_the_batch_in_x(cp):
    """A launch grid's y and z stop at 65535 blocks; the combine step's grid
    takes its requests in x, so a larger batch launches."""
    batch, heads = 70000, 1
    cache = device(cp, np.zeros((batch, 2, 32), np.float16))  # L = R = 16
    q = device(cp, np.zeros((batch, heads, 32), np.float16))
    cumla.latent_attention(q, cache, v_dim=16, scale=0.1)
    combine = cp.launches[-1]
    assert combine.name == "combine_partials<f16_t, false>" and combine.grid == (batch, 1)  # one 8-row block a request


def test_absorbed_decode_launches(cp):
    args = inputs(cp)
    o = cumla.decode(**args, strategy="absorbed")
    assert isinstance(o, cp.ndarray) and o.shape == (3, 1, 16, DV) and o.dtype == cumla.bfloat16
    names = [launch.name for launch in cp.launches]
    assert names == ["make_schedule", "latent_attention_sm90<bf16_t, 576, 512, true>", "combine_partials<bf16_t, true>"]
    schedule, attend, combine = cp.launches
    absorb, unabsorb = cp.gemms
    # The absorption reads q and w_kv in place (strided views, no float32 copies)
    # and writes 16-bit latent queries straight into the array the kernel reads.
    for gemm in (absorb, unabsorb):
        assert np.shares_memory(gemm[1], args["w_kv"]) and gemm[2].dtype == cumla.bfloat16
    assert np.shares_memory(absorb[0], args["q"])
    assert absorb[2].ctypes.data == field(attend, "q")
    assert np.shares_memory(unabsorb[2], o)
    spec = _kernels.latent_kernel(cumla.bfloat16, 576, 512, 16, "sm_90a", 64)
    parts = 132  # 16 rows: one CTA row per part
    assert len(attend.args) == 3 and attend.args[1].dtype == attend.args[2].dtype == _tma.TMA_MAP
    # The pool's rows: one page per box of a single block, and boxes of a V half (4 blocks).
    assert cp.tma_maps == [(args["cache"].data.ptr, 15 * 64, 576, 64, 1), (args["cache"].data.ptr, 15 * 64, 576, 64, 4)]
    assert schedule.grid == (1,) and schedule.block == (1024,)
    assert attend.grid == (1, parts) and attend.block == (spec.threads,) == (384,)  # pages of 64: a producer warpgroup
    assert attend.shared_mem == spec.smem == attend.limit
    assert combine.grid == (2 * 3, 2)  # 16 rows in 8s for each of 3 requests, 512 columns in 256s (16-bit partials)
    assert combine.dependent and not attend.dependent  # the combine's launch overlaps the attention kernel
    assert combine.args[1] == np.int32(512)
    assert combine.args[2] == np.uint64(schedule.args[-1].data.ptr)  # the order make_schedule writes
    assert field(attend, "rows") == 16 and field(attend, "heads") == 16 and field(attend, "q_len") == 1
    assert field(attend, "capacity") == 5 * 64 and field(attend, "block_size") == 64
    assert field(attend, "max_blocks") == 5 and field(attend, "num_blocks") == 15
    assert field(attend, "cache") == args["cache"].data.ptr and field(attend, "w") == 0
    assert field(attend, "scale") == np.float32(1 / math.sqrt(DN + R))
    options = {opts for opts, _ in cp.compiled}
    assert ("-std=c++17", "-arch=sm_90a", f"-DCUMLA_SCHEDULE_TILE={_kernels.SCHEDULE_TILE}") in options


@pytest.mark.parametrize("capability,dependent,strategy", [
    ("80", False, "absorbed"), ("89", False, "absorbed"), ("90", True, "absorbed"),
    ("80", False, "decompressed"), ("90", True, "decompressed"),  # sm_89's 99 KB hold no decompressed kernel
])
def test_combine_is_a_dependent_launch_from_sm90(monkeypatch, capability, dependent, strategy):
    """Where the GPU has programmatic dependent launches, the combine is launched
    as the attention kernel's dependent (its kernel waits for the partials);
    before sm_90 it is an ordinary launch."""
    fake = use_fake(monkeypatch, fake_cupy.make(capability=capability))
    args = inputs(fake, heads=16, dtype=np.float16)
    if strategy == "decompressed" and capability != "90":  # the DeepSeek-dims kernel needs Hopper's shared memory
        args.update(q=args["q"][..., :80].copy(), cache=args["cache"][..., :144].copy(), rope_dim=16,
                    w_kv=args["w_kv"][:128, :16 * 128].copy())
    cumla.decode(**args, strategy=strategy)
    attend, combine = fake.launches[-2:]
    narrow = "true" if capability == "90" and strategy == "absorbed" else "false"  # the Hopper kernel's 16-bit partials
    assert combine.name == f"combine_partials<f16_t, {narrow}>" and combine.dependent == dependent
    assert not attend.dependent and attend.name.startswith("decompressed" if strategy == "decompressed" else "latent")


def test_dependent_launch_arguments_and_config():
    """cuLaunchKernelEx's structures have the driver's layout, and each argument
    reaches it as a pointer to its bytes."""
    assert ctypes.sizeof(_pdl.LaunchAttribute) == 72 and ctypes.sizeof(_pdl.LaunchConfig) == 56
    params = np.array(tuple(range(len(ATTN_PARAMS.names))), ATTN_PARAMS)[()]
    buffers = _pdl.argument_buffers((params, np.int32(512)))
    assert buffers[0].tobytes() == params.tobytes() and buffers[1].tobytes() == np.int32(512).tobytes()
    with pytest.raises(TypeError, match="NumPy scalars"):
        _pdl.argument_buffers((3,))
    config = _pdl.config((2, 3), (256,), 0, 0)
    assert list(config.grid) == [2, 3, 1] and list(config.block) == [256, 1, 1] and config.num_attrs == 1
    assert config.attrs.contents.id == 6 and config.attrs.contents.value == 1  # programmatic serialization on


def test_dependent_launch_errors(monkeypatch):
    """A failed launch raises with the driver's code; without libcuda the
    error says what the driver was needed for."""
    monkeypatch.setattr(_pdl, "_launch_fn", lambda: lambda *args: 1)
    with pytest.raises(RuntimeError, match="cuLaunchKernelEx failed with CUresult 1"):
        _pdl.launch_dependent(0, (1,), (256,), (np.int32(1),), 0)
    monkeypatch.undo()

    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file")

    _libs.driver_function.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    try:
        with pytest.raises(RuntimeError, match=r"libcuda.so.1\) is needed to launch dependent kernels"):
            _pdl.launch_dependent(0, (1,), (256,), (np.int32(1),), 0)
    finally:
        _libs.driver_function.cache_clear()


@pytest.mark.parametrize("capability,hopper,block,expected", [
    ("90", True, 64, "latent_attention_sm90<f16_t, 576, 512, true>"),
    ("90", True, 16, "latent_attention_sm90<f16_t, 576, 512, false>"),  # 64 rows over 16-token pages
    ("90", True, 4, "latent_attention<f16_t, 576, 512, 4, 64>"),  # pages below TMA's 8 rows
    ("90", False, 64, "latent_attention<f16_t, 576, 512, 4, 64>"),
])
def test_kernel_selection_by_arch(monkeypatch, capability, hopper, block, expected):
    fake = use_fake(monkeypatch, fake_cupy.make(capability=capability))
    monkeypatch.setattr(_kernels, "USE_HOPPER_KERNEL", hopper)
    args = inputs(fake, heads=64, dtype=np.float16, block=block)
    cumla.decode(**args, strategy="absorbed")
    assert fake.launches[1].name == expected
    assert len(fake.launches[1].args) == (3 if "sm90" in expected else 1)
    if block == 16 and "sm90" in expected:
        assert fake.tma_maps[-2][1:] == (3 * 19 * 16, 576, 16, 1)  # one box per 16-token page
    options = {opts for opts, _ in fake.compiled}
    arch = f"-arch=sm_{capability}{'a' if capability == '90' else ''}"
    assert ("-std=c++17", arch, f"-DCUMLA_SCHEDULE_TILE={_kernels.SCHEDULE_TILE}") in options


def test_tiles_shrink_to_the_devices_shared_memory(monkeypatch):
    """An A100 (163 KB per block) runs DeepSeek dims on 32-token tiles at 32
    and 64 rows per CTA; the prefill chunk's decompressed kernel (200 KB)
    does not fit there, so "auto" runs the absorbed strategy."""
    fake = use_fake(monkeypatch, fake_cupy.make(capability="80"))
    cumla.decode(**inputs(fake, heads=64, dtype=np.float16), strategy="absorbed")
    attend = fake.launches[1]
    assert attend.name == "latent_attention<f16_t, 576, 512, 4, 32, 0, 163>"
    assert attend.shared_mem == 156176 <= attend.limit <= fake_cupy.OPT_IN_SHARED_MEMORY["80"]
    fake.launches.clear()
    args = inputs(fake, q_len=256, heads=16, dtype=np.float16)
    assert cumla.cost(batch=3, seq_len=300, heads=16, q_len=256, latent_dim=L, rope_dim=R, nope_dim=DN, v_dim=DV,
                      itemsize=2).best == "decompressed"
    cumla.decode(**args, strategy="auto")
    assert not any(launch.name.startswith("decompressed") for launch in fake.launches)
    assert any(launch.name == "latent_attention<f16_t, 576, 512, 4, 32, 0, 163>" for launch in fake.launches)


def test_sm89_runs_single_stage_tiles_and_refuses_the_decompressed_kernel(monkeypatch):
    """sm_89 GPUs (99 KB per block): DeepSeek dims run on 32-row CTAs of one
    32-token stage; the decompressed kernel (200 KB) gets a clear error before
    anything is launched when asked for by name."""
    fake = use_fake(monkeypatch, fake_cupy.make(capability="89"))
    cumla.decode(**inputs(fake, heads=64, dtype=np.float16), strategy="absorbed")
    attend = fake.launches[1]
    assert attend.name == "latent_attention<f16_t, 576, 512, 2, 32, 0, 99>"
    assert attend.shared_mem == 78352 and attend.grid[1] == 2  # 64 rows in two 32-row CTAs
    sms = fake.cuda.Device().attributes["MultiProcessorCount"]
    assert attend.grid[0] == sms // 2  # one CTA per SM: half as many parts as SMs
    assert cumla.plan(device(fake, np.array([300, 1, 0], np.int32)), heads=64).num_parts == sms // 2
    fake.launches.clear()
    with pytest.raises(RuntimeError, match=r"decompressed_attention<f16_t, 512, 64, 128, 128, 64, 4> needs 204800 "
                                           r"bytes of shared memory per block; this GPU \(compute capability 89\)"):
        cumla.decode(**inputs(fake, heads=16, dtype=np.float16), strategy="decompressed")
    assert not any(launch.name.startswith("decompressed") for launch in fake.launches)
    rng = np.random.default_rng(2)
    q = device(fake, rng.standard_normal((2, 16, 80), dtype=np.float32).astype(np.float16))
    cache = device(fake, rng.standard_normal((2, 100, 80), dtype=np.float32).astype(np.float16))
    cumla.latent_attention(q, cache, v_dim=64, scale=0.1)
    attend = next(launch for launch in fake.launches if launch.name.startswith("latent_attention"))
    assert attend.name == "latent_attention<f16_t, 80, 64, 1, 64, 0, 99>"
    assert attend.shared_mem <= fake_cupy.OPT_IN_SHARED_MEMORY["89"]


def test_tiles_for_every_budget_fit_it():
    """Each (rows, budget, 16-bit or FP8 rows) gets a kernel whose shared memory
    fits the budget; the default budget keeps its names."""
    fmt = cumla.fp8_format(L, R, 128)
    for limit in (_kernels.SMEM_LIMIT, _kernels.A100_SMEM, 99 * 1024, 64 * 1024):
        for rows in (1, 16, 17, 32, 64, 256):
            for cache_format in (None, fmt):
                try:
                    spec = _kernels.latent_kernel(cumla.bfloat16, L + R, L, rows, "sm_80", fp8=cache_format,
                                                  smem_limit=limit)
                except ValueError:
                    assert limit == 64 * 1024  # below one 32-token stage beside 16 rows of Q
                    continue
                assert spec.smem <= limit and spec.name.endswith(">" if limit == _kernels.SMEM_LIMIT
                                                                 else f", {limit // 1024}>")
    assert _kernels.latent_kernel(cumla.bfloat16, L + R, L, 64, "sm_80").name == \
        "latent_attention<bf16_t, 576, 512, 4, 64>"


def test_hopper_kernel_covers_only_its_dims():
    assert _kernels.hopper_kernel(cumla.bfloat16, 576, 512).rows == 64
    # A producer warpgroup, except for one row group over pages of under 64 tokens.
    for rows, block, flag in ((64, 16, "false"), (64, 8, "false"), (128, 16, "true"), (64, 64, "true"),
                              (16, None, "true"), (128, None, "true")):
        spec = _kernels.hopper_kernel(cumla.bfloat16, 576, 512, block, rows=rows)
        threads = 384 if flag == "true" else 256
        assert spec.threads == threads and spec.name == f"latent_attention_sm90<bf16_t, 576, 512, {flag}>"
    assert _kernels.hopper_kernel(np.float32, 576, 512) is None
    assert _kernels.hopper_kernel(cumla.bfloat16, 48, 32) is None  # L+R not a multiple of 64
    assert _kernels.hopper_kernel(cumla.bfloat16, 640, 576) is None  # L above 512
    for block, hopper in ((1, False), (4, False), (8, True), (16, True), (24, False), (64, True), (96, False),
                          (128, True), (None, True)):
        spec = _kernels.latent_kernel(cumla.bfloat16, 576, 512, 16, "sm_90a", block)
        assert (spec.file == "latent_attention_sm90.cu") == hopper, block
    generic = _kernels.latent_kernel(cumla.bfloat16, 48, 32, 16, "sm_90a")
    assert generic.file == "latent_attention.cu"
    unaligned = _kernels.latent_kernel(cumla.bfloat16, 576, 512, 16, "sm_90a", tma_ready=False)
    assert unaligned.file == "latent_attention.cu"


def test_contiguous_cache_gets_a_descriptor_of_all_its_rows(cp):
    rng = np.random.default_rng(1)
    q = device(cp, rng.standard_normal((2, 16, L + R), dtype=np.float32).astype(cumla.bfloat16))
    cache = device(cp, rng.standard_normal((2, 100, L + R), dtype=np.float32).astype(cumla.bfloat16))
    cumla.latent_attention(q, cache, v_dim=L, scale=0.1)
    assert cp.tma_maps == [(cache.data.ptr, 200, 576, 64, 1), (cache.data.ptr, 200, 576, 64, 4)]


def test_plan_and_out_are_used_as_given(cp):
    args = inputs(cp, heads=128, q_len=2)
    plan = cumla.plan(args["seqlens"], heads=128, q_len=2, v_dim=L, num_parts=7)
    cp.launches.clear()
    q_lat = device(cp, np.zeros((3, 2, 128, L + R), cumla.bfloat16))
    out = device(cp, np.zeros((3, 2, 128, L), cumla.bfloat16))
    res = cumla.latent_attention(q_lat, args["cache"], v_dim=L, scale=0.1, seqlens=args["seqlens"],
                                 block_table=args["block_table"], plan=plan, out=out, check=False)
    assert res is out
    attend, combine = cp.launches  # no schedule launch: the plan's is reused
    assert attend.grid == (4, 7)  # 256 rows in tiles of 64, adjacent per part
    assert field(attend, "out") == out.data.ptr and field(attend, "work") == plan.work.data.ptr
    assert field(attend, "causal") == 1 and combine.grid == (32 * 3, 2)


def test_decompressed_launches_for_every_dtype(cp):
    args = inputs(cp, q_len=300, heads=4)
    cumla.decode(**args, strategy="decompressed")
    names = [launch.name for launch in cp.launches]
    spec = _kernels.decompressed_kernel(cumla.bfloat16, L, R, DN, DV, "sm_90a")  # the stand-in is a Hopper GPU
    assert spec.name.endswith(", true>")  # its decompression on warpgroup MMAs
    assert names == ["make_schedule", spec.name, "combine_partials<bf16_t, false>"]
    attend = cp.launches[1]
    assert attend.grid == (132 // (4 * 2), 2, 4) and attend.shared_mem == spec.smem == attend.limit
    assert field(attend, "w") == args["w_kv"].data.ptr
    f32 = inputs(cp, q_len=300, heads=4, dtype=np.float32)
    cp.launches.clear()
    cumla.decode(**f32)  # auto: the cost model says decompressed, float32 too
    spec = _kernels.decompressed_kernel(np.float32, L, R, DN, DV)
    assert [launch.name for launch in cp.launches] == ["make_schedule", spec.name, "combine_partials<f32_t, false>"]
    assert spec.name == "decompressed_attention_f32<512, 64, 128, 128>" and spec.queries == 16
    assert cp.launches[1].grid == (132 // (4 * 19), 19, 4) and cp.launches[1].shared_mem == spec.smem


def test_float32_decompressed_launches_for_odd_dims(cp):
    """float32 decompression has no multiple-of-16 rule (CUDA cores); 16-bit keeps it."""
    rng = np.random.default_rng(2)
    q = device(cp, rng.standard_normal((2, 3, 5, 16), dtype=np.float32))
    cache = device(cp, rng.standard_normal((2, 40, 26), dtype=np.float32))
    w_kv = device(cp, rng.standard_normal((20, 5 * 17), dtype=np.float32))
    o = cumla.decode(q, cache, w_kv, rope_dim=6, strategy="decompressed")
    assert o.shape == (2, 3, 5, 7)
    assert cp.launches[1].name == "decompressed_attention_f32<20, 6, 10, 7>"
    with pytest.raises(ValueError, match="multiples of 16"):
        cumla.decode(q.astype(np.float16), cache.astype(np.float16), w_kv.astype(np.float16), rope_dim=6,
                     strategy="decompressed")


def test_device_validation_without_a_device(cp):
    args = inputs(cp)
    bad = dict(args, seqlens=device(cp, np.array([300, 1, 400], np.int32)))
    with pytest.raises(ValueError, match=r"seqlens\[2\] = 400"):
        cumla.decode(**bad)
    with pytest.raises(TypeError, match="all be NumPy or all CuPy"):
        cumla.decode(**dict(args, w_kv=np.asarray(args["w_kv"])))


@pytest.mark.parametrize("heads,fragments,hopper,name", [
    (16, True, True, "latent_attention_fp8_fragments<bf16_t, 512, 64, 128, 2>"),
    (16, False, True, "latent_attention_sm90<bf16_t, 576, 512, true, 128>"),
    (16, False, False, "latent_attention<bf16_t, 576, 512, 1, 64, 128>"),
    (64, True, True, "latent_attention_sm90<bf16_t, 576, 512, true, 128>"),
    (64, True, False, "latent_attention<bf16_t, 576, 512, 4, 64, 128>"),
])
def test_fp8_cache_reaches_the_kernel_raw(cp, heads, fragments, hopper, name, monkeypatch):
    """FlashMLA's FP8 layout goes to a tensor-core kernel that reads it itself
    (into MMA fragments for M <= 16; on Hopper the wgmma kernel, whose
    producer converts the rows; else dequantising each tile): the pool and
    block table as given, nothing dequantised before."""
    monkeypatch.setattr(_kernels, "USE_FP8_FRAGMENTS", fragments)
    monkeypatch.setattr(_kernels, "USE_HOPPER_KERNEL", hopper)
    args = inputs(cp, heads=heads)
    fmt = cumla.fp8_format(L, R, 128)
    pool = device(cp, fmt.quantize(np.asarray(args["cache"])))
    cumla.decode(**dict(args, cache=pool), cache_format=fmt, strategy="absorbed")
    attend = cp.launches[1]
    spec = _kernels.latent_kernel(cumla.bfloat16, L + R, L, heads, "sm_90a", 64, fp8=fmt)
    assert attend.name == spec.name == name
    assert field(attend, "cache") == pool.data.ptr and field(attend, "block_table") == args["block_table"].data.ptr
    # The Hopper kernel keeps its descriptor arguments; over FP8 rows they are unused zeros.
    assert spec.tma == (spec.file == "latent_attention_sm90.cu") and len(attend.args) == (3 if spec.tma else 1)
    assert all(not bytes(descriptor).strip(b"\0") for descriptor in attend.args[1:])
    # The default plan gives every SM one CTA, two of the fragment kernel's.
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    assert spec.per_sm == (2 if fragments and heads <= 16 else 1)
    planned = cumla.plan(args["seqlens"], heads=heads, cache_format=fmt)
    assert planned.num_parts == spec.per_sm * sms // -(-heads // spec.rows)
    assert attend.shared_mem == spec.smem and attend.grid == spec.grid(planned.num_parts, heads)
    assert attend.block == (spec.threads,)
    with pytest.raises(TypeError, match="cache_format"):
        cumla.plan(args["seqlens"], heads=heads, cache_format="fp8")


def test_hopper_fp8_kernel_applies_where_its_layout_and_pages_allow():
    """The Hopper kernel over FP8 rows: sm_90a with the Hopper kernel on,
    whole 64-token tiles (pages of 64 tokens or more, or a contiguous cache),
    scale groups of a multiple of 16 values (of 128 or more at L = 512), R a
    multiple of 64, dims the 16-bit Hopper kernel takes; its tile, threads and
    shared memory are that kernel's, and the values reach the MMAs rounded to
    the query dtype."""
    flashmla = cumla.fp8_format(512, 64, 128)
    pick = _kernels.hopper_fp8_kernel
    spec = pick(cumla.bfloat16, flashmla, "sm_90a", 64)
    bf16 = _kernels.hopper_kernel(cumla.bfloat16, 576, 512)
    assert spec.name == "latent_attention_sm90<bf16_t, 576, 512, true, 128>" and spec.module == (spec.name,)
    assert (spec.rows, spec.threads, spec.smem, spec.tma) == (bf16.rows, bf16.threads, bf16.smem, True)
    assert not spec.fp8_exact and spec.per_sm == 1
    assert pick(np.dtype(np.float16), cumla.fp8_format(128, 0, 32), "sm_90a", None).name == \
        "latent_attention_sm90<f16_t, 128, 128, true, 32>"
    for refused in [(cumla.bfloat16, flashmla, "sm_89", 64), (cumla.bfloat16, flashmla, "sm_90a", 16),
                    (np.dtype(np.float32), flashmla, "sm_90a", 64),
                    (cumla.bfloat16, cumla.fp8_format(512, 64, 8), "sm_90a", 64),  # 8-value groups
                    (cumla.bfloat16, cumla.fp8_format(512, 32, 128), "sm_90a", 64),  # R = 32
                    (cumla.bfloat16, cumla.fp8_format(384, 64, 128), "sm_90a", 64),  # L / 2 = 192
                    (cumla.bfloat16, cumla.fp8_format(512, 64, 64), "sm_90a", 64),  # two scales a part: would spill
                    (cumla.bfloat16, cumla.fp8_format(512, 64, 512), "sm_90a", 64)]:  # 644-byte rows
        assert pick(*refused) is None, refused
    assert pick(cumla.bfloat16, flashmla, "sm_90a", 64, _kernels.A100_SMEM) is None


def test_fp8_fragment_kernel_applies_where_its_layout_and_arch_allow():
    """The fragment kernel: M <= 16, 16-bit queries, sm_89 on, L 256 or 512
    (at most four groups), groups multiples of 32 and of L / 8, R a multiple
    of 16; two raw stages, two CTAs per SM where the shared memory holds
    both."""
    flashmla = cumla.fp8_format(512, 64, 128)
    pick = _kernels.fp8_fragment_kernel
    spec = pick(cumla.bfloat16, flashmla, 16, "sm_90a")
    assert spec.name == "latent_attention_fp8_fragments<bf16_t, 512, 64, 128, 2>" and spec.rows == 16
    # stages, P (four groups), the swap, RoPE queries, row sums, tile addresses, mbarriers
    assert spec.smem == 2 * 64 * 656 + 4 * 2048 + 8 * 4 * 512 + 2048 + 512 + 16 + 16
    assert spec.per_sm == 2 and pick(np.dtype(np.float16), flashmla, 1, "sm_89", 163 * 1024).per_sm == 1
    assert pick(cumla.bfloat16, cumla.fp8_format(256, 32, 64), 8, "sm_100").name.endswith("256, 32, 64, 2>")
    for refused in [(cumla.bfloat16, flashmla, 17, "sm_90a"), (np.dtype(np.float32), flashmla, 16, "sm_90a"),
                    (cumla.bfloat16, flashmla, 16, "sm_86"), (cumla.bfloat16, flashmla, 16, "sm_80"),
                    (cumla.bfloat16, cumla.fp8_format(512, 64, 32), 16, "sm_90a"),  # a warp's columns span groups
                    (cumla.bfloat16, cumla.fp8_format(512, 64, 512), 16, "sm_90a"),  # 644-byte rows
                    (cumla.bfloat16, cumla.fp8_format(128, 64, 128), 16, "sm_90a"),  # L < 256
                    (cumla.bfloat16, cumla.fp8_format(1024, 64, 128), 16, "sm_90a"),  # L > 512: would spill
                    (cumla.bfloat16, cumla.fp8_format(512, 0, 64), 16, "sm_90a"),  # eight groups: would spill
                    (cumla.bfloat16, cumla.fp8_format(512, 8, 128), 16, "sm_90a")]:  # R not a multiple of 16
        assert pick(*refused) is None, refused
    assert pick(cumla.bfloat16, flashmla, 16, "sm_90a", 99 * 1024) is None  # two stages do not fit


def test_fp8_layouts_no_kernel_reads_are_dequantised_first(cp):
    """One scale per token (644-byte rows, not 16-byte aligned): the FP8 blocks the
    table names within the lengths are listed and dequantised into a compact
    pool, the block table renumbered, then the 16-bit kernel runs on both."""
    args = inputs(cp)
    fmt = cumla.fp8_format(L, R, L)
    assert not _kernels.fp8_in_kernel(fmt, L) and _kernels.fp8_in_kernel(cumla.fp8_format(L, R, 128), L)
    pool = device(cp, fmt.quantize(np.asarray(args["cache"])))
    table = np.asarray(args["block_table"]).copy()
    table[2, 1:] = -1  # the empty request names one block only
    cumla.decode(**dict(args, cache=pool, block_table=device(cp, table)), cache_format=fmt, strategy="absorbed")
    lists, dequantize, attend = cp.launches[0], cp.launches[1], cp.launches[3]
    assert lists.name == "fp8_block_lists" and dequantize.args[1] is lists.args[-2]
    assert dequantize.name == "dequantize_fp8_rows<bf16_t>" and dequantize.args[0] is pool
    assert attend.name == "latent_attention_sm90<bf16_t, 576, 512, true>"
    assert field(attend, "cache") == dequantize.args[-1].data.ptr != pool.data.ptr
    assert field(attend, "block_table") == lists.args[-1].data.ptr
    assert field(attend, "num_blocks") == table.size


def test_strided_index_arrays_reach_the_kernel_contiguous(cp):
    args = inputs(cp)
    wide = device(cp, np.zeros(6, np.int32))
    wide[::2] = args["seqlens"]
    cumla.decode(**dict(args, seqlens=wide[::2]), strategy="absorbed")
    passed = cp.launches[1].args[0]["seqlens"]
    assert passed != wide.data.ptr  # a contiguous copy, not the strided view's base


def test_planned_call_with_out_allocates_nothing(cp):
    """With plan= and out= the GPU path launches kernels only: no device allocation
    (the LSE goes to the plan's scratch buffer); return_lse gets its own copy."""
    args = inputs(cp, heads=128, q_len=2)
    plan = cumla.plan(args["seqlens"], heads=128, q_len=2, v_dim=L)
    q_lat = device(cp, np.zeros((3, 2, 128, L + R), cumla.bfloat16))
    out = device(cp, np.zeros((3, 2, 128, L), cumla.bfloat16))
    call = dict(v_dim=L, scale=0.1, seqlens=args["seqlens"], block_table=args["block_table"], plan=plan, out=out,
                check=False)

    def no_allocation(*a, **k):
        raise AssertionError("allocated on a planned call")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("empty", "zeros", "full", "empty_like", "zeros_like"):
            patch.setattr(cp, name, no_allocation, raising=False)
        assert cumla.latent_attention(q_lat, args["cache"], **call) is out
    _, lse = cumla.latent_attention(q_lat, args["cache"], **call, return_lse=True)
    assert not np.shares_memory(np.asarray(lse), np.asarray(plan.lse))


def test_planned_decode_with_out_allocates_nothing_after_its_first_call(cp):
    """decode(plan=, out=) keeps its absorbed queries and latent output in the
    plan: from the second call on, nothing is allocated on the device."""
    args = inputs(cp, heads=128, q_len=2)
    plan = cumla.plan(args["seqlens"], heads=128, q_len=2, v_dim=L)
    out = device(cp, np.zeros((3, 2, 128, DV), cumla.bfloat16))
    call = dict(args, plan=plan, out=out, check=False)
    assert cumla.decode(**call) is out  # makes the plan's buffers

    def no_allocation(*a, **k):
        raise AssertionError("allocated on a planned call")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("empty", "zeros", "full", "empty_like", "zeros_like"):
            patch.setattr(cp, name, no_allocation, raising=False)
        assert cumla.decode(**call) is out
    absorb, unabsorb = cp.gemms[-2:]
    assert np.shares_memory(absorb[2], plan.buffer("q_latent", (3, 2, 128, L + R), cumla.bfloat16))
    assert np.shares_memory(unabsorb[2], out)


def test_a_cache_off_a_16_byte_boundary_is_refused(cp):
    args = inputs(cp, heads=16)
    flat = np.zeros(args["cache"].size + 1, cumla.bfloat16)
    shifted = flat[1:].reshape(args["cache"].shape).view(cp.ndarray)  # starts 2 bytes past an allocation
    with pytest.raises(ValueError, match="16-byte-aligned"):
        cumla.decode(**dict(args, cache=shifted), strategy="absorbed")
    with pytest.raises(ValueError, match="16-byte-aligned"):
        cumla.decode(**dict(args, cache=shifted), strategy="decompressed")


def test_dense_cache_lists_then_dequantises_the_named_blocks(cp):
    """A paged FP8 cache goes through two launches: one lists the blocks within
    each request's length (its entries checked on the device,
    test_fp8_gpu.py), one dequantises the listed blocks into a pool whose
    renumbered table is the listing's second output."""
    import cumla._gpu as gpu
    from cumla._validate import check_decode

    args = inputs(cp)
    fmt = cumla.fp8_format(L, R, 128)
    pool = device(cp, fmt.quantize(np.asarray(args["cache"])))
    table = device(cp, np.asarray(args["block_table"])[:, ::-1])  # a strided view: copied for the launch
    problem = check_decode(args["q"], pool, args["w_kv"], R, args["seqlens"], table, fmt)
    dense_problem, dense, new_table = gpu._dense_cache(problem, pool, args["seqlens"], table)
    assert dense_problem.cache_format is None and dense_problem.num_blocks == table.size
    assert dense.dtype == cumla.bfloat16 and dense.shape == (table.size, 64, L + R)
    lists, rows_pass = cp.launches
    listed, lengths, max_blocks, entries, num_blocks, block_size, capacity, by_pool, picked, renumbered = lists.args
    assert lists.name == "fp8_block_lists" and lists.grid == (1,) and lists.block == (256,)
    np.testing.assert_array_equal(np.asarray(listed), np.asarray(table))
    assert listed.flags.c_contiguous and lengths.data.ptr == args["seqlens"].data.ptr
    assert (max_blocks, entries, num_blocks, block_size, capacity) == (5, 15, problem.num_blocks, 64, 320)
    assert by_pool == 0  # as many cache blocks as table entries: the table's order
    assert new_table is renumbered and renumbered.shape == table.shape and renumbered.dtype == np.int32
    raw, blocks, rows, block_size, latent, rope, group, out = rows_pass.args
    assert rows_pass.name == "dequantize_fp8_rows<bf16_t>" and raw is pool and out.data.ptr == dense.data.ptr
    assert blocks is picked and picked.shape == (table.size,) and picked.dtype == np.int32
    assert (rows, block_size, latent, rope, group) == (table.size * 64, 64, L, R, 128)
    assert rows_pass.grid == (table.size * 64 // 8,) and rows_pass.block == (256,)  # a warp per row
    # A table with more entries than the cache has blocks: the pool takes the
    # cache's order and size, its list filled with -1 before the listing.
    cp.launches.clear()
    wide = device(cp, np.concatenate([np.asarray(table), np.full((3, 3), -1, np.int32)], axis=1))
    problem = check_decode(args["q"], pool, args["w_kv"], R, args["seqlens"], wide, fmt)
    dense_problem, dense, new_table = gpu._dense_cache(problem, pool, args["seqlens"], wide)
    assert dense_problem.num_blocks == pool.shape[0] == 15 and dense.shape == (15, 64, L + R)
    lists, rows_pass = cp.launches
    *_, entries, num_blocks, _, capacity, by_pool, picked, renumbered = lists.args
    assert (entries, num_blocks, capacity, by_pool) == (24, 15, 512, 1)
    assert picked.shape == (15,) and (np.asarray(picked) == -1).all()  # nothing ran the listing here
    assert rows_pass.args[1] is picked and rows_pass.args[2] == 15 * 64 and new_table is renumbered
    # A contiguous cache: every row, no block list.
    cp.launches.clear()
    contiguous = device(cp, fmt.quantize(np.zeros((2, 30, L + R), np.float32)))
    problem = check_decode(args["q"][:2], contiguous, args["w_kv"], R, None, None, fmt)
    _, dense, _ = gpu._dense_cache(problem, contiguous, None, None)
    (launch,) = cp.launches
    assert dense.shape == (2, 30, L + R) and launch.args[1] == 0 and launch.args[2] == 60


def test_parameter_block_fields(cp):
    """Every field lands at its place in the by-value block; arrays become
    their addresses, missing fields are 0, unknown names raise."""
    from cumla._launch import ATTN_PARAMS, attn_params

    q, lse = device(cp, np.zeros(4, np.float32)), device(cp, np.zeros(2, np.float32))
    block = attn_params(q=q, lse=lse, block_table=None, batch=3, rows=16, scale=0.5, scale_log2=0.25, causal=1)
    assert block.dtype == ATTN_PARAMS
    assert block["q"] == q.data.ptr and block["lse"] == lse.data.ptr and block["block_table"] == 0
    assert (block["batch"], block["rows"], block["causal"], block["heads"], block["w"]) == (3, 16, 1, 0, 0)
    assert block["scale"] == np.float32(0.5) and block["scale_log2"] == np.float32(0.25)
    with pytest.raises(ValueError, match="no field"):
        attn_params(qq=q)
