// Split-KV scheduling and the combine step.
//
// make_schedule balances the cache tiles of all requests over a fixed number
// of parts (CTA columns) on the device, from the device lengths, so planning
// needs no host synchronisation and can be captured in a CUDA graph.
// combine_partials merges the pieces of split requests by their LSE and
// writes the empty result for requests with no tile.
#include "common.cuh"
#include "params.cuh"

// Inclusive scan of f(b), b < batch, into out[b + 1] (out[0] = 0), by one block.
template <class F>
__device__ int block_scan(int batch, F f, int* out, int* scan, int* carry) {
  if (threadIdx.x == 0) *carry = 0;
  __syncthreads();
  for (int start = 0; start < batch; start += blockDim.x) {
    const int b = start + threadIdx.x;
    scan[threadIdx.x] = b < batch ? f(b) : 0;
    __syncthreads();
    for (int off = 1; off < blockDim.x; off *= 2) {
      const int v = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
      __syncthreads();
      scan[threadIdx.x] += v;
      __syncthreads();
    }
    if (b < batch) out[b + 1] = *carry + scan[threadIdx.x];
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) *carry += scan[threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = 0;
  const int sum = *carry;
  __syncthreads();  // every thread holds the sum before a following scan resets *carry
  return sum;
}

// One block of 1024 threads. tiles_b = ceil(len_b / tile). Two candidates:
// whole requests, k = ceil(batch / num_parts) consecutive ones per part (no
// combine step), or an even split of the cost. The whole-request schedule
// wins unless its longest part exceeds the split quota by more than 15%: the
// combine step and the extra partial traffic cost about that much.
//
// The split counts each request as kSegmentCost fixed units followed by its
// tiles rounded up to whole pairs and cuts that line into equal parts. The
// fixed units stand for what a segment costs beyond its tiles: the query
// load, the first copies' latency and the output or partial write. A part
// that starts several short requests then gets fewer tiles than one inside a
// long request. Request b's tiles occupy the cost range
// [prefix[b] + kSegmentCost, prefix[b + 1]).
// Measured on the H200 (B=64 uneven batches, same call): 2 -> 1.18x / 1.17x of
// the even batch, 3 -> 1.12x / 1.14x, 4 -> 1.12x / 1.13x; D unchanged. The
// Hopper kernel's CTA times fit 1.59 pairs a segment (bench/part_costs.py).
constexpr int kSegmentCost = 3;  // tiles' worth
// The Hopper kernel walks a segment's tiles in pairs from its first one, a
// lone last tile costing a pair: cuts inside a request fall on even tiles
// (a cost position rounds down to one), so only a request's own odd end
// pays the half-empty pair, and the line charges it.
__device__ __forceinline__ int whole_pairs(int tiles) { return (tiles + 1) & ~1; }
// A warp stages this many pieces' 16-byte lanes in shared memory at a time
// (kStage * 512 bytes a warp, 32 KB a block of 8): the pieces in flight sit
// there, not in registers, so a merge of up to kStage pieces waits one
// memory round trip (its LSE loads go out with the copies) and five blocks
// fit an SM where register-held pieces allowed four.
constexpr int kStage = 8;
// Requests of more than kStage pieces take the combine's merge more than one
// stage: their merges are the longest, and their blocks go first in
// combine_order, so that none starts in the combine's last wave (the one-10x
// batch's long request is its last).
extern "C" __global__ void __launch_bounds__(1024) make_schedule(
    const int* seqlens, int batch, int capacity, int tile, int num_parts, int* work,
    int* first_part, int* piece_base, int* prefix /* (batch + 1) */, int* combine_order /* (batch) */) {
  __shared__ int scan[1024];
  __shared__ int carry, longest;
  auto tiles_of = [&](int b) { return (request_length(seqlens, b, capacity) + tile - 1) / tile; };
  const int total = block_scan(batch, tiles_of, prefix, scan, &carry);
  const int quota = max(1, (total + num_parts - 1) / num_parts);
  const int per_part = max(1, (batch + num_parts - 1) / num_parts);
  if (threadIdx.x == 0) longest = 0;
  __syncthreads();
  for (int part = threadIdx.x; part * per_part < batch; part += blockDim.x)
    atomicMax(&longest, prefix[min(batch, (part + 1) * per_part)] - prefix[part * per_part]);
  __syncthreads();
  const bool whole = 20 * longest <= 23 * quota;

  if (whole) {
    block_scan(batch, [&](int b) { return tiles_of(b) > 0 ? 1 : 0; }, piece_base, scan, &carry);
    for (int b = threadIdx.x; b < batch; b += blockDim.x) first_part[b] = b / per_part;
    for (int part = threadIdx.x; part < num_parts; part += blockDim.x) {
      int* w = work + 4 * part;
      const int b0 = part * per_part, b1 = min(batch, b0 + per_part) - 1;
      if (b0 >= batch) { w[0] = batch; w[1] = 0; w[2] = -1; w[3] = 0; continue; }
      w[0] = b0; w[1] = 0; w[2] = b1; w[3] = prefix[b1 + 1] - prefix[b1];
    }
    for (int b = threadIdx.x; b < batch; b += blockDim.x) combine_order[b] = b;  // no merges
    return;
  }
  // From here prefix[] holds cost positions; empty requests cost nothing.
  const int cost = block_scan(batch, [&](int b) {
    const int tiles = tiles_of(b);
    return tiles > 0 ? whole_pairs(tiles) + kSegmentCost : 0;
  }, prefix, scan, &carry);
  // A quota of two or more positions leaves every part that reaches past a
  // request's position lo + 1 at least one of its tiles: pieces are the parts
  // holding positions lo + 1 .. hi - 1.
  const int cost_quota = max(2, (cost + num_parts - 1) / num_parts);
  // The tile boundary of cost position x in request b's range.
  auto cut = [&](int b, int x) { return min(tiles_of(b), max(0, x - prefix[b] - kSegmentCost) & ~1); };
  for (int b = threadIdx.x; b < batch; b += blockDim.x)
    first_part[b] = prefix[b + 1] > prefix[b] ? (prefix[b] + kSegmentCost + 1) / cost_quota : 0;
  block_scan(batch, [&](int b) {
    const int lo = prefix[b] + kSegmentCost, hi = prefix[b + 1];
    return hi > lo ? (hi - 1) / cost_quota - (lo + 1) / cost_quota + 1 : 0;
  }, piece_base, scan, &carry);
  for (int part = threadIdx.x; part < num_parts; part += blockDim.x) {
    const int begin = part * cost_quota, end = min(cost, begin + cost_quota);
    int* w = work + 4 * part;
    if (begin >= end) { w[0] = batch; w[1] = 0; w[2] = -1; w[3] = 0; continue; }
    auto owner = [&](int x) {  // the request holding cost position x
      int lo = 0, hi = batch - 1;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (prefix[mid + 1] > x) hi = mid; else lo = mid + 1;
      }
      return lo;
    };
    const int b0 = owner(begin);
    int b1 = owner(end - 1), tile_end = cut(b1, end);
    if (tile_end <= 0) {  // the part ends before b1's first pair: its last tiles are b1 - 1's
      --b1;
      tile_end = b1 >= 0 ? tiles_of(b1) : 0;
    }
    w[0] = b0; w[1] = cut(b0, begin);
    w[2] = b1; w[3] = tile_end;
  }
  // The combine's request order: the requests of several stages first, each
  // group in index order (prefix, read above, becomes the count of such
  // requests before b).
  __syncthreads();
  auto several = [&](int b) { return piece_base[b + 1] - piece_base[b] > kStage ? 1 : 0; };
  const int first_others = block_scan(batch, several, prefix, scan, &carry);
  for (int b = threadIdx.x; b < batch; b += blockDim.x)
    combine_order[several(b) ? prefix[b] : first_others + b - prefix[b]] = b;
}

constexpr int kMergeBlocksPerSM = 5;  // __launch_bounds__ of the merging kernels: <= 48 registers
using StageSlots = uint4[kStage][32];  // one warp's: [piece in the stage][lane]

// One warp merges `pieces` partial results of one query row by their LSE:
// piece k has log-sum-exp lse_of(k) and values rows[k * row_stride + [0, dv)] of type P
// (float, or the output's 16-bit storage). This lane merges 16 bytes of each
// piece's row, kPerLane = 16 / sizeof(P) columns from c, and writes them to
// `out`, lane 0 of the warp with c = 0 the merged LSE to *lse_out. Lane l
// reads the LSEs of pieces l, l + 32, ...; the weights exp(lse_k - max) /
// sum of 32 pieces at a time are each computed once and broadcast.
template <class T, class P, class LseOf>
__device__ __forceinline__ void merge_row(int pieces, LseOf lse_of, const P* rows, size_t row_stride, int c, int dv,
                                          typename T::storage* out, float* lse_out, StageSlots& stage) {
  constexpr int kPerLane = 16 / sizeof(P);
  using Out = typename T::storage;
  const int lane = threadIdx.x % 32;
  const P* first_row = rows + c;
  // Pieces k0 .. k0 + kStage - 1 of this lane into its stage slots: an
  // async copy where its 16 bytes are whole and aligned, else loaded and
  // stored here (zeros past dv). Only slots of pieces that exist are read.
  auto stage_pieces = [&](int k0) {
#pragma unroll 1
    for (int j = 0; j < kStage; ++j) {
      if (k0 + j >= pieces) break;
      const P* at = first_row + (k0 + j) * row_stride;
      const u32 slot = static_cast<u32>(__cvta_generic_to_shared(&stage[j][lane]));
      if (c + kPerLane <= dv && reinterpret_cast<size_t>(at) % 16 == 0) {
        cp_async16(slot, at, true);
        continue;
      }
      u32 words[4] = {0, 0, 0, 0};  // +0 in every element type
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) {
        if (c + e >= dv) continue;
        if constexpr (sizeof(P) == sizeof(u32)) words[e] = __float_as_uint(at[e]);
        else words[e / 2] |= u32(at[e]) << (16 * (e % 2));
      }
      stage[j][lane] = make_uint4(words[0], words[1], words[2], words[3]);
    }
    cp_async_commit();
  };
  auto value = [](const uint4& raw, int e) {
    const u32 words[4] = {raw.x, raw.y, raw.z, raw.w};
    const u32 word = words[e * 4 / kPerLane];
    if constexpr (sizeof(P) == sizeof(u32)) return __uint_as_float(word);
    else return T::to_float(static_cast<u16>(word >> (16 * (e % 2))));
  };
  stage_pieces(0);  // in flight with the LSE loads below
  const float first_lse = lane < pieces ? lse_of(lane) : CUMLA_NEG_INF;
  float peak = first_lse;
  for (int k = lane + 32; k < pieces; k += 32) peak = fmaxf(peak, lse_of(k));
  for (int off = 16; off > 0; off /= 2) peak = fmaxf(peak, __shfl_xor_sync(0xffffffffu, peak, off));
  const float safe = peak == CUMLA_NEG_INF ? 0.f : peak;
  float total = expf(first_lse - safe);  // 0 for no piece
  for (int k = lane + 32; k < pieces; k += 32) total += expf(lse_of(k) - safe);
  for (int off = 16; off > 0; off /= 2) total += __shfl_xor_sync(0xffffffffu, total, off);
  const float inv = row_seen(total) ? 1.f / total : 0.f;

  float acc[kPerLane] = {};
  float mine = expf(first_lse - safe) * inv;  // piece lane's weight, 0 past the pieces
  for (int k0 = 0; k0 < pieces; k0 += kStage) {
    if (k0 > 0 && k0 % 32 == 0) {
      const float lse_k = k0 + lane < pieces ? lse_of(k0 + lane) : CUMLA_NEG_INF;
      mine = expf(lse_k - safe) * inv;
    }
    cp_async_wait<0>();
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < kStage; ++j) {
      const float w = __shfl_sync(0xffffffffu, mine, (k0 + j) % 32);
      if (k0 + j >= pieces) break;
      const uint4 raw = stage[j][lane];
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[e] += w * value(raw, e);
    }
    if (k0 + kStage < pieces) stage_pieces(k0 + kStage);  // this lane's slots are read: refill them
  }
  // The merged values of this lane's columns leave in one store where `out`
  // allows it: a warp's store then fills whole 32-byte sectors (stores that
  // each wrote a fraction of every sector ran at a fraction of the rate).
  struct alignas(kPerLane * sizeof(Out)) Lane {
    Out v[kPerLane];
  };
  if (c + kPerLane <= dv && reinterpret_cast<size_t>(out + c) % sizeof(Lane) == 0) {
    Lane merged;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) merged.v[e] = T::from_float(acc[e]);
    *reinterpret_cast<Lane*>(out + c) = merged;
  } else {
#pragma unroll
    for (int e = 0; e < kPerLane; ++e)
      if (c + e < dv) out[c + e] = T::from_float(acc[e]);
  }
  if (c == 0) *lse_out = row_seen(total) ? safe + logf(total) : CUMLA_NEG_INF;
}

// The partials' element: float, or with kNarrow the output's 16-bit storage
// (the Hopper kernel's: half the bytes written and read back).
template <class T, bool kNarrow> struct PartialOf { using type = float; };
template <class T> struct PartialOf<T, true> { using type = typename T::storage; };

#ifdef CUMLA_TIMELINE
// Profiling build (bench/part_costs.py): per block (blockIdx.y * gridDim.x +
// blockIdx.x) %globaltimer (ns) at its start, after its wait for the
// attention kernel (0 if it left before it) and when its last warp ended:
// whether the combine's time after the attention kernel is its launch, its
// wait or its merges.
constexpr int kCombineStampBlocks = 8192;
__device__ long long cumla_combine_span[kCombineStampBlocks][3];
#define COMBINE_STAMP(field)                                                             \
  do {                                                                                   \
    const int block_ = blockIdx.y * gridDim.x + blockIdx.x;                              \
    if (threadIdx.x == 0 && block_ < kCombineStampBlocks)                                \
      cumla_combine_span[block_][field] = global_ns();                                   \
  } while (0)
#define COMBINE_STAMP_END()                                                            \
  do {                                                                                 \
    const int block_ = blockIdx.y * gridDim.x + blockIdx.x;                            \
    if (threadIdx.x % 32 == 0 && block_ < kCombineStampBlocks)                         \
      atomicMax(reinterpret_cast<unsigned long long*>(&cumla_combine_span[block_][2]), \
                static_cast<unsigned long long>(global_ns()));                         \
  } while (0)
#else
#define COMBINE_STAMP(field) \
  do {                       \
  } while (0)
#define COMBINE_STAMP_END() \
  do {                      \
  } while (0)
#endif

// Grid (ceil(rows / 8) * batch, ceil(dv / (32 * per lane))), 256 threads: one
// warp per query row and 32 lanes of 16 bytes of partials (4 float or 8
// 16-bit columns each); a request's row blocks are adjacent in x, which
// holds any batch (y and z stop at 65535). Request order[i] takes the i-th
// run of row blocks (make_schedule's combine_order: blocks start roughly in
// x order, and the longest merges go first).
template <class T, bool kNarrow>
__global__ void __launch_bounds__(256, kMergeBlocksPerSM) combine_partials(const __grid_constant__ AttnParams p,
                                                                           int dv, const int* __restrict__ order) {
  using P = typename PartialOf<T, kNarrow>::type;
  constexpr int kPerLane = 16 / sizeof(P), kWarpColumns = 32 * kPerLane;
  COMBINE_STAMP(0);
  const int row_blocks = (p.rows + 7) / 8;
  const int b = order[blockIdx.x / row_blocks], r = (blockIdx.x % row_blocks) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32, c = blockIdx.y * kWarpColumns + kPerLane * lane;
  // piece_base comes from make_schedule, done before the attention kernel
  // started: readable before the wait below.
  const int pieces = p.sched.piece_base[b + 1] - p.sched.piece_base[b];
  const bool idle = pieces == 1 || r >= p.rows;  // single pieces are written by the attention kernel
  // Launched as the attention kernel's dependent (cumla/_pdl.py), this grid
  // may start while that kernel runs: wait for its partials before reading
  // them. Idle warps leave at once, except block 0's, which wait too so that
  // this grid never completes before the attention kernel does.
  if (idle && (blockIdx.x | blockIdx.y) != 0) {
    COMBINE_STAMP_END();
    return;
  }
  wait_for_previous_grid();
  COMBINE_STAMP(1);
  if (idle) {
    COMBINE_STAMP_END();
    return;
  }
  const size_t first = static_cast<size_t>(p.sched.piece_base[b]);
  const float* lse = p.part_lse + first * p.rows + r;  // piece k at lse[k * rows]
  const P* part = reinterpret_cast<const P*>(p.part_out) + (first * p.rows + r) * dv;  // piece k at part[k * rows * dv]
  const size_t row = static_cast<size_t>(b) * p.rows + r;
  __shared__ StageSlots stages[8];
  merge_row<T, P>(
      pieces, [&](int k) { return lse[static_cast<size_t>(k) * p.rows]; },
      part, static_cast<size_t>(p.rows) * dv, c, dv,
      static_cast<typename T::storage*>(p.out) + row * dv, p.lse + row, stages[threadIdx.x / 32]);
  // The partials are scratch, read once: drop their L2 lines (the Hopper
  // kernel keeps them with evict_last priority) without writing them back,
  // once the merge is written (off its round trips). Lanes 0-3 each own one
  // 128-byte line of this warp's 512 bytes, where rows are whole lines so
  // that no line holds another row.
  constexpr int kLine = 128 / sizeof(P);
  const int line = blockIdx.y * kWarpColumns + kLine * lane;
  __syncwarp();
  if (dv % kLine == 0 && lane < 4 && line + kLine <= dv) {
    for (int k = 0; k < pieces; ++k)
      asm volatile("discard.global.L2 [%0], 128;" ::"l"(part + static_cast<size_t>(k) * p.rows * dv + line) : "memory");
  }
  COMBINE_STAMP_END();
}

// The merge of context-parallel ranks: gathered[k][r] = [o (dv) | lse] in
// float32 is rank k's partial result for query row r, of `world` ranks.
// Grid (ceil(rows / 8), ceil(dv / 128)), 256 threads, as combine_partials.
template <class T>
__global__ void __launch_bounds__(256, kMergeBlocksPerSM) merge_ranks(const float* __restrict__ gathered, int world,
                                                                      int rows, int dv,
                                                                      typename T::storage* __restrict__ out,
                                                                      float* __restrict__ lse) {
  __shared__ StageSlots stages[8];
  const int r = blockIdx.x * 8 + threadIdx.x / 32;
  const int c = blockIdx.y * 128 + 4 * (threadIdx.x % 32);
  if (r >= rows) return;
  const size_t rank_stride = static_cast<size_t>(rows) * (dv + 1);
  const float* mine = gathered + static_cast<size_t>(r) * (dv + 1);
  merge_row<T, float>(
      world, [&](int k) { return mine[k * rank_stride + dv]; }, mine, rank_stride, c, dv,
      out + static_cast<size_t>(r) * dv, lse + r, stages[threadIdx.x / 32]);
}
