// Latency of the Hopper kernel's TMA copies from DRAM. Thread 0 of each CTA
// copies BOXES boxes of 64 rows x 64 columns (8 KB, 128-byte swizzle; the
// kernel's copy group A is 4 boxes, a whole tile 9) of a random 64-row tile
// of a row-major (rows, 576) 16-bit matrix much larger than L2 into shared
// memory, waits on their mbarrier and records the cycles from issue to
// completion; then idles `gap` cycles, which sets the memory load when
// every SM runs it. Compiled after hopper.cuh by bench/copy_latency.py.

namespace {
constexpr int kMaxBoxes = 9;
constexpr int kBoxBytes = 64 * 128;
}  // namespace

template <int BOXES>
__global__ void __launch_bounds__(32, 1) copy_latency(const __grid_constant__ TmaMap map, long long* cycles,
                                                      int tiles, int reps, int gap) {
  static_assert(BOXES >= 1 && BOXES <= kMaxBoxes, "one tile has nine boxes");
  extern __shared__ __align__(1024) unsigned char smem[];
  const u32 base = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 bar = base + kMaxBoxes * kBoxBytes;
  if (threadIdx.x != 0) return;
  mbar_init(bar, 1);
  mbar_init_fence();
  u32 state = 2654435761u * (blockIdx.x + 1);
  for (int r = 0; r < reps; ++r) {
    state = state * 1664525u + 1013904223u;
    const int tile = static_cast<int>(state % static_cast<u32>(tiles));
    const long long start = clock64();
    mbar_expect_bytes(bar, BOXES * kBoxBytes);
    for (int b = 0; b < BOXES; ++b) tma_load_2d(base + b * kBoxBytes, map, b * 64, tile * 64, bar);
    mbar_wait(bar, r & 1);
    const long long end = clock64();
    cycles[static_cast<size_t>(blockIdx.x) * reps + r] = end - start;
    while (clock64() - end < gap) {
    }
  }
}
