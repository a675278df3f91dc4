// Absorbed MLA decode over FP8 cache rows (fp8.cuh's layout) for one row
// group of up to 16 query rows (Sq*H <= 16: tensor-parallel slices), with
// the raw rows read straight into tensor-core fragments: no dequantised tile
// is written or read, and every warp converts just the codes its MMAs take
// (one cvt per two codes). Two CTAs share an SM (128 registers a thread, two
// raw stages each): one's MMAs run while the other waits at a barrier.
//
// Latent part: e4m3 codes are f16 values exactly, so its MMAs run in f16.
// The queries are scaled per row (and quarter, below) by a power of two 2^e
// into f16 range (max |q| in [2^14, 2^15)), and 2^-e comes back in float32
// with the cache's scales: per 32-column block a thread loads two 32-bit
// words of codes (4 consecutive columns each) and the two k16 MMAs of the
// block take their k positions in that order, the queries' fragments loaded
// in the same order. Each scale group's partial scores are multiplied by
// the token's scale. RoPE part: bf16 values, MMAs in the input type,
// queries from shared memory. Warps 4i..4i+3 score tokens 32i..32i+31, each
// over one quarter of the latent columns (32 query registers) and a share
// of the RoPE k-steps, and add up each other's partial sums so that warp w
// keeps the scores of tokens 8w..8w+7.
//
// P V: warp w owns output columns [L/8 w, L/8 (w+1)), inside one scale
// group. The token's scale multiplies P instead of V: P is stored once per
// group, as f16, times scale / 2^E (2^E: the power of two at or below the
// group's largest |scale| in the tile, so the factor is exact and below 2),
// and the accumulators carry 2^E (rescaled when it changes, with the
// softmax's). A thread's B fragment for 4 n8 tiles is 4 words of 4
// consecutive columns (tokens 2tq, 2tq+1, 2tq+8, 2tq+9); tile j takes byte
// j of each, so accumulator column n of tile j is column 4n + j of the
// block.
//
// Copies, a tile ahead: on sm_90 a tile of 64 consecutive rows (pages of
// 64 tokens or more, or a contiguous cache) is one bulk copy issued by
// thread 0, other tiles per-row cp.async, both completing the stage's
// mbarrier; sm_89 uses cp.async groups.
#include "common.cuh"
#include "params.cuh"
#include "fp8.cuh"
#if __CUDA_ARCH__ >= 900
#include "hopper.cuh"
#endif

#if __CUDA_ARCH__ < 890
#error "fp8_fragments.cu needs sm_89 or newer (cvt.rn.f16x2.e4m3x2)"
#endif

namespace {

template <int L, int R, int G, int STAGES>
struct Fp8FragmentTile {
  static constexpr int kWarps = 8, BM = 16, BN = 64;
  static constexpr int kRawBytes = fp8_row_bytes(L, R, G);
  static constexpr int kRope = fp8_rope_offset(L, G);  // byte offset of the bf16 RoPE values
  static constexpr int kGroups = L / G;
  static constexpr int kBlocks = L / 32;  // 32-column blocks of codes: two f16 k-steps each
  static constexpr int kBlocksPerGroup = G / 32;
  static constexpr int kRopeSteps = R / 16;
  static constexpr int kCols = L / kWarps;  // P V output columns per warp
  static constexpr int kChunks = kCols / 32;  // 32-column blocks per warp: 4 n8 tiles each
  static constexpr int kQuarterBlocks = kBlocks / 4;  // a score warp's latent blocks
  static constexpr int kBlocksPerRun = kQuarterBlocks < kBlocksPerGroup ? kQuarterBlocks : kBlocksPerGroup;
  static constexpr int kSwapBytes = kWarps * 4 * 512;  // each warp's four n8 tiles of partial sums
  using PRows = SwizzledRows<BN / 8>;
  using RopeRows = SwizzledRows<R / 8 + (R == 0)>;  // the queries' RoPE columns (none when R = 0)
  static constexpr int kPBytes = PRows::bytes(BM);  // one scale group's P
  static constexpr int kRopeBytes = R > 0 ? RopeRows::bytes(BM) : 0;
  static constexpr int kStageBytes = BN * kRawBytes;
  static constexpr int kRedBytes = kWarps * BM * 4;
  static constexpr int kAheadBytes = 16;  // two tile addresses, published a tile ahead
  static constexpr int kBarBytes = 8 * STAGES;  // an mbarrier per stage (sm_90)
  // P and the score swap apart: a warp writes P while others may still read
  // their swaps (no barrier between them where no base moves).
  static constexpr int kSmemBytes =
      STAGES * kStageBytes + kGroups * kPBytes + kSwapBytes + kRopeBytes + kRedBytes + kAheadBytes + kBarBytes;
  // L/16 query words, L/16 accumulators and five values per scale group a
  // thread (_kernels.FP8_FRAGMENT_VALUES): more may spill its 128 registers.
  static_assert(L / 8 + 5 * kGroups <= 84, "more values a thread than 128 registers hold (L = 512, 4 groups)");
  static_assert(L % 256 == 0 && G % 32 == 0 && G % kCols == 0 && L % G == 0 && R % 16 == 0,
                "latent columns in 32-column blocks, each warp's P V columns inside one scale group");
  static_assert(kRope % 16 == 0 && kRawBytes % 16 == 0, "16-byte aligned RoPE and rows");
  static_assert(STAGES >= 2 && kScheduleTile == BN, "stages, tile");
  static_assert(kQuarterBlocks % kBlocksPerRun == 0 && kBlocksPerGroup % kBlocksPerRun == 0, "quarters and groups");
  static_assert(kSmemBytes <= 227 * 1024, "sm_90's shared memory per block (two CTAs an SM where 2x fits)");
};

// 2^e as a float, |e| <= 126.
__device__ __forceinline__ float exp2i(int e) { return __uint_as_float(static_cast<u32>(e + 127) << 23); }

// use(kb, m, h, word(kb, m, h)) for each word of a thread's query fragments
// (kb: the quarter's 32-column block, m: its k16 half, h: row g or g + 8), in
// one fixed order. A template, not a generic lambda: NVRTC 13.0 builds a
// generic lambda inside a kernel as host code and refuses it.
template <int KQB, class Word, class Use>
__device__ __forceinline__ void each_q_word(Word&& word, Use&& use) {
#pragma unroll
  for (int kb = 0; kb < KQB; ++kb)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) use(kb, m, h, word(kb, m, h));
}

}  // namespace

template <class T, int L, int R, int G, int STAGES>
__global__ void __launch_bounds__(256, 2) latent_attention_fp8_fragments(const __grid_constant__ AttnParams p) {
  using Tile = Fp8FragmentTile<L, R, G, STAGES>;
  using PRows = typename Tile::PRows;
  constexpr int D = L + R, BM = Tile::BM, BN = Tile::BN, kRaw = Tile::kRawBytes, kAhead = STAGES - 1;

  extern __shared__ __align__(128) unsigned char smem[];
  require_dynamic_smem(Tile::kSmemBytes);
  const u32 sKV = smem_addr(smem);  // stage s at sKV + s * kStageBytes
  // A word of shared memory by its 32-bit address. Not volatile, so the
  // compiler may schedule it ahead of the MMAs; the memory clobber keeps it
  // between the barriers. (A C++ load through the generic pointer cost
  // NVRTC 13.0 an address add per load: it rebuilt each address from it.)
  auto lds32 = [&](u32 addr) {
    u32 v;
    asm("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
    return v;
  };
  const u32 sP = sKV + STAGES * Tile::kStageBytes;  // group k's P at sP + k * kPBytes
  const u32 sSwap = sP + Tile::kGroups * Tile::kPBytes;
  const u32 sQRope = sSwap + Tile::kSwapBytes;
  float* sRed = reinterpret_cast<float*>(smem + (sQRope + Tile::kRopeBytes - sKV));
  // Slot t % 2: the first row of tile t if it is whole in one block (else 0),
  // written by thread 0 one tile before its copy is issued.
  unsigned long long* sAhead = reinterpret_cast<unsigned long long*>(sRed + Tile::kWarps * BM);
  // sm_90: stage s fills as one bulk copy (a tile of consecutive rows) or
  // per-row cp.async, either way completing its mbarrier (256 arrivals).
  const u32 sBar = smem_addr(sAhead + 2);
#if __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) mbar_init(sBar + 8 * s, Tile::kWarps * 32);
    mbar_init_fence();
  }
#endif
  // The CTA's tiles before this request's: tile t is its (seq0 + t - t0)-th
  // (stage and mbarrier phase).
  unsigned seq0 = 0;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;  // fragment row group / column pair
  const int row0 = blockIdx.y * BM, part = blockIdx.x;
  const int my_group = warp * Tile::kCols / G;  // the scale group of this warp's P V columns
  // Scores: warp w takes quarter kq of the latent columns for tokens
  // 32 quad..32 quad+31 (see the top).
  const int kq = warp % 4, quad = warp / 4;
  constexpr int kQB = Tile::kQuarterBlocks;
  const u16* q = static_cast<const u16*>(p.q);
  const u16* cache = static_cast<const u16*>(p.cache);
  allow_combine_launch(p, PartWork(p.sched, part));
  const bool one_block_tiles = p.block_table == nullptr || p.block_size % BN == 0;

  // The part's range and a request's segment are read again where they are
  // needed (global loads the stores in between may alias) instead of held
  // in registers across the tile loop: with 128 registers they would spill.
  for (int b = PartWork(p.sched, part).first();; ++b) {
    if (b > PartWork(p.sched, part).last(p.batch)) break;
    int n, t0, t1;
    {
      Segment seg;
      if (!PartWork(p.sched, part).segment(p, b, kScheduleTile, seg)) continue;
      n = seg.n, t0 = seg.t0, t1 = seg.t1;
    }

    cp_async_wait<0>();
    __syncthreads();  // the previous request's readers are done with shared memory

    // Query fragments of rows g and g + 8 over this warp's quarter of the
    // latent columns, straight from global memory.
    const u16* q_rows = q + (static_cast<size_t>(b) * p.rows + row0) * D;
    const int live_rows = min(BM, p.rows - row0);
    auto q_word2 = [&](int r, int col) {  // columns col..col+3 of row r (zeros past the live rows)
      return r < live_rows ? *reinterpret_cast<const uint2*>(q_rows + static_cast<size_t>(r) * D + col)
                           : make_uint2(0u, 0u);
    };
    auto q_col = [&](int kb, int m) { return 32 * (kq * kQB + kb) + 16 * m + 4 * tq; };
    // Each word of this thread's fragments is read twice: for the rows'
    // maxima, then to convert.
    auto q_word = [&](int kb, int m, int h) { return q_word2(g + 8 * h, q_col(kb, m)); };
    float amax[2] = {0.f, 0.f};
    each_q_word<kQB>(q_word, [&](int, int, int h, uint2 v) {
      for (const u32 w : {v.x, v.y})
        amax[h] = fmaxf(amax[h], fmaxf(fabsf(T::to_float(static_cast<u16>(w))),
                                       fabsf(T::to_float(static_cast<u16>(w >> 16)))));
    });
    float up[2], down[2];  // 2^e and 2^-e of rows g, g + 8 (this quarter's)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 1));
      amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 2));
      const int top = static_cast<int>((__float_as_uint(amax[h]) >> 23) & 0xFFu) - 127;  // max in [2^top, 2^(top+1))
      const int e = amax[h] > 0.f ? max(-126, min(126, 14 - top)) : 0;
      up[h] = exp2i(e), down[h] = exp2i(-e);
    }
    u32 qa[kQB][2][4];  // f16, k positions in the cache words' order
    each_q_word<kQB>(q_word, [&](int kb, int m, int h, uint2 v) {
      auto f16x2 = [&](u32 w) {
        return f16_t::pack(T::to_float(static_cast<u16>(w)) * up[h], T::to_float(static_cast<u16>(w >> 16)) * up[h]);
      };
      qa[kb][m][h] = f16x2(v.x), qa[kb][m][2 + h] = f16x2(v.y);
    });
    // RoPE columns in T to shared memory (registers are full), read by
    // ldmatrix after the first tile's barrier.
    constexpr int kRopePairs = R > 0 ? R / 2 : 1;
    for (int i = threadIdx.x; i < BM * R / 2; i += blockDim.x) {
      const int r = i / kRopePairs, c = 2 * (i % kRopePairs);
      const u32 pair = r < live_rows ? *reinterpret_cast<const u32*>(q_rows + static_cast<size_t>(r) * D + L + c) : 0u;
      asm volatile("st.shared.b32 [%0], %1;" ::"r"(sQRope + Tile::RopeRows::offset(r, c / 8) + (c % 8) * 2), "r"(pair));
    }

    // Copies: raw rows, STAGES - 1 tiles ahead; per row, as the portable
    // kernel's FP8 path makes them, unless the tile's rows are consecutive.
    auto seq = [&](int t) { return seq0 + static_cast<unsigned>(t - t0); };
    auto stage_of = [&](int t) { return sKV + seq(t) % STAGES * Tile::kStageBytes; };
    auto bar_of = [&](int t) { return sBar + 8 * (seq(t) % STAGES); };
    constexpr int kRowWidth = kRaw / 2, kRowChunks = kRaw / 16;  // in 16-bit elements, 16-byte chunks
    auto is_whole = [&](int t) { return t < t1 && one_block_tiles && (t + 1) * BN <= n; };
    auto load_tile = [&](int t, unsigned long long whole) {
      if (t < t1) {
        if (whole != 0) {  // BN consecutive rows: one flat run of 16-byte chunks
#if __CUDA_ARCH__ >= 900
          if (threadIdx.x == 0) {
            mbar_expect_bytes(bar_of(t), Tile::kStageBytes);
            bulk_load(stage_of(t), reinterpret_cast<const void*>(whole), Tile::kStageBytes, bar_of(t));
          } else {
            mbar_arrive(bar_of(t));
          }
#else
          constexpr int kTileChunks = BN * kRowChunks;
          constexpr int kThreads = Tile::kWarps * 32;
#pragma unroll
          for (int k = 0; k < (kTileChunks + kThreads - 1) / kThreads; ++k) {
            const int c = threadIdx.x + kThreads * k;
            if (k < kTileChunks / kThreads || c < kTileChunks)
              cp_async16(stage_of(t) + 16 * c, reinterpret_cast<const unsigned char*>(whole) + 16 * c, true);
          }
#endif
        } else {
          load_rows<Tile::kWarps, kRowChunks, kRowChunks, PlainRows<kRaw>>(
              stage_of(t), BN, 0, cache, [&](int r) { return cache_row(p, cache, b, n, t * BN + r, kRowWidth); });
#if __CUDA_ARCH__ >= 900
          cp_async_arrive(bar_of(t));
#endif
        }
      }
#if __CUDA_ARCH__ < 900
      cp_async_commit();  // one group per tile, empty ones past t1
#endif
    };
    auto whole_row = [&](int t) {
      return reinterpret_cast<unsigned long long>(is_whole(t) ? cache_row(p, cache, b, n, t * BN, kRowWidth) : nullptr);
    };
#pragma unroll
    for (int i = 0; i < kAhead; ++i) load_tile(t0 + i, whole_row(t0 + i));
    if (threadIdx.x == 0) sAhead[(t0 + kAhead) % 2] = whole_row(t0 + kAhead);  // read after the loop's first barrier

    // acc[c][j]: output columns L/8 warp + 32c + 4n + j (n the fragment
    // column), rows g and g + 8, divided by 2^(carried - 127) (0: no group
    // scale has been non-zero yet; the accumulators are zero).
    float acc[Tile::kChunks][4][4];
#pragma unroll
    for (int c = 0; c < Tile::kChunks; ++c)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[c][j][e] = 0.f;
    int carried = 0;
    float run_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF}, run_sum[2] = {0.f, 0.f};

    for (int t = t0; t < t1; ++t) {
#if __CUDA_ARCH__ >= 900
      mbar_wait(bar_of(t), seq(t) / STAGES % 2);
#else
      cp_async_wait<kAhead - 1>();
#endif
      __syncthreads();  // tile t is in; everyone is done with tile t-1, its stage and P
      load_tile(t + kAhead, sAhead[(t + kAhead) % 2]);
      // Thread 0's lookup of the tile copied next (see load_tile).
      const int next_t = t + kAhead + 1;
      const bool next_whole = threadIdx.x == 0 && is_whole(next_t);
      const int next_blk = ahead_block<BN>(p, b, next_t, next_whole);
      const u32 sK = stage_of(t);

      // S = Q K^T, this warp's quarter: n8 tiles j of tokens 32 quad + 8j +
      // 0..7 (B fragments of token 32 quad + 8j + g).
      const u32 k_rows = sK + (32 * quad + g) * kRaw;  // tile j's row: k_rows + 8j rows
      float sp[4][4] = {};
      // Runs of blocks in one scale group: their sums times each token's scale.
#pragma unroll
      for (int run = 0; run < kQB / Tile::kBlocksPerRun; ++run) {
        const int first = kq * kQB + run * Tile::kBlocksPerRun, group = 32 * first / G;
        // Two accumulators per n8 tile (one per k16 half): chains of half the length.
        float half[2][4][4] = {};
#pragma unroll
        for (int i = 0; i < Tile::kBlocksPerRun; ++i) {
          const int kb = run * Tile::kBlocksPerRun + i, col = 32 * (first + i) + 4 * tq;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const u32 w0 = lds32(k_rows + 8 * j * kRaw + col), w1 = lds32(k_rows + 8 * j * kRaw + col + 16);
            f16_t::mma(half[0][j], qa[kb][0], e4m3x2_f16(w0), e4m3x2_f16<true>(w0));
            f16_t::mma(half[1][j], qa[kb][1], e4m3x2_f16(w1), e4m3x2_f16<true>(w1));
          }
        }
        float part[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[j][e] = half[0][j][e] + half[1][j][e];
        // The group's scale of the partial sums' columns: tokens 32 quad + 8j + 2tq, + 1.
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const u32 at = sK + (32 * quad + 8 * j + 2 * tq) * kRaw + L + 4 * group;
          const float scale[2] = {__uint_as_float(lds32(at)), __uint_as_float(lds32(at + kRaw))};
#pragma unroll
          for (int e = 0; e < 4; ++e) sp[j][e] += part[j][e] * (scale[e & 1] * down[e / 2]);
        }
      }
      // RoPE k-steps kq, kq + 4, ...
#pragma unroll
      for (int k0 = 0; k0 < Tile::kRopeSteps; k0 += 4) {
        const int k = k0 + kq;
        if (Tile::kRopeSteps % 4 != 0 && k >= Tile::kRopeSteps) break;
        u32 a[4];
        ldsm_x4(a, sQRope + Tile::RopeRows::offset(lane & 15, 2 * k + (lane >> 4)));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const u32 b0 = rope_pair<T>(lds32(k_rows + 8 * j * kRaw + Tile::kRope + 32 * k + 4 * tq));
          const u32 b1 = rope_pair<T>(lds32(k_rows + 8 * j * kRaw + Tile::kRope + 32 * k + 16 + 4 * tq));
          T::mma(sp[j], a, b0, b1);
        }
      }
      // Swap: slot (warp, j) holds this warp's sums of tile j; warp w adds
      // up tile kq of its quad's four warps.
      float s[4] = {0.f, 0.f, 0.f, 0.f};
      {
        auto slot = [&](int w, int j) { return sSwap + (4 * w + j) * 512 + lane * 16; };
#pragma unroll
        for (int j = 0; j < 4; ++j)
          asm volatile("st.shared.v4.f32 [%0], {%1,%2,%3,%4};" ::"r"(slot(warp, j)), "f"(sp[j][0]), "f"(sp[j][1]),
                       "f"(sp[j][2]), "f"(sp[j][3]));
        named_sync(1 + quad, 128);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float in[4];
          asm volatile("ld.shared.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(in[0]), "=f"(in[1]), "=f"(in[2]), "=f"(in[3])
                       : "r"(slot(4 * quad + i, kq)));
#pragma unroll
          for (int e = 0; e < 4; ++e) s[e] += in[e];
        }
      }
      // Each group's largest |scale| in the tile as a biased float exponent E
      // (every warp, the same value): P is scaled by 2^(127 - E), exactly.
      // The bits of non-negative floats order like the floats.
      float inv_top[Tile::kGroups];
      int top_mine = 0;  // E of this warp's P V group; 0: its scales are all zero (P is zero)
#pragma unroll
      for (int k = 0; k < Tile::kGroups; ++k) {
        const u32 bits = __reduce_max_sync(0xffffffffu, max(lds32(sK + lane * kRaw + L + 4 * k) & 0x7FFFFFFFu,
                                                            lds32(sK + (lane + 32) * kRaw + L + 4 * k) & 0x7FFFFFFFu));
        // Subnormal maxima count as E = 1; inf or NaN as 253 (2^-126).
        const int e = bits == 0 ? 0 : max(1, min(253, static_cast<int>(bits >> 23)));
        inv_top[k] = e == 0 ? 0.f : exp2i(127 - e);
        if (k == my_group) top_mine = e;
      }

      // Scales of this thread's score columns from here on: tokens 8 warp + 2tq, + 1.
      const u32 my_scales = sK + (8 * warp + 2 * tq) * kRaw + L;
      float tok_scale[Tile::kGroups][2];
#pragma unroll
      for (int k = 0; k < Tile::kGroups; ++k) {
        tok_scale[k][0] = __uint_as_float(lds32(my_scales + 4 * k));
        tok_scale[k][1] = __uint_as_float(lds32(my_scales + kRaw + 4 * k));
      }

      if (threadIdx.x == 0) sAhead[next_t % 2] = ahead_row<BN>(p, cache, b, next_t, next_whole, next_blk, kRowWidth);

      // Mask invisible tokens. Tiles past the lowest bound any row can have need the mask.
      if ((t + 1) * BN > n - (p.causal ? p.q_len - 1 : 0)) {
        int limit[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) limit[h] = visible_limit(n, row0 + g + 8 * h, p.heads, p.q_len, p.causal);
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (t * BN + 8 * warp + 2 * tq + (e & 1) >= limit[e / 2]) s[e] = CUMLA_NEG_INF;
      }
      // P of every scale group: exp2(s * scale_log2 - base) * scale / top, as f16
      // (2^-E is a power of two: the factor is exact in either order).
      float p_factor[Tile::kGroups][2];
#pragma unroll
      for (int k = 0; k < Tile::kGroups; ++k)
        p_factor[k][0] = tok_scale[k][0] * inv_top[k], p_factor[k][1] = tok_scale[k][1] * inv_top[k];
      float p_sum[2];  // this thread's share of the tile's row sums
      auto write_p = [&] {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float base = base_offset(run_max[h], p.scale_log2);
          const float p0 = fast_exp2(s[2 * h] * p.scale_log2 - base);
          const float p1 = fast_exp2(s[2 * h + 1] * p.scale_log2 - base);
          p_sum[h] = p0 + p1;
#pragma unroll
          for (int k = 0; k < Tile::kGroups; ++k)
            store_pair<f16_t, BN / 8>(sP + k * Tile::kPBytes, g + 8 * h, 8 * warp + 2 * tq,
                                      p0 * p_factor[k][0], p1 * p_factor[k][1]);
        }
      };
      // The bases move only where a score passes its row's base by the slack
      // (base_moves), which each thread tells of its own scores; the vote
      // rides on the barrier after P. Only then are the tile's row maxima
      // exchanged across warps, the bases moved and P written again: the
      // bases an exchange every tile gives, for one barrier less in the
      // tiles where no base moves.
      bool passes = false;
#pragma unroll
      for (int e = 0; e < 4; ++e) passes |= base_moves(run_max[e / 2], s[e], p.scale_log2);
      write_p();
      float alpha[2] = {1.f, 1.f};
      if (__syncthreads_or(passes)) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float m = fmaxf(s[2 * h], s[2 * h + 1]);
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          if (tq == 0) sRed[warp * BM + g + 8 * h] = m;
        }
        __syncthreads();
        // Every warp reads a row's maxima from the same shared memory and so
        // moves its base (and rescales its accumulators) alike.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float m = CUMLA_NEG_INF;
#pragma unroll
          for (int w = 0; w < Tile::kWarps; ++w) m = fmaxf(m, sRed[w * BM + g + 8 * h]);
          alpha[h] = move_base(run_max[h], m, p.scale_log2);
        }
        write_p();
        __syncthreads();  // P complete
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        run_sum[h] *= alpha[h];
        run_sum[h] += p_sum[h];
      }
      // The accumulators move to this tile's factor (a tile whose group
      // scales are all zero keeps the last one: its P is zero).
      const int factor = top_mine > 0 ? top_mine : carried;
      const float ratio = carried > 0 ? exp2i(max(-126, min(126, carried - factor))) : 1.f;
      carried = factor;
      const float rescale[2] = {alpha[0] * ratio, alpha[1] * ratio};
      if (rescale[0] != 1.f || rescale[1] != 1.f) {
#pragma unroll
        for (int c = 0; c < Tile::kChunks; ++c)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[c][j][e] *= rescale[e / 2];
      }

      // O += P V over this warp's columns.
#pragma unroll
      for (int k = 0; k < BN / 16; ++k) {
        u32 a[4];
        ldsm_x4(a, sP + my_group * Tile::kPBytes + PRows::offset(lane & 15, 2 * k + (lane >> 4)));
        const u32 v_row = sK + (16 * k + 2 * tq) * kRaw + warp * Tile::kCols + 4 * g;
#pragma unroll
        for (int c = 0; c < Tile::kChunks; ++c) {
          const u32 w[4] = {lds32(v_row + 32 * c), lds32(v_row + kRaw + 32 * c), lds32(v_row + 8 * kRaw + 32 * c),
                            lds32(v_row + 9 * kRaw + 32 * c)};
          // One permute serves two n8 tiles: bytes j and j + 1 of two rows'
          // words interleaved, tile j's code pair in the low half and tile
          // j + 1's in the high half; near: tokens 2tq, 2tq + 1, far: + 8.
#pragma unroll
          for (int j = 0; j < 4; j += 2) {
            const u32 pick = j | ((j + 4) << 4) | ((j + 1) << 8) | ((j + 5) << 12);
            const u32 near = __byte_perm(w[0], w[1], pick), far = __byte_perm(w[2], w[3], pick);
            f16_t::mma(acc[c][j], a, e4m3x2_f16(near), e4m3x2_f16(far));
            f16_t::mma(acc[c][j + 1], a, e4m3x2_f16<true>(near), e4m3x2_f16<true>(far));
          }
        }
      }
    }

    seq0 += t1 - t0;

    // This piece's output rows (Segment::out_row), read again (see the top).
    const bool final = p.sched.piece_base[b + 1] - p.sched.piece_base[b] == 1;
    const size_t slot = final ? b : p.sched.piece_base[b] + (part - p.sched.first_part[b]);
    // Row sums: over the quad, then over the warps (sRed's row maxima are
    // read by then).
    publish_row_sums(run_sum, sRed + warp * BM + g, tq == 0);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + g + 8 * h;
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < Tile::kWarps; ++w) total += sRed[w * BM + g + 8 * h];
      if (r >= p.rows) continue;
      // (carried = 0: no scale was non-zero, the accumulators are zero)
      const float inv = row_seen(total) ? exp2i(max(carried, 1) - 127) / total : 0.f;
      const size_t out_row = slot * p.rows + r;
      if (warp == 0 && tq == 0)
        (final ? p.lse : p.part_lse)[out_row] = row_seen(total) ? run_max[h] * p.scale + logf(total) : CUMLA_NEG_INF;
#pragma unroll
      for (int c = 0; c < Tile::kChunks; ++c) {
        // Columns col + i, i = 0..7: accumulator column 2tq + i / 4 of tile i % 4.
        const int col = warp * Tile::kCols + 32 * c + 8 * tq;
        float v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = acc[c][i % 4][2 * h + i / 4] * inv;
#pragma unroll
        for (int i = 0; i < 8; i += 2) {
          if (final) {
            *reinterpret_cast<u32*>(static_cast<u16*>(p.out) + out_row * L + col + i) = T::pack(v[i], v[i + 1]);
          } else {
            *reinterpret_cast<float2*>(p.part_out + out_row * L + col + i) = make_float2(v[i], v[i + 1]);
          }
        }
      }
    }
  }
}
