/* fastfvae native ABI: flat extern "C" entry points, no torch headers (DESIGN.md §3, §18.5).
 *
 * Conventions
 * - Every entry returns an ffv_status; on failure ffv_last_error() gives a message for the
 *   calling thread (thread-local, valid until the next failing call on that thread).
 * - Tensors are raw pointers; sizes are int64; every *input* tensor comes with its strides in
 *   elements (any strides, including 0 for an expanded gradient); every *output* is a fresh
 *   contiguous buffer. Element type: one ffv_dtype code per call, shared by every floating
 *   tensor of that call. Arithmetic is float32 for float16/bfloat16/float32 and float64 for
 *   float64; outputs are rounded once to the dtype.
 * - Seeds are read from memory (int64[1], on the tensors' device) so that CUDA graph replays
 *   draw fresh numbers and nothing synchronises the host.
 * - Random numbers: Philox4x32-10 exactly as Triton's tl.randint4x / tl.randn (see
 *   fastfvae/reference/philox.py: philox_randint4x, philox_randn, philox_permutation).
 * - The CPU library (libfastfvae_cpu) and the CUDA library (libfastfvae_cuda) export the same
 *   names; `stream` is a cudaStream_t for CUDA and ignored (pass NULL) on the CPU.
 * - Workspaces (ABI 3): the libraries never allocate device memory. A forward that needs scratch
 *   memory takes (workspace, workspace_bytes): a caller-allocated byte buffer on the tensors'
 *   device (fastfvae/backends/native/library.py: torch.empty(bytes, dtype=torch.uint8), so it comes
 *   from torch's caching allocator, is stream-ordered on `stream` and graph-capture safe),
 *   256-byte aligned, at least ffv_<op>_workspace_bytes(...) bytes for the same arguments
 *   (NULL and 0 when that is 0). Its contents on entry do not matter; it is only used by work
 *   enqueued on `stream`, so the caller may free it right after the call (stream-ordered).
 *   The size queries are host functions; the CUDA library's ask the current device (CUB's
 *   temporary-storage query), so call them with the tensors' device current. The CPU library
 *   needs no workspace: its queries return 0 and its forwards ignore the pointer.
 */
#ifndef FASTFVAE_H
#define FASTFVAE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FFV_API __declspec(dllexport)
#else
#define FFV_API __attribute__((visibility("default")))
#endif

typedef enum ffv_status {
  FFV_OK = 0,
  FFV_ERR_INVALID_ARGUMENT = 1,
  FFV_ERR_UNSUPPORTED_DTYPE = 2,
  FFV_ERR_OUT_OF_MEMORY = 3,
  FFV_ERR_CUDA = 4,
  FFV_ERR_INTERNAL = 5,
} ffv_status;

typedef enum ffv_dtype {
  FFV_FLOAT32 = 0,
  FFV_FLOAT64 = 1,
  FFV_FLOAT16 = 2,
  FFV_BFLOAT16 = 3,
} ffv_dtype;

/* Message of the last failure on this thread ("" if none). */
FFV_API const char* ffv_last_error(void);
/* ABI version: bumped whenever an entry point's signature changes. The one definition:
 * the libraries return it from ffv_abi_version(), and tests/test_build.py checks that
 * fastfvae/backends/native/library.py's ABI_VERSION equals it.
 * 2: reparameterize_kl backward takes (eps, seed) instead of z.
 * 3: the forwards of reparameterize_kl, permute_dims, tc_loss and discriminator_loss take
 *    (workspace, workspace_bytes) before `stream`; ffv_<op>_workspace_bytes size queries. */
#define FFV_ABI_VERSION 3
FFV_API int32_t ffv_abi_version(void);

typedef enum ffv_reduction {
  FFV_REDUCTION_NONE = 0,
  FFV_REDUCTION_MEAN = 1,
  FFV_REDUCTION_SUM = 2,
} ffv_reduction;

/* ---- reparameterize_kl -------------------------------------------------------------------
 * forward: z[i,d] = mu[i,d] + exp(0.5*logvar[i,d]) * eps[i,d],
 *          eps = given, or (eps == NULL) philox_randn(seed, offset = i*D + d) in float32;
 *          kl_i = 0.5 * sum_d (mu^2 + exp(logvar) - logvar - 1);
 *          kl = kl_i [B] (NONE) | mean_i kl_i [1] (MEAN) | sum_i kl_i [1] (SUM).
 * backward: gkl_i = grad_kl[i] (NONE) | grad_kl[0]/B (MEAN) | grad_kl[0] (SUM); std = exp(0.5*logvar);
 *          eps = the forward's given eps, or (eps == NULL) philox_randn(seed, i*D + d) again:
 *          the forward's draw, regenerated from the same seed instead of stored;
 *          grad_mu = gz + gkl_i*mu; grad_logvar = 0.5*gz*std*eps + 0.5*gkl_i*(exp(logvar) - 1);
 *          grad_eps = gz * std (only when grad_eps != NULL).
 *          (std*eps is not rebuilt as z - mu: z is rounded to the dtype, and inf - inf is NaN.) */
FFV_API ffv_status ffv_reparameterize_kl_forward(
    ffv_dtype dtype, int64_t B, int64_t D,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    const void* eps, int64_t eps_s0, int64_t eps_s1, /* eps may be NULL */
    const int64_t* seed, int32_t reduction,
    void* z /* [B, D] */, void* kl /* [B] or [1] */,
    void* workspace, int64_t workspace_bytes, /* see below */
    void* stream);

/* Workspace of ffv_reparameterize_kl_forward, in bytes (*bytes; 0 when none is needed).
 * CUDA: 0 for NONE and for MEAN/SUM with B*D <= 8192 (one block); larger MEAN/SUM:
 *   float64 [B] per-row KL, then (B > 16384 rows only) float64 [P] partial sums of
 *   16384-row chunks (P = ceil(B / rows per chunk)), each part 256-byte aligned. */
FFV_API ffv_status ffv_reparameterize_kl_workspace_bytes(
    ffv_dtype dtype, int64_t B, int64_t D, int32_t reduction, int64_t* bytes);

FFV_API ffv_status ffv_reparameterize_kl_backward(
    ffv_dtype dtype, int64_t B, int64_t D,
    const void* grad_z, int64_t grad_z_s0, int64_t grad_z_s1,
    const void* grad_kl, int64_t grad_kl_s0, /* [B] for NONE, [1] otherwise */
    int32_t reduction,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    const void* eps, int64_t eps_s0, int64_t eps_s1, /* the forward's eps, or NULL: regenerate */
    const int64_t* seed, /* the forward's seed (read when eps == NULL) */
    void* grad_mu /* [B, D] */, void* grad_logvar /* [B, D] */, void* grad_eps /* [B, D] or NULL */,
    void* stream);

/* ---- permute_dims ------------------------------------------------------------------------
 * forward: for every group g and column d, P[g,:,d] is the permutation of reference/philox.py's
 *          philox_permutation (sort of 63-bit keys from philox(seed, (g*B + i)*D + d));
 *          out[g,i,d] = z[g, P[g,i,d], d]; index[g,i,d] = P[g,i,d] (int32) when index != NULL.
 * backward: grad_z[g, index[g,i,d], d] = grad_out[g,i,d]. */
FFV_API ffv_status ffv_permute_dims_forward(
    ffv_dtype dtype, int64_t G, int64_t B, int64_t D,
    const void* z, int64_t z_s0, int64_t z_s1, int64_t z_s2,
    const int64_t* seed,
    void* out /* [G, B, D] */, int32_t* index /* [G, B, D] or NULL */,
    void* workspace, int64_t workspace_bytes, /* see below */
    void* stream);

/* Workspace of ffv_permute_dims_forward, in bytes (*bytes). CUDA: 0 for B <= 4096 (in-block
 * sort); B > 4096 (CUB segmented sort over chunks of S columns, S*B <= 2^26): uint64 keys in
 * [S*B] | uint64 sorted keys [S*B] | int32 segment offsets [S+1] | CUB's temporary storage
 * (its own size query, a host call that asks the current device), each part 256-byte aligned. */
FFV_API ffv_status ffv_permute_dims_workspace_bytes(
    ffv_dtype dtype, int64_t G, int64_t B, int64_t D, int64_t* bytes);

FFV_API ffv_status ffv_permute_dims_backward(
    ffv_dtype dtype, int64_t G, int64_t B, int64_t D,
    const void* grad_out, int64_t grad_out_s0, int64_t grad_out_s1, int64_t grad_out_s2,
    const int32_t* index /* contiguous [G, B, D] */,
    void* grad_z /* [G, B, D] */, void* stream);

/* ---- tc_loss (K = 2: tc = mean_i (l_i0 - l_i1); K = 1: tc = mean_i l_i) -----------------
 * backward: K = 2: grad[i,0] = g/B, grad[i,1] = -g/B; K = 1: grad[i,0] = g/B. */
FFV_API ffv_status ffv_tc_loss_forward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* logits, int64_t logits_s0, int64_t logits_s1,
    void* tc /* [1] */,
    void* workspace, int64_t workspace_bytes, /* see below */
    void* stream);

/* Workspace of ffv_tc_loss_forward (CUDA: 0 for B <= 16384, one block; beyond, a two-stage
 * reduction: the compute type's (float, double for float64) partial sums [P], P blocks of
 * ceil(B / P) rows, P = ceil(B / max(16384, ceil(B / 65536)))). */
FFV_API ffv_status ffv_tc_loss_workspace_bytes(ffv_dtype dtype, int64_t B, int64_t K, int64_t* bytes);

FFV_API ffv_status ffv_tc_loss_backward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* grad_tc /* [1] */,
    void* grad_logits /* [B, K] */, void* stream);

/* ---- discriminator_loss ------------------------------------------------------------------
 * K = 2: loss = 0.5 * (mean_i CE(real_i, class 0) + mean_i CE(perm_i, class 1));
 * K = 1: loss = 0.5 * (mean_i softplus(-real_i) + mean_i softplus(perm_i)).
 * backward: grad_real = g*0.5/B * (softmax(real_i) - e0) | g*0.5/B * (sigmoid(real_i) - 1);
 *           grad_perm = g*0.5/B * (softmax(perm_i) - e1) | g*0.5/B * sigmoid(perm_i). */
FFV_API ffv_status ffv_discriminator_loss_forward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* d_real, int64_t d_real_s0, int64_t d_real_s1,
    const void* d_perm, int64_t d_perm_s0, int64_t d_perm_s1,
    void* loss /* [1] */,
    void* workspace, int64_t workspace_bytes, /* see below */
    void* stream);

/* Workspace of ffv_discriminator_loss_forward (CUDA: as tc_loss's, two sums: compute-type
 * partial sums [2, P], row 0 of the real logits' losses, row 1 of the permuted ones). */
FFV_API ffv_status ffv_discriminator_loss_workspace_bytes(ffv_dtype dtype, int64_t B, int64_t K, int64_t* bytes);

FFV_API ffv_status ffv_discriminator_loss_backward(
    ffv_dtype dtype, int64_t B, int64_t K,
    const void* grad_loss /* [1] */,
    const void* d_real, int64_t d_real_s0, int64_t d_real_s1,
    const void* d_perm, int64_t d_perm_s0, int64_t d_perm_s1,
    void* grad_real /* [B, K] */, void* grad_perm /* [B, K] */, void* stream);

/* ---- log_qz: declared below by its own section (see kernels/cpu/log_qz.cpp) ------------- */

/* ---- log_qz (beta-TCVAE's aggregate-posterior estimates; fastfvae/reference/log_qz.py derives them)
 * Queries z [M, D], mixture components mu, logvar [K, D]:
 *   m[i,j,d] = log N(z[i,d]; mu[j,d], exp(logvar[j,d]));
 *   w[i,j] = log_w_own if j == i, log_w_partner if j == (i+1) % K != i, else log_w_other
 *            (all three equal for "mws"; reference.log_qz_weight_constants).
 * forward:  log_qz[i]    = logsumexp_j (sum_d m[i,j,d] + w[i,j])     [M]
 *           log_qzj[i,d] = logsumexp_j (m[i,j,d] + w[i,j])           [M, D]
 *   Both outputs are in the COMPUTE type (float for float32/float16/bfloat16, double for
 *   float64): the backward recomputes its softmaxes from them. Online logsumexp over tiles of j:
 *   no (M, K, D) or (M, K) buffer; scratch O((M + K) D) (backward: per thread O(K D)).
 * backward: P = exp(sum_d m + w - log_qz[i]), P_d = exp(m + w - log_qzj[i,d]),
 *           G = grad_log_qz[i] P + grad_log_qzj[i,d] P_d, r = (z[i,d] - mu[j,d]) exp(-logvar[j,d]);
 *           grad_z[i,d] = -sum_j G r; grad_mu[j,d] = sum_i G r;
 *           grad_logvar[j,d] = sum_i G (0.5 r (z[i,d] - mu[j,d]) - 0.5)   (outputs in dtype).
 *   grad_log_qz, grad_log_qzj, log_qz, log_qzj: compute type, strided (stride 0 allowed). */
FFV_API ffv_status ffv_log_qz_forward(
    ffv_dtype dtype, int64_t M, int64_t K, int64_t D,
    const void* z, int64_t z_s0, int64_t z_s1,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    double log_w_other, double log_w_own, double log_w_partner,
    void* log_qz /* [M] compute type */, void* log_qzj /* [M, D] compute type */, void* stream);

FFV_API ffv_status ffv_log_qz_backward(
    ffv_dtype dtype, int64_t M, int64_t K, int64_t D,
    const void* grad_log_qz, int64_t grad_log_qz_s0,
    const void* grad_log_qzj, int64_t grad_log_qzj_s0, int64_t grad_log_qzj_s1,
    const void* z, int64_t z_s0, int64_t z_s1,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    const void* log_qz, int64_t log_qz_s0,
    const void* log_qzj, int64_t log_qzj_s0, int64_t log_qzj_s1,
    double log_w_other, double log_w_own, double log_w_partner,
    void* grad_z /* [M, D] */, void* grad_mu /* [K, D] */, void* grad_logvar /* [K, D] */, void* stream);

/* ---- gather_images (forward only; fastfvae/reference/gather_images.py) -------------------
 * Binary 64x64 images bit-packed to 512 bytes a row, bit order "little" (LSB first):
 *   out[b, p] = (packed[index[b], p / 8] >> (p % 8)) & 1, p = 64 * row + col in [0, 4096), as dtype;
 *   index[b] outside [0, N): out[b, :] = NaN (the index is never read on the host).
 * packed: uint8 [N, 512] with row stride packed_s0 (bytes of a row contiguous);
 * index: [B] with stride index_s0, int32 when index_is_int32 != 0, else int64. */
FFV_API ffv_status ffv_gather_images_forward(
    ffv_dtype dtype, int64_t N, int64_t B,
    const uint8_t* packed, int64_t packed_s0,
    const void* index, int64_t index_s0, int32_t index_is_int32,
    void* out /* [B, 4096] */, void* stream);

/* ---- boosting_trees (host helper, CPU library only; fastfvae/metrics/_boosting.py) --------
 * Not an op: the tree grower of DCI's estimator="batched". One boosting stage's T least-squares
 * regression trees of depth max_depth (1..16) on the same N samples of F features, as
 * scikit-learn's DecisionTreeRegressor(max_depth) (kernels/cpu/boosting_trees.cpp gives the
 * rules). Heap node numbering: level d's node n is 2^d - 1 + n, children 2n and 2n + 1 of level
 * d + 1; a node that does not split sends its samples left. All arrays contiguous.
 * x: float32 [F, N]; order: int64 [F, N] (row f sorts x[f] ascending); residual: float64 [T, N],
 * |residual| <= 1, and fixed: int64 [T, N] = round(residual * 2^fixed_bits) (1..62) whose exact
 * sums choose the splits.
 * Outputs: leaf int64 [T, N] (node at level max_depth); split uint8, feature int64, threshold
 * float64, each [T, 2^max_depth - 1]; importance float64 [T, F] (squared-error decrease over N);
 * test_leaf int64 [T, M]: the leaves of M test samples x_test float32 [F, M] (M = 0: both NULL).
 * Ties between features: the lowest Philox draw c0 of (seed, counter_base + (t * (2^max_depth - 1)
 * + heap node) * F + f) wins, as scikit-learn's random feature order.
 * On CUDA the same algorithm runs as torch operations (no CUDA entry). */
FFV_API ffv_status ffv_boosting_trees_grow(
    int64_t N, int64_t F, int64_t T, int32_t max_depth, int64_t seed, int64_t counter_base,
    const float* x, const int64_t* order, const double* residual, const int64_t* fixed, int32_t fixed_bits,
    int64_t* leaf, uint8_t* split, int64_t* feature, double* threshold, double* importance,
    int64_t M, const float* x_test, int64_t* test_leaf, void* stream);

/* ---- conv_windows (host helper, CPU library only; fastfvae/layers.py) ----------------------
 * Not an op: the window matrix of a convolution with a 4x4 kernel, stride 2 and padding 1, for
 * one GEMM, and its adjoint. B, C >= 1; H, W even; h = H/2, w = W/2; float32 or float64 only.
 * gather:  windows [C*16, B*h*w] contiguous, windows[c*16 + kh*4 + kw, (b*h + i)*w + j] =
 *          x[b, c, 2i + kh - 1, 2j + kw - 1], 0 where that is outside the image;
 *          x: [B, C, H, W] with strides x_s0..x_s3.
 * scatter: x [B, C, H, W] contiguous, x[b, c, r, s] = sum of the windows entries that gather
 *          would read from (r, s) (col2im); windows: [C*16, B*h*w] with strides s0, s1. */
FFV_API ffv_status ffv_conv_windows_gather(
    ffv_dtype dtype, int64_t B, int64_t C, int64_t H, int64_t W,
    const void* x, int64_t x_s0, int64_t x_s1, int64_t x_s2, int64_t x_s3,
    void* windows, void* stream);
FFV_API ffv_status ffv_conv_windows_scatter(
    ffv_dtype dtype, int64_t B, int64_t C, int64_t H, int64_t W,
    const void* windows, int64_t windows_s0, int64_t windows_s1,
    void* x, void* stream);

/* ---- dip_penalty (host helper, CPU library only; fastfvae/dip_penalty.py) ---------------------
 * Not an op: DIP-VAE's covariance penalty forward in one pass (kernels/cpu/dip_penalty.cpp).
 * B >= 2, D >= 1; float32 or float64. mu [B, D] with strides mu_s0, mu_s1; logvar [B, D]
 * strided, or NULL (DIP-VAE-I: no diag(mean exp(logvar)) term).
 * Cov = (1/B) sum_i (mu_i - mean)(mu_i - mean)^T, computed as the Gram matrix of mu - mu[0]
 * (the shift keeps the precision E[mu mu^T] - E[mu] E[mu]^T loses); sums in double.
 * distance [D, D] contiguous = Cov + diag(mean_i exp(logvar_i)) - I;  mean [D] = mean_i mu_i;
 * penalty [1] = lambda_od * sum_{j != k} distance_jk^2 + lambda_d * sum_j distance_jj^2;
 * variance [B, D] contiguous = exp(logvar), or NULL (not written; needs logvar).
 * The result does not depend on the number of threads. */
FFV_API ffv_status ffv_dip_penalty_forward(
    ffv_dtype dtype, int64_t B, int64_t D,
    const void* mu, int64_t mu_s0, int64_t mu_s1,
    const void* logvar, int64_t logvar_s0, int64_t logvar_s1,
    double lambda_od, double lambda_d,
    void* distance, void* mean, void* penalty, void* variance, void* stream);

/* ---- philox_fill (host helper, CPU library only) ------------------------------------------
 * Not an op: the CPU kernels' Philox numbers written out (kernels/cpu/philox_fill.cpp).
 * seed: int64[1] in host memory; out: float32 [n] contiguous.
 * kind 0: out[k] = the normal reparameterize_kl's forward draws for element k (= i*D + d): a
 *         forward given out as eps computes the same z bit for bit (the CPU op keeps it for
 *         its backward); kind 1: out[k] = uniform of Philox word c0 of counter k. */
FFV_API ffv_status ffv_philox_fill(int32_t kind, const int64_t* seed, int64_t n, float* out, void* stream);

/* ---- roofline probes (host helpers, CPU library only; bench/roofline.py) -------------------
 * Not ops: the arithmetic rates an op's floor is computed from, measured with the kernels' own
 * code (kernels/cpu/roofline.cpp). Each splits n over the OpenMP team (torch's thread count).
 * fma:  x float32 [n] <- x * a + b, iterations times (one FMA per element and iteration).
 * exp:  x float32 [n] <- exp(x * a), iterations times (the kernels' vectorised exp). */
FFV_API ffv_status ffv_roofline_fma(int64_t n, int64_t iterations, float* x, void* stream);
FFV_API ffv_status ffv_roofline_exp(int64_t n, int64_t iterations, float* x, void* stream);

#ifdef __cplusplus
}
#endif
#endif /* FASTFVAE_H */
