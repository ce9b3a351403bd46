// conv_windows on the CPU: the 4x4 windows of stride 2 and padding 1 of an image batch, as a
// matrix for one GEMM, and the adjoint scatter (host helper of fastfvae/layers.py, DESIGN.md §10;
// not an op: CPU library only).
//
// gather:  windows[c*16 + kh*4 + kw, (b*h + i)*w + j] = x[b, c, 2i + kh - 1, 2j + kw - 1]
//          (0 where that falls in the padding), h = H/2, w = W/2;
// scatter: x[b, c, r, s] = sum of windows[c*16 + kh*4 + kw, (b*h + i)*w + j] over
//          2i + kh - 1 = r, 2j + kw - 1 = s (the adjoint: col2im of the transposed convolution).
// In the scatter, output row r takes kernel rows kh = (r+1) mod 2 (i = (r+1-kh)/2) and kh + 2
// (i - 1) where those i lie in [0, h); along the row, column s = 2u - 1 takes kw 0 at j = u and
// kw 2 at j = u - 1, column s = 2u takes kw 1 at j = u and kw 3 at j = u - 1.
//
// torch's strided copies ran these at ~1 ns an element (runs of 2 or stride-2 reads that its
// copy kernel does not vectorise); here the inner loops run along j with unit-stride writes.
#include <string>

#include "cpu_common.h"

namespace {

template <typename T>
void gather(int64_t B, int64_t C, int64_t H, int64_t W,
            const T* x, int64_t xs0, int64_t xs1, int64_t xs2, int64_t xs3,  // x: [B, C, H, W] strided
            T* windows) {                                                    // windows: [C*16, B*h*w]
  const int64_t h = H / 2, w = W / 2, columns = B * h * w;
  FFV_OMP(parallel for collapse(2) if(C * 16 * columns >= ffv::kParallelCheap) schedule(static))
  for (int64_t k = 0; k < C * 16; ++k) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t c = k / 16, kh = (k / 4) % 4, kw = k % 4;
      // Columns j whose input column 2j + kw - 1 lies in [0, W): kw 0 skips j = 0, kw 3 skips j = w - 1.
      const int64_t j_begin = kw == 0 ? 1 : 0, j_end = kw == 3 ? w - 1 : w;
      for (int64_t i = 0; i < h; ++i) {
        T* out = windows + k * columns + (b * h + i) * w;
        const int64_t r = 2 * i + kh - 1;
        if (r < 0 || r >= H) {
          for (int64_t j = 0; j < w; ++j) out[j] = T(0);
          continue;
        }
        const T* row = x + b * xs0 + c * xs1 + r * xs2 + (kw - 1) * xs3;  // row[2j * xs3] = x[.., 2j + kw - 1]
        if (j_begin) out[0] = T(0);
        if (j_end < w) out[w - 1] = T(0);
        if (xs3 == 1) {
          for (int64_t j = j_begin; j < j_end; ++j) out[j] = row[2 * j];
        } else {
          for (int64_t j = j_begin; j < j_end; ++j) out[j] = row[2 * j * xs3];
        }
      }
    }
  }
}

template <typename T>
void scatter(int64_t B, int64_t C, int64_t H, int64_t W,
             const T* windows, int64_t ws0, int64_t ws1,  // windows: [C*16, B*h*w] strided
             T* x) {                                      // x: [B, C, H, W] contiguous
  const int64_t h = H / 2, w = W / 2;
  FFV_OMP(parallel for collapse(2) if(B * C * H * W * 4 >= ffv::kParallelCheap) schedule(static))
  for (int64_t bc = 0; bc < B * C; ++bc) {
    for (int64_t r = 0; r < H; ++r) {
      const int64_t b = bc / C, c = bc % C;
      T* out = x + (bc * H + r) * W;
      for (int64_t s = 0; s < W; ++s) out[s] = T(0);
      for (int64_t kh = (r + 1) % 2; kh < 4; kh += 2) {
        const int64_t i = (r + 1 - kh) / 2;
        if (i < 0 || i >= h) continue;
        // The four kernel columns' rows of window values for output row r: a0 (kw 0), a1, b0 (kw 2), b1.
        const T* base = windows + (c * 16 + kh * 4) * ws0 + (b * h + i) * w * ws1;
        const T* a0 = base;
        const T* a1 = base + ws0;
        const T* b0 = base + 2 * ws0;
        const T* b1 = base + 3 * ws0;
        out[0] += a1[0];
        for (int64_t u = 1; u < w; ++u) {
          out[2 * u - 1] += a0[u * ws1] + b0[(u - 1) * ws1];
          out[2 * u] += a1[u * ws1] + b1[(u - 1) * ws1];
        }
        out[W - 1] += b0[(w - 1) * ws1];
      }
    }
  }
}

// The image sizes both entries accept: positive, even H and W, sizes that fit the index math.
ffv_status check_sizes(const char* entry, int64_t B, int64_t C, int64_t H, int64_t W) {
  FFV_CHECK(ffv::check_positive(entry, "B", B));
  FFV_CHECK(ffv::check_positive(entry, "C", C));
  FFV_CHECK(ffv::check_positive(entry, "H", H));
  FFV_CHECK(ffv::check_positive(entry, "W", W));
  if (H % 2 || W % 2)
    return ffv::fail(FFV_ERR_INVALID_ARGUMENT, std::string(entry) + ": H and W must be even, got " +
                                                   std::to_string(H) + " x " + std::to_string(W));
  FFV_CHECK(ffv::check_numel(entry, B, C, H));
  FFV_CHECK(ffv::check_numel(entry, B * C * H, W, 4));  // the windows hold 4x the image's elements
  return FFV_OK;
}

}  // namespace

extern "C" {

FFV_API ffv_status ffv_conv_windows_gather(ffv_dtype dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                                           const void* x, int64_t x_s0, int64_t x_s1, int64_t x_s2, int64_t x_s3,
                                           void* windows, void* /*stream*/) {
  static const char* entry = "ffv_conv_windows_gather";
  FFV_CHECK(check_sizes(entry, B, C, H, W));
  FFV_CHECK(ffv::check_not_null(entry, "x", x));
  FFV_CHECK(ffv::check_not_null(entry, "windows", windows));
  return ffv::guarded(entry, [&] {
    return ffv::with_float_dtype(entry, dtype, [&](auto tag) {
      using T = decltype(tag);
      gather<T>(B, C, H, W, static_cast<const T*>(x), x_s0, x_s1, x_s2, x_s3, static_cast<T*>(windows));
      return FFV_OK;
    });
  });
}

FFV_API ffv_status ffv_conv_windows_scatter(ffv_dtype dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                                            const void* windows, int64_t windows_s0, int64_t windows_s1,
                                            void* x, void* /*stream*/) {
  static const char* entry = "ffv_conv_windows_scatter";
  FFV_CHECK(check_sizes(entry, B, C, H, W));
  FFV_CHECK(ffv::check_not_null(entry, "windows", windows));
  FFV_CHECK(ffv::check_not_null(entry, "x", x));
  return ffv::guarded(entry, [&] {
    return ffv::with_float_dtype(entry, dtype, [&](auto tag) {
      using T = decltype(tag);
      scatter<T>(B, C, H, W, static_cast<const T*>(windows), windows_s0, windows_s1, static_cast<T*>(x));
      return FFV_OK;
    });
  });
}

}  // extern "C"
