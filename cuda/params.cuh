// Kernel parameter blocks, passed by value. Their field order is mirrored by
// the NumPy structured dtypes in cumla/_launch.py: change both together.
#pragma once

// Split-KV schedule (built by cumla.plan). Part p (one CTA column) covers the
// tiles from (work[4p], work[4p+1]) up to, not including, (work[4p+2],
// work[4p+3]) in (request, tile) order. Request b's pieces are the parts
// first_part[b] .. first_part[b] + n, n = piece_base[b+1] - piece_base[b];
// piece k of b keeps its partial result in slot piece_base[b] + k. Every
// piece holds at least one tile and starts at an even one (make_schedule).
// Tokens per schedule tile: the unit of the work ranges (kernels with smaller
// tiles split each one). Defined by cumla/_kernels.options from SCHEDULE_TILE,
// the tile the host gives make_schedule, so the two cannot disagree.
#ifndef CUMLA_SCHEDULE_TILE
#error "CUMLA_SCHEDULE_TILE is undefined: compile with cumla._kernels.options"
#endif
enum : int { kScheduleTile = CUMLA_SCHEDULE_TILE };

struct Schedule {
  const int* work;        // (num_parts, 4)
  const int* first_part;  // (B,)
  const int* piece_base;  // (B + 1,)
};

struct AttnParams {
  const void* q;            // (B, M, D) absorbed queries, M = q_len * heads
  const void* cache;        // (B, capacity, D) or (num_blocks, block_size, D)
  const int* seqlens;       // (B,) or null: every request holds `capacity`
  const int* block_table;   // (B, max_blocks) or null: contiguous cache
  void* out;                // (B, M, DV) in the input type
  float* lse;               // (B, M)
  float* part_out;          // (slots, M, DV) normalised partial outputs: float32, the 16-bit Hopper kernel's
                            // in the output's 16-bit type (combine_partials<T, true>)
  float* part_lse;          // (slots, M)
  Schedule sched;
  int batch, rows, q_len, heads;
  int capacity, block_size, max_blocks, num_blocks;
  float scale;              // softmax scale
  float scale_log2;         // scale * log2(e)
  int causal;
  int pad_;
  const void* w;            // decompressed only: w_kv (L, H*(DN+DV))
};
static_assert(sizeof(AttnParams) == 144, "AttnParams is mirrored by ATTN_PARAMS in cumla/_launch.py");

// Sanitised length of request b: never outside [0, capacity].
__device__ __forceinline__ int request_length(const int* seqlens, int b, int capacity) {
  if (seqlens == nullptr) return capacity;
  const int n = seqlens[b];
  return n < 0 ? 0 : (n > capacity ? capacity : n);
}

// One request's share of a part's work: tiles [t0, t1) of request b (n
// tokens), written to the final output when the request has a single piece,
// else to partial slot `slot`.
struct Segment {
  int b, n, t0, t1, pieces;
  size_t slot;
  __device__ __forceinline__ bool final() const { return pieces == 1; }
  // Row r of this request in the final output or in the partial slot.
  __device__ __forceinline__ size_t out_row(int rows, int r) const {
    return final() ? static_cast<size_t>(b) * rows + r : slot * rows + r;
  }
};

// The requests part `part` works on, in order (see Schedule).
struct PartWork {
  int part, req_begin, tile_begin, req_end, tile_end;
  __device__ __forceinline__ PartWork(const Schedule& s, int part_)
      : part(part_), req_begin(s.work[4 * part_]), tile_begin(s.work[4 * part_ + 1]),
        req_end(s.work[4 * part_ + 2]), tile_end(s.work[4 * part_ + 3]) {}
  __device__ __forceinline__ int first() const { return req_begin < 0 ? 0 : req_begin; }
  __device__ __forceinline__ int last(int batch) const { return req_end < batch ? req_end : batch - 1; }
  // Segment of request b in tiles of `tile` tokens; false when the schedule
  // gave this part no piece of b. A range the current lengths leave empty is
  // still a segment: it writes the empty result.
  template <class P>
  __device__ __forceinline__ bool segment(const P& p, int b, int tile, Segment& seg) const {
    const int pieces = p.sched.piece_base[b + 1] - p.sched.piece_base[b];
    const int piece = part - p.sched.first_part[b];
    if (piece < 0 || piece >= pieces) return false;
    seg.b = b;
    seg.pieces = pieces;
    seg.slot = static_cast<size_t>(p.sched.piece_base[b]) + piece;
    seg.n = request_length(p.seqlens, b, p.capacity);
    const int tiles = (seg.n + tile - 1) / tile;
    seg.t0 = b == req_begin ? tile_begin : 0;
    seg.t1 = b == req_end ? (tile_end < tiles ? tile_end : tiles) : tiles;
    return true;
  }
};

// Lets the combine launched after this kernel as its dependent (cumla/_pdl.py)
// be scheduled now, unless a request of this part is split into more than
// kEarlyCombinePieces pieces; the combine launches once every attention CTA
// has let it or exited. Scheduled early, its blocks wait on the SMs that free
// up first, four to an SM, and merge there once this grid is done: where the
// merges are heavy that crowds them (config D, ~16 pieces a request and 256
// blocks: 10 µs instead of 6 on the H200), where they are light it takes the
// combine's launch off the end of the call (random-length batch: -2 µs; eight
// requests of 9 pieces pay ~0.5 µs of crowding).
constexpr int kEarlyCombinePieces = 12;  // measured with merges that loaded 6 pieces at a time
__device__ __forceinline__ void allow_combine_launch(const AttnParams& p, const PartWork& work) {
  for (int b = work.first(); b <= work.last(p.batch); ++b)
    if (p.sched.piece_base[b + 1] - p.sched.piece_base[b] > kEarlyCombinePieces) return;
  allow_dependent_launch();
}

// Visible-token bound of query row `row` (= i * heads + h): DESIGN's causal rule.
__device__ __forceinline__ int visible_limit(int n, int row, int heads, int q_len, int causal) {
  return causal ? n - q_len + row / heads + 1 : n;
}

// Block-table column of token t (t >= 0; unsigned: half the division).
__device__ __forceinline__ unsigned block_column(const AttnParams& p, int t) {
  return static_cast<unsigned>(t) / static_cast<unsigned>(p.block_size);
}

// Row of token t of request b in a contiguous cache, or in block `blk` (the
// block-table entry of t's column) of a paged one; null for an out-of-range id.
template <class S>
__device__ __forceinline__ const S* cache_row_in(const AttnParams& p, const S* cache, int b, int t, int blk, int width) {
  size_t index;
  if (p.block_table != nullptr) {
    if (blk < 0 || blk >= p.num_blocks) return nullptr;
    index = static_cast<size_t>(blk) * p.block_size + (t - static_cast<int>(block_column(p, t)) * p.block_size);
  } else {
    index = static_cast<size_t>(b) * p.capacity + t;
  }
  return cache + index * width;
}

// Row of token t of request b (n tokens) in a contiguous or paged cache of
// `width`-element rows; null past n or for an out-of-range block id.
template <class S>
__device__ __forceinline__ const S* cache_row(const AttnParams& p, const S* cache, int b, int n, int t, int width) {
  if (t >= n) return nullptr;
  const int blk = p.block_table != nullptr ? p.block_table[static_cast<size_t>(b) * p.max_blocks + block_column(p, t)] : 0;
  return cache_row_in(p, cache, b, t, blk, width);
}

// Whole tiles: BN consecutive rows of one address (a contiguous cache, or
// pages of BN tokens or more), copied without per-row lookups. Thread 0
// looks up the tile copied next a tile ahead, in two halves around a tile's
// MMAs: ahead_block issues the block-table load (its latency hides under
// them), ahead_row turns it into the row published for the copy.
template <int BN>
__device__ __forceinline__ int ahead_block(const AttnParams& p, int b, int t, bool whole) {
  int blk = 0;  // a contiguous cache's
  if (whole && p.block_table != nullptr)
    blk = ld_global_nc(p.block_table + static_cast<size_t>(b) * p.max_blocks + block_column(p, t * BN));
  return blk;
}
// Tile t's first row as an integer (0 when the tile is not whole).
template <int BN, class S>
__device__ __forceinline__ unsigned long long ahead_row(const AttnParams& p, const S* cache, int b, int t, bool whole,
                                                         int blk, int width) {
  return reinterpret_cast<unsigned long long>(whole ? cache_row_in(p, cache, b, t * BN, blk, width) : nullptr);
}
