// gather_images on CUDA: unpack a batch of bit-packed binary 64x64 images (DESIGN.md §12).
//
// out[b, p] = (packed[index[b], p / 8] >> (p % 8)) & 1   for p = 64 * row + col in [0, 4096)
// (bit order "little", LSB first: numpy.packbits(bitorder="little")); an index outside [0, N)
// gives an image of NaN (fastfvae/reference/gather_images.py). The index is read on the device:
// nothing synchronises the host, so the launch can be captured in a CUDA graph.
//
// Launch: one grid-stride loop over the B * 512 packed bytes of the batch; each thread turns one
// byte into 8 consecutive outputs (neighbouring threads write neighbouring 8-value runs).
#include "common.cuh"

namespace ffv {
namespace gpu {
namespace {

constexpr int64_t kRowBytes = 512;  // 64 * 64 / 8
constexpr int64_t kPixels = kRowBytes * 8;

template <typename T, typename I>
__global__ void __launch_bounds__(kElementwiseThreads) gather_images_forward_kernel(
    int64_t N, int64_t B,
    const uint8_t* __restrict__ packed, int64_t packed_s0,  // [N, 512] uint8: bit-packed images, bytes contiguous
    const I* __restrict__ index, int64_t index_s0,         // [B] int32/int64 strided: rows of packed to unpack
    T* __restrict__ out) {                                 // [B, 4096] contiguous out: 0/1 pixels, NaN rows
  const T one = from_acc<T>(Acc<T>(1)), zero = from_acc<T>(Acc<T>(0));
  const T nan_value = from_acc<T>(Acc<T>(NAN));
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < B * kRowBytes;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / kRowBytes, k = e % kRowBytes;
    const int64_t row = static_cast<int64_t>(index[b * index_s0]);
    T* run = out + b * kPixels + 8 * k;
    if (row < 0 || row >= N) {
#pragma unroll
      for (int bit = 0; bit < 8; ++bit) run[bit] = nan_value;
      continue;
    }
    const unsigned byte = packed[row * packed_s0 + k];
#pragma unroll
    for (int bit = 0; bit < 8; ++bit) run[bit] = ((byte >> bit) & 1u) ? one : zero;
  }
}

template <typename T, typename I>
ffv_status launch(int64_t N, int64_t B, const uint8_t* packed, int64_t packed_s0, const void* index,
                  int64_t index_s0, void* out, cudaStream_t stream, const char* entry) {
  gather_images_forward_kernel<T, I><<<grid_for(B * kRowBytes, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
      N, B, packed, packed_s0, static_cast<const I*>(index), index_s0, static_cast<T*>(out));
  return check_launch(entry);
}

}  // namespace
}  // namespace gpu
}  // namespace ffv

using namespace ffv::gpu;

extern "C" {

FFV_API ffv_status ffv_gather_images_forward(
    ffv_dtype dtype, int64_t N, int64_t B,
    const uint8_t* packed, int64_t packed_s0,
    const void* index, int64_t index_s0, int32_t index_is_int32,
    void* out, void* stream) {
  const char* entry = "ffv_gather_images_forward";
  return guarded(entry, [&]() -> ffv_status {
    FFV_CHECK(check_positive(entry, "N", N));
    FFV_CHECK(check_positive(entry, "B", B));
    FFV_CHECK(check_numel(entry, B, kPixels));
    FFV_CHECK(check_not_null(entry, "packed", packed));
    FFV_CHECK(check_not_null(entry, "index", index));
    FFV_CHECK(check_not_null(entry, "out", out));
    const cudaStream_t s = as_stream(stream);
    return dispatch_dtype(entry, dtype, [&](auto type_tag) -> ffv_status {
      using T = decltype(type_tag);
      if (index_is_int32) return launch<T, int32_t>(N, B, packed, packed_s0, index, index_s0, out, s, entry);
      return launch<T, int64_t>(N, B, packed, packed_s0, index, index_s0, out, s, entry);
    });
  });
}

}  // extern "C"
