// What writing a 64-row x 512-column output tile costs when every SM does it
// at once, as the Hopper kernel's epilogue does at the end of each segment,
// by the form of the stores. Each CTA (256 threads: two warpgroups, warp w
// of a warpgroup owning rows 16 (w % 4) .. + 16 of its 256-column half, as
// the wgmma accumulator lays them out) writes its tile `rounds` times, each
// round `round_stride` elements further on (0: the same tile again).
// PATTERN:
//   0  fragments, 16-bit: a u32 (two values) per thread and store, 16 bytes
//      of a row per quad (the kernel's final outputs)
//   1  fragments, float32: two values (8 bytes) per thread and store (the
//      kernel's split partials)
//   2  rows, 16-bit: 16 bytes per thread, a warp's store one contiguous
//      512-byte half row
//   3  rows, float32: as 2, two stores per half row
//   4  fragments transposed in each quad by shuffles (the Hopper kernel's
//      final outputs since v50), 16-bit: 16 bytes per thread, 64
//      contiguous bytes of a row per quad (no shared memory)
//   5  staged in shared memory (rows padded by 16 bytes), then one
//      cp.async.bulk per warp row of 512 bytes
//   6  nothing stored (the launch and the arithmetic alone)
// Compiled after hopper.cuh by bench/store_rates.py.

namespace {
constexpr int kRows = 64, kCols = 512, kHalf = 256;
constexpr int kStagedStride = 2 * kCols + 16;  // bytes: 4 banks further per row, no conflicts for a quad's rows
}  // namespace

template <int PATTERN>
__global__ void __launch_bounds__(256, 1) store_rates(void* out, int rounds, long long round_stride, float seed) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, wg = warp / 4;
  const int r_lo = 16 * (warp % 4) + lane / 4, cq = 2 * (lane % 4);
  const long long tile = static_cast<long long>(blockIdx.x) * kRows * kCols;
  // Accumulator-like values, distinct per thread so nothing folds.
  float o[kHalf / 4];
#pragma unroll
  for (int k = 0; k < kHalf / 4; ++k) o[k] = seed * (threadIdx.x + 1) + k;

  for (int round = 0; round < rounds; ++round) {
    const long long base = tile + round * round_stride;
    if constexpr (PATTERN == 0 || PATTERN == 1) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < kHalf / 8; ++j) {
          const int k = 4 * j + 2 * h;
          const long long at = base + (r_lo + 8 * h) * kCols + wg * kHalf + 8 * j + cq;
          if constexpr (PATTERN == 0)
            *reinterpret_cast<u32*>(static_cast<u16*>(out) + at) = bf16_t::pack(o[k], o[k + 1]);
          else
            *reinterpret_cast<float2*>(static_cast<float*>(out) + at) = make_float2(o[k], o[k + 1]);
        }
    } else if constexpr (PATTERN == 2 || PATTERN == 3) {
      // The same values' bytes, laid out by rows: lane l writes 16 bytes of each of its warp's 16 rows.
      constexpr int kPerStore = PATTERN == 2 ? 8 : 4, kStores = kHalf / (32 * kPerStore);
#pragma unroll
      for (int row = 0; row < 16; ++row)
#pragma unroll
        for (int s = 0; s < kStores; ++s) {
          // (indexed in 16-byte units: ptxas then knows each store is aligned)
          const long long at = (base + (16 * (warp % 4) + row) * kCols + wg * kHalf) / kPerStore + s * 32 + lane;
          const int k = (row * kStores + s) % (kHalf / 4 - 3);
          if constexpr (PATTERN == 2) {
            const uint4 v = {bf16_t::pack(o[k], o[k + 1]), bf16_t::pack(o[k + 2], o[k + 3]),
                             bf16_t::pack(o[k + 1], o[k]), bf16_t::pack(o[k + 3], o[k + 2])};
            static_cast<uint4*>(out)[at] = v;
          } else {
            static_cast<float4*>(out)[at] = make_float4(o[k], o[k + 1], o[k + 2], o[k + 3]);
          }
        }
    } else if constexpr (PATTERN == 4) {
      // The Hopper kernel's form (hopper.cuh's transpose_quad): quad lane q
      // holds, for four consecutive j, the pair of columns 8j + 2q; after
      // the transposition it holds the 8 columns of j0 + q.
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j0 = 0; j0 < kHalf / 8; j0 += 4) {
          u32 w[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) w[i] = bf16_t::pack(o[4 * (j0 + i) + 2 * h], o[4 * (j0 + i) + 2 * h + 1]);
          transpose_quad(w, lane % 4);
          const long long at = (base + (r_lo + 8 * h) * kCols + wg * kHalf) / 8 + j0 + lane % 4;  // 16-byte units
          static_cast<uint4*>(out)[at] = make_uint4(w[0], w[1], w[2], w[3]);
        }
    } else if constexpr (PATTERN == 5) {
      const u32 staged = smem_addr(smem);
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < kHalf / 8; ++j) {
          const int k = 4 * j + 2 * h;
          const u32 at = staged + (r_lo + 8 * h) * kStagedStride + 2 * (wg * kHalf + 8 * j + cq);
          asm volatile("st.shared.b32 [%0], %1;" ::"r"(at), "r"(bf16_t::pack(o[k], o[k + 1])));
        }
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncwarp();
      if (lane < 16) {
        const int row = 16 * (warp % 4) + lane;
        const u32 src = staged + row * kStagedStride + 2 * wg * kHalf;
        u16* dst = static_cast<u16*>(out) + base + row * kCols + wg * kHalf;
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(src),
                     "n"(2 * kHalf)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");  // the staging may be written again
      }
      __syncwarp();
    } else {
      static_assert(PATTERN == 6, "patterns 0-6");
      if (o[0] == -1.f) static_cast<float*>(out)[threadIdx.x] = o[1];  // never: keeps the values
    }
#pragma unroll
    for (int k = 0; k < kHalf / 4; ++k) o[k] += 1.f;
  }
}
