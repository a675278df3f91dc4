// Absorbed MLA decode core: attention of absorbed query rows (dim D = L+R)
// over the latent cache as one shared KV head, values = the first DV columns.
//
// One CTA of 8 warps owns BM = 16*WM query rows of one request (all heads
// and query tokens of the request when Sq*H <= BM) and walks a range of
// BN-token cache tiles given by the split-KV schedule (BN = 64, the
// schedule's tile, or 32 where SMEM_KB, the device's shared memory per
// block, holds no 64-token stages: 163 KB on an A100). Each tile is copied
// to shared memory once (cp.async, double-buffered, swizzled) and serves
// every row of the CTA. Warps form a WM x WN grid: warp (wm, wn) owns the
// scores of rows [16wm, 16wm+16) and tokens [wn*BN/WN, ...) (with WM even,
// partner warps wm, wm ^ 1 each compute both their 32 rows over half of D
// and swap partial sums), the row max and the probabilities P go through
// shared memory, then O += P V on tensor cores (mma.sync) in warp tiles of
// 32 rows (16 when BM = 16) and a share of the columns: V is read by BM/32
// warps per column instead of WM.
//
// G > 0: the cache holds FP8 rows (fp8.cuh; DV = L). Rows are copied raw,
// kStages tiles ahead, and each tile is dequantised into the one 16-bit tile
// the MMAs read, so the cache is read once at its FP8 size.
#include "common.cuh"
#include "params.cuh"
#include "fp8.cuh"

namespace {

template <class T, int D, int DV, int WM, int BN, int G = 0, int SMEM_KB = 227>
struct LatentTile {
  static constexpr int kWarps = 8;
  static constexpr int WN = kWarps / WM;
  static constexpr int BM = 16 * WM;
  static constexpr int kChunks = D / 8;              // 16-byte chunks per row
  static constexpr int kTokPerWarp = BN / WN;         // score columns per warp
  static constexpr int kScoreTiles = kTokPerWarp / 8;  // n8 tiles of scores per warp
  static constexpr int kColPairs = DV / 16;            // 16-wide output column pairs
  // O = P V warp tiles: kPvRows rows (kPvSub mma row blocks) x kPairsPerWarp
  // column pairs; warp w takes row block w % kPvRowBlocks. Every warp tracks
  // the softmax base of its P V rows from the same shared maxima as the
  // warps that score them, so their decisions agree.
  static constexpr int kPvRows = BM >= 32 ? 32 : 16;
  static constexpr int kPvSub = kPvRows / 16;
  static constexpr int kPvRowBlocks = BM / kPvRows;
  static constexpr int kPvColBlocks = kWarps / kPvRowBlocks;
  static constexpr int kPairsPerWarp = (kColPairs + kPvColBlocks - 1) / kPvColBlocks;
  // DV/16 not a multiple of the column blocks (small dims): the last warps' pairs run past DV.
  static constexpr bool kRaggedPairs = kColPairs % kPvColBlocks != 0;
  using Rows = SwizzledRows<kChunks>;
  using PRows = SwizzledRows<BN / 8>;
  // With one row group (Sq*H <= 16, small TP slices) the query fragments fit
  // in registers (4 per 16 columns): shared memory then holds a third cache
  // stage instead, and the score loop reads only K from shared memory.
  static constexpr bool kQInRegs = WM == 1 && D <= 576;
  static constexpr bool kFp8 = G > 0;
  static constexpr int kRawBytes = fp8_row_bytes(DV, D - DV, G);  // an FP8 row (0: 16-bit rows)
  static constexpr int kQBytes = kQInRegs ? 0 : Rows::bytes(BM);
  static constexpr int kKVBytes = Rows::bytes(BN);
  static constexpr int kStageBytes = kFp8 ? BN * kRawBytes : kKVBytes;
  static constexpr int kTileBytes = kFp8 ? kKVBytes : 0;  // the dequantised tile
  static constexpr int kPBytes = PRows::bytes(BM);
  static constexpr int kRedBytes = WN * BM * 4;
  static constexpr int kAheadBytes = 16;  // two tile addresses, published a tile ahead
  // Two or more row groups: the score warp tile is 32 rows (a warp's and its
  // partner's, wm ^ 1) over half of the k-steps, then the partners swap the
  // partial sums of each other's 16 rows through P's space. ldmatrix per
  // mma drops from 3/4 to 1/2 (WM = 4): the score loop is bound by
  // shared-memory bandwidth, not by the tensor cores (bench/mma_rates.py).
  static constexpr bool kSplitK = WM % 2 == 0;
  static constexpr int kStepsLo = (D / 16 + 1) / 2;  // the lower half's k-steps
  static constexpr int kSwapBytes = kScoreTiles * 512;  // a warp's 16 x kTokPerWarp fp32 partial scores
  static_assert(!kSplitK || (kWarps / 2) * kSwapBytes <= kPBytes, "the score swap must fit in P's space");
  // Copies in flight, as many as wanted and SMEM_KB (the device's shared
  // memory per block) holds: 16-bit tiles (the MMAs read each stage in place;
  // 3 with Q in registers, else 2; 1 where no more fit: each tile's copy
  // then waits for the previous tile's readers), or raw FP8 tiles beside
  // the one dequantised tile (3 with Q in registers, 2 for 32 rows, else 1).
  static constexpr int kFit = (SMEM_KB * 1024 - kQBytes - kTileBytes - kPBytes - kRedBytes - kAheadBytes) / kStageBytes;
  static constexpr int kWanted = kQInRegs ? 3 : !kFp8 || WM == 2 ? 2 : 1;
  static constexpr int kStages = kFit < kWanted ? kFit : kWanted;
  static_assert(kStages >= 1, "the tiles do not fit in SMEM_KB of shared memory");
  static constexpr int kSmemBytes = kQBytes + kStages * kStageBytes + kTileBytes + kPBytes + kRedBytes + kAheadBytes;
  // Tiles copied ahead of the one being computed.
  static constexpr int kAhead = kFp8 ? kStages : kStages - 1;
  static_assert(kSmemBytes <= SMEM_KB * 1024, "tile does not fit in shared memory");
  static_assert(D % 16 == 0 && DV % 16 == 0 && DV <= D, "dims must be multiples of 16");
  static_assert(kTokPerWarp % 8 == 0 && BN % 16 == 0 && kScheduleTile % BN == 0, "tile shape");
};

}  // namespace

// One k-step of S += A B^T: NA row blocks of 16 rows (their A fragments)
// against ST n8 token tiles whose B fragments are read here from b_addr (tile
// pairs ROWS16 bytes apart), once for every row block.
template <class T, u32 ROWS16, int NA, int ST>
__device__ __forceinline__ void score_step(float (&s)[NA][ST][4], const u32 (&a)[NA][4], u32 b_addr) {
  if constexpr (ST == 1) {
    u32 bfrag[2];
    ldsm_x2(bfrag, b_addr);
#pragma unroll
    for (int i = 0; i < NA; ++i) T::mma(s[i][0], a[i], bfrag[0], bfrag[1]);
  } else {
#pragma unroll
    for (int j = 0; j < ST / 2; ++j) {
      u32 bfrag[4];
      ldsm_x4(bfrag, b_addr + j * ROWS16);
#pragma unroll
      for (int i = 0; i < NA; ++i) {
        T::mma(s[i][2 * j], a[i], bfrag[0], bfrag[1]);
        T::mma(s[i][2 * j + 1], a[i], bfrag[2], bfrag[3]);
      }
    }
  }
}

template <class T, int D, int DV, int WM, int BN, int G = 0, int SMEM_KB = 227>
__global__ void __launch_bounds__(256, 1) latent_attention(const __grid_constant__ AttnParams p) {
  using Tile = LatentTile<T, D, DV, WM, BN, G, SMEM_KB>;
  using Rows = typename Tile::Rows;
  using PRows = typename Tile::PRows;
  constexpr int WN = Tile::WN, BM = Tile::BM;

  extern __shared__ __align__(128) unsigned char smem[];
  require_dynamic_smem(Tile::kSmemBytes);
  const u32 sQ = smem_addr(smem);
  const u32 sKV = sQ + Tile::kQBytes;  // stage s at sKV + s * kStageBytes
  const u32 sTile = sKV + Tile::kStages * Tile::kStageBytes;  // FP8: the dequantised tile
  const u32 sP = sTile + Tile::kTileBytes;
  float* sRed = reinterpret_cast<float*>(smem + (sP - sQ) + Tile::kPBytes);
  // Slot t % 2: the first row of tile t if it is whole in one block (else 0),
  // written by thread 0 one tile before its copy is issued.
  unsigned long long* sAhead = reinterpret_cast<unsigned long long*>(reinterpret_cast<unsigned char*>(sRed) + Tile::kRedBytes);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp % WM, wn = warp / WM;
  const int pv_row0 = (warp % Tile::kPvRowBlocks) * Tile::kPvRows, pv_cb = warp / Tile::kPvRowBlocks;
  const int g = lane / 4, tq = lane % 4;  // mma fragment row group / column pair
  const int row0 = blockIdx.y * BM;
  const int part = blockIdx.x;
  const u16* q = static_cast<const u16*>(p.q);
  const u16* cache = static_cast<const u16*>(p.cache);

  const PartWork work(p.sched, part);
  allow_combine_launch(p, work);
  const bool one_block_tiles = p.block_table == nullptr || p.block_size % BN == 0;

  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, kScheduleTile, seg)) continue;
    // The schedule's tiles in BN-token tiles (the same ones when BN is 64).
    constexpr int kSplit = kScheduleTile / BN;
    const int n = seg.n, t0 = seg.t0 * kSplit, t1 = min(seg.t1 * kSplit, (n + BN - 1) / BN);

    cp_async_wait<0>();
    __syncthreads();  // the previous request's readers are done with shared memory
    const u16* q_rows = q + (static_cast<size_t>(b) * p.rows + row0) * D;
    const int live_rows = min(BM, p.rows - row0);
    u32 qf[Tile::kQInRegs ? D / 16 : 1][1][4];
    if constexpr (Tile::kQInRegs) {  // A fragments of rows g, g+8 straight from global memory
#pragma unroll
      for (int k = 0; k < D / 16; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = g + 8 * (e & 1), c = 16 * k + 8 * (e >> 1) + 2 * tq;
          qf[k][0][e] = r < live_rows ? *reinterpret_cast<const u32*>(q_rows + static_cast<size_t>(r) * D + c) : 0u;
        }
    } else {
      load_rows<Tile::kWarps, D / 8>(sQ, BM, 0, q, [&](int r) { return r < live_rows ? q_rows + static_cast<size_t>(r) * D : nullptr; });
    }
    // One cp.async group per tile, empty ones past t1, so that waiting for
    // "all but the kAhead - 1 newest groups" always means "tile t is in".
    auto stage_of = [&](int t) { return sKV + ((t - t0) % Tile::kStages) * Tile::kStageBytes; };
    // A whole tile (BN rows below the length) whose rows lie in one block
    // (block sizes that are multiples of BN) or in a contiguous cache is
    // copied from one address instead of a lookup per row, its shuffles and
    // zero-fill tests: that copy code was ~220 instructions per warp and
    // tile, and copying nothing made the kernel 18% faster at A. Partial
    // tiles, other block sizes and bad block ids (zero-filled rows) take the
    // per-row copy. The address is looked up by thread 0 alone, a tile ahead
    // (its block-table load issued before the score MMAs, its result
    // published in shared memory after them), so no warp waits on the load
    // at the top of a tile (no block-table lookup made the per-row kernel
    // 3-5% faster).
    constexpr int kRowWidth = Tile::kFp8 ? Tile::kRawBytes / 2 : D;  // in 16-bit elements
    constexpr int kRowChunks = Tile::kFp8 ? Tile::kRawBytes / 16 : D / 8;
    using StageRows = typename Pick<Tile::kFp8, PlainRows<Tile::kRawBytes>, Rows>::type;
    auto is_whole = [&](int t) { return t < t1 && one_block_tiles && (t + 1) * BN <= n; };
    auto load_tile = [&](int t, unsigned long long whole) {
      if (t < t1) {
        if (whole != 0) {
          load_rows_strided<Tile::kWarps, kRowChunks, kRowWidth, kRowChunks, StageRows>(
              stage_of(t), BN, reinterpret_cast<const u16*>(whole));
        } else {
          load_rows<Tile::kWarps, kRowChunks, kRowChunks, StageRows>(
              stage_of(t), BN, 0, cache, [&](int r) { return cache_row(p, cache, b, n, t * BN + r, kRowWidth); });
        }
      }
      cp_async_commit();
    };
    auto whole_row = [&](int t) {
      return reinterpret_cast<unsigned long long>(is_whole(t) ? cache_row(p, cache, b, n, t * BN, kRowWidth) : nullptr);
    };
#pragma unroll
    for (int i = 0; i < Tile::kAhead; ++i) load_tile(t0 + i, whole_row(t0 + i));
    if constexpr (Tile::kAhead == 0) cp_async_commit();  // Q's copies, waited for with the first tile's
    if (threadIdx.x == 0) sAhead[(t0 + Tile::kAhead) % 2] = whole_row(t0 + Tile::kAhead);  // read after the loop's first barrier

    // O: per thread rows pv_row0 + 16i + g and + 8 of its P V tile; pv_max
    // is those rows' softmax base, run_max/run_sum those of its score rows.
    float acc[Tile::kPvSub][Tile::kPairsPerWarp][2][4];
    float pv_max[Tile::kPvSub][2];
#pragma unroll
    for (int i = 0; i < Tile::kPvSub; ++i) {
      pv_max[i][0] = pv_max[i][1] = CUMLA_NEG_INF;
#pragma unroll
      for (int j = 0; j < Tile::kPairsPerWarp; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][h][e] = 0.f;
    }
    float run_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF}, run_sum[2] = {0.f, 0.f};
    const int my_row[2] = {row0 + wm * 16 + g, row0 + wm * 16 + g + 8};
    int limit[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) limit[h] = visible_limit(n, my_row[h], p.heads, p.q_len, p.causal);

    for (int t = t0; t < t1; ++t) {
      if constexpr (Tile::kAhead == 0) {  // one stage: tile t's copy once tile t-1's readers are done
        __syncthreads();
        load_tile(t, sAhead[t % 2]);
      }
      cp_async_wait<Tile::kAhead == 0 ? 0 : Tile::kAhead - 1>();
      __syncthreads();  // tile t is in; everyone is done with tile t-1 and its stage
      if constexpr (Tile::kFp8) {
        dequantize_rows<T, D, DV, G, Rows, BN>(smem + (stage_of(t) - sQ), sTile);
        __syncthreads();  // the tile is whole; its raw stage is free for tile t + kAhead
      }
      if constexpr (Tile::kAhead > 0) load_tile(t + Tile::kAhead, sAhead[(t + Tile::kAhead) % 2]);
      // Thread 0's lookup of the tile copied next (see load_tile): its slot
      // was last read before this tile's top barrier.
      const int next_t = t + Tile::kAhead + 1;
      const bool next_whole = threadIdx.x == 0 && is_whole(next_t);
      const int next_blk = ahead_block<BN>(p, b, next_t, next_whole);
      const u32 sK = Tile::kFp8 ? sTile : stage_of(t);

      // S = Q K^T for this warp's 16 rows x kTokPerWarp tokens.
      const int tok_base = wn * Tile::kTokPerWarp;
      constexpr u32 kRows16 = 16 * Rows::kStride * 16;  // 16 rows further (same swizzle)
      // Split scores: partner warps wm, wm ^ 1 each score both their 32 rows
      // over half of the k-steps.
      const int half = Tile::kSplitK ? wm & 1 : 0;
      const int first = half ? Tile::kStepsLo : 0;
      // Rows 16 apart share their swizzle: one walker serves every score tile pair.
      const RowWalk<Tile::kChunks> kb(sK, tok_base + (lane & 7) + (Tile::kScoreTiles == 1 ? 0 : (lane >> 4) << 3),
                                      (lane >> 3) & 1, first);
      float s[Tile::kScoreTiles][4];
      if constexpr (Tile::kSplitK) {
        float sp[2][Tile::kScoreTiles][4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) sp[i][j][e] = 0.f;
        const int steps = half ? D / 16 - Tile::kStepsLo : Tile::kStepsLo;
        // sp[0]: this warp's own 16 rows, sp[1]: its partner's (16 rows above
        // or below: they share the swizzle), so the rows kept after the swap
        // are sp[0] in both warps and need no select.
        const RowWalk<Tile::kChunks> qa(sQ, wm * 16 + (lane & 15), lane >> 4, first);
        const u32 partner_rows = half ? 0u - kRows16 : kRows16;
        auto k_step = [&](int k4, int u) {
          u32 a[2][4];
          ldsm_x4(a[0], qa.at(k4, u));
          ldsm_x4(a[1], qa.at(k4, u) + partner_rows);
          score_step<T, kRows16>(sp, a, kb.at(k4, u));
        };
        // Whole groups of 4 k-steps (a 128-byte block of each row) with no
        // bound test between their steps, so the compiler can issue a step's
        // ldmatrix ahead of the previous step's MMAs; then the 0-3 left.
        const int groups = steps / 4;
#pragma unroll 1
        for (int k4 = 0; k4 < groups; ++k4)
#pragma unroll
          for (int u = 0; u < 4; ++u) k_step(k4, u);
#pragma unroll
        for (int u = 0; u < 3; ++u)
          if (u < steps % 4) k_step(groups, u);
        // Each warp keeps the 16 rows it owns from here on (wm * 16.., sp[0])
        // and takes its partner's partial sums of them through the pair's
        // slot in P's space (free until P is written): the lower half sends
        // first, the upper half adds, then sends back.
        const u32 slot = sP + (warp / 2) * Tile::kSwapBytes + lane * 16;
        const int pair_barrier = 1 + warp / 2;
        auto send = [&](const float(&x)[Tile::kScoreTiles][4]) {
#pragma unroll
          for (int j = 0; j < Tile::kScoreTiles; ++j)
            asm volatile("st.shared.v4.f32 [%0], {%1,%2,%3,%4};" ::"r"(slot + j * 512), "f"(x[j][0]), "f"(x[j][1]),
                         "f"(x[j][2]), "f"(x[j][3]));
        };
        auto receive = [&](float(&x)[Tile::kScoreTiles][4]) {
#pragma unroll
          for (int j = 0; j < Tile::kScoreTiles; ++j) {
            float y[4];
            asm volatile("ld.shared.v4.f32 {%0,%1,%2,%3}, [%4];"
                         : "=f"(y[0]), "=f"(y[1]), "=f"(y[2]), "=f"(y[3]) : "r"(slot + j * 512));
#pragma unroll
            for (int e = 0; e < 4; ++e) x[j][e] += y[e];
          }
        };
        if (half == 0) send(sp[1]);
        named_sync(pair_barrier, 64);
        if (half == 1) {
          receive(sp[0]);
          send(sp[1]);
        }
        named_sync(pair_barrier, 64);
        if (half == 0) receive(sp[0]);
#pragma unroll
        for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] = sp[0][j][e];
      } else {
        // One row block: the k-steps spread over kChains accumulator sets so
        // consecutive mma do not wait on each other (a single score tile
        // would be one 36-long chain).
        constexpr int kChains = Tile::kScoreTiles >= 4 ? 2 : 4;
        float sc[kChains][1][Tile::kScoreTiles][4];
#pragma unroll
        for (int c = 0; c < kChains; ++c)
#pragma unroll
          for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[c][0][j][e] = 0.f;
        if constexpr (Tile::kQInRegs) {
#pragma unroll
          for (int k = 0; k < D / 16; ++k) score_step<T, kRows16>(sc[k % kChains], qf[k], kb.at(k / 4, k % 4));
        } else {
          const RowWalk<Tile::kChunks> qa(sQ, wm * 16 + (lane & 15), lane >> 4);
#pragma unroll 1
          for (int k4 = 0; k4 < (D / 16 + 3) / 4; ++k4) {
#pragma unroll
            for (int u = 0; u < 4; ++u) {
              if ((D / 16) % 4 != 0 && 4 * k4 + u >= D / 16) break;
              u32 a[1][4];
              ldsm_x4(a[0], qa.at(k4, u));
              score_step<T, kRows16>(sc[u % kChains], a, kb.at(k4, u));
            }
          }
        }
#pragma unroll
        for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[j][e] = sc[0][0][j][e];
#pragma unroll
            for (int c = 1; c < kChains; ++c) s[j][e] += sc[c][0][j][e];
          }
      }

      if (threadIdx.x == 0) sAhead[next_t % 2] = ahead_row<BN>(p, cache, b, next_t, next_whole, next_blk, kRowWidth);

      // Mask invisible tokens (a tile below both rows' limits, every tile
      // of a request but its last at Sq = 1, needs none); row max over this
      // warp's tokens, then across warps.
      if ((t + 1) * BN > min(limit[0], limit[1])) {
#pragma unroll
        for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (t * BN + tok_base + j * 8 + 2 * tq + (e & 1) >= limit[e / 2]) s[j][e] = CUMLA_NEG_INF;
      }
      float tile_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF};
#pragma unroll
      for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        if (tq == 0) sRed[wn * BM + wm * 16 + g + 8 * h] = tile_max[h];
      }
      __syncthreads();
      // A row's exponent base moves only when the tile passes it by more
      // than kRescaleSlack, so once the maxima settle most warps skip the
      // rescale of their O accumulators (below). Every warp reads a row's
      // maxima from the same shared memory and so takes the same decisions,
      // for its score rows and for its P V rows.
      auto tile_max_of = [&](int row) {
        float m = CUMLA_NEG_INF;
#pragma unroll
        for (int w = 0; w < WN; ++w) m = fmaxf(m, sRed[w * BM + row]);
        return m;
      };
      float base[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        run_sum[h] *= move_base(run_max[h], tile_max_of(wm * 16 + g + 8 * h), p.scale_log2);
        base[h] = base_offset(run_max[h], p.scale_log2);
      }
      float pv_alpha[Tile::kPvSub][2];
      bool rescale = false;
#pragma unroll
      for (int i = 0; i < Tile::kPvSub; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          pv_alpha[i][h] = move_base(pv_max[i][h], tile_max_of(pv_row0 + 16 * i + g + 8 * h), p.scale_log2);
          rescale |= pv_alpha[i][h] != 1.f;
        }
      // P = exp2(s * scale_log2 - base) into shared memory as T.
#pragma unroll
      for (int j = 0; j < Tile::kScoreTiles; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float p0 = fast_exp2(s[j][2 * h] * p.scale_log2 - base[h]);
          const float p1 = fast_exp2(s[j][2 * h + 1] * p.scale_log2 - base[h]);
          run_sum[h] += p0 + p1;
          store_pair<T, BN / 8>(sP, wm * 16 + g + 8 * h, tok_base + j * 8 + 2 * tq, p0, p1);
        }
      if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
        for (int i = 0; i < Tile::kPvSub; ++i)
#pragma unroll
          for (int j = 0; j < Tile::kPairsPerWarp; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[i][j][e / 4][e % 4] *= pv_alpha[i][(e % 4) / 2];
      }
      __syncthreads();  // P complete

      // O[my rows, my columns] += P V, V = first DV columns of the tile.
      // Rows 16 apart share their swizzle: one walker serves every k-step.
      const RowWalk<Tile::kChunks> vb(sK, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
#pragma unroll
      for (int k = 0; k < BN / 16; ++k) {
        u32 a[Tile::kPvSub][4];
#pragma unroll
        for (int i = 0; i < Tile::kPvSub; ++i)
          ldsm_x4(a[i], sP + PRows::offset(pv_row0 + 16 * i + (lane & 15), 2 * k + (lane >> 4)));
#pragma unroll
        for (int j = 0; j < Tile::kPairsPerWarp; ++j) {
          const int pair = pv_cb * Tile::kPairsPerWarp + j;
          if (Tile::kRaggedPairs && pair >= Tile::kColPairs) continue;
          // The walker's swizzle index must be a constant: with a pair
          // count per warp not a multiple of 4 (small dims) the address is
          // computed directly instead of indexing it at run time (local memory).
          u32 v_addr;
          if constexpr (Tile::kPairsPerWarp % 4 == 0)
            v_addr = vb.at(pair / 4, pair % 4);
          else
            v_addr = sK + Rows::offset((lane & 7) + ((lane >> 3) & 1) * 8, 2 * pair + (lane >> 4));
          u32 bfrag[4];
          ldsm_x4_trans(bfrag, v_addr + k * kRows16);
#pragma unroll
          for (int i = 0; i < Tile::kPvSub; ++i) {
            T::mma(acc[i][j][0], a[i], bfrag[0], bfrag[1]);
            T::mma(acc[i][j][1], a[i], bfrag[2], bfrag[3]);
          }
        }
      }
    }

    // Row sums: over the quad, then over the WN warps sharing the rows
    // (sRed's row maxima are read by then).
    publish_row_sums(run_sum, sRed + wn * BM + wm * 16 + g, tq == 0);
#pragma unroll
    for (int i = 0; i < Tile::kPvSub; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int local = pv_row0 + 16 * i + g + 8 * h, r = row0 + local;
        float total = 0.f;
#pragma unroll
        for (int w = 0; w < WN; ++w) total += sRed[w * BM + local];
        if (r >= p.rows) continue;
        const float inv = row_seen(total) ? 1.f / total : 0.f;
        const size_t out_row = seg.out_row(p.rows, r);
        if (pv_cb == 0 && tq == 0)
          (seg.final() ? p.lse : p.part_lse)[out_row] =
              row_seen(total) ? pv_max[i][h] * p.scale + logf(total) : CUMLA_NEG_INF;
#pragma unroll
        for (int j = 0; j < Tile::kPairsPerWarp; ++j) {
          const int pair = pv_cb * Tile::kPairsPerWarp + j;
          if (Tile::kRaggedPairs && pair >= Tile::kColPairs) continue;
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int col = 16 * pair + 8 * half + 2 * tq;
            const float v0 = acc[i][j][half][2 * h] * inv, v1 = acc[i][j][half][2 * h + 1] * inv;
            if (seg.final()) {
              u32* dst = reinterpret_cast<u32*>(static_cast<u16*>(p.out) + out_row * DV + col);
              *dst = T::pack(v0, v1);
            } else {
              float2* dst = reinterpret_cast<float2*>(p.part_out + out_row * DV + col);
              *dst = make_float2(v0, v1);
            }
          }
        }
      }
    }
  }
}

// CUDA-core variant for fp32 inputs (tensor cores would round them): same
// schedule and outputs, correct rather than fast. A CTA owns kRows query
// rows; tiles of kTok tokens go through shared memory as float; warp w keeps
// the softmax statistics of rows w and w + 8; thread i owns output columns
// i, i + 256, ... of every row.
template <class T, int D, int DV>
__global__ void __launch_bounds__(256, 1) latent_attention_simt(const __grid_constant__ AttnParams p) {
  constexpr int kRows = 16, kTok = 32, kThreads = 256;
  constexpr int kCols = (DV + kThreads - 1) / kThreads;
  constexpr int kPitch = D + 1;  // odd pitch: column walks hit distinct banks
  using S = typename T::storage;
  extern __shared__ __align__(16) unsigned char smem[];
  require_dynamic_smem((kRows * kPitch + kTok * kPitch + kRows * kTok + 3 * kRows) * 4);
  float* sQ = reinterpret_cast<float*>(smem);  // kRows x kPitch
  float* sKV = sQ + kRows * kPitch;             // kTok x kPitch
  float* sP = sKV + kTok * kPitch;              // kRows x kTok
  float* sMax = sP + kRows * kTok;              // kRows running max (scaled scores)
  float* sSum = sMax + kRows;                   // kRows running sum
  float* sAlpha = sSum + kRows;                 // kRows rescale factor of this tile
  const S* q = static_cast<const S*>(p.q);
  const S* cache = static_cast<const S*>(p.cache);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int row0 = blockIdx.y * kRows, part = blockIdx.x;
  const PartWork work(p.sched, part);
  allow_combine_launch(p, work);

  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, kScheduleTile, seg)) continue;
    const int n = seg.n, t0 = seg.t0 * kScheduleTile, t1 = min(n, seg.t1 * kScheduleTile);
    __syncthreads();
    for (int i = tid; i < kRows * D; i += kThreads) {
      const int r = i / D, c = i % D;
      const bool live = row0 + r < p.rows;
      sQ[r * kPitch + c] = live ? T::to_float(q[(static_cast<size_t>(b) * p.rows + row0 + r) * D + c]) : 0.f;
    }
    if (tid < kRows) { sMax[tid] = CUMLA_NEG_INF; sSum[tid] = 0.f; }
    float acc[kRows][kCols];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[r][j] = 0.f;

    for (int t = t0; t < t1; t += kTok) {
      __syncthreads();
      for (int i = tid; i < kTok * D; i += kThreads) {
        const int r = i / D, c = i % D, tok = t + r;
        const S* row = cache_row(p, cache, b, n, tok, D);
        sKV[r * kPitch + c] = row != nullptr ? T::to_float(row[c]) : 0.f;
      }
      __syncthreads();
      for (int i = tid; i < kRows * kTok; i += kThreads) {
        const int r = i / kTok, k = i % kTok;
        float s = 0.f;
        for (int c = 0; c < D; ++c) s = fmaf(sQ[r * kPitch + c], sKV[k * kPitch + c], s);
        const int limit = visible_limit(n, row0 + r, p.heads, p.q_len, p.causal);
        sP[r * kTok + k] = t + k < limit ? s * p.scale : CUMLA_NEG_INF;
      }
      __syncthreads();
      for (int r = warp; r < kRows; r += kThreads / 32) {
        const float s = sP[r * kTok + lane];
        float m = s;
        for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        const float prev = sMax[r], top = fmaxf(prev, m);
        const float safe = top == CUMLA_NEG_INF ? 0.f : top;
        const float e = expf(s - safe);
        float sum = e;
        for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        sP[r * kTok + lane] = e;
        __syncwarp();
        if (lane == 0) {
          const float alpha = expf(prev - safe);
          sAlpha[r] = alpha;
          sSum[r] = sSum[r] * alpha + sum;
          sMax[r] = top;
        }
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
          const int c = tid + j * kThreads;
          float o = acc[r][j] * sAlpha[r];
          if (c < DV)
            for (int k = 0; k < kTok; ++k) o = fmaf(sP[r * kTok + k], sKV[k * kPitch + c], o);
          acc[r][j] = o;
        }
    }
    __syncthreads();

#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + r;
      if (row >= p.rows) continue;
      const float total = sSum[r];
      const float inv = row_seen(total) ? 1.f / total : 0.f;
      const size_t out_row = seg.out_row(p.rows, row);
      if (tid == 0)
        (seg.final() ? p.lse : p.part_lse)[out_row] = row_seen(total) ? sMax[r] + logf(total) : CUMLA_NEG_INF;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int c = tid + j * kThreads;
        if (c >= DV) continue;
        if (seg.final()) static_cast<S*>(p.out)[out_row * DV + c] = T::from_float(acc[r][j] * inv);
        else p.part_out[out_row * DV + c] = acc[r][j] * inv;
      }
    }
  }
}
