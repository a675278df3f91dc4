// Absorbed MLA decode core for Hopper (sm_90a): the schedule, inputs and
// outputs of latent_attention.cu, with the products on warpgroup MMAs (wgmma).
//
// A CTA of two warpgroups (and a producer, below) owns 64 query rows of one
// request (all heads and query tokens when Sq*H <= 64) and walks its range
// of 64-token cache tiles two at a time ("seesaw"): warpgroup 0 owns the
// left half of the 64 x DV output and the scores of the even tile K0,
// warpgroup 1 the right half and the odd tile K1. With m the running row
// maximum:
//   [0] S0 = Q K0^T, m0 = max(m, rowmax S0), P0 = exp(S0 - m0),
//       O_L = O_L * e^(m - m0) + P0 V0_L                      (P0 from registers)
//   [1] S1 = Q K1^T, m1 = max(m0, rowmax S1), P1 = exp(S1 - m1),
//       O_R = O_R * e^(m - m1) + P1 V1_R                      (P1 from registers)
//   [0] O_L = O_L * e^(m0 - m1) + P1 V1_L                     (P1 from shared memory)
//   [1] O_R += (P0 e^(m0 - m1)) V0_R                          (scaled P0 from shared memory)
// so one warpgroup's softmax runs while the other's products keep the tensor
// cores busy, and no warpgroup ever waits for a CTA-wide barrier inside a
// request. Warpgroup 1 issues S1 once warpgroup 0 has issued S0: the tensor
// pipe runs them in turn and warpgroup 0's softmax overlaps S1 (issued
// together, both finished at once and both softmaxes left the pipe idle).
// Only row maxima, P tiles and that signal cross between the warpgroups
// (mbarriers, one direction each).
//
// Q and the two cache stages (stage s holds the tiles warpgroup s scores) sit
// in shared memory in the 128-byte-swizzled layout wgmma reads; V is the
// first DV columns of the same tile, read as an N-major operand. Each stage
// is copied by TMA in two groups of 64-column blocks with a "full" and an
// "empty" mbarrier each, group A being the blocks only the scoring warpgroup
// reads (its own V half): that warpgroup releases group A as soon as its own
// product is done, the other group when the other warpgroup's product is,
// and (kProducer: all but one row group reading pages of under 64 tokens)
// one warp of a third (producer) warpgroup, which also makes the
// block-table lookups, refills each group as soon as it is released, so the
// consumer warps never wait on a copy's issue (~120 cycles per 8 KB box) or
// a lookup; setmaxnreg moves the producer's registers to the consumers.
// Without it (a tile of several pages' boxes, read by one row group: the
// consumers' warps issue them sooner than one producer warp) warp 0 of the
// releasing warpgroup refills it. The scores of a tile walk first the
// group its stage frees first: group A of stage 0 (released by warpgroup
// 0's P0 V0_L), group B of stage 1 (warpgroup 0's P1 V1_L, before warpgroup
// 1's P1 V1_R; FP8 rows: group A, as the converting producer fills it
// first). P1 goes to stage 1's RoPE block (past DV, unused once the scores
// are done) when there is one, P0 to a tile of its own: stage 0's RoPE
// blocks are then a third group (C) of 16-bit rows, refilled once
// warpgroup 0's scores are done, scored between its groups A and B.
//
// FP8 rows (G > 0, fp8.cuh's layout; whole 64-token tiles of consecutive
// rows): the producer warpgroup, all four warps, fills each group by
// converting the rows itself, in parts of two 64-column blocks: 16-byte
// loads of a part's codes, scales (and a group's RoPE values) into
// registers, issued before the part ahead is converted (ptxas sinks part
// of them into that conversion), e4m3 times the token's scale rounded to T,
// stored in the swizzled blocks the consumers read; every producer thread
// arrives on the group's "full" barrier. The next pair's rows are
// prefetched into L2 when a pair starts. The consumers run as for 16-bit
// rows.
#include "common.cuh"
#include "params.cuh"
#include "fp8.cuh"
#include "hopper.cuh"

namespace {

constexpr int HOPPER_MIN_PAGE = 8;  // smallest page TMA copies as a box (cumla/_kernels.py)

template <int D, int DV>
struct HopperTile {
  static constexpr int BM = 64, BN = 64;      // query rows, tokens per tile
  static constexpr int kWarps = 8;             // two consumer warpgroups
  // With a producer, a third warpgroup (one warp of it issues the copies);
  // setmaxnreg gives the consumers the producer's registers.
  static constexpr int kProducerRegs = 56, kConsumerRegs = 224;
  // A producer that converts FP8 rows holds a group's loads in registers.
  static constexpr int kFp8ProducerRegs = 88, kFp8ConsumerRegs = 208;
  // setmaxnreg moves registers within what the CTA got at launch (384
  // threads: 168 each), not the whole register file.
  static constexpr int kLaunchRegs = 65536 / 384 / 8 * 8;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 384 * kLaunchRegs &&
                128 * kFp8ProducerRegs + 256 * kFp8ConsumerRegs <= 384 * kLaunchRegs, "the CTA's registers");
  static constexpr int kBlocks = D / 64;       // 128-byte column blocks per row
  static constexpr int kHalf = DV / 2;         // output columns per warpgroup
  static constexpr int kHalfBlocks = kHalf / 64;
  static constexpr int kChunks = D / 8;        // 16-byte chunks per row
  using Rows = Swizzle128<64>;
  static constexpr int kTileBytes = Rows::bytes(kBlocks);  // Q, or one cache stage
  static constexpr int kPBytes = Rows::bytes(1);            // P: 64 x 64 16-bit values
  static constexpr int kRopeBlocks = (D - DV) / 64;         // whole blocks past DV
  static constexpr bool kPInStage = kRopeBlocks > 0;        // P1 in stage 1's last block, P0 in a tile of its own
  static constexpr int kOwnPBytes = kPInStage ? kPBytes : 2 * kPBytes;
  static constexpr int kRedBytes = 6 * BM * 4;              // m0, m1; both warpgroups' row sums, two buffers
  static constexpr int kBarBytes = 16 * 8;                  // mbarriers: 5 full, 6 for exchanges, 5 empty
  static constexpr int kSmemBytes = 1024 + 3 * kTileBytes + kOwnPBytes + kRedBytes + kBarBytes;  // 1024: alignment
  static_assert(D % 64 == 0 && DV <= D && (kHalf == 64 || kHalf == 128 || kHalf == 256),
                "dims outside the Hopper kernel's range (the MMA widths hopper.cuh specialises)");
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in shared memory");
  static_assert(BN == kScheduleTile, "the kernel's tiles are the schedule's");
  // mbarriers from `bars`: full ([stage][group A, B], then stage 0's group
  // C), six exchanges, empty (the same order). Group C (g = 2): stage 0's
  // RoPE blocks where they are a group of their own (see group_at).
  static __device__ __forceinline__ u32 full_bar(u32 bars, int s, int g) { return bars + 8 * (g == 2 ? 4 : 2 * s + g); }
  static __device__ __forceinline__ u32 xbar(u32 bars, int x) { return bars + 40 + 8 * x; }
  static __device__ __forceinline__ u32 empty_bar(u32 bars, int s, int g) {
    return bars + 88 + 8 * (g == 2 ? 4 : 2 * s + g);
  }
  // Warpgroup w scores first group first_group(w, b1) of its tile, then the
  // other; with b1, warpgroup 1 starts with group B, the group of stage 1
  // released first in the pair before (warpgroup 0's P1 V1_L, ~600 cycles
  // before warpgroup 1's own product frees group A), else with group A as
  // warpgroup 0 does (stage 0's group A is released ~1.5k cycles before its
  // B). The k-th fill of a pair is group fill_group(k, b1) of stage k / 2:
  // each stage's first-scored group first.
  static __host__ __device__ constexpr int first_group(int w, bool b1) { return w == 1 && b1 ? 1 : 0; }
  static __host__ __device__ constexpr int fill_group(int k, bool b1) { return (k % 2) ^ first_group(k / 2, b1); }
  // With c, stage 0's RoPE blocks are group C, refilled once warpgroup 0's
  // scores are done (P0 lives in a tile of its own), and warpgroup 0 scores
  // A, C, then B: its group B (the other V half, released last, by
  // warpgroup 1's P0 V0_R) is 8 KB smaller and needed four k-steps later.
  // Without c group B holds them (and P0).
  // The group (0 A, 1 B, 2 C) of block idx of warpgroup w's scoring order.
  static __device__ __forceinline__ int group_at(int w, int idx, bool b1, bool c) {
    if (first_group(w, b1) == 1) return idx < kBlocks - kHalfBlocks ? 1 : 0;
    return idx < kHalfBlocks ? 0 : c && w == 0 && idx < kHalfBlocks + kRopeBlocks ? 2 : 1;
  }
  // Block idx of warpgroup w's scoring order. Group A of stage s: the blocks
  // of warpgroup s's V half; group B: every other block (the other V half,
  // then the RoPE blocks) but group C's.
  static __device__ __forceinline__ int block_at(int w, int idx, bool b1, bool c) {
    const int own = w * kHalfBlocks;  // group A of stage w
    if (first_group(w, b1) == 0) {
      if (idx < kHalfBlocks) return own + idx;
      const int j = idx - kHalfBlocks;
      if (c && w == 0) return j < kRopeBlocks ? 2 * kHalfBlocks + j : kHalfBlocks + j - kRopeBlocks;
      return group_b_block(w, j);
    }
    return idx < kBlocks - kHalfBlocks ? group_b_block(w, idx) : own + idx - (kBlocks - kHalfBlocks);
  }
  // Block j of group B of stage s.
  static __device__ __forceinline__ int group_b_block(int s, int j) {
    return j < kHalfBlocks ? (1 - s) * kHalfBlocks + j : kHalfBlocks + j;
  }
};

// One-way signals between the warpgroups: mbarriers every thread of the
// sending warpgroup arrives on (each arrival releases that thread's writes),
// completing once per pair: S0 issued, m0 and P0 from warpgroup 0, m1 and
// P1 from 1.
enum : int { X_M0 = 0, X_M1 = 1, X_P0 = 2, X_P1 = 3, X_SUMS = 4, X_S0 = 5 };  // X_SUMS: both warpgroups, once per request
constexpr int kGroupThreads = 128;
constexpr int BAR_OWN = 1;  // named barrier of warpgroup 0 (1 + w for warpgroup w; 0 is __syncthreads')
constexpr int BAR_CONSUMERS = 3;  // named barrier of both consumer warpgroups
constexpr int kConsumerThreads = 2 * kGroupThreads;

}  // namespace

#if defined(CUMLA_TIMELINE)
// Profiling build (CUMLA_TIMELINE=1 in the environment; bench/timeline.py):
// clock64() at each step of the first pairs of CTA (0, 0), per warpgroup.
constexpr int kTimelinePairs = 64, kTimelineSteps = 17;
__device__ long long cumla_timeline[kTimelinePairs][2][kTimelineSteps];
#define TIMELINE_STAMP(pair, wg, step)                                                              \
  do {                                                                                              \
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x % 128 == 0 && (pair) < kTimelinePairs) \
      cumla_timeline[pair][wg][step] = clock64();                                                   \
  } while (0)
// Per CTA (blockIdx.y * gridDim.x + blockIdx.x): %globaltimer (ns) and
// clock64 at its start and its end, and its SM: how evenly the CTAs finish,
// and the SM clock that converts the stamps above into time.
constexpr int kTimelineCtas = 1024;
__device__ long long cumla_cta_span[kTimelineCtas][5];
#define TIMELINE_CTA(end)                                                      \
  do {                                                                         \
    const int cta_ = blockIdx.y * gridDim.x + blockIdx.x;                      \
    if (threadIdx.x == 0 && cta_ < kTimelineCtas) {                            \
      unsigned sm_;                                                            \
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm_));                         \
      cumla_cta_span[cta_][end] = global_ns();                                 \
      cumla_cta_span[cta_][2 + (end)] = clock64();                             \
      cumla_cta_span[cta_][4] = sm_;                                           \
    }                                                                          \
  } while (0)
#else
#define TIMELINE_STAMP(pair, wg, step) \
  do {                                 \
  } while (0)
#define TIMELINE_CTA(end) \
  do {                    \
  } while (0)
#endif

// FP8 rows for the converting producer, by parts: part H of group K of a
// pair (stage K / 2; K % 2: group A, the latent blocks of warpgroup K / 2's
// V half, or B, the other latent blocks, then the RoPE blocks; a group's
// latent blocks in kParts parts), in a producer thread's registers between
// its loads and its stores. Thread pt holds, per latent block, the 16 codes
// at part pt % 4 of rows pt / 4 and pt / 4 + 32 with their scales, and per
// RoPE block the 16-byte chunk pt % 8 of rows pt / 8 + 16j. Rows past the
// tokens (or the segment, or with an out-of-range block id) are zeros,
// loaded from nowhere: P = 0 times V must stay 0.
template <class T, int D, int DV, int G>
struct Fp8Parts {
  using Tile = HopperTile<D, DV>;
  using Rows = typename Tile::Rows;
  static constexpr int kHB = Tile::kHalfBlocks, kLatent = DV / 64, kRopeBlocks = (D - DV) / 64;
  static constexpr int kRaw = fp8_row_bytes(DV, D - DV, G), kRope = fp8_rope_offset(DV, G);
  static constexpr int kParts = kHB >= 2 ? 2 : 1, kPartBlocks = kHB / kParts;
  static constexpr int kOwnRope = kRopeBlocks > 0 ? kRopeBlocks : 1;
  static_assert((G & (G - 1)) == 0 && kHB % kParts == 0, "scale groups of a power of two, whole parts");
  // A part's latent blocks (kPartBlocks consecutive ones from a multiple of
  // kPartBlocks) share their rows' scales, a thread's codes in each lying in
  // one group: a second scale per row and part spilled
  // (_kernels.hopper_fp8_kernel refuses those groups).
  static_assert(kPartBlocks == 1 || G >= 64 * kPartBlocks, "one scale per row and part");

  struct Latent {
    uint4 codes[kPartBlocks][2];
    float scale[2];  // rows pt / 4 and pt / 4 + 32
  };
  struct Rope {
    uint4 v[kOwnRope][4];
  };

  // The j-th latent block of part H of group K.
  template <int K, int H>
  static __host__ __device__ constexpr int latent_block(int j) {
    return K % 2 == 0 ? K / 2 * kHB + H * kPartBlocks + j
                      : (H * kPartBlocks + j < K / 2 * kHB ? H * kPartBlocks + j : H * kPartBlocks + j + kHB);
  }

  // Latent blocks J.. of part H of group K; `codes`, `scales`: thread pt's
  // bytes of row 0 (offsets from them are immediates of the loads).
  template <int K, int H, int J = 0>
  static __device__ __forceinline__ void load_latent(const unsigned char* codes, const unsigned char* scales,
                                                     bool in0, bool in1, Latent& x) {
    if constexpr (J < kPartBlocks) {
      constexpr int col = 64 * latent_block<K, H>(J), row = 32 * kRaw;
      x.codes[J][0] = ld_global_nc_if<col>(codes, in0);
      x.codes[J][1] = ld_global_nc_if<row + col>(codes, in1);
      if constexpr (J == 0) {
        x.scale[0] = ld_global_nc_if_f32<4 * (col / G)>(scales, in0);
        x.scale[1] = ld_global_nc_if_f32<row + 4 * (col / G)>(scales, in1);
      }
      load_latent<K, H, J + 1>(codes, scales, in0, in1, x);
    }
  }
  // RoPE blocks J.. of a tile; `ropes`: thread pt's bytes of row 0.
  template <int J = 0>
  static __device__ __forceinline__ void load_rope(const unsigned char* ropes, int live, int pt, Rope& rope) {
    if constexpr (J < kRopeBlocks) {
      constexpr int row = 16 * kRaw;
      const int left = live - pt / 8;  // rows of the tile from this thread's first
      rope.v[J][0] = ld_global_nc_if<128 * J>(ropes, left > 0);
      rope.v[J][1] = ld_global_nc_if<row + 128 * J>(ropes, left > 16);
      rope.v[J][2] = ld_global_nc_if<2 * row + 128 * J>(ropes, left > 32);
      rope.v[J][3] = ld_global_nc_if<3 * row + 128 * J>(ropes, left > 48);
      load_rope<J + 1>(ropes, live, pt, rope);
    }
  }

  // Part H of group K of the tile whose row 0 is `rows` (`live` rows); the
  // last part of a group B also its RoPE values.
  template <int K, int H>
  static __device__ __forceinline__ void load(const unsigned char* rows, int live, int pt, Latent& x, Rope& rope) {
    load_latent<K, H>(rows + (pt / 4) * kRaw + 16 * (pt % 4), rows + (pt / 4) * kRaw + DV + 4 * (16 * (pt % 4) / G),
                      live - pt / 4 > 0, live - pt / 4 > 32, x);
    if constexpr (K % 2 == 1 && H == kParts - 1)
      load_rope(rows + (pt / 8) * kRaw + kRope + 16 * (pt % 8), live, pt, rope);
  }

  // Thread pt's places in the stages, from which its stores are immediates:
  // in row pt / 4 of block 0 of stage 0, its chunks 2 (pt % 4) and the one
  // after (latent blocks); in row pt / 8, its chunk pt % 8 (RoPE blocks).
  struct Places {
    u32 latent[2], rope;
    __device__ __forceinline__ Places(u32 stages, int pt) {
      const int r = pt / 4, q = pt / 8;
      latent[0] = stages + Rows::offset(r, 2 * (pt % 4));
      latent[1] = stages + Rows::offset(r, 2 * (pt % 4) + 1);
      rope = stages + Rows::offset(q, pt % 8);
    }
  };

  // 16 codes of one row times their scale, converted, at kOff from the
  // thread's latent places (rows 32 apart have the same swizzle).
  template <int kOff>
  static __device__ __forceinline__ void store_codes(const Places& at, uint4 c, float sc) {
    const u32 w0 = e4m3x2_scaled<T>(c.x, sc), w1 = e4m3x2_scaled<T, true>(c.x, sc);
    const u32 w2 = e4m3x2_scaled<T>(c.y, sc), w3 = e4m3x2_scaled<T, true>(c.y, sc);
    const u32 w4 = e4m3x2_scaled<T>(c.z, sc), w5 = e4m3x2_scaled<T, true>(c.z, sc);
    const u32 w6 = e4m3x2_scaled<T>(c.w, sc), w7 = e4m3x2_scaled<T, true>(c.w, sc);
    st_shared_v4_at<kOff>(at.latent[0], w0, w1, w2, w3);
    st_shared_v4_at<kOff>(at.latent[1], w4, w5, w6, w7);
  }
  // Latent blocks J.. of part H of group K, converted, into their stage.
  template <int K, int H, int J = 0>
  static __device__ __forceinline__ void store_latent(const Places& at, const Latent& x) {
    if constexpr (J < kPartBlocks) {
      constexpr int block = K / 2 * Tile::kTileBytes + latent_block<K, H>(J) * Rows::kBlockBytes;
      store_codes<block>(at, x.codes[J][0], x.scale[0]);
      store_codes<block + 32 * 128>(at, x.codes[J][1], x.scale[1]);
      store_latent<K, H, J + 1>(at, x);
    }
  }
  // Eight RoPE values of one row as T, at kOff from the thread's RoPE place
  // (rows 16 apart have the same swizzle).
  template <int kOff>
  static __device__ __forceinline__ void store_rope_chunk(const Places& at, uint4 v) {
    const u32 w0 = rope_pair<T>(v.x), w1 = rope_pair<T>(v.y), w2 = rope_pair<T>(v.z), w3 = rope_pair<T>(v.w);
    st_shared_v4_at<kOff>(at.rope, w0, w1, w2, w3);
  }
  // RoPE blocks J.. of stage ST.
  template <int ST, int J = 0>
  static __device__ __forceinline__ void store_rope(const Places& at, const Rope& rope) {
    if constexpr (J < kRopeBlocks) {
      constexpr int block = ST * Tile::kTileBytes + (kLatent + J) * Rows::kBlockBytes;
      store_rope_chunk<block>(at, rope.v[J][0]);
      store_rope_chunk<block + 16 * 128>(at, rope.v[J][1]);
      store_rope_chunk<block + 32 * 128>(at, rope.v[J][2]);
      store_rope_chunk<block + 48 * 128>(at, rope.v[J][3]);
      store_rope<ST, J + 1>(at, rope);
    }
  }

  // Part H of group K of the `fills`-th pair, converted and stored swizzled:
  // the first part once the group's last reader of the pair before has
  // released it; the last announces the group.
  template <int K, int H>
  static __device__ __forceinline__ void fill(const Places& at, u32 bars, u32 fills, const Latent& x,
                                              const Rope& rope) {
    constexpr int st = K / 2, g = K % 2;
    if (H == 0 && fills > 0) mbar_wait(Tile::empty_bar(bars, st, g), (fills - 1) & 1);
    store_latent<K, H>(at, x);
    if constexpr (H == kParts - 1) {
      if constexpr (g == 1) store_rope<st>(at, rope);
      fence_async_shared();  // written through the generic proxy, read by wgmma
      mbar_arrive(Tile::full_bar(bars, st, g));
    }
  }

  // Part P (of 4 * kParts) of a pair, the tiles' rows `first` and `second`;
  // part P + 1's loads are issued before part P is converted.
  template <int P>
  static __device__ __forceinline__ void pair_part(const Places& at, u32 bars, u32 fills, int pt, Latent (&buf)[2],
                                                   Rope& rope, const unsigned char* first, int valid0,
                                                   const unsigned char* second, int valid1,
                                                   const unsigned char* next, int valid2) {
    constexpr int K = P / kParts, H = P % kParts, N = P + 1;
    if constexpr (N < 4 * kParts) {
      constexpr int NK = N / kParts;
      load<NK, N % kParts>(NK < 2 ? first : second, NK < 2 ? valid0 : valid1, pt, buf[N % 2], rope);
    } else {
      load<0, 0>(next, valid2, pt, buf[0], rope);  // the next pair's first: zeros, from nowhere, past the segment
    }
    fill<K, H>(at, bars, fills, buf[P % 2], rope);
    if constexpr (N < 4 * kParts)
      pair_part<N>(at, bars, fills, pt, buf, rope, first, valid0, second, valid1, next, valid2);
  }
};

// The converting producer (every thread of warpgroup 2): walks the
// consumers' requests and pairs as the copying producer does and fills the
// four groups of a pair in the same order, in parts whose loads are written
// one part ahead (two parts in registers: a part's load latency runs under
// its predecessor's conversion, from where ptxas issues them, about halfway
// into it, instead of before its own; a segment's next pair's first part
// under the pair's last).
template <class T, int D, int DV, int G>
__device__ __forceinline__ void produce_fp8_groups(const AttnParams& p, const PartWork& work, u32 stages, u32 bars) {
  using F = Fp8Parts<T, D, DV, G>;
  constexpr int BN = HopperTile<D, DV>::BN;
  const int pt = threadIdx.x % kGroupThreads;
  const unsigned char* cache = static_cast<const unsigned char*>(p.cache);
  // Row 0 of tile t of request b (n tokens, tiles below t1) and `valid`, its
  // rows holding tokens; past the segment or for an out-of-range block id,
  // no rows (the cache's start, for addresses never read).
  auto tile_rows = [&](int b, int n, int t1, int t, int& valid) {
    const unsigned char* first = t < t1 ? cache_row(p, cache, b, n, t * BN, F::kRaw) : nullptr;
    valid = first != nullptr ? min(BN, n - t * BN) : 0;
    return first != nullptr ? first : cache;
  };
  const typename F::Places at(stages, pt);
  typename F::Latent buf[2];  // even parts in buf[0], odd in buf[1]
  typename F::Rope rope;      // a group B's
  u32 fills = 0;  // pairs filled: the one before released phase (fills - 1) & 1 of each empty barrier
  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, kScheduleTile, seg)) continue;
    const int n = seg.n, t0 = seg.t0, t1 = seg.t1;
    int valid0, valid1, valid2;
    const unsigned char* first0 = tile_rows(b, n, t1, t0, valid0);
    F::template load<0, 0>(first0, valid0, pt, buf[0], rope);
    for (int i = t0; i < t1; i += 2, ++fills) {
      const unsigned char* const first1 = tile_rows(b, n, t1, i + 1, valid1);
      const unsigned char* const next0 = tile_rows(b, n, t1, i + 2, valid2);
      if (pt == 0) {  // the next pair's rows into L2, for its loads
        int valid3;
        const unsigned char* const next1 = tile_rows(b, n, t1, i + 3, valid3);
        if (valid2 > 0) bulk_prefetch_l2(next0, valid2 * F::kRaw);
        if (valid3 > 0) bulk_prefetch_l2(next1, valid3 * F::kRaw);
      }
      F::template pair_part<0>(at, bars, fills, pt, buf, rope, first0, valid0, first1, valid1, next0, valid2);
      first0 = next0, valid0 = valid2;
    }
  }
}

// `cache_map`: the cache as a 2-D tensor (rows, D) with boxes of 64 columns
// by min(64, block_size) rows (64 for a contiguous cache), 128-byte swizzle;
// `half_map`: the same rows as a 3-D tensor (64 columns, rows, D / 64 blocks)
// with boxes of a V half's blocks by 64 rows, used where a page holds a whole
// tile and several row groups read it (a 2-D map, unused, where a half is one
// block). Issuing a copy holds the issuing warp ~120 cycles per 8 KB box and
// ~270 per 32 KB one (timeline): a refill of 1-2 copies instead of 4-5 is
// issued ~250 cycles sooner.
template <class T, int D, int DV, bool kProducer, int G = 0>
__global__ void __launch_bounds__(kProducer ? 384 : 256, 1)
    latent_attention_sm90(const __grid_constant__ AttnParams p, const __grid_constant__ TmaMap cache_map,
                          const __grid_constant__ TmaMap half_map) {
  using Tile = HopperTile<D, DV>;
  using Rows = typename Tile::Rows;
  constexpr int kHalf = Tile::kHalf, kHB = Tile::kHalfBlocks, kBlock = Rows::kBlockBytes;
  constexpr bool kFp8 = G > 0;  // FP8 rows, converted by the producer (the maps are unused)
  // Warpgroup 1 scores group B first (HopperTile::first_group); the
  // converting producer fills group A first (in B, A order it spills).
  constexpr bool kB1 = !kFp8;
  // Stage 0's RoPE blocks a group of their own (HopperTile::group_at); the
  // converting producer keeps them in group B.
  constexpr bool kRopeC = kB1 && Tile::kPInStage;
  static_assert(!kFp8 || (kProducer && G % 16 == 0 && DV % G == 0 && (D - DV) % 64 == 0),
                "FP8 rows: a producer, 16-code loads inside one scale group, whole RoPE blocks");

  // wgmma's swizzle is anchored at 1024-byte boundaries.
  extern __shared__ __align__(1024) unsigned char smem[];
  require_dynamic_smem(Tile::kSmemBytes);
  const u32 raw = smem_addr(smem);
  const u32 sQ = (raw + 1023u) & ~1023u;
  const u32 sKV = sQ + Tile::kTileBytes;  // stage s at sKV + s * kTileBytes
  const u32 sOwnP = sKV + 2 * Tile::kTileBytes;
  float* sM = reinterpret_cast<float*>(smem + (sOwnP + Tile::kOwnPBytes - raw));  // [2][BM]: m0, m1
  float* sSums = sM + 2 * Tile::BM;  // [request parity][warpgroup][BM]: a request's sums never overwrite the last one's
  const u32 sBar = sOwnP + Tile::kOwnPBytes + Tile::kRedBytes;  // [stage][group] full, exchanges, [stage][group] empty
  auto stage_at = [&](int s) { return sKV + s * Tile::kTileBytes; };
  auto p_at = [&](int s) {  // where P of stage s's tile goes: P1 in stage 1's last block where there is one
    return Tile::kPInStage && s == 1 ? stage_at(1) + (Tile::kBlocks - 1) * kBlock : sOwnP + s * Tile::kPBytes;
  };
  auto full_bar = [&](int s, int g) { return Tile::full_bar(sBar, s, g); };
  auto xbar = [&](int x) { return Tile::xbar(sBar, x); };
  auto empty_bar = [&](int s, int g) { return Tile::empty_bar(sBar, s, g); };

  // The warpgroup index through a shuffle: ptxas then knows it is uniform
  // across the warpgroup and keeps the MMAs of either branch asynchronous.
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  // Accumulator fragments: this thread holds rows r_lo and r_lo + 8, columns
  // 8j + cq and 8j + cq + 1 of every 8-column group j.
  const int r_lo = 16 * warp + lane / 4, cq = 2 * (lane % 4);
  const bool issuer = !kProducer && warp == 0;  // without a producer, warp 0 of each warpgroup issues its copies
  const int row0 = blockIdx.x * Tile::BM;  // row groups of a part are adjacent CTAs
  const u16* q = static_cast<const u16*>(p.q);
  const PartWork work(p.sched, blockIdx.y);
  allow_combine_launch(p, work);
  const int box_rows = p.block_table == nullptr || p.block_size > Tile::BN ? Tile::BN : p.block_size;
  const int pages = Tile::BN / box_rows;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // Filled by one TMA issue, or by every producer thread's conversion.
      mbar_init(full_bar(i / 2, i % 2), kFp8 ? kGroupThreads : 1), mbar_init(xbar(i), kGroupThreads);
      mbar_init(empty_bar(i / 2, i % 2), kGroupThreads);  // every thread of the releasing warpgroup
    }
    if (kRopeC) mbar_init(full_bar(0, 2), 1), mbar_init(empty_bar(0, 2), kGroupThreads);  // group C (one TMA issue)
    mbar_init(xbar(X_SUMS), 2 * kGroupThreads);
    mbar_init(xbar(X_S0), kGroupThreads);
    mbar_init_fence();
  }
  // Lane l of an issuing warp: the cache row of page l of tile t of request b
  // (n tokens, tiles below t1 in this part; a block-table load, made ahead of
  // the copy so that its latency hides); tokens past the length and
  // out-of-range block ids give y < 0, where TMA fills zeros.
  auto page_row = [&](int b, int n, int t1, int t) {
    const int tok = t * Tile::BN + lane * box_rows;
    int y = -box_rows;
    if (lane >= pages || t >= t1) return y;
    if (p.block_table == nullptr) {
      y = b * p.capacity + tok;
    } else if (tok < n) {
      const int blk = p.block_table[static_cast<size_t>(b) * p.max_blocks + tok / p.block_size];
      if (blk >= 0 && blk < p.num_blocks) y = blk * p.block_size + tok % p.block_size;
    }
    return y;
  };
  // The issuing warp copies blocks [first, last) of a tile into stage s: one
  // box per block and page, completing on `bar` (bytes announced apart).
  auto copy_blocks = [&](int s, int first, int last, int y_of_my_page, u32 bar) {
    const int count = last - first;
    constexpr int kRounds = (Tile::kBlocks * Tile::BN / HOPPER_MIN_PAGE + 31) / 32;
#pragma unroll
    for (int round = 0; round < kRounds; ++round) {
      const int k = lane + 32 * round, page = min(k / max(count, 1), pages - 1);
      const int y = __shfl_sync(0xffffffffu, y_of_my_page, page);
      if (k < count * pages)
        tma_load_2d(stage_at(s) + (first + k % count) * kBlock + page * box_rows * 128, cache_map,
                    (first + k % count) * 64, y, bar);
    }
  };
  // Where a page holds the tile and the request's other row groups read the
  // same tiles, a V half goes in one box of half_map; with one row group
  // (memory-bound: C, F) block by block, as wide boxes there made F vary
  // (596-660 us against 597-610; a guess: a 3-D box walks DRAM block by
  // block, single boxes in flight together interleave the blocks of a row).
  const bool wide = kHB > 1 && pages == 1 && gridDim.x > 1;
  // Group A of stage s: warpgroup s's V half; group B: every other block
  // but group C's (stage 0's RoPE blocks, with kRopeC).
  auto fill_group = [&](int s, int g, int y_of_my_page) {
    const u32 bar = full_bar(s, g);
    const int b_end = kRopeC && s == 0 ? 2 * kHB : Tile::kBlocks;  // group B's blocks past the V halves end here
    const int blocks = g == 0 ? kHB : g == 2 ? Tile::kRopeBlocks : b_end - kHB;
    if (lane == 0) mbar_expect_bytes(bar, blocks * kBlock);
    __syncwarp();
    if (g == 2) {
      copy_blocks(0, 2 * kHB, Tile::kBlocks, y_of_my_page, bar);
    } else if (wide) {
      const int half = (g == 0 ? s : 1 - s) * kHB;
      if (lane == 0) tma_load_3d(stage_at(s) + half * kBlock, half_map, 0, y_of_my_page, half, bar);
      if (g == 1 && 2 * kHB < b_end) copy_blocks(s, 2 * kHB, b_end, y_of_my_page, bar);
    } else if (g == 0) {
      copy_blocks(s, s * kHB, s * kHB + kHB, y_of_my_page, bar);
    } else if (s == 0) {
      copy_blocks(s, kHB, b_end, y_of_my_page, bar);
    } else {
      copy_blocks(s, 0, kHB, y_of_my_page, bar);
      copy_blocks(s, 2 * kHB, Tile::kBlocks, y_of_my_page, bar);
    }
  };

  TIMELINE_CTA(0);
  __syncthreads();  // the barriers are initialised

  if constexpr (kFp8) {  // the converting producer warpgroup, then the consumers' registers
    if (wg == 2) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Tile::kFp8ProducerRegs));
      produce_fp8_groups<T, D, DV, G>(p, work, sKV, sBar);
      return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Tile::kFp8ConsumerRegs));
  } else if constexpr (kProducer) {  // the producer warpgroup, then the consumers' registers
    if (wg == 2) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Tile::kProducerRegs));
      if (warp != 0) return;
      // The producer warp walks the consumers' requests and pairs; for each
      // pair it fills the four groups in a fixed order, stage 0's (which
      // warpgroup 0's next scores need first) before stage 1's, each stage's
      // first-scored group first, each once its last reader of the pair
      // before has released it.
      u32 fills = 0;
      for (int b = work.first(); b <= work.last(p.batch); ++b) {
        Segment seg;
        if (!work.segment(p, b, kScheduleTile, seg)) continue;
        const int n = seg.n, t0 = seg.t0, t1 = seg.t1;
        for (int i = t0; i < t1; i += 2, ++fills) {
          const int y[2] = {page_row(b, n, t1, i), page_row(b, n, t1, i + 1)};
          if constexpr (kRopeC) {  // group C, released first (warpgroup 0's scores)
            if (fills > 0) mbar_wait(empty_bar(0, 2), (fills - 1) & 1);
            fill_group(0, 2, y[0]);
          }
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int st = k / 2, g = Tile::fill_group(k, kB1);
            if (fills > 0) mbar_wait(empty_bar(st, g), (fills - 1) & 1);
            fill_group(st, g, y[st]);
            // (the refill's stamps as before: by the warpgroup that released the group, in the pair before)
            if (fills > 0) TIMELINE_STAMP(fills - 1, g == 0 ? st : 1 - st, g == 0 ? 13 : 14);
          }
        }
      }
      return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Tile::kConsumerRegs));
  }

  // Pairs done so far: the current pair's tiles complete phase `pairs % 2` of
  // their stage's group barriers (every pair fills both stages once).
  u32 pairs = 0, requests = 0;

  for (int b = work.first(); b <= work.last(p.batch); ++b) {
    Segment seg;
    if (!work.segment(p, b, kScheduleTile, seg)) continue;
    // Through shuffles, like wg: branches on these stay uniform for ptxas.
    const int n = __shfl_sync(0xffffffffu, seg.n, 0), t0 = __shfl_sync(0xffffffffu, seg.t0, 0),
              t1 = __shfl_sync(0xffffffffu, seg.t1, 0);

    named_sync(BAR_CONSUMERS, kConsumerThreads);  // the previous request is done with shared memory
    if (issuer && threadIdx.x < 32 && t0 < t1) {  // without a producer: the first pair, whole
      const int y0 = page_row(b, n, t1, t0), y1 = page_row(b, n, t1, t0 + 1);
      if (kRopeC) fill_group(0, 2, y0);
#pragma unroll
      for (int k = 0; k < 4; ++k) fill_group(k / 2, Tile::fill_group(k, kB1), k < 2 ? y0 : y1);
    }
    const u16* q_rows = q + (static_cast<size_t>(b) * p.rows + row0) * D;
    const int live_rows = min(Tile::BM, p.rows - row0);
    load_rows<Tile::kWarps, Tile::kChunks, Tile::kChunks, Rows>(
        sQ, Tile::BM, 0, q, [&](int r) { return r < live_rows ? q_rows + static_cast<size_t>(r) * D : nullptr; });
    cp_async_commit();

    float o[kHalf / 2];
#pragma unroll
    for (int i = 0; i < kHalf / 2; ++i) o[i] = 0.f;
    float run_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF}, run_sum[2] = {0.f, 0.f};
    int limit[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) limit[h] = visible_limit(n, row0 + r_lo + 8 * h, p.heads, p.q_len, p.causal);

    cp_async_wait<0>();
    fence_async_shared();  // Q, written through the generic proxy, is read by wgmma
    named_sync(BAR_CONSUMERS, kConsumerThreads);

    const u64 q_desc = wgmma_desc(sQ, 16, 1024);
    // Pairs of tiles (i, i + 1). An odd count ends on a pair whose K1 lies
    // past the segment: its copies are zeros (y < 0) and its scores masked,
    // so every MMA runs unconditionally (a MMA under a branch ptxas cannot
    // prove uniform gets serialised).
    for (int i = t0; i < t1; i += 2) {
      const int mine = i + wg;  // the tile this warpgroup scores
      const u32 phase = pairs & 1;
      TIMELINE_STAMP(pairs, wg, 0);
      // Without a producer: page rows of the next pair's tiles, for this warpgroup's refills.
      int y_next[2] = {0, 0};
      if (issuer) y_next[0] = page_row(b, n, t1, i + 2), y_next[1] = page_row(b, n, t1, i + 3);

      float s[32];
      float base[2];  // this warpgroup's new maximum (times scale_log2), exponent offset of its P
      {
        const u32 sK = stage_at(wg);
        const int valid = n - mine * Tile::BN;
        if (valid < Tile::BN && mine < t1) {
          // The last tile: rows past the length hold whatever the cache holds
          // there (NaN included); zero them so that P = 0 times V stays 0.
          mbar_wait(full_bar(wg, 0), phase);
          mbar_wait(full_bar(wg, 1), phase);
          if (kRopeC && wg == 0) mbar_wait(full_bar(0, 2), phase);
          const int first = valid > 0 ? valid : 0;
          for (int c = threadIdx.x % 128; c < (Tile::BN - first) * Tile::kChunks; c += kGroupThreads) {
            const int r = first + c / Tile::kChunks, chunk = c % Tile::kChunks;
            asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(sK + Rows::offset(r, chunk)), "r"(0));
          }
          fence_async_shared();
          named_sync(BAR_OWN + wg, kGroupThreads);
        }
        // S = Q K^T over the tile's 64 tokens, its first group's blocks first.
        // Descriptors advance by adding the byte offset / 16 to their address field.
        const u64 k_desc = wgmma_desc(sK, 16, 1024);
        // Waits at fixed blocks only (at a position that depends on wg ptxas
        // serialises the MMAs, C7519): at every place where a group can
        // start, one finding warpgroup 1's first group complete.
        // Scores in turn: warpgroup 1's start once warpgroup 0's are issued,
        // so that the tensor pipe runs S0 first and warpgroup 0's softmax
        // overlaps S1 instead of both softmaxes leaving the pipe idle.
        if (wg == 1) mbar_wait(xbar(X_S0), phase);
#pragma unroll
        for (int idx = 0; idx < Tile::kBlocks; ++idx) {
          // After a wait (a divergent spin), wgmma.fence again: else ptxas
          // inserts its own and serialises the MMAs.
          if (idx == 0 || idx == kHB || (kB1 && idx == Tile::kBlocks - kHB)) {
            const int g = Tile::group_at(wg, idx, kB1, kRopeC);
            if (idx == 0) TIMELINE_STAMP(pairs, wg, 12);  // this warp is at the wait (not held by earlier loads)
            mbar_wait(full_bar(wg, g), phase);
            if (idx == 0) TIMELINE_STAMP(pairs, wg, 1);
            if (idx != 0 && g != 2) TIMELINE_STAMP(pairs, wg, 2);  // (warpgroup 1's last one: its group A)
            wgmma_fence();
          }
          const int blk = Tile::block_at(wg, idx, kB1, kRopeC);
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const u32 step = (blk * kBlock + kk * 32) >> 4;
            Wgmma<64>::run<T, 0>(s, q_desc + step, k_desc + step, idx > 0 || kk > 0);
          }
        }
        wgmma_commit();
        if (wg == 0) mbar_arrive(xbar(X_S0));
        wgmma_wait<0>();
        fence_registers(s);
        TIMELINE_STAMP(pairs, wg, 3);

        // Mask invisible tokens; row maxima over the quad.
        float tile_max[2] = {CUMLA_NEG_INF, CUMLA_NEG_INF};
        // One branch around the whole mask (taken on the last tiles only); inside
        // it, selects: a short-circuit condition per element compiled to ~10
        // instructions and 3 branches each, on every tile.
        if (mine >= t1 || (mine + 1) * Tile::BN > min(limit[0], limit[1])) {
          int visible[2];  // tokens below these are visible (none in a tile past the segment)
#pragma unroll
          for (int h = 0; h < 2; ++h) visible[h] = mine >= t1 ? 0 : limit[h];
#pragma unroll
          for (int k = 0; k < 32; ++k) {
            const int tok = mine * Tile::BN + (k / 4) * 8 + cq + (k & 1);
            s[k] = tok >= visible[(k / 2) & 1] ? CUMLA_NEG_INF : s[k];
          }
        }
#pragma unroll
        for (int k = 0; k < 32; ++k) tile_max[(k / 2) & 1] = fmaxf(tile_max[(k / 2) & 1], s[k]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
          tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
          base[h] = tile_max[h];  // the new maximum once combined below
        }
      }

      // Row bases: m0 from warpgroup 0 (run_max, or rowmax S0), then m1 (m0, or
      // rowmax S1); a base moves only when a score passes it by more than
      // kRescaleSlack, so once the maxima settle the scale factors are 1 and
      // rescale() skips its 128 multiplies. Rows that have seen nothing keep
      // max -inf: scale by 0 or 1, exponentiate to 0.
      float m0[2], m1[2], scale0[2], scale1[2];
      auto offset_of = [&](float m) { return base_offset(m, p.scale_log2); };
      auto next_base = [&](float old, float cand) { return base_moves(old, cand, p.scale_log2) ? cand : old; };
      if (wg == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          m0[h] = next_base(run_max[h], base[h]);
          if (lane % 4 == 0) sM[r_lo + 8 * h] = m0[h];
        }
        mbar_arrive(xbar(X_M0));
      } else {
        mbar_wait(xbar(X_M0), phase);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          m0[h] = sM[r_lo + 8 * h];
          m1[h] = next_base(m0[h], base[h]);
          if (lane % 4 == 0) sM[Tile::BM + r_lo + 8 * h] = m1[h];
        }
        mbar_arrive(xbar(X_M1));
      }
      TIMELINE_STAMP(pairs, wg, 4);  // maxima exchanged
#pragma unroll
      for (int h = 0; h < 2; ++h) scale0[h] = fast_exp2(run_max[h] * p.scale_log2 - offset_of(m0[h]));

      u32 pa[16];  // this warpgroup's P as the A operand of its own product
      // P = exp(S - base) in s, its row sums added, packed into pa.
      auto exponentiate = [&] {
#pragma unroll
        for (int k = 0; k < 32; ++k) {
          s[k] = fast_exp2(s[k] * p.scale_log2 - base[(k / 2) & 1]);
          run_sum[(k / 2) & 1] += s[k];
        }
#pragma unroll
        for (int k = 0; k < 16; ++k) pa[k] = T::pack(s[2 * k], s[2 * k + 1]);
      };
      auto rescale = [&](const float (&factor)[2]) {
        if (factor[0] != 1.f || factor[1] != 1.f) {  // the running max rarely moves after the first tiles
#pragma unroll
          for (int k = 0; k < kHalf / 2; ++k) o[k] *= factor[(k / 2) & 1];
        }
      };
      // P to shared memory for the other warpgroup; packed[k / 2] holds columns k, k + 1 of row h(k).
      // (No generic lambda here: NVRTC 13.0 compiles those as host code unless -default-device.)
      auto store_p = [&](u32 dst, const u32 (&packed)[16]) {
#pragma unroll
        for (int k = 0; k < 32; k += 2) {
          const int row = r_lo + 8 * ((k / 2) & 1), col = (k / 4) * 8 + cq;
          asm volatile("st.shared.b32 [%0], %1;" ::"r"(dst + Rows::offset(row, col / 8) + (col % 8) * 2),
                       "r"(packed[k / 2]));
        }
        fence_async_shared();
      };
      // O[:, this warpgroup's half] += P V, k-step kk: P columns (tokens) 16kk.., V rows 16kk..;
      // P from registers (pa) or from shared memory at p_smem; V is stage s's blocks from `first`.
      auto product_from_registers = [&](int s, int first) {
        const u64 v_desc = wgmma_desc(stage_at(s) + first * kBlock, kBlock, 1024);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const u32(&a)[4] = *reinterpret_cast<const u32(*)[4]>(pa + 4 * kk);
          Wgmma<kHalf>::template run<T, 1>(o, a, v_desc + ((kk * 16 * 128) >> 4), 1);
        }
        wgmma_commit();
      };
      auto product_from_shared = [&](u32 p_smem, int s, int first) {
        const u64 p_desc = wgmma_desc(p_smem, 16, 1024), v_desc = wgmma_desc(stage_at(s) + first * kBlock, kBlock, 1024);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          Wgmma<kHalf>::template run<T, 1>(o, p_desc + ((kk * 32) >> 4), v_desc + ((kk * 16 * 128) >> 4), 1);
        wgmma_commit();
      };
      // Group g of stage s, its last reader in this pair past its MMA wait:
      // each thread releases it to the producer, or, without one, once every
      // thread of this warpgroup is there its issuing warp refills it with
      // the next pair's tile.
      const bool next = i + 2 < t1;
      auto release = [&](int s, int g, int y_of_my_page) {
        if constexpr (kProducer) {
          TIMELINE_STAMP(pairs, wg, s == wg ? 15 : 16);  // this warp is done with the group
          mbar_arrive(empty_bar(s, g));
        } else {
          named_sync(BAR_OWN + wg, kGroupThreads);
          TIMELINE_STAMP(pairs, wg, s == wg ? 15 : 16);  // every warp of this warpgroup is done with the group
          if (issuer && next) fill_group(s, g, y_of_my_page);
          TIMELINE_STAMP(pairs, wg, s == wg ? 13 : 14);  // the copies are issued (lane 0's at least)
        }
      };

      if (wg == 0) {
        if (kRopeC) release(0, 2, y_next[0]);  // group C: read by the scores only
        // P0 = exp(S0 - m0); O_L = O_L * scale0 + P0 V0_L.
#pragma unroll
        for (int h = 0; h < 2; ++h) base[h] = offset_of(m0[h]), run_sum[h] *= scale0[h];
        exponentiate();
        rescale(scale0);
        wgmma_fence();
        product_from_registers(0, 0);
        TIMELINE_STAMP(pairs, 0, 5);

        // m1 from warpgroup 1; P0 * e^(m0 - m1) to shared memory for its V0_R product.
        mbar_wait(xbar(X_M1), phase);
        TIMELINE_STAMP(pairs, 0, 6);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          m1[h] = sM[Tile::BM + r_lo + 8 * h];
          scale1[h] = fast_exp2(m0[h] * p.scale_log2 - offset_of(m1[h]));
          run_sum[h] *= scale1[h];
        }
        u32 p0_scaled[16];
#pragma unroll
        for (int k = 0; k < 32; k += 2)
          p0_scaled[k / 2] = T::pack(s[k] * scale1[(k / 2) & 1], s[k + 1] * scale1[(k / 2) & 1]);
        store_p(p_at(0), p0_scaled);
        mbar_arrive(xbar(X_P0));
        TIMELINE_STAMP(pairs, 0, 7);

        wgmma_wait<0>();  // P0 V0_L: group A of stage 0 is free
        fence_registers(o);
        fence_registers(pa);
        TIMELINE_STAMP(pairs, 0, 8);
        release(0, 0, y_next[0]);
        rescale(scale1);
        // O_L += P1 V1_L
        mbar_wait(xbar(X_P1), phase);
        mbar_wait(full_bar(1, 1), phase);  // (already complete: warpgroup 1 scored K1)
        TIMELINE_STAMP(pairs, 0, 9);
        wgmma_fence();
        product_from_shared(p_at(1), 1, 0);
        wgmma_wait<0>();  // group B of stage 1 is free
        fence_registers(o);
        TIMELINE_STAMP(pairs, 0, 10);
        release(1, 1, y_next[1]);
      } else {
        // P1 = exp(S1 - m1); O_R = O_R * scale0 * scale1 + P1 V1_R + (P0 scale1) V0_R.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          scale1[h] = fast_exp2(m0[h] * p.scale_log2 - offset_of(m1[h]));
          scale0[h] *= scale1[h];
          run_sum[h] *= scale0[h];
          base[h] = offset_of(m1[h]);
        }
        exponentiate();
        store_p(p_at(1), pa);
        mbar_arrive(xbar(X_P1));
        rescale(scale0);
        TIMELINE_STAMP(pairs, 1, 5);
        // P0 V0_R first: stage 0's group B, which warpgroup 0's next scores
        // need ~500 cycles in, is free one product sooner; stage 1's group A
        // (P1 V1_R's) is needed only after warpgroup 0's next S0.
        mbar_wait(xbar(X_P0), phase);
        mbar_wait(full_bar(0, 1), phase);  // (already complete: warpgroup 0 scored K0)
        TIMELINE_STAMP(pairs, 1, 6);
        wgmma_fence();
        product_from_shared(p_at(0), 0, kHB);
        product_from_registers(1, kHB);
        TIMELINE_STAMP(pairs, 1, 7);
        wgmma_wait<1>();  // P0 V0_R: group B of stage 0 is free
        TIMELINE_STAMP(pairs, 1, 10);
        release(0, 1, y_next[0]);
        wgmma_wait<0>();  // P1 V1_R: group A of stage 1 is free
        fence_registers(o);
        fence_registers(pa);
        TIMELINE_STAMP(pairs, 1, 8);
        release(1, 0, y_next[1]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) run_max[h] = m1[h];
      TIMELINE_STAMP(pairs, wg, 11);
      ++pairs;
    }

    // Row sums: over the quad, then over both warpgroups.
    const u32 request_phase = requests++ & 1;
    float* sSum = sSums + request_phase * 2 * Tile::BM;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      run_sum[h] += __shfl_xor_sync(0xffffffffu, run_sum[h], 1);
      run_sum[h] += __shfl_xor_sync(0xffffffffu, run_sum[h], 2);
      if (lane % 4 == 0) sSum[wg * Tile::BM + r_lo + 8 * h] = run_sum[h];
    }
    // Every thread arrives (releasing its stores) and waits for all 256, as
    // the in-loop exchanges do: racecheck is clean on those, and reported the
    // CTA barrier that stood here (L = 128, some runs).
    mbar_arrive(xbar(X_SUMS));
    mbar_wait(xbar(X_SUMS), request_phase);
    const u64 keep = evict_last_policy();  // partials: read back by the combine
    // The 16-bit build: final rows and partials alike leave normalised in the
    // output's 16-bit type (the combine reads partials as
    // combine_partials<T, true>).
    u16* const dst = static_cast<u16*>(seg.final() ? p.out : static_cast<void*>(p.part_out));
    // Quads' words transposed by shuffles (which every lane of the warp
    // joins: a row past p.rows only skips its stores), so that a thread holds
    // 8 consecutive values, one 16-byte store where `dst` is 16-byte aligned
    // (`out` may be only 4-byte aligned; the partials always are).
    // The FP8 build stores a pair of values at a time and keeps float32
    // partials (combine_partials<T, false>), below: its converter code
    // follows this epilogue in the binary, and both changes to its epilogue
    // (the quad form, 16-bit partials) made config F 5-9% slower with the
    // loops' code unchanged (docs/NOTES.md, session 39).
    const bool wide_out = (reinterpret_cast<size_t>(dst) & 15) == 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r_lo + 8 * h;
      const bool in_rows = row0 + r < p.rows;
      const float total = sSum[r] + sSum[Tile::BM + r];
      const float inv = row_seen(total) ? 1.f / total : 0.f;
      const size_t out_row = seg.out_row(p.rows, min(row0 + r, p.rows - 1));
      const float lse = row_seen(total) ? run_max[h] * p.scale + logf(total) : CUMLA_NEG_INF;
      if (in_rows && wg == 0 && lane % 4 == 0) {
        if (seg.final()) p.lse[out_row] = lse;
        else st_global_keep(p.part_lse + out_row, lse, keep);
      }
      if constexpr (!kFp8) {
        u32* const row_at = reinterpret_cast<u32*>(dst + out_row * DV + wg * kHalf);
#pragma unroll
        for (int j0 = 0; j0 < kHalf / 8; j0 += 4) {
          u32 w[4];  // quad lane q: columns 8 (j0 + i) + 2q, + 1; after: the 8 columns of j0 + q
#pragma unroll
          for (int i = 0; i < 4; ++i) w[i] = T::pack(o[4 * (j0 + i) + 2 * h] * inv, o[4 * (j0 + i) + 2 * h + 1] * inv);
          transpose_quad(w, lane % 4);
          u32* at = row_at + 4 * (j0 + lane % 4);
          if (in_rows && wide_out) {
            if (seg.final()) *reinterpret_cast<uint4*>(at) = make_uint4(w[0], w[1], w[2], w[3]);
            else st_global_keep(at, make_uint4(w[0], w[1], w[2], w[3]), keep);
          } else if (in_rows) {
#pragma unroll
            for (int i = 0; i < 4; ++i) at[i] = w[i];
          }
        }
      } else if (in_rows) {
#pragma unroll
        for (int j = 0; j < kHalf / 8; ++j) {
          const int k = 4 * j + 2 * h;  // registers 4j + 2h, 4j + 2h + 1 hold row h
          const int col = wg * kHalf + 8 * j + cq;
          const float v0 = o[k] * inv, v1 = o[k + 1] * inv;
          if (seg.final())
            *reinterpret_cast<u32*>(static_cast<u16*>(p.out) + out_row * DV + col) = T::pack(v0, v1);
          else
            st_global_keep(p.part_out + out_row * DV + col, v0, v1, keep);
        }
      }
    }
  }
  TIMELINE_CTA(1);
}
