/* train_cuda.cu - the forward with a tape and the exact float32 backward of
 * one LLaMA block on the GPU (train_cuda.h): the CPU engine of block.c and
 * ops.c op for op, in its order.
 *
 *   xn1 = rmsnorm(x, attn_norm)           h   = x + o(att)
 *   q, k, v = Wq xn1, Wk xn1, Wv xn1      xn2 = rmsnorm(h, ffn_norm)
 *   q, k = rope(q), rope(k)               g, u = Wg xn2, Wu xn2
 *   att = attention(q, k, v)              y   = h + Wd swiglu(g, u)
 *
 * Linears and the attention products go through cuBLAS SGEMM (plain fp32,
 * CUBLAS_DEFAULT_MATH: no TF32) on row-major data: a row-major matrix is the
 * column-major view of its transpose, so the row-major C = op(A) op(B) is
 * cuBLAS's C^T = op(B)^T op(A)^T, i.e. the same op flags with the operands
 * and the M/N sizes swapped (rm_gemm below). The attention of one sequence
 * runs for all heads at once: scores and products are strided-batched over
 * the kv heads, once per query head of a group (kv_mul calls), the
 * probabilities of all heads [n_heads][T1][T1] sit in one scratch and are
 * recomputed, with the same code, in the backward.
 *
 * The library is compiled with --use_fast_math, which turns expf, sqrtf and
 * float division into approximations. The kernels here use what does not
 * depend on it: exp in double (rounded to float: what glibc's expf returns),
 * __fsqrt_rn and __fdiv_rn (IEEE round-to-nearest), so the float results
 * differ from the CPU's only by summation order and FMA contraction.
 *
 * Everything runs on the legacy default stream; host copies are synchronous
 * (they also report the errors of the kernels before them). */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "model/model.h"
#include "util/common.h"
}
#include "kernels/cuda/cuda_rt.h"
#include "kernels/cuda/reduce.cuh"
#include "train/cuda/train_cuda.h"

#define NT 256 /* threads of the elementwise and per-row kernels */

namespace {

/* ---- errors ------------------------------------------------------------------ */

spqr_status cuda_err(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error */
    if (e == cudaErrorMemoryAllocation) return spqr_fail(SPQR_ERR_NO_DEVICE, "out of GPU memory (%s)", what);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "no usable CUDA device (%s)", cudaGetErrorString(e));
    return spqr_fail(SPQR_ERR_INTERNAL, "CUDA error in %s: %s", what, cudaGetErrorString(e));
}
#define CK(call, what)                                    \
    do {                                                  \
        cudaError_t e_ = (call);                          \
        if (e_ != cudaSuccess) return cuda_err(e_, what); \
    } while (0)
#define CKL(what) CK(cudaGetLastError(), what)
#define CKB(call, what)                                                                           \
    do {                                                                                          \
        cublasStatus_t s_ = (call);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return spqr_fail(SPQR_ERR_INTERNAL, "cuBLAS SGEMM failed (status %d): %s", (int)s_, what); \
    } while (0)

/* ---- device helpers ------------------------------------------------------------ */

/* expf without --use_fast_math's __expf: exp in double, rounded */
__device__ __forceinline__ float exp_prec(float x) { return (float)exp((double)x); }

/* ---- kernels ---------------------------------------------------------------------- */

/* one block per row: out = w * (r * x), r = 1 / sqrt(mean(x^2) + eps) in
 * spqr_rmsnorm_fwd's order of operations; rinv[row] = r */
__global__ void k_rmsnorm_fwd(float *out, float *rinv, const float *x, const float *w, int D, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * D;
    float *o = out + (size_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    ss = __fdiv_rn(ss, (float)D);
    ss = __fadd_rn(ss, eps);
    ss = __fdiv_rn(1.0f, __fsqrt_rn(ss));
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = w[i] * (ss * xr[i]);
    if (threadIdx.x == 0) rinv[blockIdx.x] = ss;
}

/* one block per row: dx += r w dy - (r^3 / n) x sum(dy w x) (the sum in double) */
__global__ void k_rmsnorm_bwd_dx(float *dx, const float *dy, const float *x, const float *w, const float *rinv,
                                 int D) {
    __shared__ double red[32];
    const size_t off = (size_t)blockIdx.x * D;
    const float *xr = x + off, *dyr = dy + off;
    float *dxr = dx + off;
    double dot = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) dot += (double)dyr[i] * w[i] * xr[i];
    dot = block_sum_d(dot, red);
    const float r = rinv[blockIdx.x], coef = (float)((double)r * r * r * dot / D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) dxr[i] += r * w[i] * dyr[i] - coef * xr[i];
}

/* dw[i] = sum_t dy[t][i] (r_t x[t][i]) (written); block (32, 8): 32 columns,
 * 8 token strides, reduced in shared memory (deterministic) */
__global__ void k_rmsnorm_bwd_dw(float *dw, const float *dy, const float *x, const float *rinv, int N, int D) {
    __shared__ float part[8][33];
    const int i = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (i < D)
        for (int t = threadIdx.y; t < N; t += 8) acc += dy[(size_t)t * D + i] * (rinv[t] * x[(size_t)t * D + i]);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < D) {
        float s = 0.0f;
        for (int j = 0; j < 8; j++) s += part[j][threadIdx.x];
        dw[i] = s;
    }
}

/* RoPE in place on v[N][stride] (nh heads of hd), row r at position r % T1,
 * by +angle (dir = 1, spqr_rope_apply) or -angle (dir = -1, spqr_rope_bwd) */
__global__ void k_rope(float *v, int N, int T1, int nh, int hd, int stride, const float *cosv, const float *sinv,
                       int interleaved, float dir) {
    const int half = hd / 2;
    const size_t total = (size_t)N * nh * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t rh = idx / half;
        const int h = (int)(rh % nh), r = (int)(rh / nh), p = r % T1;
        const float cs = cosv[(size_t)p * half + i], sn = dir * sinv[(size_t)p * half + i];
        float *x = v + (size_t)r * stride + (size_t)h * hd;
        const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = x[ia], b = x[ib];
        x[ia] = a * cs - b * sn;
        x[ib] = b * cs + a * sn;
    }
}

/* one block per row of P[rows][T] (row r is query t = r % T of head r / T):
 * causal softmax of s <= t in place, zeros above the diagonal */
__global__ void k_softmax_causal(float *P, int T) {
    __shared__ float red[32];
    const int t = (int)(blockIdx.x % T), n = t + 1;
    float *row = P + (size_t)blockIdx.x * T;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < n; s += blockDim.x) mx = fmaxf(mx, row[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        const float e = exp_prec(row[s] - mx);
        row[s] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    for (int s = threadIdx.x; s < T; s += blockDim.x) row[s] = s < n ? __fdiv_rn(row[s], sum) : 0.0f;
}

/* one block per row: dP <- dS = P (dP - sum_s P dP), zeros above the diagonal */
__global__ void k_dsoftmax_causal(float *dP, const float *P, int T) {
    __shared__ float red[32];
    const int t = (int)(blockIdx.x % T), n = t + 1;
    const float *p = P + (size_t)blockIdx.x * T;
    float *d = dP + (size_t)blockIdx.x * T;
    float dot = 0.0f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) dot += p[s] * d[s];
    dot = block_sum(dot, red);
    for (int s = threadIdx.x; s < T; s += blockDim.x) d[s] = s < n ? p[s] * (d[s] - dot) : 0.0f;
}

/* dK[t][kvh] = sum_j gK[t][kvh * kv_mul + j] (heads of hd), the same for V */
__global__ void k_group_sum(float *dK, float *dV, const float *gK, const float *gV, int T, int nkv, int kv_mul,
                            int hd) {
    const size_t total = (size_t)T * nkv * hd, qd = (size_t)nkv * kv_mul * hd, kvd = (size_t)nkv * hd;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / kvd, c = idx % kvd, kvh = c / hd, i = c % hd;
        const float *pk = gK + t * qd + kvh * kv_mul * hd + i, *pv = gV + t * qd + kvh * kv_mul * hd + i;
        float k = 0.0f, v = 0.0f;
        for (int j = 0; j < kv_mul; j++) {
            k += pk[(size_t)j * hd];
            v += pv[(size_t)j * hd];
        }
        dK[t * kvd + c] = k;
        dV[t * kvd + c] = v;
    }
}

/* s = g sigmoid(g) u (model/forward.c's expression) */
__global__ void k_swiglu_fwd(float *s, const float *g, const float *u, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = g[i];
        s[i] = __fdiv_rn(v, 1.0f + exp_prec(-v)) * u[i];
    }
}

/* dg, du from dout (dg may alias dout) */
__global__ void k_swiglu_bwd(float *dg, float *du, const float *dout, const float *g, const float *u, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float d = dout[i], v = g[i], sg = __fdiv_rn(1.0f, 1.0f + exp_prec(-v));
        du[i] = d * v * sg;
        dg[i] = d * u[i] * sg * (1.0f + v * (1.0f - sg));
    }
}

__global__ void k_add(float *out, const float *a, const float *b, size_t n) { /* out = a + b; out may be a or b */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void k_add_bias(float *Y, const float *b, int rows, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        Y[i] += b[i % rows];
}

unsigned grid_for(size_t n) {
    size_t b = (n + NT - 1) / NT;
    return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

/* ---- row-major SGEMM ---------------------------------------------------------------
 * C[M][N] = alpha op(A) op(B) + beta C, all row-major with leading
 * dimensions lda, ldb, ldc (cblas_sgemm(CblasRowMajor, ...)'s meaning). */
cublasStatus_t rm_gemm(cublasHandle_t h, bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc) {
    return cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A,
                       lda, &beta, C, ldc);
}
/* the same for `batch` products, operand i at A + i sA, B + i sB, C + i sC */
cublasStatus_t rm_gemm_sb(cublasHandle_t h, bool ta, bool tb, int M, int N, int K, float alpha, const float *A,
                          int lda, long long sA, const float *B, int ldb, long long sB, float beta, float *C, int ldc,
                          long long sC, int batch) {
    return cublasSgemmStridedBatched(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                                     &alpha, B, ldb, sB, A, lda, sA, &beta, C, ldc, sC, batch);
}

} // namespace

/* ---- the handle -------------------------------------------------------------------- */

struct spqr_tblock_gpu {
    spqr_config cfg;
    int cap_nseq, cap_T1;
    size_t cap_N;
    int nseq, T1; /* of the last forward; 0 before one */
    cublasHandle_t blas;
    int have_blas;
    int rows[SPQR_LIN_PER_BLOCK], cols[SPQR_LIN_PER_BLOCK];
    /* weights and gradients */
    float *W[SPQR_LIN_PER_BLOCK], *bias[SPQR_LIN_PER_BLOCK], *attn_norm, *ffn_norm;
    float *dW[SPQR_LIN_PER_BLOCK], *dn1, *dn2;
    /* tape (block.c's) */
    float *x, *xn1, *h, *xn2, *q, *att, *k, *v, *g, *u, *s, *rinv1, *rinv2, *cs, *sn;
    /* workspace: y (the forward's output, the backward's dxn), dh (then dX),
     * datt, dq, dk, dv, ds (then dg), du; P, dP [n_heads][T1][T1]; the
     * per-query-head dK/dV shares gK, gV [T1][qd] when kv heads are shared */
    float *y, *dh, *datt, *dq, *dk, *dv, *ds, *du, *P, *dP, *gK, *gV;
    float *mem;   /* one device allocation for all of the above but the biases */
    size_t bytes; /* its size */
    float *stage; /* pinned host staging for the gradient downloads */
    size_t stage_n;
};

/* Lays out the buffers of a handle for nseq x T1 tokens in one allocation
 * starting at base (g == NULL: only count); returns the bytes, 0 on overflow. */
static size_t plan(const spqr_config *c, int nseq, int T1, spqr_tblock_gpu *g, float *base) {
    const size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, hd = (size_t)c->head_dim;
    const size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd, half = hd / 2;
    const size_t N = (size_t)nseq * (size_t)T1, TT = (size_t)T1 * (size_t)T1;
    const bool grouped = c->n_heads > c->n_kv_heads;
    int64_t shape[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(c, shape);
    spqr_tblock_gpu tmp;
    spqr_tblock_gpu *t = g ? g : &tmp; /* counting only: the pointers land in tmp */
    size_t off = 0;                    /* floats */
    bool ok = true;
    auto take = [&](float **p, size_t a, size_t b) {
        size_t n = 0;
        ok = ok && spqr_mul_size(a, b, &n);
        n = (n + 63) & ~(size_t)63; /* 256-byte alignment */
        *p = base && ok ? base + off : NULL;
        ok = ok && spqr_add_size(off, n, &off);
    };
    for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) {
        take(&t->W[l], (size_t)shape[l][0], (size_t)shape[l][1]);
        take(&t->dW[l], (size_t)shape[l][0], (size_t)shape[l][1]);
    }
    float **vec[] = {&t->attn_norm, &t->ffn_norm, &t->dn1, &t->dn2};
    float **tokD[] = {&t->x, &t->xn1, &t->h, &t->xn2, &t->y, &t->dh};
    float **tokQ[] = {&t->q, &t->att, &t->datt, &t->dq};
    float **tokKV[] = {&t->k, &t->v, &t->dk, &t->dv};
    float **tokF[] = {&t->g, &t->u, &t->s, &t->ds, &t->du};
    for (float **p : vec) take(p, D, 1);
    for (float **p : tokD) take(p, N, D);
    for (float **p : tokQ) take(p, N, qd);
    for (float **p : tokKV) take(p, N, kvd);
    for (float **p : tokF) take(p, N, F);
    take(&t->rinv1, N, 1);
    take(&t->rinv2, N, 1);
    take(&t->cs, (size_t)T1, half);
    take(&t->sn, (size_t)T1, half);
    take(&t->P, (size_t)c->n_heads, TT);
    take(&t->dP, (size_t)c->n_heads, TT);
    take(&t->gK, grouped ? (size_t)T1 : 0, qd);
    take(&t->gV, grouped ? (size_t)T1 : 0, qd);
    size_t bytes = 0;
    if (!ok || !spqr_mul_size(off, sizeof(float), &bytes)) return 0;
    return bytes;
}

static spqr_status check_cfg(const spqr_config *c, int nseq, int T1) {
    if (!c || nseq <= 0 || T1 <= 0 || (int64_t)nseq * T1 > INT_MAX || c->dim <= 0 || c->hidden_dim <= 0 ||
        c->n_heads <= 0 || c->n_kv_heads <= 0 || c->head_dim <= 0 || c->n_heads % c->n_kv_heads || c->head_dim % 2)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "train block (GPU): bad config or size (%d sequences of %d tokens)",
                         nseq, T1);
    return SPQR_OK;
}

extern "C" size_t spqr_tblock_gpu_bytes(const spqr_config *c, int nseq, int T1) {
    if (check_cfg(c, nseq, T1)) return 0;
    return plan(c, nseq, T1, NULL, NULL);
}

extern "C" void spqr_tblock_gpu_free(spqr_tblock_gpu *g) {
    if (!g) return;
    for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) cudaFree(g->bias[l]);
    cudaFree(g->mem);
    if (g->stage) cudaFreeHost(g->stage);
    if (g->have_blas) cublasDestroy(g->blas);
    free(g);
}

extern "C" spqr_status spqr_tblock_gpu_new(const spqr_config *c, int nseq, int T1, spqr_tblock_gpu **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_new: out is NULL");
    *out = NULL;
    spqr_status st = check_cfg(c, nseq, T1);
    if (st) return st;
    if ((st = spqr_cuda_available(NULL, 0))) return st;
    const size_t bytes = plan(c, nseq, T1, NULL, NULL);
    if (!bytes) return spqr_fail(SPQR_ERR_NOMEM, "train block (GPU): size overflow (%d x %d tokens)", nseq, T1);
    size_t freeb = 0, total = 0;
    if ((st = spqr_cuda_mem_info(&freeb, &total))) return st;
    if (bytes + ((size_t)64 << 20) > freeb)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "block training needs %.1f MiB on the GPU, %.1f MiB free",
                         bytes / 1048576.0, freeb / 1048576.0);

    spqr_tblock_gpu *g = (spqr_tblock_gpu *)calloc(1, sizeof *g);
    if (!g) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    g->cfg = *c;
    g->cap_nseq = nseq;
    g->cap_T1 = T1;
    g->cap_N = (size_t)nseq * (size_t)T1;
    int64_t shape[SPQR_LIN_PER_BLOCK][2];
    spqr_linear_shapes(c, shape);
    size_t max_lin = 0;
    for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++) {
        g->rows[l] = (int)shape[l][0];
        g->cols[l] = (int)shape[l][1];
        size_t n = (size_t)(shape[l][0] * shape[l][1]);
        max_lin = n > max_lin ? n : max_lin;
    }
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuBLAS could not be initialized");
    }
    g->have_blas = 1;
    cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH); /* plain fp32, no TF32 */
    cudaError_t e = cudaMalloc((void **)&g->mem, bytes);
    if (e != cudaSuccess) {
        g->mem = NULL;
        st = cuda_err(e, "block training buffers");
    }
    if (!st) {
        g->bytes = bytes;
        plan(c, nseq, T1, g, g->mem);
        e = cudaMemset(g->mem, 0, bytes);
        if (e != cudaSuccess) st = cuda_err(e, "cudaMemset");
    }
    if (!st) { /* the RoPE tables of the CPU engine (positions 0..T1-1) */
        const size_t n = (size_t)T1 * (size_t)(c->head_dim / 2);
        float *cs = (float *)spqr_malloc_array(n ? n : 1, 2 * sizeof(float));
        if (!cs) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
        if (!st) {
            spqr_rope_tables(c, 0, T1, cs, cs + n);
            e = cudaMemcpy(g->cs, cs, n * sizeof(float), cudaMemcpyHostToDevice);
            if (e == cudaSuccess) e = cudaMemcpy(g->sn, cs + n, n * sizeof(float), cudaMemcpyHostToDevice);
            if (e != cudaSuccess) st = cuda_err(e, "RoPE tables");
        }
        free(cs);
    }
    if (!st) {
        g->stage_n = max_lin < ((size_t)1 << 22) ? max_lin : ((size_t)1 << 22); /* at most 16 MiB */
        e = cudaMallocHost((void **)&g->stage, g->stage_n * sizeof(float));
        if (e != cudaSuccess) {
            g->stage = NULL;
            st = cuda_err(e, "pinned staging buffer");
        }
    }
    if (st) {
        spqr_tblock_gpu_free(g);
        return st;
    }
    *out = g;
    return SPQR_OK;
}

extern "C" spqr_status spqr_tblock_gpu_set_linear(spqr_tblock_gpu *g, int k, const float *W) {
    if (!g || k < 0 || k >= SPQR_LIN_PER_BLOCK || !W)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_set_linear: bad arguments");
    CK(cudaMemcpy(g->W[k], W, (size_t)g->rows[k] * (size_t)g->cols[k] * sizeof(float), cudaMemcpyHostToDevice),
       "weight upload");
    return SPQR_OK;
}

extern "C" spqr_status spqr_tblock_gpu_set_norms(spqr_tblock_gpu *g, const float *attn_norm, const float *ffn_norm) {
    if (!g) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_set_norms: bad arguments");
    const size_t bytes = (size_t)g->cfg.dim * sizeof(float);
    if (attn_norm) CK(cudaMemcpy(g->attn_norm, attn_norm, bytes, cudaMemcpyHostToDevice), "norm upload");
    if (ffn_norm) CK(cudaMemcpy(g->ffn_norm, ffn_norm, bytes, cudaMemcpyHostToDevice), "norm upload");
    return SPQR_OK;
}

extern "C" spqr_status spqr_tblock_gpu_set_weights(spqr_tblock_gpu *g, const spqr_tblock *b) {
    if (!g || !b || !b->attn_norm || !b->ffn_norm)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_set_weights: bad arguments");
    spqr_status st = spqr_tblock_gpu_set_norms(g, b->attn_norm, b->ffn_norm);
    for (int l = 0; l < SPQR_LIN_PER_BLOCK && !st; l++) {
        if ((st = spqr_tblock_gpu_set_linear(g, l, b->W[l]))) break;
        if (!b->bias[l]) {
            cudaFree(g->bias[l]);
            g->bias[l] = NULL;
            continue;
        }
        const size_t bytes = (size_t)g->rows[l] * sizeof(float);
        if (!g->bias[l]) {
            cudaError_t e = cudaMalloc((void **)&g->bias[l], bytes);
            if (e != cudaSuccess) {
                g->bias[l] = NULL;
                return cuda_err(e, "bias");
            }
        }
        CK(cudaMemcpy(g->bias[l], b->bias[l], bytes, cudaMemcpyHostToDevice), "bias upload");
    }
    return st;
}

/* ---- forward ------------------------------------------------------------------------- */

/* Y[N][rows] = X[N][cols] W_l^T (+ bias): spqr_lin_fwd */
static spqr_status lin_fwd(spqr_tblock_gpu *g, int l, const float *X, int N, float *Y) {
    const int rows = g->rows[l], cols = g->cols[l];
    CKB(rm_gemm(g->blas, false, true, N, rows, cols, 1.0f, X, cols, g->W[l], cols, 0.0f, Y, rows),
        spqr_linear_names[l]);
    if (g->bias[l]) {
        const size_t n = (size_t)N * rows;
        k_add_bias<<<grid_for(n), NT>>>(Y, g->bias[l], rows, n);
        CKL("bias kernel");
    }
    return SPQR_OK;
}

/* dX (+)= dY W_l (beta 0: write, 1: add), and dW_l = dY^T X when want_dW (written
 * into the device gradient): spqr_lin_bwd */
static spqr_status lin_bwd(spqr_tblock_gpu *g, int l, float *dX, float beta, bool want_dW, const float *dY,
                           const float *X, int N) {
    const int rows = g->rows[l], cols = g->cols[l];
    CKB(rm_gemm(g->blas, false, false, N, cols, rows, 1.0f, dY, rows, g->W[l], cols, beta, dX, cols),
        spqr_linear_names[l]);
    if (want_dW)
        CKB(rm_gemm(g->blas, true, false, rows, cols, N, 1.0f, dY, rows, X, cols, 0.0f, g->dW[l], cols),
            spqr_linear_names[l]);
    return SPQR_OK;
}

/* P [n_heads][T1][T1] = causal softmax of the scaled scores of sequence sq,
 * for every head (spqr_attn_fwd's attn_probs) */
static spqr_status attn_probs(spqr_tblock_gpu *g, int sq, int T1) {
    const spqr_config *c = &g->cfg;
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, kv_mul = nh / nkv;
    const int qd = nh * hd, kvd = nkv * hd;
    const size_t o = (size_t)sq * (size_t)T1;
    const float *Q = g->q + o * qd, *K = g->k + o * kvd;
    const long long TT = (long long)T1 * T1;
    const float scale = 1.0f / sqrtf((float)hd);
    /* head h = kvh * kv_mul + j: a strided batch over kvh for each j */
    for (int j = 0; j < kv_mul; j++)
        CKB(rm_gemm_sb(g->blas, false, true, T1, T1, hd, scale, Q + (size_t)j * hd, qd, (long long)kv_mul * hd, K,
                       kvd, hd, 0.0f, g->P + (size_t)j * TT, T1, kv_mul * TT, nkv),
            "attention scores");
    k_softmax_causal<<<(unsigned)(nh * T1), NT>>>(g->P, T1);
    CKL("softmax kernel");
    return SPQR_OK;
}

static spqr_status attn_fwd(spqr_tblock_gpu *g, int sq, int T1) {
    const spqr_config *c = &g->cfg;
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, kv_mul = nh / nkv;
    const int qd = nh * hd, kvd = nkv * hd;
    const size_t o = (size_t)sq * (size_t)T1;
    const long long TT = (long long)T1 * T1;
    spqr_status st = attn_probs(g, sq, T1);
    if (st) return st;
    for (int j = 0; j < kv_mul; j++) /* O_h = P_h V_kvh */
        CKB(rm_gemm_sb(g->blas, false, false, T1, hd, T1, 1.0f, g->P + (size_t)j * TT, T1, kv_mul * TT,
                       g->v + o * kvd, kvd, hd, 0.0f, g->att + o * qd + (size_t)j * hd, qd, (long long)kv_mul * hd,
                       nkv),
            "attention output");
    return SPQR_OK;
}

static spqr_status rope(spqr_tblock_gpu *g, float *v, int N, int T1, int nh, int stride, float dir) {
    const spqr_config *c = &g->cfg;
    const size_t n = (size_t)N * nh * (c->head_dim / 2);
    k_rope<<<grid_for(n), NT>>>(v, N, T1, nh, c->head_dim, stride, g->cs, g->sn, c->rope_interleaved ? 1 : 0, dir);
    CKL("RoPE kernel");
    return SPQR_OK;
}

extern "C" spqr_status spqr_tblock_gpu_forward(spqr_tblock_gpu *g, const float *X_host, int nseq, int T1,
                                               float *Y_host) {
    if (!g || !X_host || !Y_host) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_forward: bad arguments");
    spqr_status st = check_cfg(&g->cfg, nseq, T1);
    if (st) return st;
    const size_t NN = (size_t)nseq * (size_t)T1;
    if (NN > g->cap_N || T1 > g->cap_T1)
        return spqr_fail(SPQR_ERR_INVALID_ARG,
                         "GPU training buffers too small for %d sequences of %d tokens (made for %d x %d)", nseq, T1,
                         g->cap_nseq, g->cap_T1);
    const spqr_config *c = &g->cfg;
    const int N = (int)NN, D = c->dim, hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const size_t ND = NN * (size_t)D, NF = NN * (size_t)c->hidden_dim;
    g->nseq = g->T1 = 0;

    CK(cudaMemcpy(g->x, X_host, ND * sizeof(float), cudaMemcpyHostToDevice), "input upload");
    k_rmsnorm_fwd<<<(unsigned)N, NT>>>(g->xn1, g->rinv1, g->x, g->attn_norm, D, c->norm_eps);
    CKL("rmsnorm kernel");
    if ((st = lin_fwd(g, SPQR_LIN_Q, g->xn1, N, g->q)) || (st = lin_fwd(g, SPQR_LIN_K, g->xn1, N, g->k)) ||
        (st = lin_fwd(g, SPQR_LIN_V, g->xn1, N, g->v)))
        return st;
    if ((st = rope(g, g->q, N, T1, c->n_heads, qd, 1.0f)) || (st = rope(g, g->k, N, T1, c->n_kv_heads, kvd, 1.0f)))
        return st;
    for (int sq = 0; sq < nseq; sq++)
        if ((st = attn_fwd(g, sq, T1))) return st;
    /* the o projection goes through y, then h = x + o (block.c's order) */
    if ((st = lin_fwd(g, SPQR_LIN_O, g->att, N, g->y))) return st;
    k_add<<<grid_for(ND), NT>>>(g->h, g->x, g->y, ND);
    CKL("residual kernel");

    k_rmsnorm_fwd<<<(unsigned)N, NT>>>(g->xn2, g->rinv2, g->h, g->ffn_norm, D, c->norm_eps);
    CKL("rmsnorm kernel");
    if ((st = lin_fwd(g, SPQR_LIN_GATE, g->xn2, N, g->g)) || (st = lin_fwd(g, SPQR_LIN_UP, g->xn2, N, g->u)))
        return st;
    k_swiglu_fwd<<<grid_for(NF), NT>>>(g->s, g->g, g->u, NF);
    CKL("swiglu kernel");
    if ((st = lin_fwd(g, SPQR_LIN_DOWN, g->s, N, g->y))) return st;
    k_add<<<grid_for(ND), NT>>>(g->y, g->y, g->h, ND);
    CKL("residual kernel");
    CK(cudaMemcpy(Y_host, g->y, ND * sizeof(float), cudaMemcpyDeviceToHost), "output download");
    g->nseq = nseq;
    g->T1 = T1;
    return SPQR_OK;
}

/* ---- backward ------------------------------------------------------------------------ */

/* dQ, dK, dV of sequence sq from datt (spqr_attn_bwd) */
static spqr_status attn_bwd(spqr_tblock_gpu *g, int sq, int T1) {
    const spqr_config *c = &g->cfg;
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, kv_mul = nh / nkv;
    const int qd = nh * hd, kvd = nkv * hd;
    const size_t oq = (size_t)sq * (size_t)T1 * qd, okv = (size_t)sq * (size_t)T1 * kvd;
    const long long TT = (long long)T1 * T1, sq_h = (long long)kv_mul * hd, sP = kv_mul * TT;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *Q = g->q + oq, *K = g->k + okv, *V = g->v + okv, *dO = g->datt + oq;
    float *dQ = g->dq + oq, *dK = g->dk + okv, *dV = g->dv + okv;
    /* each query head's dK/dV share: straight into dK/dV without grouping (then kvd == qd) */
    float *GK = kv_mul > 1 ? g->gK : dK, *GV = kv_mul > 1 ? g->gV : dV;
    spqr_status st = attn_probs(g, sq, T1);
    if (st) return st;
    for (int j = 0; j < kv_mul; j++) {
        const size_t jh = (size_t)j * hd, jP = (size_t)j * TT;
        /* dV_h = P^T dO_h */
        CKB(rm_gemm_sb(g->blas, true, false, T1, hd, T1, 1.0f, g->P + jP, T1, sP, dO + jh, qd, sq_h, 0.0f, GV + jh,
                       qd, sq_h, nkv),
            "attention dV");
        /* dP = dO_h V^T */
        CKB(rm_gemm_sb(g->blas, false, true, T1, T1, hd, 1.0f, dO + jh, qd, sq_h, V, kvd, hd, 0.0f, g->dP + jP, T1,
                       sP, nkv),
            "attention dP");
    }
    k_dsoftmax_causal<<<(unsigned)(nh * T1), NT>>>(g->dP, g->P, T1);
    CKL("softmax backward kernel");
    for (int j = 0; j < kv_mul; j++) {
        const size_t jh = (size_t)j * hd, jP = (size_t)j * TT;
        /* dQ_h = dS K / sqrt(hd) */
        CKB(rm_gemm_sb(g->blas, false, false, T1, hd, T1, scale, g->dP + jP, T1, sP, K, kvd, hd, 0.0f, dQ + jh, qd,
                       sq_h, nkv),
            "attention dQ");
        /* dK_h = dS^T Q_h / sqrt(hd) */
        CKB(rm_gemm_sb(g->blas, true, false, T1, hd, T1, scale, g->dP + jP, T1, sP, Q + jh, qd, sq_h, 0.0f, GK + jh,
                       qd, sq_h, nkv),
            "attention dK");
    }
    if (kv_mul > 1) {
        const size_t n = (size_t)T1 * kvd;
        k_group_sum<<<grid_for(n), NT>>>(dK, dV, g->gK, g->gV, T1, nkv, kv_mul, hd);
        CKL("group sum kernel");
    }
    return SPQR_OK;
}

/* host[i] += dev[i], through the pinned staging buffer */
static spqr_status add_to_host(spqr_tblock_gpu *g, float *host, const float *dev, size_t n) {
    for (size_t o = 0; o < n; o += g->stage_n) {
        const size_t m = n - o < g->stage_n ? n - o : g->stage_n;
        CK(cudaMemcpy(g->stage, dev + o, m * sizeof(float), cudaMemcpyDeviceToHost), "gradient download");
        float *h = host + o;
        for (size_t i = 0; i < m; i++) h[i] += g->stage[i];
    }
    return SPQR_OK;
}

extern "C" spqr_status spqr_tblock_gpu_backward(spqr_tblock_gpu *g, const float *dY_host, float *dX_host,
                                                spqr_tgrads *g_host) {
    if (!g || !dY_host || !g_host) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_backward: bad arguments");
    if (g->nseq <= 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tblock_gpu_backward: no forward on the tape");
    const spqr_config *c = &g->cfg;
    const int nseq = g->nseq, T1 = g->T1, N = nseq * T1, D = c->dim;
    const int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const size_t ND = (size_t)N * D, NF = (size_t)N * c->hidden_dim;
    const spqr_tgrads *gh = g_host;
    float *dxn = g->y;
    spqr_status st;

    /* y = h + Wd s */
    CK(cudaMemcpy(g->dh, dY_host, ND * sizeof(float), cudaMemcpyHostToDevice), "gradient upload");
    if ((st = lin_bwd(g, SPQR_LIN_DOWN, g->ds, 0.0f, gh->W[SPQR_LIN_DOWN], g->dh, g->s, N))) return st;
    /* s = swiglu(g, u); ds becomes dg */
    k_swiglu_bwd<<<grid_for(NF), NT>>>(g->ds, g->du, g->ds, g->g, g->u, NF);
    CKL("swiglu backward kernel");
    /* g, u = Wg xn2, Wu xn2 */
    if ((st = lin_bwd(g, SPQR_LIN_GATE, dxn, 0.0f, gh->W[SPQR_LIN_GATE], g->ds, g->xn2, N)) ||
        (st = lin_bwd(g, SPQR_LIN_UP, dxn, 1.0f, gh->W[SPQR_LIN_UP], g->du, g->xn2, N)))
        return st;
    /* xn2 = rmsnorm(h) */
    k_rmsnorm_bwd_dx<<<(unsigned)N, NT>>>(g->dh, dxn, g->h, g->ffn_norm, g->rinv2, D);
    CKL("rmsnorm backward kernel");
    if (gh->ffn_norm) {
        k_rmsnorm_bwd_dw<<<(unsigned)((D + 31) / 32), dim3(32, 8)>>>(g->dn2, dxn, g->h, g->rinv2, N, D);
        CKL("rmsnorm backward kernel");
    }
    /* h = x + Wo att */
    if ((st = lin_bwd(g, SPQR_LIN_O, g->datt, 0.0f, gh->W[SPQR_LIN_O], g->dh, g->att, N))) return st;
    /* attention and RoPE */
    for (int sq = 0; sq < nseq; sq++)
        if ((st = attn_bwd(g, sq, T1))) return st;
    if ((st = rope(g, g->dq, N, T1, c->n_heads, qd, -1.0f)) || (st = rope(g, g->dk, N, T1, c->n_kv_heads, kvd, -1.0f)))
        return st;
    /* q, k, v = W xn1 */
    if ((st = lin_bwd(g, SPQR_LIN_Q, dxn, 0.0f, gh->W[SPQR_LIN_Q], g->dq, g->xn1, N)) ||
        (st = lin_bwd(g, SPQR_LIN_K, dxn, 1.0f, gh->W[SPQR_LIN_K], g->dk, g->xn1, N)) ||
        (st = lin_bwd(g, SPQR_LIN_V, dxn, 1.0f, gh->W[SPQR_LIN_V], g->dv, g->xn1, N)))
        return st;
    /* xn1 = rmsnorm(x); the residual carries dh into dX (dh becomes dX) */
    k_rmsnorm_bwd_dx<<<(unsigned)N, NT>>>(g->dh, dxn, g->x, g->attn_norm, g->rinv1, D);
    CKL("rmsnorm backward kernel");
    if (gh->attn_norm) {
        k_rmsnorm_bwd_dw<<<(unsigned)((D + 31) / 32), dim3(32, 8)>>>(g->dn1, dxn, g->x, g->rinv1, N, D);
        CKL("rmsnorm backward kernel");
    }
    if (dX_host) CK(cudaMemcpy(dX_host, g->dh, ND * sizeof(float), cudaMemcpyDeviceToHost), "dX download");
    else CK(cudaDeviceSynchronize(), "block backward");

    /* add the gradients into the caller's arrays */
    for (int l = 0; l < SPQR_LIN_PER_BLOCK; l++)
        if (gh->W[l] && (st = add_to_host(g, gh->W[l], g->dW[l], (size_t)g->rows[l] * (size_t)g->cols[l])))
            return st;
    if (gh->attn_norm && (st = add_to_host(g, gh->attn_norm, g->dn1, (size_t)D))) return st;
    if (gh->ffn_norm && (st = add_to_host(g, gh->ffn_norm, g->dn2, (size_t)D))) return st;
    return SPQR_OK;
}
