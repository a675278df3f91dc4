// FP8 cache rows (cumla/_fp8.py): L e4m3 latent values in groups of G, one
// float32 scale per group, then R RoPE values as bfloat16. Kernels copy such
// rows raw into shared memory and dequantise them here into the 16-bit
// swizzled tile their MMAs read.
#pragma once
#include "common.cuh"

// Bytes of an FP8 row (0 for G = 0, 16-bit rows) and where its RoPE part starts.
__host__ __device__ constexpr int fp8_rope_offset(int L, int G) { return G > 0 ? L + 4 * (L / G) : 0; }
__host__ __device__ constexpr int fp8_row_bytes(int L, int R, int G) { return G > 0 ? fp8_rope_offset(L, G) + 2 * R : 0; }

// Two e4m3 codes (the bytes of w that `selector` picks for __byte_perm)
// times `scale`, packed as T. An e4m3 byte x placed as (x << 8) in a 16-bit
// lane is, after moving its exponent and mantissa one bit right, the fp16
// number x * 2^-8 exactly (subnormals included: fp16 has 8 more exponent
// steps), so `scale` comes premultiplied by 2^8. Code 0x7F/0xFF is NaN.
template <class T>
__device__ __forceinline__ u32 e4m3x2_scaled(u32 w, u32 selector, float scale) {
  const u32 v = __byte_perm(w, 0u, selector);
  const u32 h = (v & 0x80008000u) | ((v >> 1) & 0x3F803F80u);
  float lo, hi;
  asm("{.reg .f16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;}"
      : "=f"(lo), "=f"(hi) : "r"(h));
  lo *= scale, hi *= scale;
  const float nan = __int_as_float(0x7fc00000);
  if ((h & 0x7FFFu) == 0x3F80u) lo = nan;
  if ((h & 0x7FFF0000u) == 0x3F800000u) hi = nan;
  return T::pack(lo, hi);
}

// Dequantise `rows` raw FP8 rows (row r at raw + r * fp8_row_bytes) into rows
// of D = L + R elements of T laid out by Rows (chunks of 8).
template <class T, int D, int L, int G, class Rows>
__device__ __forceinline__ void dequantize_rows(const unsigned char* raw, u32 tile, int rows) {
  constexpr int RAW_BYTES = fp8_row_bytes(L, D - L, G), kRope = fp8_rope_offset(L, G);
  static_assert(G % 8 == 0 && L % G == 0 && kRope % 16 == 0 && (D - L) % 8 == 0,
                "FP8 rows: 8-value chunks within one scale group, 16-byte aligned RoPE and rows");
  constexpr int kChunks = D / 8, kLatentChunks = L / 8;
  for (int i = threadIdx.x; i < rows * kChunks; i += blockDim.x) {
    const int r = i / kChunks, c = i % kChunks;
    const unsigned char* row = raw + r * RAW_BYTES;
    u32 out[4];
    if (c < kLatentChunks) {
      const uint2 codes = *reinterpret_cast<const uint2*>(row + 8 * c);
      const float scale = *reinterpret_cast<const float*>(row + L + 4 * (8 * c / G)) * 256.f;
      out[0] = e4m3x2_scaled<T>(codes.x, 0x1404u, scale);
      out[1] = e4m3x2_scaled<T>(codes.x, 0x3424u, scale);
      out[2] = e4m3x2_scaled<T>(codes.y, 0x1404u, scale);
      out[3] = e4m3x2_scaled<T>(codes.y, 0x3424u, scale);
    } else {  // bf16 RoPE values, re-rounded when T is fp16
      const uint4 rope = *reinterpret_cast<const uint4*>(row + kRope + 16 * (c - kLatentChunks));
      const u32 in[4] = {rope.x, rope.y, rope.z, rope.w};
#pragma unroll
      for (int k = 0; k < 4; ++k)
        out[k] = T::kBf16 ? in[k] : T::pack(__uint_as_float(in[k] << 16), __uint_as_float(in[k] & 0xFFFF0000u));
    }
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(tile + Rows::offset(r, c)), "r"(out[0]),
                 "r"(out[1]), "r"(out[2]), "r"(out[3]));
  }
}

// Raw rows in shared memory, one after another (16-byte chunks, no swizzle).
template <int RAW_BYTES>
struct PlainRows {
  static __device__ __forceinline__ u32 offset(int row, int chunk) {
    return static_cast<u32>(row * RAW_BYTES + chunk * 16);
  }
};
