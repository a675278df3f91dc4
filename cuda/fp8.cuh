// FP8 cache rows (cumla/_fp8.py): L e4m3 latent values in groups of G, one
// float32 scale per group, then R RoPE values as bfloat16. Kernels copy such
// rows raw into shared memory and dequantise them here into the 16-bit
// swizzled tile their MMAs read.
#pragma once
#include "common.cuh"

// Bytes of an FP8 row (0 for G = 0, 16-bit rows) and where its RoPE part starts.
__host__ __device__ constexpr int fp8_rope_offset(int L, int G) { return G > 0 ? L + 4 * (L / G) : 0; }
__host__ __device__ constexpr int fp8_row_bytes(int L, int R, int G) { return G > 0 ? fp8_rope_offset(L, G) + 2 * R : 0; }

#if __CUDA_ARCH__ >= 890
// f16x2 of the two e4m3 codes in bits [0, 16) (HI: [16, 32)) of `codes`,
// exactly (NaN included), by the hardware conversion; the half is picked in
// the conversion itself (no shift).
template <bool HI = false>
__device__ __forceinline__ u32 e4m3x2_f16(u32 codes) {
  u32 h;
  if constexpr (HI)
    asm("{.reg .b16 l, c;\n mov.b32 {l, c}, %1;\n cvt.rn.f16x2.e4m3x2 %0, c;}" : "=r"(h) : "r"(codes));
  else
    asm("{.reg .b16 c, u;\n mov.b32 {c, u}, %1;\n cvt.rn.f16x2.e4m3x2 %0, c;}" : "=r"(h) : "r"(codes));
  return h;
}
#endif

// Two bf16 values (an FP8 row's RoPE part) as a packed pair of T: as they
// are for bf16, re-rounded for fp16.
template <class T>
__device__ __forceinline__ u32 rope_pair(u32 bf16x2) {
  if constexpr (T::kBf16) return bf16x2;
  else return T::pack(__uint_as_float(bf16x2 << 16), __uint_as_float(bf16x2 & 0xFFFF0000u));
}

// Two e4m3 codes (the low 16 bits of `pair`; HI: the high 16) times
// `scale`, packed as T.
// sm_89+ converts them in hardware (NaN included). Elsewhere: an e4m3 byte x
// placed as (x << 8) in a 16-bit lane is, after moving its exponent and
// mantissa one bit right, the fp16 number x * 2^-8 exactly (subnormals
// included: fp16 has 8 more exponent steps); code 0x7F/0xFF is NaN.
template <class T, bool HI = false>
__device__ __forceinline__ u32 e4m3x2_scaled(u32 pair, float scale) {
  float lo, hi;
#if __CUDA_ARCH__ >= 890
  const u32 h = e4m3x2_f16<HI>(pair);
  asm("{.reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;}"
      : "=f"(lo), "=f"(hi) : "r"(h));
  lo *= scale, hi *= scale;
#else
  const u32 v = __byte_perm(pair, 0u, HI ? 0x3424u : 0x1404u);
  const u32 h = (v & 0x80008000u) | ((v >> 1) & 0x3F803F80u);
  asm("{.reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;}"
      : "=f"(lo), "=f"(hi) : "r"(h));
  lo *= scale * 256.f, hi *= scale * 256.f;
  const float nan = __int_as_float(0x7fc00000);
  if ((h & 0x7FFFu) == 0x3F80u) lo = nan;
  if ((h & 0x7FFF0000u) == 0x3F800000u) hi = nan;
#endif
  return T::pack(lo, hi);
}

// One e4m3 code as a float, exactly, on any arch (0x7F and 0xFF are NaN):
// the portable path of e4m3x2_scaled for a single code.
__device__ __forceinline__ float e4m3_value(u32 code) {
  if ((code & 0x7Fu) == 0x7Fu) return __int_as_float(0x7fc00000);
  const unsigned short h = static_cast<unsigned short>(((code & 0x80u) << 8) | ((code & 0x7Fu) << 7));
  float f;
  asm("{.reg .f16 x;\n mov.b16 x, %1;\n cvt.f32.f16 %0, x;}" : "=f"(f) : "h"(h));
  return f * 256.f;
}

// Dequantise `ROWS` raw FP8 rows (row r at raw + r * fp8_row_bytes)
// into rows of D = L + R elements of T laid out by Rows (chunks of 8). Warps
// take rows, lanes take chunks (a row's scales are read by the lanes that
// need them); loops have compile-time trip counts so that loads of several
// chunks are in flight together.
template <class T, int D, int L, int G, class Rows, int ROWS>
__device__ __forceinline__ void dequantize_rows(const unsigned char* raw, u32 tile) {
  constexpr int RAW_BYTES = fp8_row_bytes(L, D - L, G);
  static_assert(G % 8 == 0 && L % G == 0 && fp8_rope_offset(L, G) % 16 == 0 && (D - L) % 8 == 0,
                "FP8 rows: 8-value chunks within one scale group, 16-byte aligned RoPE and rows");
  constexpr int kChunks = D / 8, kLatentChunks = L / 8, kRope = fp8_rope_offset(L, G);
  constexpr int kWarps = 8, kSlots = (kChunks + 31) / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll 2
  for (int j = 0; j < ROWS / kWarps; ++j) {
    const int r = warp + kWarps * j;
    const unsigned char* row = raw + r * RAW_BYTES;
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int c = lane + 32 * k;
      if (kChunks % 32 != 0 && c >= kChunks) break;
      u32 out[4];
      if (c < kLatentChunks) {
        const uint2 codes = *reinterpret_cast<const uint2*>(row + 8 * c);
        const float scale = *reinterpret_cast<const float*>(row + L + 4 * (8 * c / G));
        out[0] = e4m3x2_scaled<T>(codes.x, scale);
        out[1] = e4m3x2_scaled<T>(codes.x >> 16, scale);
        out[2] = e4m3x2_scaled<T>(codes.y, scale);
        out[3] = e4m3x2_scaled<T>(codes.y >> 16, scale);
      } else {  // bf16 RoPE values
        const uint4 rope = *reinterpret_cast<const uint4*>(row + kRope + 16 * (c - kLatentChunks));
        out[0] = rope_pair<T>(rope.x), out[1] = rope_pair<T>(rope.y);
        out[2] = rope_pair<T>(rope.z), out[3] = rope_pair<T>(rope.w);
      }
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(tile + Rows::offset(r, c)), "r"(out[0]),
                   "r"(out[1]), "r"(out[2]), "r"(out[3]));
    }
  }
}

// Raw rows in shared memory, one after another (16-byte chunks, no swizzle).
template <int RAW_BYTES>
struct PlainRows {
  static __device__ __forceinline__ u32 offset(int row, int chunk) {
    return static_cast<u32>(row * RAW_BYTES + chunk * 16);
  }
};
