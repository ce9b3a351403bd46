// gather_images on the CPU: unpack a batch of bit-packed binary 64x64 images (DESIGN.md §12).
//
// out[b, p] = (packed[index[b], p / 8] >> (p % 8)) & 1   for p = 64 * row + col in [0, 4096)
// (bit order "little", LSB first: numpy.packbits(bitorder="little")); an index outside [0, N)
// gives an image of NaN (fastfvae/reference/gather_images.py).
//
// Each packed byte becomes 8 output values through a 256-entry table of those 8 values, built
// once per dtype: one 8-element copy per byte instead of 8 shifts, masks and conversions.
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu_common.h"

namespace {

using ffv::Element;

constexpr int64_t kRowBytes = 512;        // 64 * 64 / 8
constexpr int64_t kPixels = kRowBytes * 8;

// The 8 values (0 or 1 in the storage type T) of each byte, bit j at position j.
template <typename T>
struct ByteTable {
  T values[256][8];
  ByteTable() {
    for (int byte = 0; byte < 256; ++byte)
      for (int bit = 0; bit < 8; ++bit) Element<T>::store(&values[byte][bit], static_cast<float>((byte >> bit) & 1));
  }
};

template <typename T>
const ByteTable<T>& byte_table() {
  static const ByteTable<T> table;  // built on first use (thread-safe static initialisation)
  return table;
}

template <typename T, typename I>
void gather(int64_t N, int64_t B, const uint8_t* packed, int64_t packed_s0, const I* index, int64_t index_s0,
            T* out) {
  const ByteTable<T>& table = byte_table<T>();
  T nan_value;
  Element<T>::store(&nan_value, std::numeric_limits<float>::quiet_NaN());
  // One table copy per packed byte (~0.4 ns a pixel: B = 64 takes ~0.1 ms on one thread), so
  // the team wakes only from kParallelCheap bytes on (B >= 256), as for other cheap loops.
  FFV_OMP(parallel for if(B * kRowBytes >= ffv::kParallelCheap) schedule(static))
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row = static_cast<int64_t>(index[b * index_s0]);  // index: [B] strided, int32 or int64
    T* image = out + b * kPixels;                                    // out: [B, 4096] contiguous
    if (row < 0 || row >= N) {
      for (int64_t p = 0; p < kPixels; ++p) image[p] = nan_value;
      continue;
    }
    const uint8_t* bytes = packed + row * packed_s0;                 // packed: [N, 512], bytes contiguous
    for (int64_t k = 0; k < kRowBytes; ++k) std::memcpy(image + 8 * k, table.values[bytes[k]], 8 * sizeof(T));
  }
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_gather_images_forward(ffv_dtype dtype, int64_t N, int64_t B, const uint8_t* packed,
                                             int64_t packed_s0, const void* index, int64_t index_s0,
                                             int32_t index_is_int32, void* out, void* /*stream*/) {
  static const char* entry = "ffv_gather_images_forward";
  FFV_CHECK(ffv::check_positive(entry, "N", N));
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_numel(entry, B, kPixels));
  FFV_CHECK(ffv::check_not_null(entry, "packed", packed));
  FFV_CHECK(ffv::check_not_null(entry, "index", index));
  FFV_CHECK(ffv::check_not_null(entry, "out", out));
  return ffv::guarded(entry, [&] {
    return ffv::with_dtype(entry, dtype, [&](auto tag) {
      using T = decltype(tag);
      if (index_is_int32)
        gather<T>(N, B, packed, packed_s0, static_cast<const int32_t*>(index), index_s0, static_cast<T*>(out));
      else
        gather<T>(N, B, packed, packed_s0, static_cast<const int64_t*>(index), index_s0, static_cast<T*>(out));
      return FFV_OK;
    });
  });
}

}  // extern "C"
