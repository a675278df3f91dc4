// FP8 cache rows (fp8.cuh's layout) dequantised into rows of T, for the
// kernels that do not read FP8 (the decompressed strategy, float32, layouts
// fp8_in_kernel refuses): one pass over the rows a block table names.
#include "common.cuh"
#include "fp8.cuh"

// Warp w of block x writes output row r = 8x + w (of `rows`): raw row
// blocks[r / block_size] * block_size + r % block_size (row r itself when
// blocks is null: a contiguous cache). Lanes take every 32nd column, several
// at a time in flight; bytes are read one by one, so rows need no alignment
// (one scale per token makes rows of L + 4 + 2R bytes). The value is the
// code's exact float times its group's scale, rounded once to T: bit for bit
// cumla._fp8's dequantize.
template <class T>
__global__ void __launch_bounds__(256) dequantize_fp8_rows(const unsigned char* __restrict__ raw,
                                                           const int* __restrict__ blocks, long long rows,
                                                           int block_size, int latent, int rope, int group,
                                                           typename T::storage* __restrict__ out) {
  const long long r = blockIdx.x * 8LL + threadIdx.x / 32;
  if (r >= rows) return;
  const long long src = blocks == nullptr ? r : static_cast<long long>(blocks[r / block_size]) * block_size + r % block_size;
  const unsigned char* row = raw + src * fp8_row_bytes(latent, rope, group);
  const unsigned char* rope_bytes = row + fp8_rope_offset(latent, group);
  const int width = latent + rope;
  typename T::storage* dst = out + r * width;
#pragma unroll 6
  for (int c = threadIdx.x % 32; c < width; c += 32) {
    float v;
    if (c < latent) {
      const unsigned char* s = row + latent + 4 * (c / group);
      const u32 bits = s[0] | (s[1] << 8) | (s[2] << 16) | (static_cast<u32>(s[3]) << 24);
      v = e4m3_value(row[c]) * __uint_as_float(bits);
    } else {
      const unsigned char* h = rope_bytes + 2 * (c - latent);
      v = __uint_as_float((static_cast<u32>(h[0]) | (static_cast<u32>(h[1]) << 8)) << 16);
    }
    dst[c] = T::from_float(v);
  }
}
