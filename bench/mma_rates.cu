// Rates of the warpgroup MMA shapes the Hopper kernel issues, one warpgroup
// alone and two at once on one SM (sharing the tensor cores and the
// shared-memory bandwidth). Compiled after hopper.cuh by bench/mma_rates.py.
//
// OP 0: A and B from shared memory, B K-major (the scores: 64 query rows x N tokens);
// OP 1: A from registers, B N-major (P V with P from registers);
// OP 2: A and B from shared memory, B N-major (P V with P from shared memory);
// OP 4: as OP 1, the MMAs alternating between two accumulators (two chains of
//       dependent MMAs instead of one: a 64 x 2N product as two N halves);
// OP 5: as OP 1, the accumulator switching every four MMAs (a 64 x 2N
//       product over four k-steps as one N half, then the other);
// OP 3: no MMA: bulk copies (the TMA's path) of 16 KB from global memory (an
//       L2-resident buffer) into shared memory, two in flight (N unused).
// Operand values do not matter for the rate, only the access pattern: both
// are the 128-byte-swizzled tiles the kernel reads.

namespace {
constexpr int kBatch = 16;                // MMAs per commit group
constexpr int kRegionBytes = 64 * 1024;   // one warpgroup's operands: A (8 KB), then B (up to 32 KB)
constexpr int kBOffset = 8 * 1024;
constexpr int kCopyBytes = 16 * 1024;     // OP 3: one copy (two fill the region's first 32 KB)

// OP 3: thread 0 of the warpgroup issues `reps` copies, each waiting for the
// one two before it (two barriers, used in turn).
__device__ __forceinline__ void run_copies(u32 region, const void* src, u32 bars, int reps) {
  if (threadIdx.x % 128 != 0) return;
  for (int r = 0; r < reps; ++r) {
    const u32 bar = bars + 8 * (r % 2);
    if (r >= 2) mbar_wait(bar, ((r - 2) / 2) & 1);
    mbar_expect_bytes(bar, kCopyBytes);
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     region + (r % 2) * kCopyBytes),
                 "l"(src), "r"(kCopyBytes), "r"(bar)
                 : "memory");
  }
  for (int r = reps > 2 ? reps - 2 : 0; r < reps; ++r) mbar_wait(bars + 8 * (r % 2), (r / 2) & 1);
}

template <int N, int OP>
__device__ __forceinline__ void run_ops(u32 region, int reps, float* sink) {
  const u32 a[4] = {0u, 0u, 0u, 0u};
  const u64 da = wgmma_desc(region, 16, 1024);
  // K-major B: N rows of 128 bytes; N-major B: 64-column blocks of 64 K rows.
  const u64 db = OP == 0 ? wgmma_desc(region + kBOffset, 16, 1024) : wgmma_desc(region + kBOffset, 64 * 128, 1024);
  constexpr int kSecond = OP == 4 || OP == 5 ? N / 2 : 1;  // the second accumulator, where one is used
  float d[N / 2], e[kSecond];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kSecond; ++i) e[i] = 0.f;
  for (int r = 0; r < reps; ++r) {
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const u32 k_step = ((k % 4) * 32) >> 4;           // 16 K elements along a 128-byte row
      const u32 row_step = ((k % 4) * 16 * 128) >> 4;   // 16 K rows of an N-major tile
      if constexpr (OP == 0) Wgmma<N>::template run<bf16_t, 0>(d, da + k_step, db + k_step, 1);
      if constexpr (OP == 1) Wgmma<N>::template run<bf16_t, 1>(d, a, db + row_step, 1);
      if constexpr (OP == 2) Wgmma<N>::template run<bf16_t, 1>(d, da + k_step, db + row_step, 1);
      if constexpr (OP == 4) Wgmma<N>::template run<bf16_t, 1>(k % 2 == 0 ? d : e, a, db + row_step, 1);
      if constexpr (OP == 5) Wgmma<N>::template run<bf16_t, 1>(k % 8 < 4 ? d : e, a, db + row_step, 1);
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  fence_registers(d);
  fence_registers(e);
  if (reps < 0) sink[threadIdx.x] = d[0] + e[0];  // never: keeps the accumulators live
}
}  // namespace

// Warpgroup 0 runs (N0, OP0), warpgroup 1 (if launched) (N1, OP1); each
// writes the clock cycles its loop took to cycles[2 * block + warpgroup].
// `src`: kCopyBytes of global memory for OP 3.
template <int N0, int OP0, int N1, int OP1>
__global__ void __launch_bounds__(256, 1) mma_rates(long long* cycles, float* sink, const void* src, int reps) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const u32 base = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 bars = base + 2 * kRegionBytes;  // two copy barriers per warpgroup
  for (int i = threadIdx.x; i < 2 * kRegionBytes / 16; i += blockDim.x)
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(base + 16 * i), "r"(0));
  if (threadIdx.x < 4) mbar_init(bars + 8 * threadIdx.x, 1);
  mbar_init_fence();
  fence_async_shared();
  __syncthreads();
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);  // uniform for ptxas
  const long long start = clock64();
  if (wg == 0) {
    if constexpr (OP0 == 3) run_copies(base, src, bars, reps);
    else run_ops<N0, OP0>(base, reps, sink);
  } else {
    if constexpr (OP1 == 3) run_copies(base + kRegionBytes, src, bars + 16, reps);
    else run_ops<N1, OP1>(base + kRegionBytes, reps, sink);
  }
  const long long stop = clock64();
  if (threadIdx.x % 128 == 0) cycles[2 * blockIdx.x + wg] = stop - start;
}

// mma.sync (the portable kernel's MMA): WARPS_PER_SMSP warps per scheduler
// (4 * WARPS_PER_SMSP per CTA, one CTA per SM) each issue rounds of 16
// m16n8k16 bf16 MMAs into 8 independent accumulators, with LDSM ldmatrix.x4
// loads per 4 MMAs from conflict-free shared-memory rows (the portable
// kernel's score loop loads 3 per 4 MMAs, its P V loop ~2). A round's MMAs
// read the fragments the previous round loaded, so every load is used and
// none is waited for at once. Each warp writes its loop's clock cycles to
// cycles[warp of the grid].
constexpr int kSyncRateSmem = 32 * 512;  // mma_sync_rate's shared memory (bench/mma_rates.py mirrors it)
template <int WARPS_PER_SMSP, int LDSM>
__global__ void __launch_bounds__(128 * WARPS_PER_SMSP, 1) mma_sync_rate(long long* cycles, float* sink, int reps) {
  constexpr int kFrags = LDSM > 0 ? 4 * LDSM : 4;  // fragments a round reads (and, with LDSM, loads)
  extern __shared__ __align__(1024) unsigned char smem[];
  const int lane = threadIdx.x % 32;
  const u32 rows = smem_addr(smem) + 16 * lane;  // 32 x 512 contiguous bytes
  for (int i = threadIdx.x; i < kSyncRateSmem / 16; i += blockDim.x)
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(smem_addr(smem) + 16 * i), "r"(0));
  __syncthreads();
  float acc[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
  u32 cur[kFrags][4], nxt[kFrags][4];
#pragma unroll
  for (int f = 0; f < kFrags; ++f)
#pragma unroll
    for (int e = 0; e < 4; ++e) cur[f][e] = nxt[f][e] = 0u;
  const long long start = clock64();
#pragma unroll 2
  for (int r = 0; r < reps; ++r) {
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      if (LDSM > 0 && k % 4 == 0) {
#pragma unroll
        for (int l = 0; l < LDSM; ++l)  // a distinct row per load and round parity: none is merged or hoisted
          ldsm_x4(nxt[k / 4 * LDSM + l], rows + 512 * (k / 4 * LDSM + l + 16 * (r & 1)));
      }
      const u32(&b)[4] = cur[(k + 1) % kFrags];
      bf16_t::mma(acc[k % 8], cur[k % kFrags], b[k % 2 * 2], b[k % 2 * 2 + 1]);
    }
    if constexpr (LDSM > 0) {
#pragma unroll
      for (int f = 0; f < kFrags; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) cur[f][e] = nxt[f][e];
    }
  }
  const long long stop = clock64();
  float total = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) total += acc[j][0] + acc[j][1] + acc[j][2] + acc[j][3];
  if (reps < 0) sink[threadIdx.x % 256] = total;  // never: keeps the MMAs live
  if (lane == 0) cycles[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = stop - start;
}
