// Decompressed MLA decode (the design's original algorithm), tiled on chip.
//
// One CTA of 8 warps owns one head h, up to 256 query tokens of one request
// and a range of 64-token cache tiles from the split-KV schedule. Per tile:
//   1. decompress: K_nope = C W_uk_h (64 x DN) and V = C W_uv_h (64 x DV) on
//      tensor cores, one 64-column pass at a time, streaming C (the latent
//      part of the tile) and W_h in KC-wide slices of L through a ring of
//      STAGES shared-memory stages (one barrier per slice; the next tile's
//      first slices are copied while this tile is attended); the RoPE part
//      of the tile is copied next to K_nope. K and V exist only in shared
//      memory.
//   2. attend: warp w owns query rows [32w, 32w+32) and, for each 16-token
//      quarter of the tile, computes its score rows, the online softmax in registers
//      and O += P V (P reused from the score registers as mma A fragments).
// Outputs and partials use the same layout and combine step as the absorbed
// kernel, with rows = Sq * H ordered (query, head).
//
// WGMMA (Hopper, sm_90a): both steps on warpgroup MMAs instead.
//   1. Warpgroup g computes a whole 64-column pass (64 tokens x 64 columns,
//      32 accumulators a thread) with wgmma m64n64k16 reading the latent
//      slice (A, K-major) and its W slice (B, N-major) straight from shared
//      memory; the two warpgroups take passes 2r and 2r + 1 of round r, so a
//      ring stage holds one latent slice and two W slices.
//   2. Warpgroup g attends query rows [128g, 128g + 128) in two 64-row
//      blocks over the whole tile: S = Q K^T (m64n64k16, both from shared
//      memory), the online softmax in registers, O += P V (m64nDVk16, P from
//      registers, V N-major from shared memory).
// Q, K and V are then the 128-byte-swizzled blocks wgmma reads (Swizzle128),
// and every tile starts at a 1024-byte boundary.
#include "common.cuh"
#include "params.cuh"
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#include "hopper.cuh"
#endif

namespace {

template <int L, int R, int DN, int DV, int KC, int STAGES, bool WGMMA = false>
struct DecompTile {
  static constexpr int BN = 64, BM = 256, kThreads = 256;
  static_assert(BN == kScheduleTile, "the kernel's tiles are the schedule's");
  static constexpr int QK = DN + R;
  // Queries and keys [K_nope | rope], and values: rows for ldmatrix, or the
  // 128-byte-swizzled blocks of the warpgroup MMAs (the same bytes).
  using QRows = typename Pick<WGMMA, Swizzle128<BM>, SwizzledRows<QK / 8>>::type;
  using KRows = typename Pick<WGMMA, Swizzle128<BN>, SwizzledRows<QK / 8>>::type;
  using VRows = typename Pick<WGMMA, Swizzle128<BN>, SwizzledRows<DV / 8>>::type;
  using CRows = SwizzledRows<KC / 8>;   // one KC-wide slice of the latent tile
  using WRows = SwizzledRows<8>;        // one KC-row slice of a 64-column block of W_h
  static constexpr int kQBytes = SwizzledRows<QK / 8>::bytes(BM);
  static constexpr int kKBytes = SwizzledRows<QK / 8>::bytes(BN);
  static constexpr int kVBytes = SwizzledRows<DV / 8>::bytes(BN);
  static constexpr int kCBytes = CRows::bytes(BN);
  static constexpr int kWBytes = WRows::bytes(KC);
  static constexpr int kPassesPerStep = WGMMA ? 2 : 1;  // W slices per ring stage (one per warpgroup)
  static constexpr int kStageBytes = kCBytes + kPassesPerStep * kWBytes;
  static constexpr int kAlign = WGMMA ? 1024 : 0;       // wgmma's swizzle is anchored at 1024-byte boundaries
  static constexpr int kSmemBytes = kAlign + kQBytes + kKBytes + kVBytes + STAGES * kStageBytes;
  static constexpr int kSlices = L / KC;
  // Decompression passes: 64-column blocks of K_nope (W_uk_h), then of V (W_uv_h).
  static constexpr int kKeyPasses = (DN + 63) / 64, kPasses = kKeyPasses + (DV + 63) / 64;
  static constexpr int kRounds = kPasses / kPassesPerStep;  // passes at once: one per warpgroup with WGMMA
  static constexpr int kSteps = kRounds * kSlices;          // slice copies per tile
  static constexpr bool kFullPasses = DN % 64 == 0 && DV % 64 == 0;  // every pass 64 columns wide
  // Each thread's share of a step's copies: chunk (tid % chunks) of rows
  // tid / chunks + j * (kThreads / chunks).
  static constexpr int kCChunks = KC / 8, kCRowStep = kThreads / kCChunks;
  static constexpr int kCRows = (BN + kCRowStep - 1) / kCRowStep;
  static constexpr int kWRowStep = kThreads / 8;
  static constexpr int kWRows = (KC + kWRowStep - 1) / kWRowStep;
  static_assert(L % KC == 0 && KC % 16 == 0 && kThreads % kCChunks == 0 && R % 8 == 0, "latent slices");
  static_assert(STAGES >= 2 && STAGES <= kSteps, "slice ring");
  static_assert(DN % 16 == 0 && DV % 16 == 0 && QK % 16 == 0, "head dims must be multiples of 16");
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in shared memory");
  static_assert(!WGMMA || (KC == 64 && kFullPasses && kPasses % 2 == 0 && (DV == 64 || DV == 128) &&
                           kQBytes == (QK + 63) / 64 * BM * 128 && kKBytes == (QK + 63) / 64 * BN * 128 &&
                           kVBytes == DV / 64 * BN * 128),
                "the warpgroup-MMA path needs 128-byte slices, an even number of full passes and Dv of 64 or 128");
};

// acc[16 tokens x 32 columns of this warp] += C slice @ W slice of one ring
// stage. a_row: the lane's ldmatrix walk along its row of the C slice;
// b_off[j]: its ldmatrix.trans address of column pair j in the W slice at
// k = 0 (k moves 16 rows down, which keeps the swizzle); both relative to the
// stage. FULL: both pairs are live (64-column passes).
template <class T, int KC, bool FULL>
__device__ __forceinline__ void decompress_slice(float (&acc)[2][2][4], u32 stage, const RowWalk<KC / 8>& a_row,
                                                 const u32 (&b_off)[2], const bool (&pair_live)[2]) {
#pragma unroll
  for (int k = 0; k < KC / 16; ++k) {
    u32 a[4];
    ldsm_x4(a, stage + a_row.at(k / 4, k % 4));
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (FULL || pair_live[j]) {
        u32 bfrag[4];
        ldsm_x4_trans(bfrag, stage + b_off[j] + k * 16 * SwizzledRows<8>::kStride * 16);
        T::mma(acc[j][0], a, bfrag[0], bfrag[1]);
        T::mma(acc[j][1], a, bfrag[2], bfrag[3]);
      }
    }
  }
}

}  // namespace

template <class T, int L, int R, int DN, int DV, int KC, int STAGES, bool WGMMA = false>
__global__ void __launch_bounds__(256, 1) decompressed_attention(const __grid_constant__ AttnParams p) {
  using Tile = DecompTile<L, R, DN, DV, KC, STAGES, WGMMA>;
  using QRows = typename Tile::QRows;
  using KRows = typename Tile::KRows;
  using VRows = typename Tile::VRows;
  using CRows = typename Tile::CRows;
  using WRows = typename Tile::WRows;
  constexpr int BN = Tile::BN, BM = Tile::BM, QK = Tile::QK, D = L + R;
  constexpr int kVPairs = DV / 16;
  constexpr int kKeyPasses = Tile::kKeyPasses, kSlices = Tile::kSlices, kSteps = Tile::kSteps;
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(!WGMMA, "the warpgroup-MMA decompression is compiled for sm_90a only");
#endif

  extern __shared__ __align__(128) unsigned char smem[];
  require_dynamic_smem(Tile::kSmemBytes);
  const u32 sQ = WGMMA ? (smem_addr(smem) + 1023u) & ~1023u : smem_addr(smem);
  const u32 sK = sQ + Tile::kQBytes;
  const u32 sV = sK + Tile::kKBytes;
  const u32 sStages = sV + Tile::kVBytes;       // STAGES x [C slice | W slice]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;
  const int part = blockIdx.x, m_tile = blockIdx.y, h = blockIdx.z;
  const u16* q = static_cast<const u16*>(p.q);
  const u16* cache = static_cast<const u16*>(p.cache);
  const size_t w_ld = static_cast<size_t>(p.heads) * (DN + DV);

  // This thread's copies of a step, fixed for the whole kernel: C chunk
  // c_chunk of rows c_row0 + j * kCRowStep, W chunk w_chunk of rows
  // w_row0 + j * kWRowStep (of the slice), at fixed shared-memory offsets.
  const int c_chunk = threadIdx.x % Tile::kCChunks, c_row0 = threadIdx.x / Tile::kCChunks;
  const int w_chunk = threadIdx.x % 8, w_row0 = threadIdx.x / 8;
  const u16* w_mine = static_cast<const u16*>(p.w) + static_cast<size_t>(h) * (DN + DV) + w_chunk * 8;
  const size_t w_slice_ld = KC * w_ld;  // elements between two slices of W's rows
  u32 c_dst[Tile::kCRows], w_dst[Tile::kWRows];
  size_t w_row_off[Tile::kWRows];
#pragma unroll
  for (int j = 0; j < Tile::kCRows; ++j) c_dst[j] = CRows::offset(c_row0 + j * Tile::kCRowStep, c_chunk);
#pragma unroll
  for (int j = 0; j < Tile::kWRows; ++j) {
    w_dst[j] = Tile::kCBytes + WRows::offset(w_row0 + j * Tile::kWRowStep, w_chunk);
    w_row_off[j] = (w_row0 + j * Tile::kWRowStep) * w_ld;
  }
  // The warp's share of a pass: 16 tokens (rows row0..) x column pairs pair0, pair0 + 1.
  const int row0 = 16 * (warp % 4), pair0 = 2 * (warp / 4);
  const RowWalk<KC / 8> a_row(0, row0 + (lane & 15), lane >> 4);
  u32 b_off[2];
#pragma unroll
  for (int j = 0; j < 2; ++j)
    b_off[j] = Tile::kCBytes + WRows::offset((lane & 7) + ((lane >> 3) & 1) * 8, 2 * (pair0 + j) + (lane >> 4));

  const PartWork work(p.sched, part);
  allow_combine_launch(p, work);

  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, BN, seg)) continue;
    const int n = seg.n, t0 = seg.t0, t1 = seg.t1;
    const int i0 = m_tile * BM;                       // first query token of this CTA
    const int live = min(BM, p.q_len - i0);

    cp_async_wait<0>();
    __syncthreads();
    const u16* q_b = q + ((static_cast<size_t>(b) * p.q_len + i0) * p.heads + h) * QK;
    load_rows<Tile::kThreads / 32, QK / 8, QK / 8, QRows>(sQ, BM, 0, q, [&](int r) {
      return r < live ? q_b + static_cast<size_t>(r) * p.heads * QK : nullptr;
    });
    cp_async_commit();

    float acc_o[2][2 * kVPairs][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int j = 0; j < 2 * kVPairs; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_o[mi][j][e] = 0.f;
    float run_max[2][2], run_sum[2][2];
    int limit[2][2];
    // This thread's query rows (of the CTA's BM) in acc_o[mi], row hh of its
    // fragments: warp w's 32 rows for mma.sync; with WGMMA, warpgroup g's
    // 64-row block mi, whose accumulators (acc_o[mi] flattened) map rows and
    // columns the same way.
    auto row_of = [&](int mi, int hh) {
      return WGMMA ? 128 * (warp / 4) + 64 * mi + 16 * (warp % 4) + g + 8 * hh : 32 * warp + 16 * mi + g + 8 * hh;
    };
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        run_max[mi][hh] = CUMLA_NEG_INF;
        run_sum[mi][hh] = 0.f;
        const int i = i0 + row_of(mi, hh);
        limit[mi][hh] = p.causal ? n - p.q_len + i + 1 : n;
      }
    const bool warp_live = 32 * warp < live;
    // Online-softmax step of row hh of block mi from this thread's share of
    // its tile maximum: the quad's maximum moves the base (move_base) and
    // scales the row sum; returns the factor of the row's O accumulators,
    // `base` gets the row's exp2 offset.
    auto row_step = [&](int mi, int hh, float m, float& base) {
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const float alpha = move_base(run_max[mi][hh], m, p.scale_log2);
      base = base_offset(run_max[mi][hh], p.scale_log2);
      run_sum[mi][hh] *= alpha;
      return alpha;
    };
    // O of block mi times the rows' factors, unless every row of the warp kept its base.
    auto rescale_o = [&](int mi, const float (&alpha)[2]) {
      if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int j = 0; j < 2 * kVPairs; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_o[mi][j][e] *= alpha[e / 2];
      }
    };

    auto pass_cols = [](int pass) {
      return pass < kKeyPasses ? min(64, DN - 64 * pass) : min(64, DV - 64 * (pass - kKeyPasses));
    };
    // The latent rows this thread copies in tile t, looked up once a tile
    // instead of once a slice; rows past n (or of a bad block) are zero-filled
    // from a mapped address (their first row's chunk), so a step only adds
    // its slice offset.
    const u16* c_src[Tile::kCRows];
    bool c_ok[Tile::kCRows];
    auto find_rows = [&](int t) {
#pragma unroll
      for (int j = 0; j < Tile::kCRows; ++j) {
        const int r = c_row0 + j * Tile::kCRowStep;
        const u16* row = r < BN ? cache_row(p, cache, b, n, t * BN + r, D) : nullptr;
        c_ok[j] = row != nullptr;
        c_src[j] = (c_ok[j] ? row : cache) + c_chunk * 8;
      }
    };
    // Copy step `step`'s C and W slices into its ring stage; one commit
    // group per step, empty past the last step, so waits count steps.
    auto stage_of = [&](int step) { return sStages + (step % STAGES) * Tile::kStageBytes; };
    auto copy_step = [&](unsigned step) {
      if (step < kSteps) {
        const unsigned round = step / kSlices, slice = step % kSlices;
        const u32 stage = stage_of(step);
#pragma unroll
        for (int j = 0; j < Tile::kCRows; ++j)
          if (c_row0 + j * Tile::kCRowStep < BN)
            cp_async16(stage + c_dst[j], c_src[j] + slice * KC, c_ok[j]);
#pragma unroll
        for (int wp = 0; wp < Tile::kPassesPerStep; ++wp) {  // the W slice of each pass of the round
          const int pass = round * Tile::kPassesPerStep + wp;
          const int col0 = pass < kKeyPasses ? 64 * pass : DN + 64 * (pass - kKeyPasses);
          const u16* w_slice = w_mine + slice * w_slice_ld + col0;
          const bool chunk_live = Tile::kFullPasses || w_chunk < pass_cols(pass) / 8;
#pragma unroll
          for (int j = 0; j < Tile::kWRows; ++j)
            if (w_row0 + j * Tile::kWRowStep < KC && chunk_live)
              cp_async16(stage + wp * Tile::kWBytes + w_dst[j], w_slice + w_row_off[j], true);
        }
      }
      cp_async_commit();
    };
    auto start_tile = [&](int t) {  // the first STAGES - 1 steps of tile t in flight
      find_rows(t);
#pragma unroll
      for (int step = 0; step < STAGES - 1; ++step) copy_step(step);
    };

    if (t0 < t1) start_tile(t0);  // the ring is free: the barrier above follows the previous request
    for (int t = t0; t < t1; ++t) {
      // ---- 1. decompress the tile, one 64-column block per pass, its KC-wide
      // slices streamed through the ring (started by the previous tile).
      auto token = [&](int r) { return cache_row(p, cache, b, n, t * BN + r, D); };
      __syncthreads();  // the previous tile's readers of sK/sV are done
      if constexpr (R > 0) load_rows<Tile::kThreads / 32, QK / 8, R / 8, KRows>(sK, BN, DN / 8, cache, [&](int r) {
        const u16* row = token(r);
        return row != nullptr ? row + L : nullptr;
      });
      int step = 0;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      if constexpr (WGMMA) {
        // Round r: warpgroup g computes pass 2r + g, 64 tokens x 64 columns.
        const int group = warp / 4;
#pragma unroll 1
        for (int round = 0; round < Tile::kRounds; ++round) {
          float acc[32] = {};
#pragma unroll 1
          for (int slice = 0; slice < kSlices; ++slice, ++step) {
            cp_async_wait<STAGES - 2>();  // this step's slices have landed (for this thread)
            fence_async_shared();         // ... and are visible to the MMAs' async proxy
            __syncthreads();              // ... for all threads; the stage refilled next was read at step - 1
            copy_step(step + STAGES - 1);
            const u32 stage = stage_of(step);
            const u64 c_desc = wgmma_desc(stage, 16, 1024);  // A: the latent slice, K-major
            const u64 w_desc = wgmma_desc(stage + Tile::kCBytes + group * Tile::kWBytes, 64 * 128, 1024);  // B: N-major
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < KC / 16; ++k)
              Wgmma<64>::template run<T, 1>(acc, c_desc + ((k * 32) >> 4), w_desc + ((k * 16 * 128) >> 4),
                                            slice > 0 || k > 0);
            wgmma_commit();
            wgmma_wait<0>();
            fence_registers(acc);
          }
          // Registers 4j + 2hh, 4j + 2hh + 1 hold row 16 (warp % 4) + g + 8hh, columns 8j + 2tq, + 1.
          const int pass = 2 * round + group;
          const bool keys = pass < kKeyPasses;
          const int col0 = 64 * (keys ? pass : pass - kKeyPasses);
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int col = col0 + 8 * j + 2 * tq, row = 16 * (warp % 4) + g + 8 * hh;
              const float lo = acc[4 * j + 2 * hh], hi = acc[4 * j + 2 * hh + 1];
              if (keys) store_pair<T, QK / 8, KRows>(sK, row, col, lo, hi);
              else store_pair<T, DV / 8, VRows>(sV, row, col, lo, hi);
            }
        }
      } else  // the portable passes
#endif
      {
#pragma unroll 1
        for (int pass = 0; pass < Tile::kPasses; ++pass) {
          const int cols = pass_cols(pass);
          const bool pair_live[2] = {pair0 < cols / 16, pair0 + 1 < cols / 16};
          float acc[2][2][4];
#pragma unroll
          for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][0][e] = acc[j][1][e] = 0.f;
#pragma unroll 1
          for (int slice = 0; slice < kSlices; ++slice, ++step) {
            cp_async_wait<STAGES - 2>();  // this step's slices have landed (for this thread)
            __syncthreads();              // ... for all threads; the stage refilled next was read at step - 1
            copy_step(step + STAGES - 1);
            const u32 stage = stage_of(step);
            decompress_slice<T, KC, Tile::kFullPasses>(acc, stage, a_row, b_off, pair_live);
          }
          // This block of columns is complete: store it as T.
          const bool keys = pass < kKeyPasses;
          const int col0 = 64 * (keys ? pass : pass - kKeyPasses);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            if (!Tile::kFullPasses && !pair_live[j]) continue;
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
              for (int hh = 0; hh < 2; ++hh) {
                const int col = col0 + 16 * (pair0 + j) + 8 * half + 2 * tq, row = row0 + g + 8 * hh;
                const float lo = acc[j][half][2 * hh], hi = acc[j][half][2 * hh + 1];
                if (keys) store_pair<T, QK / 8, KRows>(sK, row, col, lo, hi);
                else store_pair<T, DV / 8, VRows>(sV, row, col, lo, hi);
              }
          }
        }
      }
      cp_async_wait<0>();  // the RoPE part of K (only empty step groups remain)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      if constexpr (WGMMA) fence_async_shared();  // K and V, written through the generic proxy, are read by wgmma
#endif
      __syncthreads();  // K and V are complete; the ring is free
      if (t + 1 < t1) start_tile(t + 1);  // the next tile's first slices load while this one is attended

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      if constexpr (WGMMA) {
        // ---- 2. attend: warpgroup g its two 64-row blocks, the whole tile at
        // once (rows past the live queries hold zeros and are not written).
        const int group = __shfl_sync(0xffffffffu, warp / 4, 0);  // uniform for ptxas
        const u64 k_desc = wgmma_desc(sK, 16, 1024), v_desc = wgmma_desc(sV, 64 * 128, 1024);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const u64 q_desc = wgmma_desc(sQ + (128 * group + 64 * mi) * 128, 16, 1024);
          float s[32];
          wgmma_fence();
#pragma unroll
          for (int k = 0; k < QK / 16; ++k)
            Wgmma<64>::template run<T, 0>(s, q_desc + (((k / 4) * QRows::kBlockBytes + (k % 4) * 32) >> 4),
                                          k_desc + (((k / 4) * KRows::kBlockBytes + (k % 4) * 32) >> 4), k > 0);
          wgmma_commit();
          wgmma_wait<0>();
          fence_registers(s);
          // Online softmax as below; s[k] holds row (k / 2) & 1, token 8 (k / 4) + 2tq + (k & 1).
          float base[2], alpha[2];
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            float m = CUMLA_NEG_INF;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
              const int k = 4 * (j / 2) + 2 * hh + (j & 1), tok = t * BN + 8 * (j / 2) + 2 * tq + (j & 1);
              if (tok >= limit[mi][hh]) s[k] = CUMLA_NEG_INF;
              m = fmaxf(m, s[k]);
            }
            alpha[hh] = row_step(mi, hh, m, base[hh]);
          }
          rescale_o(mi, alpha);
          u32 pa[16];  // P as the A operand: pa[4kk..4kk + 3] for tokens 16kk..
#pragma unroll
          for (int k = 0; k < 32; ++k) {
            s[k] = fast_exp2(s[k] * p.scale_log2 - base[(k / 2) & 1]);
            run_sum[mi][(k / 2) & 1] += s[k];
          }
#pragma unroll
          for (int k = 0; k < 16; ++k) pa[k] = T::pack(s[2 * k], s[2 * k + 1]);
          float(&o)[DV / 2] = *reinterpret_cast<float(*)[DV / 2]>(&acc_o[mi][0][0]);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
            Wgmma<DV>::template run<T, 1>(o, *reinterpret_cast<const u32(*)[4]>(pa + 4 * kk),
                                          v_desc + ((kk * 16 * 128) >> 4), 1);
          wgmma_commit();
          wgmma_wait<0>();
          fence_registers(o);
        }
      } else  // the mma.sync attention
#endif
      // ---- 2. attend: each warp its 32 query rows, the tile in 16-token quarters.
      if (warp_live) {
#pragma unroll 1
        for (int quarter = 0; quarter < 4; ++quarter) {
          const int tok0 = 16 * quarter;
          float s[2][2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) s[mi][j][e] = 0.f;
#pragma unroll 2
          for (int k = 0; k < QK / 16; ++k) {
            u32 bfrag[4];
            ldsm_x4(bfrag, sK + KRows::offset(tok0 + (lane & 7) + ((lane >> 4) << 3), 2 * k + ((lane >> 3) & 1)));
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
              u32 a[4];
              ldsm_x4(a, sQ + QRows::offset(32 * warp + 16 * mi + (lane & 15), 2 * k + (lane >> 4)));
              T::mma(s[mi][0], a, bfrag[0], bfrag[1]);
              T::mma(s[mi][1], a, bfrag[2], bfrag[3]);
            }
          }
          // Online softmax on the score registers. A row's exponent base
          // moves only when a score passes it by more than kRescaleSlack
          // (log2 units): P stays below 2^slack, exact enough in 16 bits and
          // far from overflow, and once the maxima settle a warp whose rows
          // all kept their base skips rescaling its O accumulators.
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            float base[2], alpha[2];
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              float m = CUMLA_NEG_INF;
#pragma unroll
              for (int j = 0; j < 2; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int tok = t * BN + tok0 + 8 * j + 2 * tq + e;
                  float& v = s[mi][j][2 * hh + e];
                  if (tok >= limit[mi][hh]) v = CUMLA_NEG_INF;
                  m = fmaxf(m, v);
                }
              alpha[hh] = row_step(mi, hh, m, base[hh]);
            }
            rescale_o(mi, alpha);
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                s[mi][j][e] = fast_exp2(s[mi][j][e] * p.scale_log2 - base[e / 2]);
                run_sum[mi][e / 2] += s[mi][j][e];
              }
          }
          // O += P V; P's accumulator layout is the A fragment layout of k16.
          u32 a[2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            a[mi][0] = T::pack(s[mi][0][0], s[mi][0][1]);
            a[mi][1] = T::pack(s[mi][0][2], s[mi][0][3]);
            a[mi][2] = T::pack(s[mi][1][0], s[mi][1][1]);
            a[mi][3] = T::pack(s[mi][1][2], s[mi][1][3]);
          }
#pragma unroll
          for (int pair = 0; pair < kVPairs; ++pair) {
            u32 bfrag[4];
            ldsm_x4_trans(bfrag, sV + VRows::offset(tok0 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * pair + (lane >> 4)));
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
              T::mma(acc_o[mi][2 * pair], a[mi], bfrag[0], bfrag[1]);
              T::mma(acc_o[mi][2 * pair + 1], a[mi], bfrag[2], bfrag[3]);
            }
          }
        }
      }
    }

    // ---- finalize: rows (query i, head h) -> output row i * H + h.
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float total = run_sum[mi][hh];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        const int i = i0 + row_of(mi, hh);
        if (i >= p.q_len) continue;
        const int row = i * p.heads + h;
        const float lse = row_seen(total) ? run_max[mi][hh] * p.scale + logf(total) : CUMLA_NEG_INF;
        const float inv = row_seen(total) ? 1.f / total : 0.f;
        const size_t out_row = seg.out_row(p.rows, row);
        if (tq == 0) (seg.final() ? p.lse : p.part_lse)[out_row] = lse;
#pragma unroll
        for (int j = 0; j < 2 * kVPairs; ++j) {
          const int col = 8 * j + 2 * tq;
          const float v0 = acc_o[mi][j][2 * hh] * inv, v1 = acc_o[mi][j][2 * hh + 1] * inv;
          if (seg.final()) *reinterpret_cast<u32*>(static_cast<u16*>(p.out) + out_row * DV + col) = T::pack(v0, v1);
          else *reinterpret_cast<float2*>(p.part_out + out_row * DV + col) = make_float2(v0, v1);
        }
      }
  }
}

// float32 inputs: the same algorithm on CUDA cores in float32 throughout (the
// tensor cores would round the inputs to 16 bits or tf32). One CTA of 256
// threads owns head h, up to BQ query tokens of one request and a range of
// the schedule's 64-token tiles, walked BN tokens at a time:
//   1. decompress: thread c computes column c (and c + 256, ...) of
//      [K_nope | V] = C [W_uk_h | W_uv_h] for the BN tokens, reading its W
//      column from global memory once per tile and the latent rows from
//      shared memory (broadcasts); the RoPE part of K comes from the cache.
//   2. attend: thread (query qi, token j) scores one pair; the 16 threads of
//      a query row reduce the online softmax by shuffles and accumulate
//      O[qi] += P V, each for every 16th output column.
template <int L, int R, int DN, int DV>
__global__ void __launch_bounds__(256, 1) decompressed_attention_f32(const __grid_constant__ AttnParams p) {
  constexpr int BN = 16, BQ = 16, QK = DN + R, D = L + R, KP = QK + 1;  // KP: conflict-free rows
  constexpr int kCols = DN + DV, kOut = (DV + 15) / 16;
  constexpr int kSmemBytes = 4 * (BN * L + BQ * QK + BN * KP + BN * DV + BQ * BN);
  static_assert(BQ * BN == 256, "one thread per (query, token) pair");
  extern __shared__ __align__(16) unsigned char smem[];
  require_dynamic_smem(kSmemBytes);
  float* sC = reinterpret_cast<float*>(smem);  // [BN][L]
  float* sQ = sC + BN * L;                     // [BQ][QK]
  float* sK = sQ + BQ * QK;                    // [BN][KP]
  float* sV = sK + BN * KP;                    // [BN][DV]
  float* sP = sV + BN * DV;                    // [BQ][BN]

  const int h = blockIdx.z, i0 = blockIdx.y * BQ;
  const int qi = threadIdx.x / 16, j = threadIdx.x % 16;  // this thread's query row and token (or column phase)
  const float* q = static_cast<const float*>(p.q);
  const float* cache = static_cast<const float*>(p.cache);
  const float* w = static_cast<const float*>(p.w) + h * kCols;
  const size_t w_ld = static_cast<size_t>(p.heads) * kCols;
  const PartWork work(p.sched, blockIdx.x);
  allow_combine_launch(p, work);

  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, kScheduleTile, seg)) continue;
    const int n = seg.n, i = i0 + qi;
    const int limit = p.causal ? n - p.q_len + i + 1 : n;
    __syncthreads();  // the previous request's readers of sQ are done
    for (int e = threadIdx.x; e < BQ * QK; e += blockDim.x) {
      const int r = e / QK, c = e % QK;
      sQ[e] = i0 + r < p.q_len ? q[((static_cast<size_t>(b) * p.q_len + i0 + r) * p.heads + h) * QK + c] : 0.f;
    }
    float o[kOut];
#pragma unroll
    for (int k = 0; k < kOut; ++k) o[k] = 0.f;
    float run_max = CUMLA_NEG_INF, run_sum = 0.f;

    const int end = min(seg.t1 * kScheduleTile, n);
    for (int tok0 = seg.t0 * kScheduleTile; tok0 < end; tok0 += BN) {
      __syncthreads();  // the previous step's readers of sC/sK/sV are done
      for (int e = threadIdx.x; e < BN * D; e += blockDim.x) {
        const int r = e / D, c = e % D;
        const float* row = cache_row(p, cache, b, n, tok0 + r, D);  // null past n: zeros, never NaN
        const float v = row != nullptr ? row[c] : 0.f;
        if (c < L) sC[r * L + c] = v;
        else sK[r * KP + DN + (c - L)] = v;
      }
      __syncthreads();
      for (int col = threadIdx.x; col < kCols; col += blockDim.x) {
        float acc[BN];
#pragma unroll
        for (int r = 0; r < BN; ++r) acc[r] = 0.f;
#pragma unroll 4
        for (int k = 0; k < L; ++k) {
          const float wk = w[k * w_ld + col];
#pragma unroll
          for (int r = 0; r < BN; ++r) acc[r] = fmaf(sC[r * L + k], wk, acc[r]);
        }
#pragma unroll
        for (int r = 0; r < BN; ++r) {
          if (col < DN) sK[r * KP + col] = acc[r];
          else sV[r * DV + (col - DN)] = acc[r];
        }
      }
      __syncthreads();

      const int tok = tok0 + j;
      float s = 0.f;
#pragma unroll 8
      for (int c = 0; c < QK; ++c) s = fmaf(sQ[qi * QK + c], sK[j * KP + c], s);
      if (tok >= limit || tok >= n) s = CUMLA_NEG_INF;
      float m = s;
#pragma unroll
      for (int off = 8; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));  // the row's 16 lanes
      m = fmaxf(m, run_max);
      const float base = base_offset(m, p.scale_log2);
      const float alpha = fast_exp2(run_max * p.scale_log2 - base), pr = fast_exp2(s * p.scale_log2 - base);
      float sum = pr;
#pragma unroll
      for (int off = 8; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      run_sum = run_sum * alpha + sum;
      run_max = m;
      sP[qi * BN + j] = pr;
      __syncwarp();  // a row's 16 threads share one warp
#pragma unroll
      for (int k = 0; k < kOut; ++k) {
        const int c = j + 16 * k;
        if (c < DV) {
          float acc = o[k] * alpha;
#pragma unroll
          for (int r = 0; r < BN; ++r) acc = fmaf(sP[qi * BN + r], sV[r * DV + c], acc);
          o[k] = acc;
        }
      }
    }

    if (i >= p.q_len) continue;
    const int row = i * p.heads + h;
    const float inv = row_seen(run_sum) ? 1.f / run_sum : 0.f;
    const size_t out_row = seg.out_row(p.rows, row);
    if (j == 0)
      (seg.final() ? p.lse : p.part_lse)[out_row] = row_seen(run_sum) ? run_max * p.scale + logf(run_sum) : CUMLA_NEG_INF;
    float* dst = seg.final() ? static_cast<float*>(p.out) + out_row * DV : p.part_out + out_row * DV;
#pragma unroll
    for (int k = 0; k < kOut; ++k)
      if (j + 16 * k < DV) dst[j + 16 * k] = o[k] * inv;
  }
}
