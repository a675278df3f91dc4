// Absorbed MLA decode core for Hopper (sm_90a): the schedule, inputs and
// outputs of latent_attention.cu, with the products on warpgroup MMAs
// (wgmma) reading both operands from shared memory.
//
// A CTA of two warpgroups owns 64 query rows of one request (all heads and
// query tokens when Sq*H <= 64) and walks its range of 64-token cache tiles.
// Q and each tile sit in shared memory in the 128-byte-swizzled layout wgmma
// reads. Tiles are copied once per CTA by TMA (double-buffered, one mbarrier
// per stage; warp 0 issues a copy per 64 columns and per page of the tile)
// and serve every row; Q comes in by cp.async once per request. Per tile, warpgroup w computes the scores of the tile's tokens
// [32w, 32w+32) (S = Q K^T, 36 k-steps of m64n32k16), the two warpgroups
// exchange row maxima, each writes its probabilities P to shared memory, and
// then warpgroup w accumulates its half of the output columns,
// O[:, w*DV/2 ...] += P V, V being the first DV columns of the same tile read
// as an N-major operand (no transposed copy).
#include "common.cuh"
#include "params.cuh"
#include "hopper.cuh"

namespace {

constexpr int HOPPER_MIN_PAGE = 8;  // smallest page TMA copies as a box (cumla/_kernels.py)

template <int D, int DV>
struct HopperTile {
  static constexpr int BM = 64, BN = 64;      // query rows, tokens per tile
  static constexpr int kBlocks = D / 64;       // 128-byte column blocks per row
  static constexpr int kHalf = DV / 2;         // output columns per warpgroup
  static constexpr int kChunks = D / 8;        // 16-byte chunks per row
  using Rows = Swizzle128<64>;
  static constexpr int kTileBytes = Rows::bytes(kBlocks);  // Q, or one cache stage
  static constexpr int kPBytes = Rows::bytes(1);            // P: 64 x 64 16-bit values
  static constexpr int kRedBytes = 4 * BM * 4;              // row maxima and sums of both warpgroups
  static constexpr int kBarBytes = 2 * 8;                   // one mbarrier per stage
  static constexpr int kSmemBytes = 1024 + 3 * kTileBytes + kPBytes + kRedBytes + kBarBytes;  // 1024: alignment
  static_assert(D % 64 == 0 && DV % 128 == 0 && DV <= D && kHalf <= 256, "dims outside the Hopper kernel's range");
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in shared memory");
};

}  // namespace

// `cache_map`: the cache as a 2-D tensor (rows, D) with boxes of 64 columns
// by min(64, block_size) rows (64 for a contiguous cache), 128-byte swizzle.
template <class T, int D, int DV>
__global__ void __launch_bounds__(256, 1) latent_attention_sm90(const __grid_constant__ AttnParams p,
                                                                const __grid_constant__ TmaMap cache_map) {
  using Tile = HopperTile<D, DV>;
  using Rows = typename Tile::Rows;
  constexpr int kHalf = Tile::kHalf, kBlock = Rows::kBlockBytes;

  // wgmma's swizzle is anchored at 1024-byte boundaries.
  extern __shared__ __align__(1024) unsigned char smem[];
  const u32 raw = smem_addr(smem);
  const u32 sQ = (raw + 1023u) & ~1023u;
  const u32 sKV = sQ + Tile::kTileBytes;
  const u32 sP = sKV + 2 * Tile::kTileBytes;
  float* sMax = reinterpret_cast<float*>(smem + (sP + Tile::kPBytes - raw));  // [2][BM]
  float* sSum = sMax + 2 * Tile::BM;                                             // [2][BM]
  const u32 sBar = sP + Tile::kPBytes + Tile::kRedBytes;                         // [2] mbarriers

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  // Accumulator fragments: this thread holds rows r_lo and r_lo + 8, columns
  // 8j + cq and 8j + cq + 1 of every 8-column group j.
  const int r_lo = 16 * warp + lane / 4, cq = 2 * (lane % 4);
  const int row0 = blockIdx.y * Tile::BM;
  const u16* q = static_cast<const u16*>(p.q);
  const PartWork work(p.sched, blockIdx.x);
  const int box_rows = p.block_table == nullptr || p.block_size > Tile::BN ? Tile::BN : p.block_size;
  if (threadIdx.x == 0) {
    mbar_init(sBar, 1);
    mbar_init(sBar + 8, 1);
    mbar_init_fence();
  }
  // Tiles issued and consumed so far: the n-th tile uses stage n % 2 and
  // completes phase n / 2 of that stage's barrier.
  u32 issued = 0, consumed = 0;

  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, Tile::BN, seg)) continue;
    const int n = seg.n, t0 = seg.t0, t1 = seg.t1;

    __syncthreads();  // the previous request is done with shared memory
    const u16* q_rows = q + (static_cast<size_t>(b) * p.rows + row0) * D;
    const int live_rows = min(Tile::BM, p.rows - row0);
    load_rows<Tile::kChunks, Tile::kChunks, Rows>(
        sQ, Tile::BM, 0, q, [&](int r) { return r < live_rows ? q_rows + static_cast<size_t>(r) * D : nullptr; });
    cp_async_commit();
    // Warp 0 issues tile t: one TMA box per 64 columns and per page of
    // box_rows rows. Lane l first finds the cache row of page l (a block-table
    // load, done ahead so its latency hides under the wait for the previous
    // tile); tokens past the length and out-of-range block ids give y < 0,
    // where TMA fills zeros.
    const int pages = Tile::BN / box_rows;
    auto page_row = [&](int t) {
      const int tok = t * Tile::BN + lane * box_rows;
      int y = -box_rows;
      if (lane >= pages) return y;
      if (p.block_table == nullptr) {
        y = b * p.capacity + tok;
      } else if (tok < n) {
        const int blk = p.block_table[static_cast<size_t>(b) * p.max_blocks + tok / p.block_size];
        if (blk >= 0 && blk < p.num_blocks) y = blk * p.block_size + tok % p.block_size;
      }
      return y;
    };
    auto issue_tile = [&](int y_of_my_page) {
      const u32 stage = sKV + (issued & 1) * Tile::kTileBytes, bar = sBar + (issued & 1) * 8;
      if (threadIdx.x < 32) {
        if (lane == 0) mbar_expect_bytes(bar, Tile::kTileBytes);
        __syncwarp();
        constexpr int kRounds = (Tile::kBlocks * Tile::BN / HOPPER_MIN_PAGE + 31) / 32;
#pragma unroll
        for (int round = 0; round < kRounds; ++round) {
          const int k = lane + 32 * round, page = min(k / Tile::kBlocks, pages - 1);
          const int y = __shfl_sync(0xffffffffu, y_of_my_page, page);
          if (k < Tile::kBlocks * pages)
            tma_load_2d(stage + (k % Tile::kBlocks) * kBlock + page * box_rows * 128, cache_map,
                        (k % Tile::kBlocks) * 64, y, bar);
        }
      }
      ++issued;
    };
    if (t0 < t1) issue_tile(threadIdx.x < 32 ? page_row(t0) : 0);

    float o[kHalf / 2];
#pragma unroll
    for (int i = 0; i < kHalf / 2; ++i) o[i] = 0.f;
    float run_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF}, run_sum[2] = {0.f, 0.f};
    int limit[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) limit[h] = visible_limit(n, row0 + r_lo + 8 * h, p.heads, p.q_len, p.causal);

    cp_async_wait<0>();
    fence_async_shared();  // Q, written through the generic proxy, is read by wgmma
    for (int t = t0; t < t1; ++t) {
      const u32 sK = sKV + (consumed & 1) * Tile::kTileBytes;
      const int next_y = threadIdx.x < 32 && t + 1 < t1 ? page_row(t + 1) : 0;
      mbar_wait(sBar + (consumed & 1) * 8, (consumed >> 1) & 1);
      ++consumed;
      const int valid = n - t * Tile::BN;
      if (valid < Tile::BN) {
        // The last tile: rows past the length hold whatever the cache holds
        // there (NaN included); zero them so that P = 0 times V stays 0.
        const int first = valid > 0 ? valid : 0;
        for (int i = threadIdx.x; i < (Tile::BN - first) * Tile::kChunks; i += blockDim.x) {
          const int r = first + i / Tile::kChunks, c = i % Tile::kChunks;
          asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(sK + Rows::offset(r, c)), "r"(0));
        }
        fence_async_shared();
      }
      wgmma_wait<0>();  // tile t-1's P V
      fence_registers(o);
      __syncthreads();  // tile t is in for everyone; tile t-1's products are complete
      if (t + 1 < t1) issue_tile(next_y);

      // S = Q K^T over this warpgroup's 32 tokens. (Two accumulators taking
      // alternate k-steps measured no faster: the chain is not the limit.)
      // Descriptors advance by adding the byte offset / 16 to their address field.
      const u64 q_desc = wgmma_desc(sQ, 16, 1024), k_desc = wgmma_desc(sK + wg * 32 * 128, 16, 1024);
      float s[16];
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < 4 * Tile::kBlocks; ++k) {
        const u32 step = ((k / 4) * kBlock + (k % 4) * 32) >> 4;
        Wgmma<32>::run<T, 0>(s, q_desc + step, k_desc + step, k > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(s);

      // Mask invisible tokens; row maxima over the quad, then both warpgroups.
      float tile_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF};
      const bool clipped = (t + 1) * Tile::BN > min(limit[0], limit[1]);  // only the last tiles
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int h = (i / 2) & 1;
        const int tok = t * Tile::BN + wg * 32 + (i / 4) * 8 + cq + (i & 1);
        if (clipped && tok >= limit[h]) s[i] = CUMLA_NEG_INF;
        tile_max[h] = fmaxf(tile_max[h], s[i]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        if (lane % 4 == 0) sMax[wg * Tile::BM + r_lo + 8 * h] = tile_max[h];
      }
      __syncthreads();
      float alpha[2], base[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = r_lo + 8 * h;
        const float m = fmaxf(run_max[h], fmaxf(sMax[r], sMax[Tile::BM + r]));
        // Rows that have seen nothing keep max -inf: scale by 1, exponentiate to 0.
        base[h] = m == CUMLA_NEG_INF ? 0.f : m * p.scale_log2;
        alpha[h] = fast_exp2(run_max[h] * p.scale_log2 - base[h]);
        run_max[h] = m;
        run_sum[h] *= alpha[h];
      }
#pragma unroll
      for (int i = 0; i < 16; i += 2) {
        const int h = (i / 2) & 1;
        const float p0 = fast_exp2(s[i] * p.scale_log2 - base[h]);
        const float p1 = fast_exp2(s[i + 1] * p.scale_log2 - base[h]);
        run_sum[h] += p0 + p1;
        const int row = r_lo + 8 * h, col = wg * 32 + (i / 4) * 8 + cq;
        asm volatile("st.shared.b32 [%0], %1;" ::"r"(sP + Rows::offset(row, col / 8) + (col % 8) * 2),
                     "r"(T::pack(p0, p1)));
      }
      if (alpha[0] != 1.f || alpha[1] != 1.f) {  // the running max rarely moves after the first tiles
#pragma unroll
        for (int i = 0; i < kHalf / 2; ++i) o[i] *= alpha[(i / 2) & 1];
      }
      fence_async_shared();
      __syncthreads();  // P complete

      // O[:, this warpgroup's half] += P V.
      wgmma_fence();
      const u64 p_desc = wgmma_desc(sP, 16, 1024), v_desc = wgmma_desc(sK + wg * (kHalf / 64) * kBlock, kBlock, 1024);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)  // k-step kk: P columns 16kk.., V rows (tokens) 16kk..
        Wgmma<kHalf>::template run<T, 1>(o, p_desc + ((kk * 32) >> 4), v_desc + ((kk * 16 * 128) >> 4), 1);
      wgmma_commit();  // waited for before the next tile's barrier, after its mbarrier wait
    }
    wgmma_wait<0>();
    fence_registers(o);

    // Row sums: over the quad, then over both warpgroups.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      run_sum[h] += __shfl_xor_sync(0xffffffffu, run_sum[h], 1);
      run_sum[h] += __shfl_xor_sync(0xffffffffu, run_sum[h], 2);
      if (lane % 4 == 0) sSum[wg * Tile::BM + r_lo + 8 * h] = run_sum[h];
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r_lo + 8 * h;
      if (row0 + r >= p.rows) continue;
      const float total = sSum[r] + sSum[Tile::BM + r];
      const float inv = total > 0.f ? 1.f / total : 0.f;
      const size_t out_row = seg.out_row(p.rows, row0 + r);
      if (wg == 0 && lane % 4 == 0)
        (seg.final() ? p.lse : p.part_lse)[out_row] = total > 0.f ? run_max[h] * p.scale + logf(total) : CUMLA_NEG_INF;
#pragma unroll
      for (int j = 0; j < kHalf / 8; ++j) {
        const int i = 4 * j + 2 * h;  // registers 4j + 2h, 4j + 2h + 1 hold row h
        const int col = wg * kHalf + 8 * j + cq;
        const float v0 = o[i] * inv, v1 = o[i + 1] * inv;
        if (seg.final()) {
          *reinterpret_cast<u32*>(static_cast<u16*>(p.out) + out_row * DV + col) = T::pack(v0, v1);
        } else {
          *reinterpret_cast<float2*>(p.part_out + out_row * DV + col) = make_float2(v0, v1);
        }
      }
    }
  }
}
