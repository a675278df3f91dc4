// Latency of the Hopper kernel's TMA copies from DRAM. Thread 0 of each CTA
// copies BOXES boxes of 64 rows x 64 columns (8 KB, 128-byte swizzle; the
// kernel's copy group A is 4 boxes, a whole tile 9) of a random 64-row tile
// of a row-major (rows, 576) 16-bit matrix much larger than L2 into shared
// memory, waits on their mbarrier and records the cycles from issue to
// completion; then idles `gap` cycles, which sets the memory load when
// every SM runs it. With MMA, a second warpgroup issues score-shaped
// warpgroup MMAs (64 x 64 x 16, both operands in shared memory: 4 KB read
// per 32 cycles, all of shared memory's bandwidth) for `mma_rounds` rounds
// of 8 meanwhile, as the Hopper kernel's score phase does beside its
// refills. Compiled after hopper.cuh by bench/copy_latency.py.

namespace {
constexpr int kMaxBoxes = 9;
constexpr int kBoxBytes = 64 * 128;
constexpr int kCopyRegion = kMaxBoxes * kBoxBytes;  // the copies' destination; the MMAs' operands follow

// Rounds of 8 score MMAs over two 8 KB operand tiles (contents irrelevant).
__device__ __forceinline__ void score_mmas(u32 operands, int rounds, float* sink) {
  const u64 da = wgmma_desc(operands, 16, 1024), db = wgmma_desc(operands + kBoxBytes, 16, 1024);
  float d[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) d[i] = 0.f;
  for (int r = 0; r < rounds; ++r) {
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const u32 k_step = ((k % 4) * 32) >> 4;  // 16 K elements along a 128-byte row
      Wgmma<64>::template run<bf16_t, 0>(d, da + k_step, db + k_step, 1);
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  fence_registers(d);
  if (rounds < 0) sink[threadIdx.x] = d[0];  // never: keeps the accumulators live
}
}  // namespace

template <int BOXES, int MMA>
__global__ void __launch_bounds__(MMA ? 256 : 32, 1) copy_latency(const __grid_constant__ TmaMap map, long long* cycles,
                                                                  int tiles, int reps, int gap, int mma_rounds,
                                                                  float* sink) {
  static_assert(BOXES >= 1 && BOXES <= kMaxBoxes, "one tile has nine boxes");
  extern __shared__ __align__(1024) unsigned char smem[];
  const u32 base = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 bar = base + kCopyRegion + (MMA ? 2 * kBoxBytes : 0);
  if (MMA) {  // defined operands for the MMAs
    for (int i = threadIdx.x; i < 2 * kBoxBytes / 16; i += blockDim.x)
      asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(base + kCopyRegion + 16 * i), "r"(0));
    fence_async_shared();
    __syncthreads();
    const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);  // uniform for ptxas
    if (wg == 1) {
      score_mmas(base + kCopyRegion, mma_rounds, sink);
      return;
    }
  }
  if (threadIdx.x != 0) return;
  mbar_init(bar, 1);
  mbar_init_fence();
  u32 state = 2654435761u * (blockIdx.x + 1);
  for (int r = 0; r < reps; ++r) {
    state = state * 1664525u + 1013904223u;
    const int tile = static_cast<int>(state % static_cast<u32>(tiles));
    const long long start = clock64();
    mbar_expect_bytes(bar, BOXES * kBoxBytes);
    for (int b = 0; b < BOXES; ++b) tma_load_2d(base + b * kBoxBytes, map, b * 64, tile * 64, bar);
    mbar_wait(bar, r & 1);
    const long long end = clock64();
    cycles[static_cast<size_t>(blockIdx.x) * reps + r] = end - start;
    while (clock64() - end < gap) {
    }
  }
}
