// Device helpers shared by cumla's kernels: 16-bit element types, tensor-core
// fragments (mma.sync m16n8k16, ldmatrix), cp.async copies, swizzled tiles.
// Self-contained (no CUDA headers) so NVRTC needs no include paths.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define CUMLA_NEG_INF (-__int_as_float(0x7f800000))

// Online softmax: how far (log2 units) a score may pass a row's exponent base
// before the base moves and the row's accumulators are rescaled. P then stays
// below 2^8, exact to the 16-bit P's relative precision.
constexpr float kRescaleSlack = 8.f;

// ---------------------------------------------------------------------------
// Element types: tags with conversions and the matching mma instruction.
struct bf16_t {
  using storage = u16;
  static constexpr bool kBf16 = true;
  static __device__ __forceinline__ float to_float(u16 x) { return __uint_as_float(u32(x) << 16); }
  static __device__ __forceinline__ u16 from_float(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
  }
  // Two floats into one register, `lo` in the low half.
  static __device__ __forceinline__ u32 pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

struct f16_t {
  using storage = u16;
  static constexpr bool kBf16 = false;
  static __device__ __forceinline__ float to_float(u16 x) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(x));
    return r;
  }
  static __device__ __forceinline__ u16 from_float(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
  }
  static __device__ __forceinline__ u32 pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// fp32 elements (CUDA-core kernels only): same interface over 32-bit storage.
struct f32_t {
  using storage = float;
  static __device__ __forceinline__ float to_float(float x) { return x; }
  static __device__ __forceinline__ float from_float(float x) { return x; }
};

// ---------------------------------------------------------------------------
// Shared-memory fragments.
__device__ __forceinline__ u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x2(u32 (&r)[2], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// Named barrier `id` (0 is __syncthreads') among `threads` threads.
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Traps when a launch gives less dynamic shared memory than the kernel lays
// out: the host mirrors each layout's size (cumla/_kernels.py), and a mirror
// that falls behind must fail loudly instead of corrupting memory.
__device__ __forceinline__ void require_dynamic_smem(unsigned bytes) {
  unsigned given;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(given));
  if (given < bytes) __trap();
}

// %globaltimer in ns, for the profiling builds' spans (CUMLA_TIMELINE).
__device__ __forceinline__ long long global_ns() {
  long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

// Programmatic dependent launch (sm_90+; no-ops on older GPUs). The attention
// kernels let the combine launched after them (cumla/_pdl.py) be scheduled
// early (params.cuh: allow_combine_launch), so its launch overlaps their work
// instead of following it; the combine waits for their completion and memory
// before it reads their partials.
__device__ __forceinline__ void allow_dependent_launch() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_grid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// 16-byte async copy global -> shared; zero-fills the destination when !valid
// (then nothing is read: `src` only has to be some mapped address).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
// A 32-bit load through the read-only path, as volatile asm so that it is
// issued where it is written (ahead of the MMAs it should hide behind), not
// next to its first use.
__device__ __forceinline__ int ld_global_nc(const int* p) {
  int v;
  asm volatile("ld.global.nc.s32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
// Loads of 16 and 4 bytes through the read-only path from base + kOffset
// (an immediate: one base register serves a tile's loads) when `pred`, else
// zeros: volatile asm, issued where written, without a branch.
template <int kOffset>
__device__ __forceinline__ uint4 ld_global_nc_if(const void* base, bool pred) {
  uint4 v;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n"
      " mov.b32 %3, 0;\n @p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4+%6];\n}"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(base), "r"(static_cast<int>(pred)), "n"(kOffset));
  return v;
}
template <int kOffset>
__device__ __forceinline__ float ld_global_nc_if_f32(const void* base, bool pred) {
  float v;
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n mov.b32 %0, 0;\n @p ld.global.nc.f32 %0, [%1+%3];\n}"
               : "=f"(v) : "l"(base), "r"(static_cast<int>(pred)), "n"(kOffset));
  return v;
}
// A 16-byte shared-memory store at base + kOffset (an immediate).
template <int kOffset>
__device__ __forceinline__ void st_shared_v4_at(u32 base, u32 a, u32 b, u32 c, u32 d) {
  asm volatile("st.shared.v4.b32 [%0+%5], {%1, %2, %3, %4};" ::"r"(base), "r"(a), "r"(b), "r"(c), "r"(d),
               "n"(kOffset) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Pick<B, X, Y>::type is X when B, else Y (no <type_traits> under NVRTC).
template <bool B, class X, class Y>
struct Pick {
  using type = X;
};
template <class X, class Y>
struct Pick<false, X, Y> {
  using type = Y;
};

// A tile of ROWS rows of 16-byte chunks, row stride padded to a multiple of 8
// chunks and chunk index XOR-swizzled by row, so ldmatrix over 8 consecutive
// rows at one logical chunk touches 8 different bank groups.
template <int CHUNKS>
struct SwizzledRows {
  static constexpr int kStride = (CHUNKS + 7) / 8 * 8;  // chunks per stored row
  static __device__ __forceinline__ u32 offset(int row, int chunk) {
    return static_cast<u32>((row * kStride + (chunk ^ (row & 7))) * 16);
  }
  __host__ __device__ static constexpr int bytes(int rows) { return rows * kStride * 16; }
};

// How a block of WARPS warps spreads the COPY 16-byte chunks of each row
// over its lanes (load_rows, load_rows_strided): lanes per row, rows per
// warp, rows per pass of the whole block, chunks per lane.
template <int WARPS, int COPY>
struct CopyLanes {
  static constexpr int kLanesPerRow = COPY >= 32 ? 32 : COPY >= 16 ? 16 : 8;
  static constexpr int kRowsPerWarp = 32 / kLanesPerRow;
  static constexpr int kStride = WARPS * kRowsPerWarp;
  static constexpr int kChunkSteps = (COPY + kLanesPerRow - 1) / kLanesPerRow;
  static_assert(kStride % 8 == 0, "a pass must move whole swizzle periods of 8 rows");
};

// Copy COPY 16-byte chunks of each of `rows` rows, from `src_row(r)`, to
// logical chunks dst_chunk.. of a tile laid out by Rows::offset(row, chunk); rows for
// which src_row gives null are zero-filled (and nothing is read). Warps take
// rows, lanes take chunks: src_row (a block-table lookup) runs once per row
// and each warp's copies cover contiguous bytes. WARPS is the block's warp
// count. Every layout here swizzles by row % 8 at most (PlainRows not at
// all), so a pass (a multiple of 8 rows further) moves each lane's
// destinations by Rows::offset(pass rows, 0): the offsets are computed once,
// and each pass adds a constant.
template <int WARPS, int ROW_CHUNKS, int COPY = ROW_CHUNKS, class Rows = SwizzledRows<ROW_CHUNKS>, class RowPtr>
__device__ __forceinline__ void load_rows(u32 tile, int rows, int dst_chunk, const u16* any_mapped,
                                          RowPtr src_row) {
  using Lanes = CopyLanes<WARPS, COPY>;
  constexpr int kLanesPerRow = Lanes::kLanesPerRow, kRowsPerWarp = Lanes::kRowsPerWarp;
  constexpr int kStride = Lanes::kStride, kChunkSteps = Lanes::kChunkSteps;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / kLanesPerRow, first = lane % kLanesPerRow;
  const int r0 = warp * kRowsPerWarp + sub;  // this lane's row in pass 0
  // Lane l looks up the row this warp copies in pass l / kRowsPerWarp, so the
  // lookups (block-table loads, divisions) run in parallel, once per row.
  const int mine = warp * kRowsPerWarp + (lane / kRowsPerWarp) * kStride + lane % kRowsPerWarp;
  const u16* my_row = mine < rows ? src_row(mine) : nullptr;
  const unsigned long long my_bits = reinterpret_cast<unsigned long long>(my_row);
  u32 dst[kChunkSteps];
#pragma unroll
  for (int k = 0; k < kChunkSteps; ++k) dst[k] = tile + Rows::offset(r0, dst_chunk + first + k * kLanesPerRow);
  const int passes = (rows + kStride - 1) / kStride;
#pragma unroll
  for (int pass = 0; pass < passes; ++pass) {
    const u16* row = reinterpret_cast<const u16*>(__shfl_sync(0xffffffffu, my_bits, pass * kRowsPerWarp + sub));
    if (rows % kStride != 0 && r0 + pass * kStride >= rows) continue;
    // A null row zero-fills: nothing is read, the address only has to be mapped.
    const bool valid = row != nullptr;
    const u16* src = valid ? row + first * 8 : any_mapped;
    const u32 step = Rows::offset(pass * kStride, 0);
#pragma unroll
    for (int k = 0; k < kChunkSteps; ++k)
      if (first + k * kLanesPerRow < COPY) cp_async16(dst[k] + step, src + k * kLanesPerRow * 8, valid);
  }
}

// load_rows for `rows` rows that lie WIDTH elements apart from `first_row`
// (a whole tile within one block of a paged cache, or of a contiguous
// cache), every one of them to be read: no per-row lookups, shuffles or
// zero-fill tests; all of a lane's copies take their addresses from one
// register pair plus constants.
template <int WARPS, int ROW_CHUNKS, int WIDTH, int COPY = ROW_CHUNKS, class Rows = SwizzledRows<ROW_CHUNKS>>
__device__ __forceinline__ void load_rows_strided(u32 tile, int rows, const u16* first_row) {
  using Lanes = CopyLanes<WARPS, COPY>;
  constexpr int kLanesPerRow = Lanes::kLanesPerRow, kRowsPerWarp = Lanes::kRowsPerWarp;
  constexpr int kStride = Lanes::kStride, kChunkSteps = Lanes::kChunkSteps;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first = lane % kLanesPerRow;
  const int r0 = warp * kRowsPerWarp + lane / kLanesPerRow;  // this lane's row in pass 0
  const u16* src = first_row + r0 * WIDTH + first * 8;
  u32 dst[kChunkSteps];
#pragma unroll
  for (int k = 0; k < kChunkSteps; ++k) dst[k] = tile + Rows::offset(r0, first + k * kLanesPerRow);
  const int passes = (rows + kStride - 1) / kStride;
#pragma unroll
  for (int pass = 0; pass < passes; ++pass) {
    if (rows % kStride != 0 && r0 + pass * kStride >= rows) continue;
    const u32 step = Rows::offset(pass * kStride, 0);
#pragma unroll
    for (int k = 0; k < kChunkSteps; ++k)
      if (first + k * kLanesPerRow < COPY)
        cp_async16(dst[k] + step, src + pass * kStride * WIDTH + k * kLanesPerRow * 8, true);
  }
}

// ldmatrix addresses along one row of a SwizzledRows tile, for chunks
// 2k + hi, k = first + 4 * k4 + u: the swizzle (and 128-byte block) of the
// four u is computed once, so an unrolled k-loop pays one add per access.
template <int ROW_CHUNKS>
struct RowWalk {
  u32 base;
  u32 swz[4];
  RowWalk() = default;
  __device__ __forceinline__ RowWalk(u32 tile, int row, int hi, int first = 0) {
    base = tile + static_cast<u32>(row * SwizzledRows<ROW_CHUNKS>::kStride * 16);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int chunk = 2 * (first + u) + hi;
      swz[u] = static_cast<u32>((chunk >> 3) * 128 + ((chunk & 7) ^ (row & 7)) * 16);
    }
  }
  __device__ __forceinline__ u32 at(int k4, int u) const { return base + k4 * 128 + swz[u]; }
};

// A 128-byte-swizzled tile of ROWS rows: 64-element (128-byte) column blocks
// of ROWS x 128 bytes one after another; inside a block, 16-byte unit u of
// row r sits at unit u ^ (r % 8) (the layout TMA's SWIZZLE_128B writes and
// wgmma reads). The tile must start at a 1024-byte boundary.
template <int ROWS>
struct Swizzle128 {
  static constexpr int kBlockBytes = ROWS * 128;
  static __device__ __forceinline__ u32 offset(int row, int chunk) {
    return static_cast<u32>((chunk >> 3) * kBlockBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
  }
  __host__ __device__ static constexpr int bytes(int blocks) { return blocks * kBlockBytes; }
};

// Store two floats as one packed pair of T at element `col` of row `row` of a
// tile laid out by Rows.
template <class T, int ROW_CHUNKS, class Rows = SwizzledRows<ROW_CHUNKS>>
__device__ __forceinline__ void store_pair(u32 tile, int row, int col, float lo, float hi) {
  const u32 addr = tile + Rows::offset(row, col / 8) + (col % 8) * 2;
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(T::pack(lo, hi)));
}

// A warp's row sums (rows g and g + 8 of its quads, g = lane / 4), added up
// over each quad and written to red[0] and red[8] by the quad's first lane
// (`lead`) once every thread has passed a barrier (earlier reads of red's
// space are done); a second barrier makes them visible to every warp.
__device__ __forceinline__ void publish_row_sums(float (&sum)[2], float* red, bool lead) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
    sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < 2; ++h)
    if (lead) red[8 * h] = sum[h];
  __syncthreads();
}

__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// Lazy online-softmax bases (raw scores; scale_log2 turns them into log2
// units). A row's base moves to a new maximum `cand` only when it passes the
// base by more than kRescaleSlack, so once the maxima settle rows keep their
// base and skip rescaling their accumulators. False while both are -inf.
__device__ __forceinline__ bool base_moves(float base, float cand, float scale_log2) {
  return cand * scale_log2 > base * scale_log2 + kRescaleSlack;
}
// Moves `base` to `cand` where base_moves says so; returns the factor the row's
// sum and accumulators take: 1 when the base stays, 0 when it leaves -inf.
__device__ __forceinline__ float move_base(float& base, float cand, float scale_log2) {
  if (!base_moves(base, cand, scale_log2)) return 1.f;
  const float alpha = fast_exp2((base - cand) * scale_log2);
  base = cand;
  return alpha;
}
// The exp2 offset of a base; rows that have seen nothing keep -inf and
// exponentiate to 0 with offset 0.
__device__ __forceinline__ float base_offset(float base, float scale_log2) {
  return base == CUMLA_NEG_INF ? 0.f : base * scale_log2;
}
// Whether a row's softmax total (its sum of exponentials, or of a merge's
// piece weights) counts a token: "!= 0", not "> 0", so that a NaN total (a
// NaN or infinity in a visible row) reaches the output and the LSE as NaN.
__device__ __forceinline__ bool row_seen(float total) { return total != 0.f; }
