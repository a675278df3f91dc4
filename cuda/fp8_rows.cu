// FP8 cache rows (fp8.cuh's layout) dequantised into rows of T, for the
// kernels that do not read FP8 (the decompressed strategy, float32, layouts
// fp8_in_kernel refuses): one pass over the rows a block table names.
#include "common.cuh"
#include "fp8.cuh"

// Warp w of block x writes output row r = 8x + w (of `rows`): raw row
// blocks[r / block_size] * block_size + r % block_size (row r itself when
// blocks is null: a contiguous cache; nothing when the block is negative,
// one that no request reaches: fp8_block_lists). The value is the code's exact float
// times its group's scale, rounded once to T: bit for bit cumla._fp8's
// dequantize. Where every field of the rows is 4-byte aligned (dims and
// groups multiples of 4: FlashMLA's rows and one scale per token alike), a
// lane reads 4 columns as one word and writes them as one vector (a warp
// covers 128 columns a step); else bytes one by one, every 32nd column a
// lane, so rows need no alignment.
template <class T>
__device__ __forceinline__ void store4(typename T::storage* dst, const float (&v)[4]) {
  if constexpr (sizeof(typename T::storage) == 2) {  // pack rounds as from_float does: the byte path's bits
    *reinterpret_cast<uint2*>(dst) = make_uint2(T::pack(v[0], v[1]), T::pack(v[2], v[3]));
  } else {
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// Eight blocks an SM (32 registers a thread): a warp's loads are its only
// latency cover, so the more rows in flight the better.
template <class T>
__global__ void __launch_bounds__(256, 8) dequantize_fp8_rows(const unsigned char* __restrict__ raw,
                                                           const int* __restrict__ blocks, long long rows,
                                                           int block_size, int latent, int rope, int group,
                                                           typename T::storage* __restrict__ out) {
  const long long r = blockIdx.x * 8LL + threadIdx.x / 32;
  if (r >= rows) return;
  const long long block = blocks == nullptr ? 0 : blocks[r / block_size];
  if (block < 0) return;
  const long long src = blocks == nullptr ? r : block * block_size + r % block_size;
  const int row_bytes = fp8_row_bytes(latent, rope, group);
  const unsigned char* row = raw + src * row_bytes;
  const unsigned char* rope_bytes = row + fp8_rope_offset(latent, group);
  const int width = latent + rope;
  typename T::storage* dst = out + r * width;
  const bool words = latent % 4 == 0 && rope % 4 == 0 && group % 4 == 0 && row_bytes % 4 == 0 &&
                     reinterpret_cast<size_t>(raw) % 4 == 0 && reinterpret_cast<size_t>(out) % 16 == 0;
  if (words) {
    // A lane's words of kSteps steps (DeepSeek's 576 columns: one round) are
    // all loaded before any value is stored: with a store between them the
    // compiler issued each step's loads after the previous step's store, one
    // DRAM round trip a step.
    constexpr int kSteps = 5;
    for (int c0 = 4 * (threadIdx.x % 32); c0 < width; c0 += 128 * kSteps) {
      u32 first[kSteps] = {}, second[kSteps] = {};  // codes and the group's scale, or two RoPE pairs
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        const int c = c0 + 128 * k;
        if (c < latent) {
          first[k] = *reinterpret_cast<const u32*>(row + c);
          second[k] = *reinterpret_cast<const u32*>(row + latent + 4 * (c / group));
        } else if (c < width) {
          const u32* h = reinterpret_cast<const u32*>(rope_bytes + 2 * (c - latent));
          first[k] = h[0], second[k] = h[1];
        }
      }
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        const int c = c0 + 128 * k;
        if (c >= width) break;
        float v[4];
        if (c < latent) {
          const float scale = __uint_as_float(second[k]);
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = e4m3_value((first[k] >> (8 * i)) & 0xFFu) * scale;
        } else {
          v[0] = __uint_as_float(first[k] << 16), v[1] = __uint_as_float(first[k] & 0xFFFF0000u);
          v[2] = __uint_as_float(second[k] << 16), v[3] = __uint_as_float(second[k] & 0xFFFF0000u);
        }
        store4<T>(dst + c, v);
      }
    }
    return;
  }
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

// The pass's block list for a paged cache's table (batch x max_blocks,
// row-major). Entry i is reached where its block holds tokens of its request
// (a block id in [0, num_blocks) among the first ceil(seqlens[b] /
// block_size) of row b), so a table padded for its longest request costs the
// pass only the tokens there are. The output pool is the smaller of two
// orders: table order (picked[i] = the block where reached, else -1;
// renumbered[i] = i there, else -1), or, where the cache has fewer blocks
// than the table entries (`by_pool`), the cache's own order (picked, filled
// with -1 before, gets picked[block] = block for every reached block, the
// same value from every entry naming it; renumbered[i] = the block where
// reached, else -1). One thread an entry; one launch instead of a chain of
// array operations, whose host time was most of a call's on this path.
extern "C" __global__ void fp8_block_lists(const int* __restrict__ table, const int* __restrict__ seqlens,
                                           int max_blocks, long long entries, int num_blocks, int block_size,
                                           int capacity, int by_pool, int* __restrict__ picked,
                                           int* __restrict__ renumbered) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= entries) return;
  const long long length = min(max(seqlens[i / max_blocks], 0), capacity);
  const int block = table[i];
  const bool reached = block >= 0 && block < num_blocks && i % max_blocks < (length + block_size - 1) / block_size;
  if (by_pool) {
    if (reached) picked[block] = block;
    renumbered[i] = reached ? block : -1;
  } else {
    picked[i] = reached ? block : -1;
    renumbered[i] = reached ? static_cast<int>(i) : -1;
  }
}
