/* cpu.h - CPU kernel infrastructure shared by every quantized-layer format:
 * the choice of the SIMD variant, per-thread scratch memory, and dense
 * matrix-vector products for unquantized weights.
 *
 * Variants: "ref" (portable scalar C, the definition every other variant is
 * tested against), "avx2" (AVX2+FMA+F16C) and "avx512" (AVX-512 F/BW/VL/DQ).
 * The best variant the CPU supports is chosen at the first call; the
 * environment variable SPQR_KERNEL=ref|avx2|avx512|auto (read once) or
 * spqr_kernel_force() overrides the choice. All kernels use
 * spqr_num_threads() OpenMP threads.
 */
#ifndef SPQR_KERNELS_CPU_H
#define SPQR_KERNELS_CPU_H

#include "../../util/common.h"

typedef enum spqr_cpu_kind { SPQR_CPU_UNSET = 0, SPQR_CPU_REF = 1, SPQR_CPU_AVX2 = 2, SPQR_CPU_AVX512 = 3 } spqr_cpu_kind;

/* The variant the next kernel call uses (never SPQR_CPU_UNSET). */
spqr_cpu_kind spqr_cpu_kind_active(void);

/* Force a variant ("ref", "avx2", "avx512"), or NULL / "auto" for automatic
 * selection. Fails with SPQR_ERR_UNSUPPORTED if the CPU lacks the features,
 * SPQR_ERR_INVALID_ARG for an unknown name. Process-wide. */
spqr_status spqr_kernel_force(const char *name);
/* Name of the variant the next call will use ("ref", "avx2", "avx512"). */
const char *spqr_kernel_name(void);
/* Whether this CPU (and build) can run the named variant. */
bool spqr_kernel_supported(const char *name);

/* The calling thread's cached scratch buffer of at least `bytes` bytes
 * (64-byte aligned; contents undefined; NULL when out of memory). Valid until
 * the next call on this thread or spqr_kernel_scratch_release(). */
void *spqr_cpu_scratch(size_t bytes);
/* Release the calling thread's cached scratch memory (optional). */
void spqr_kernel_scratch_release(void);

static inline size_t spqr_round64(size_t b) { return (b + 63) & ~(size_t)63; }

/* y = W x for a dense row-major W [rows][cols] of dtype f32, f16 or bf16
 * (x: cols floats, y: rows floats). Returns SPQR_ERR_INVALID_ARG for other
 * dtypes or bad sizes. */
spqr_status spqr_dense_gemv(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y);
/* The scalar reference of spqr_dense_gemv (double accumulation). */
spqr_status spqr_dense_gemv_ref(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y);

/* y[r] = W[r] . x for r in [r0, r1). dt is f32, f16 or bf16. */
void spqr_gemv_rows_avx2(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x,
                         float *y);
void spqr_gemv_rows_avx512(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x,
                           float *y);

/* log(sum_i exp(x[i])) of n >= 1 finite floats and (argmax may be NULL) the
 * first index of their maximum: the normaliser of a log-softmax. The
 * reference sums (double)expf(x[i] - max); the SIMD variants use a
 * polynomial exponential and double sums and agree with it within 1e-6. */
double spqr_logsumexp(const float *x, int64_t n, int *argmax);
double spqr_logsumexp_ref(const float *x, int64_t n, int *argmax);
double spqr_logsumexp_avx2(const float *x, int64_t n, int *argmax);
double spqr_logsumexp_avx512(const float *x, int64_t n, int *argmax);

#endif
