/* gpu_model.cu - the LLaMA forward pass on the GPU: the same computation as
 * src/model/forward.c (RMSNorm, RoPE, causal GQA attention, SwiGLU,
 * residuals, final norm, head). Quantized linears run through their
 * format's CUDA kernels (spqr_qformat.cuda_gemm; formats without any are
 * uploaded dequantized), dense ones through cuBLAS SGEMM (float32, no TF32),
 * and small kernels do the rest. Everything runs on the legacy default stream. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/gpu/gpu_model.h"
#include "kernels/cuda/cuda_rt.h"
#include "kernels/cuda/reduce.cuh"

extern "C" {
#include "model/model.h"
#include "util/common.h"
}

#define EVAL_BATCH_TOKENS 2048 /* as src/eval/perplexity.c */
#define HEAD_CHUNK 512
#define NTHREADS 256
#define ATTN_THREADS 128

/* ------------------------------------------------------------------------ */
/* error helpers                                                             */

static spqr_status cuda_err(cudaError_t e, const char *what) {
    if (e == cudaErrorMemoryAllocation)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "out of GPU memory (%s)", what);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "no usable CUDA device (%s)", cudaGetErrorString(e));
    return spqr_fail(SPQR_ERR_INTERNAL, "CUDA error in %s: %s", what, cudaGetErrorString(e));
}
#define CK(call, what)                                   \
    do {                                                 \
        cudaError_t e_ = (call);                         \
        if (e_ != cudaSuccess) return cuda_err(e_, what); \
    } while (0)
#define CKL(what) CK(cudaGetLastError(), what)

static spqr_status dmalloc(void **p, size_t bytes, const char *what) {
    *p = NULL;
    if (bytes == 0) bytes = 16;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return cuda_err(e, what);
    }
    return SPQR_OK;
}

static spqr_status upload(void **d, const void *h, size_t bytes, const char *what) {
    spqr_status st = dmalloc(d, bytes, what);
    if (st) return st;
    CK(cudaMemcpy(*d, h, bytes, cudaMemcpyHostToDevice), what);
    return SPQR_OK;
}

/* ------------------------------------------------------------------------ */
/* model                                                                      */

typedef struct glin {
    int rows, cols;
    const spqr_qformat *fmt; /* quantized format with CUDA kernels, or NULL */
    void *dev;               /* its device payload                          */
    float *w;             /* dense [rows][cols] float32 */
    int w_borrowed;       /* w aliases the embedding table */
    float *bias;          /* [rows] or NULL */
} glin;

typedef struct gblock {
    float *attn_norm, *ffn_norm;
    glin lin[SPQR_LIN_PER_BLOCK];
} gblock;

struct spqr_gpu_model {
    spqr_config cfg;
    cublasHandle_t blas;
    int have_blas;
    float *emb;        /* [vocab][dim] */
    float *final_norm; /* [dim] */
    glin head;
    gblock *blocks;
    float *rope_cos, *rope_sin; /* [max_seq_len][head_dim/2] */
    size_t bytes;
};

static void glin_free(glin *l) {
    if (l->fmt && l->dev) l->fmt->cuda_free(l->dev);
    if (!l->w_borrowed) cudaFree(l->w);
    cudaFree(l->bias);
    memset(l, 0, sizeof *l);
}

void spqr_gpu_model_free(spqr_gpu_model *g) {
    if (!g) return;
    if (g->blocks) {
        for (int b = 0; b < g->cfg.n_layers; b++) {
            cudaFree(g->blocks[b].attn_norm);
            cudaFree(g->blocks[b].ffn_norm);
            for (int i = 0; i < SPQR_LIN_PER_BLOCK; i++) glin_free(&g->blocks[b].lin[i]);
        }
        free(g->blocks);
    }
    glin_free(&g->head);
    cudaFree(g->emb);
    cudaFree(g->final_norm);
    cudaFree(g->rope_cos);
    cudaFree(g->rope_sin);
    if (g->have_blas) cublasDestroy(g->blas);
    free(g);
}

size_t spqr_gpu_model_bytes(const spqr_gpu_model *g) { return g ? g->bytes : 0; }

/* float32 copy of a float-like tensor on the device */
static spqr_status upload_f32(float **d, const void *src, spqr_dtype dt, size_t n, const char *what, size_t *bytes) {
    *d = NULL;
    if (dt == SPQR_DT_F32) {
        *bytes += n * sizeof(float);
        return upload((void **)d, src, n * sizeof(float), what);
    }
    float *tmp = (float *)spqr_malloc_array(n, sizeof(float));
    if (!tmp) return spqr_fail(SPQR_ERR_NOMEM, "out of memory converting %s", what);
    spqr_to_f32(src, dt, n, tmp);
    spqr_status st = upload((void **)d, tmp, n * sizeof(float), what);
    free(tmp);
    *bytes += n * sizeof(float);
    return st;
}

static spqr_status glin_upload(const spqr_linear *l, glin *o, const spqr_tensor *emb, float *demb, size_t *bytes,
                               const char *what) {
    memset(o, 0, sizeof *o);
    o->rows = l->rows;
    o->cols = l->cols;
    spqr_status st = SPQR_OK;
    const spqr_dense *dw = spqr_linear_dense(l);
    if (!dw && l->fmt->cuda_upload) {
        size_t b = 0;
        if ((st = l->fmt->cuda_upload(l->payload, &o->dev, &b))) return st;
        o->fmt = l->fmt;
        *bytes += b;
    } else if (!dw) {
        /* a format without GPU kernels runs dequantized */
        float *tmp = (float *)spqr_malloc_array((size_t)l->rows * (size_t)l->cols, sizeof(float));
        if (!tmp) return spqr_fail(SPQR_ERR_NOMEM, "out of memory dequantizing %s", what);
        st = l->fmt->dequantize(l->payload, tmp);
        if (!st) st = upload_f32(&o->w, tmp, SPQR_DT_F32, (size_t)l->rows * (size_t)l->cols, what, bytes);
        free(tmp);
        if (st) return st;
    } else if (emb && demb && dw->data == emb->data && dw->dt == emb->dt && dw->rows == emb->rows &&
               dw->cols == emb->cols) {
        o->w = demb; /* tied embeddings */
        o->w_borrowed = 1;
    } else {
        if (dw->rows != l->rows || dw->cols != l->cols)
            return spqr_fail(SPQR_ERR_INTERNAL, "%s: weight is %lld x %lld, linear is %d x %d", what,
                             (long long)dw->rows, (long long)dw->cols, l->rows, l->cols);
        if ((st = upload_f32(&o->w, dw->data, dw->dt, (size_t)l->rows * (size_t)l->cols, what, bytes))) return st;
    }
    if (l->bias) {
        *bytes += (size_t)l->rows * sizeof(float);
        if ((st = upload((void **)&o->bias, l->bias, (size_t)l->rows * sizeof(float), what))) return st;
    }
    return SPQR_OK;
}

/* Device bytes the weights will take (packed layers estimated from their
 * packed size plus padding). */
static size_t lin_estimate(const spqr_linear *l) {
    size_t b = 0;
    if (!spqr_linear_dense(l) && l->fmt->cuda_estimate) b = l->fmt->cuda_estimate(l->payload);
    else b = (size_t)l->rows * (size_t)l->cols * sizeof(float);
    if (l->bias) b += (size_t)l->rows * sizeof(float);
    return b;
}

static size_t work_bytes(const spqr_config *c, size_t N, size_t logit_rows);

extern "C" spqr_status spqr_gpu_model_new(const spqr_model *m, spqr_gpu_model **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_model_new: out is NULL");
    *out = NULL;
    if (!m) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_model_new: model is NULL");
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev <= 0) {
        cudaGetLastError();
        return spqr_fail(SPQR_ERR_NO_DEVICE, "no CUDA device (%s)",
                         e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    const spqr_config *c = &m->cfg;
    size_t D = (size_t)c->dim, V = (size_t)c->vocab_size;
    size_t need = V * D * 4 + D * 4 + (size_t)c->n_layers * 2 * D * 4 + (size_t)c->max_seq_len * c->head_dim * 4;
    if (!(spqr_linear_dense(&m->head) && spqr_linear_dense(&m->head)->data == m->tok_emb.data))
        need += lin_estimate(&m->head);
    for (int b = 0; b < c->n_layers; b++)
        for (int i = 0; i < SPQR_LIN_PER_BLOCK; i++) need += lin_estimate(&m->blocks[b].lin[i]);
    need += work_bytes(c, EVAL_BATCH_TOKENS, HEAD_CHUNK) + ((size_t)64 << 20);
    size_t freeb = 0, total = 0;
    spqr_status ms = spqr_cuda_mem_info(&freeb, &total);
    if (ms) return ms;
    if (need > freeb)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "model needs %.1f MiB on the GPU, %.1f MiB free", need / 1048576.0,
                         freeb / 1048576.0);

    spqr_gpu_model *g = (spqr_gpu_model *)calloc(1, sizeof *g);
    if (!g) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    g->cfg = *c;
    spqr_status st = SPQR_OK;
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuBLAS could not be initialized");
    }
    g->have_blas = 1;
    cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH); /* plain fp32, no TF32 */
    g->blocks = (gblock *)calloc((size_t)c->n_layers, sizeof(gblock));
    if (!g->blocks) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if (!st) st = upload_f32(&g->emb, m->tok_emb.data, m->tok_emb.dt, V * D, "token embeddings", &g->bytes);
    if (!st) st = upload_f32(&g->final_norm, m->final_norm, SPQR_DT_F32, D, "final norm", &g->bytes);
    if (!st) st = glin_upload(&m->head, &g->head, &m->tok_emb, g->emb, &g->bytes, "head");
    for (int b = 0; b < c->n_layers && !st; b++) {
        const spqr_block *mb = &m->blocks[b];
        gblock *gb = &g->blocks[b];
        st = upload_f32(&gb->attn_norm, mb->attn_norm, SPQR_DT_F32, D, "attention norm", &g->bytes);
        if (!st) st = upload_f32(&gb->ffn_norm, mb->ffn_norm, SPQR_DT_F32, D, "MLP norm", &g->bytes);
        for (int i = 0; i < SPQR_LIN_PER_BLOCK && !st; i++)
            st = glin_upload(&mb->lin[i], &gb->lin[i], NULL, NULL, &g->bytes, spqr_linear_names[i]);
    }
    if (!st) {
        /* RoPE tables exactly as forward.c computes them (on the host) */
        int half = c->head_dim / 2;
        size_t n = (size_t)c->max_seq_len * (size_t)half;
        float *cs = (float *)spqr_malloc_array(n, sizeof(float)), *sn = (float *)spqr_malloc_array(n, sizeof(float));
        if (!cs || !sn) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
        if (!st) spqr_rope_tables(c, 0, c->max_seq_len, cs, sn);
        if (!st) st = upload_f32(&g->rope_cos, cs, SPQR_DT_F32, n, "RoPE table", &g->bytes);
        if (!st) st = upload_f32(&g->rope_sin, sn, SPQR_DT_F32, n, "RoPE table", &g->bytes);
        free(cs);
        free(sn);
    }
    if (st) {
        spqr_gpu_model_free(g);
        return st;
    }
    *out = g;
    return SPQR_OK;
}

/* ------------------------------------------------------------------------ */
/* kernels                                                                    */

__global__ void k_embed(const float *emb, const int32_t *tok, float *X, int D) {
    int r = blockIdx.x;
    const float *e = emb + (size_t)tok[r] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) X[(size_t)r * D + i] = e[i];
}

/* out[r] = w * x[r] / sqrt(mean(x[r]^2) + eps); out may equal x */
__global__ void k_rmsnorm(float *out, const float *x, const float *w, int D, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * D;
    float *o = out + (size_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    ss = ss / (float)D + eps;
    ss = 1.0f / sqrtf(ss);
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = w[i] * (ss * xr[i]);
}

/* RoPE in place on v[N][stride] (nh heads of hd); row r is at position
 * pos[r], or pos0 + (r % T1) when pos is NULL. */
__global__ void k_rope(float *v, int N, int T1, int pos0, const int32_t *pos, int nh, int hd, int stride,
                       const float *cosv, const float *sinv, int interleaved) {
    int half = hd / 2;
    size_t total = (size_t)N * nh * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t rh = idx / half;
        int h = (int)(rh % nh);
        int r = (int)(rh / nh);
        const int p = pos ? pos[r] : pos0 + r % T1;
        float cs = cosv[(size_t)p * half + i], sn = sinv[(size_t)p * half + i];
        float *x = v + (size_t)r * stride + (size_t)h * hd;
        if (interleaved) {
            float a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * cs - b * sn;
            x[2 * i + 1] = a * sn + b * cs;
        } else {
            float a = x[i], b = x[i + half];
            x[i] = a * cs - b * sn;
            x[i + half] = b * cs + a * sn;
        }
    }
}

/* Causal GQA attention, one block per (query t, head h, sequence sq).
 * Q/O rows: sq*T1 + t, width nh*hd. K/V of sequence sq: ctx = pos0+T1 rows
 * of kvd floats starting at row sq*ctx. Query t sees keys 0..pos0+t.
 * Warps take keys in turn (lanes over the head dimension, so loads are
 * coalesced). Dynamic shared memory: hd + ctx + nwarps*hd floats. */
__global__ void k_attention(const float *Q, const float *K, const float *V, float *O, int T1, int pos0, int nh,
                            int kv_mul, int hd, float scale) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    int t = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    int qd = nh * hd, kvd = (nh / kv_mul) * hd, ctx = pos0 + T1;
    float *qs = sm, *p = sm + hd, *part = sm + hd + ctx;
    size_t row = (size_t)sq * T1 + t;
    const float *q = Q + row * qd + (size_t)h * hd;
    const float *Kh = K + (size_t)sq * ctx * kvd + (size_t)(h / kv_mul) * hd;
    const float *Vh = V + (size_t)sq * ctx * kvd + (size_t)(h / kv_mul) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = q[i];
    __syncthreads();
    int n = pos0 + t + 1;
    for (int s = wid; s < n; s += nwarp) {
        const float *k = Kh + (size_t)s * kvd;
        float d = 0.0f;
        for (int i = lane; i < hd; i += 32) d += qs[i] * k[i];
        d = warp_sum(d);
        if (lane == 0) p[s] = d * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < n; s += blockDim.x) mx = fmaxf(mx, p[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        float e = expf(p[s] - mx);
        p[s] = e;
        sum += e;
    }
    sum = block_sum(sum, red); /* also a barrier: p[] complete */
    for (int i0 = 0; i0 < hd; i0 += 32) {
        int i = i0 + lane;
        if (i < hd) {
            float acc = 0.0f;
            for (int s = wid; s < n; s += nwarp) acc += p[s] * Vh[(size_t)s * kvd + i];
            part[wid * hd + i] = acc;
        }
    }
    __syncthreads();
    float inv = 1.0f / sum;
    float *o = O + row * qd + (size_t)h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.0f;
        for (int w = 0; w < nwarp; w++) acc += part[w * hd + i];
        o[i] = acc * inv;
    }
}

__global__ void k_silu_mul(float *g, const float *u, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

__global__ void k_add(float *x, const float *y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

__global__ void k_add_bias(float *Y, const float *b, int rows, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        Y[i] += b[i % rows];
}

/* nll[r] = log sum exp(logits[r]) - logits[r][tgt[r]] (0 where tgt < 0) */
__global__ void k_nll(const float *logits, const int32_t *tgt, int V, double *nll) {
    __shared__ float red[32];
    __shared__ double redd[32];
    int r = blockIdx.x;
    int tg = tgt[r];
    if (tg < 0) {
        if (threadIdx.x == 0) nll[r] = 0.0;
        return;
    }
    const float *l = logits + (size_t)r * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, l[i]);
    mx = block_max(mx, red);
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += (double)expf(l[i] - mx);
    s = block_sum_d(s, redd);
    if (threadIdx.x == 0) nll[r] = log(s) + (double)mx - (double)l[tg];
}

static int grid_for(size_t n) {
    size_t b = (n + NTHREADS - 1) / NTHREADS;
    if (b > 65535) b = 65535;
    if (b < 1) b = 1;
    return (int)b;
}

/* ------------------------------------------------------------------------ */
/* forward                                                                    */

typedef struct work {
    size_t cap;        /* tokens */
    size_t logit_rows; /* rows of the logits buffer */
    float *x, *xb, *q, *k, *v, *a, *g, *u, *logits;
    int32_t *tok, *tgt;
    double *nll;
} work;

static size_t work_bytes(const spqr_config *c, size_t N, size_t logit_rows) {
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, qd = (size_t)c->n_heads * c->head_dim,
           kvd = (size_t)c->n_kv_heads * c->head_dim;
    return N * (2 * D + 2 * qd + 2 * kvd + 2 * F) * 4 + logit_rows * (size_t)c->vocab_size * 4 + N * (8 + 8);
}

static void work_free(work *w) {
    cudaFree(w->x);
    cudaFree(w->xb);
    cudaFree(w->q);
    cudaFree(w->k);
    cudaFree(w->v);
    cudaFree(w->a);
    cudaFree(w->g);
    cudaFree(w->u);
    cudaFree(w->logits);
    cudaFree(w->tok);
    cudaFree(w->tgt);
    cudaFree(w->nll);
    memset(w, 0, sizeof *w);
}

/* kv: allocate k/v for N rows (else the caller's cache is used) */
static spqr_status work_alloc(const spqr_config *c, size_t N, size_t logit_rows, int kv, work *w) {
    memset(w, 0, sizeof *w);
    w->cap = N;
    w->logit_rows = logit_rows;
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, qd = (size_t)c->n_heads * c->head_dim,
           kvd = (size_t)c->n_kv_heads * c->head_dim, V = (size_t)c->vocab_size;
    size_t wide = qd > D ? qd : D;
    spqr_status st = SPQR_OK;
    if (!st) st = dmalloc((void **)&w->x, N * D * 4, "activations");
    if (!st) st = dmalloc((void **)&w->xb, N * wide * 4, "activations");
    if (!st) st = dmalloc((void **)&w->q, N * qd * 4, "activations");
    if (!st && kv) st = dmalloc((void **)&w->k, N * kvd * 4, "activations");
    if (!st && kv) st = dmalloc((void **)&w->v, N * kvd * 4, "activations");
    if (!st) st = dmalloc((void **)&w->a, N * qd * 4, "activations");
    if (!st) st = dmalloc((void **)&w->g, N * F * 4, "activations");
    if (!st) st = dmalloc((void **)&w->u, N * F * 4, "activations");
    if (!st) st = dmalloc((void **)&w->logits, logit_rows * V * 4, "logits");
    if (!st) st = dmalloc((void **)&w->tok, N * 4, "tokens");
    if (!st) st = dmalloc((void **)&w->tgt, N * 4, "targets");
    if (!st) st = dmalloc((void **)&w->nll, N * 8, "nll");
    if (st) work_free(w);
    return st;
}

/* Y[N][rows] = X[N][cols] W^T (+ bias) */
static spqr_status lin_forward(spqr_gpu_model *g, const glin *l, const float *X, int N, float *Y) {
    if (N <= 0) return SPQR_OK;
    if (l->dev) {
        spqr_status st = l->fmt->cuda_gemm(l->dev, X, N, Y);
        if (st) return st;
    } else {
        const float one = 1.0f, zero = 0.0f;
        /* column-major: Y^T (rows x N) = W^T^T ... i.e. op(A) = W from A = W^T (cols x rows, lda cols) */
        cublasStatus_t bs = cublasSgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, l->rows, N, l->cols, &one, l->w, l->cols,
                                        X, l->cols, &zero, Y, l->rows);
        if (bs != CUBLAS_STATUS_SUCCESS)
            return spqr_fail(SPQR_ERR_INTERNAL, "cublasSgemm failed (%d) for a %d x %d linear, %d tokens", (int)bs,
                             l->rows, l->cols, N);
    }
    if (l->bias) {
        size_t n = (size_t)N * l->rows;
        k_add_bias<<<grid_for(n), NTHREADS>>>(Y, l->bias, l->rows, n);
        CKL("bias kernel");
    }
    return SPQR_OK;
}

static spqr_status attention(const spqr_gpu_model *g, const float *Q, const float *K, const float *V, float *O,
                             int nseq, int T1, int pos0) {
    const spqr_config *c = &g->cfg;
    int hd = c->head_dim, ctx = pos0 + T1;
    size_t smem = (size_t)(hd + ctx + ATTN_THREADS / 32 * hd) * sizeof(float);
    if (smem > 48 * 1024) {
        int dev = 0, maxs = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&maxs, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (smem + 256 > (size_t)maxs)
            return spqr_fail(SPQR_ERR_UNSUPPORTED, "GPU attention: context of %d tokens is too long", ctx);
        CK(cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), "attention");
    }
    dim3 grid((unsigned)T1, (unsigned)c->n_heads, (unsigned)nseq);
    float scale = 1.0f / sqrtf((float)hd);
    k_attention<<<grid, ATTN_THREADS, smem>>>(Q, K, V, O, T1, pos0, c->n_heads, c->n_heads / c->n_kv_heads, hd, scale);
    CKL("attention kernel");
    return SPQR_OK;
}

/* One block on w->x [nseq*T1][dim] at positions pos0..pos0+T1-1; Kc/Vc hold
 * per sequence pos0+T1 rows of kvd floats, the first pos0 filled (pos0 > 0
 * only with nseq == 1). */
/* The rest of a block after attention (w->a holds its output): o_proj and
 * the residual, then the SwiGLU MLP and its residual; shared by the
 * sequence and the prefix-tree forward passes. */
static spqr_status block_tail(spqr_gpu_model *g, const gblock *b, work *w, int N) {
    const spqr_config *c = &g->cfg;
    const int D = c->dim, F = c->hidden_dim;
    spqr_status st;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_O], w->a, N, w->xb))) return st;
    size_t nd = (size_t)N * D, nf = (size_t)N * F;
    k_add<<<grid_for(nd), NTHREADS>>>(w->x, w->xb, nd);
    CKL("add kernel");
    k_rmsnorm<<<N, NTHREADS>>>(w->xb, w->x, b->ffn_norm, D, c->norm_eps);
    CKL("rmsnorm kernel");
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_GATE], w->xb, N, w->g))) return st;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_UP], w->xb, N, w->u))) return st;
    k_silu_mul<<<grid_for(nf), NTHREADS>>>(w->g, w->u, nf);
    CKL("silu kernel");
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_DOWN], w->g, N, w->xb))) return st;
    k_add<<<grid_for(nd), NTHREADS>>>(w->x, w->xb, nd);
    CKL("add kernel");
    return SPQR_OK;
}

static spqr_status block_run(spqr_gpu_model *g, int layer, work *w, int nseq, int T1, int pos0, float *Kc, float *Vc) {
    const spqr_config *c = &g->cfg;
    const gblock *b = &g->blocks[layer];
    int N = nseq * T1, D = c->dim;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    spqr_status st;
    k_rmsnorm<<<N, NTHREADS>>>(w->xb, w->x, b->attn_norm, D, c->norm_eps);
    CKL("rmsnorm kernel");
    float *Kn = Kc + (size_t)pos0 * kvd, *Vn = Vc + (size_t)pos0 * kvd;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_Q], w->xb, N, w->q))) return st;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_K], w->xb, N, Kn))) return st;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_V], w->xb, N, Vn))) return st;
    size_t nq = (size_t)N * c->n_heads * (c->head_dim / 2), nk = (size_t)N * c->n_kv_heads * (c->head_dim / 2);
    k_rope<<<grid_for(nq), NTHREADS>>>(w->q, N, T1, pos0, NULL, c->n_heads, c->head_dim, (int)qd, g->rope_cos,
                                       g->rope_sin, c->rope_interleaved);
    k_rope<<<grid_for(nk), NTHREADS>>>(Kn, N, T1, pos0, NULL, c->n_kv_heads, c->head_dim, (int)kvd, g->rope_cos,
                                       g->rope_sin, c->rope_interleaved);
    CKL("rope kernel");
    if ((st = attention(g, w->q, Kc, Vc, w->a, nseq, T1, pos0))) return st;
    return block_tail(g, b, w, N);
}

static spqr_status check_tokens(const spqr_config *c, const int32_t *tokens, size_t n) {
    for (size_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return spqr_fail(SPQR_ERR_INVALID_ARG, "token id %d at position %zu is outside the vocabulary (%d)",
                             tokens[t], t, c->vocab_size);
    return SPQR_OK;
}

/* embedding + all blocks for nseq x T1 tokens already in w->tok (pos 0..) */
static spqr_status run_blocks(spqr_gpu_model *g, work *w, int nseq, int T1) {
    int N = nseq * T1;
    k_embed<<<N, NTHREADS>>>(g->emb, w->tok, w->x, g->cfg.dim);
    CKL("embedding kernel");
    for (int l = 0; l < g->cfg.n_layers; l++) {
        spqr_status st = block_run(g, l, w, nseq, T1, 0, w->k, w->v);
        if (st) return st;
    }
    k_rmsnorm<<<N, NTHREADS>>>(w->x, w->x, g->final_norm, g->cfg.dim, g->cfg.norm_eps);
    CKL("rmsnorm kernel");
    return SPQR_OK;
}

extern "C" spqr_status spqr_gpu_forward(spqr_gpu_model *g, const int32_t *tokens, int nseq, int T,
                                        float *host_logits) {
    if (!g || !tokens || nseq <= 0 || T <= 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_forward: bad arguments");
    if (T > g->cfg.max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%d tokens exceed the model's context of %d", T, g->cfg.max_seq_len);
    size_t N = (size_t)nseq * (size_t)T, V = (size_t)g->cfg.vocab_size;
    spqr_status st = check_tokens(&g->cfg, tokens, N);
    if (st) return st;
    work w;
    if ((st = work_alloc(&g->cfg, N, N, 1, &w))) return st;
    if (cudaMemcpy(w.tok, tokens, N * 4, cudaMemcpyHostToDevice) != cudaSuccess)
        st = cuda_err(cudaGetLastError(), "token upload");
    if (!st) st = run_blocks(g, &w, nseq, T);
    for (size_t r0 = 0; r0 < N && !st; r0 += HEAD_CHUNK) {
        int n = (int)(N - r0 < HEAD_CHUNK ? N - r0 : HEAD_CHUNK);
        st = lin_forward(g, &g->head, w.x + r0 * g->cfg.dim, n, w.logits + r0 * V);
    }
    if (!st && host_logits) {
        cudaError_t e = cudaMemcpy(host_logits, w.logits, N * V * 4, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) st = cuda_err(e, "logits download");
    }
    if (!st) {
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) st = cuda_err(e, "forward");
    }
    work_free(&w);
    return st;
}

extern "C" spqr_status spqr_gpu_eval_nll(spqr_gpu_model *g, const int32_t *ids, size_t n_ids, int S,
                                         spqr_ppl_result *res) {
    if (!g || !ids || !res || S < 2) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_eval_nll: bad arguments");
    if (S > g->cfg.max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "seqlen %d is longer than the model's context of %d tokens", S,
                         g->cfg.max_seq_len);
    int64_t windows = (int64_t)(n_ids / (size_t)S);
    if (windows == 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "text has %zu tokens, fewer than one window of %d", n_ids, S);
    spqr_status st = check_tokens(&g->cfg, ids, (size_t)windows * S);
    if (st) return st;
    int per = EVAL_BATCH_TOKENS / S;
    if (per < 1) per = 1;
    if (per > windows) per = (int)windows;
    size_t cap = (size_t)per * S, V = (size_t)g->cfg.vocab_size, D = (size_t)g->cfg.dim;
    int32_t *tgt = (int32_t *)spqr_malloc_array(cap, sizeof(int32_t));
    double *nll_h = (double *)spqr_malloc_array(cap, sizeof(double));
    if (!tgt || !nll_h) {
        free(tgt);
        free(nll_h);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory for evaluation buffers");
    }
    work w;
    if ((st = work_alloc(&g->cfg, cap, HEAD_CHUNK, 1, &w))) {
        free(tgt);
        free(nll_h);
        return st;
    }
    double t0 = spqr_now(), nll = 0.0;
    for (int64_t w0 = 0; w0 < windows && !st; w0 += per) {
        int nw = (int)((windows - w0) < per ? (windows - w0) : per);
        size_t N = (size_t)nw * S;
        const int32_t *tok = ids + (size_t)w0 * S;
        for (size_t r = 0; r < N; r++) tgt[r] = (int)(r % (size_t)S) == S - 1 ? -1 : tok[r + 1];
        cudaError_t e = cudaMemcpy(w.tok, tok, N * 4, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(w.tgt, tgt, N * 4, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) st = cuda_err(e, "token upload");
        if (!st) st = run_blocks(g, &w, nw, S);
        for (size_t r0 = 0; r0 < N && !st; r0 += HEAD_CHUNK) {
            int n = (int)(N - r0 < HEAD_CHUNK ? N - r0 : HEAD_CHUNK);
            st = lin_forward(g, &g->head, w.x + r0 * D, n, w.logits);
            if (!st) {
                k_nll<<<n, NTHREADS>>>(w.logits, w.tgt + r0, (int)V, w.nll + r0);
                e = cudaGetLastError();
                if (e != cudaSuccess) st = cuda_err(e, "nll kernel");
            }
        }
        if (!st) {
            e = cudaMemcpy(nll_h, w.nll, N * sizeof(double), cudaMemcpyDeviceToHost);
            if (e != cudaSuccess) st = cuda_err(e, "nll download");
        }
        for (size_t r = 0; r < N && !st; r++) nll += nll_h[r];
    }
    work_free(&w);
    free(tgt);
    free(nll_h);
    if (st) return st;
    spqr_ppl_fill(res, nll, windows, S, n_ids, spqr_now() - t0);
    return SPQR_OK;
}

/* ------------------------------------------------------------------------ */
/* KV-cached decoding                                                         */

struct spqr_gpu_session {
    spqr_gpu_model *g;
    int pos;
    work w;        /* one token */
    float *kc, *vc; /* [n_layers][max_seq_len][kvd] */
    float *logits; /* host [vocab] */
};

extern "C" void spqr_gpu_session_free(spqr_gpu_session *s) {
    if (!s) return;
    work_free(&s->w);
    cudaFree(s->kc);
    cudaFree(s->vc);
    free(s->logits);
    free(s);
}

extern "C" spqr_status spqr_gpu_session_new(spqr_gpu_model *g, spqr_gpu_session **out) {
    if (!g || !out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_session_new: bad arguments");
    *out = NULL;
    spqr_gpu_session *s = (spqr_gpu_session *)calloc(1, sizeof *s);
    if (!s) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    s->g = g;
    const spqr_config *c = &g->cfg;
    size_t kv = (size_t)c->n_layers * (size_t)c->max_seq_len * (size_t)c->n_kv_heads * c->head_dim * 4;
    spqr_status st = work_alloc(c, 1, 1, 0, &s->w);
    if (!st) st = dmalloc((void **)&s->kc, kv, "KV cache");
    if (!st) st = dmalloc((void **)&s->vc, kv, "KV cache");
    if (!st && !(s->logits = (float *)spqr_malloc_array((size_t)c->vocab_size, sizeof(float))))
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if (st) {
        spqr_gpu_session_free(s);
        return st;
    }
    *out = s;
    return SPQR_OK;
}

extern "C" int spqr_gpu_session_pos(const spqr_gpu_session *s) { return s ? s->pos : 0; }

extern "C" spqr_status spqr_gpu_session_step(spqr_gpu_session *s, int32_t token, const float **logits) {
    if (!s || !logits) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_session_step: bad arguments");
    spqr_gpu_model *g = s->g;
    const spqr_config *c = &g->cfg;
    if (s->pos >= c->max_seq_len)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "context of %d tokens is full", c->max_seq_len);
    spqr_status st = check_tokens(c, &token, 1);
    if (st) return st;
    size_t per_layer = (size_t)c->max_seq_len * (size_t)c->n_kv_heads * c->head_dim;
    CK(cudaMemcpy(s->w.tok, &token, 4, cudaMemcpyHostToDevice), "token upload");
    k_embed<<<1, NTHREADS>>>(g->emb, s->w.tok, s->w.x, c->dim);
    CKL("embedding kernel");
    for (int l = 0; l < c->n_layers; l++)
        if ((st = block_run(g, l, &s->w, 1, 1, s->pos, s->kc + l * per_layer, s->vc + l * per_layer))) return st;
    k_rmsnorm<<<1, NTHREADS>>>(s->w.x, s->w.x, g->final_norm, c->dim, c->norm_eps);
    CKL("rmsnorm kernel");
    if ((st = lin_forward(g, &g->head, s->w.x, 1, s->w.logits))) return st;
    CK(cudaMemcpy(s->logits, s->w.logits, (size_t)c->vocab_size * 4, cudaMemcpyDeviceToHost), "logits download");
    s->pos++;
    *logits = s->logits;
    return SPQR_OK;
}

/* ------------------------------------------------------------------------ */
/* zero-shot scoring over packed prefix trees (model/forward_tree.h)         */

extern "C" {
#include "model/forward_tree.h"
}

/* Tree-masked GQA attention, one block per (query row t, head h): keys
 * seg0[t]..t whose branch is 0 or branch[t]. Q/O [N][nh*hd], K/V [N][kvd].
 * Dynamic shared memory: hd + maxlen + nwarps*hd floats. */
__global__ void k_tree_attention(const float *Q, const float *K, const float *V, float *O, const int32_t *seg0,
                                 const int32_t *branch, int nh, int kv_mul, int hd, float scale) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    int t = blockIdx.x, h = blockIdx.y;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    int qd = nh * hd, kvd = (nh / kv_mul) * hd;
    int s0 = seg0[t], n = t - s0 + 1, bt = branch[t];
    float *qs = sm, *p = sm + hd;
    const float *q = Q + (size_t)t * qd + (size_t)h * hd;
    const float *Kh = K + (size_t)s0 * kvd + (size_t)(h / kv_mul) * hd;
    const float *Vh = V + (size_t)s0 * kvd + (size_t)(h / kv_mul) * hd;
    const int32_t *br = branch + s0;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = q[i];
    __syncthreads();
    for (int s = wid; s < n; s += nwarp) {
        bool ok = br[s] == 0 || br[s] == bt;
        float d = 0.0f;
        if (ok) {
            const float *k = Kh + (size_t)s * kvd;
            for (int i = lane; i < hd; i += 32) d += qs[i] * k[i];
            d = warp_sum(d);
        }
        if (lane == 0) p[s] = ok ? d * scale : -INFINITY;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < n; s += blockDim.x) mx = fmaxf(mx, p[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        float e = p[s] == -INFINITY ? 0.0f : expf(p[s] - mx);
        p[s] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    float *part = p + n;
    for (int i0 = 0; i0 < hd; i0 += 32) {
        int i = i0 + lane;
        if (i < hd) {
            float acc = 0.0f;
            for (int s = wid; s < n; s += nwarp)
                if (p[s] != 0.0f) acc += p[s] * Vh[(size_t)s * kvd + i];
            part[wid * hd + i] = acc;
        }
    }
    __syncthreads();
    float inv = 1.0f / sum;
    float *o = O + (size_t)t * qd + (size_t)h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.0f;
        for (int w = 0; w < nwarp; w++) acc += part[w * hd + i];
        o[i] = acc * inv;
    }
}

__global__ void k_gather_rows(const float *X, const int32_t *rows, float *H, int D) {
    int r = blockIdx.x;
    const float *x = X + (size_t)rows[r] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) H[(size_t)r * D + i] = x[i];
}

/* per row: log-sum-exp (double) and argmax (lowest index among maxima) */
__global__ void k_row_stats(const float *logits, int V, double *lse, int32_t *amax) {
    __shared__ float bv[NTHREADS];
    __shared__ int bi[NTHREADS];
    __shared__ double redd[32];
    const float *l = logits + (size_t)blockIdx.x * V;
    float mv = -INFINITY;
    int mi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (l[i] > mv) {
            mv = l[i];
            mi = i;
        }
    bv[threadIdx.x] = mv;
    bi[threadIdx.x] = mi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            int oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    float mx = bv[0];
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += (double)expf(l[i] - mx);
    s = block_sum_d(s, redd);
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = log(s) + (double)mx;
        amax[blockIdx.x] = bi[0];
    }
}

/* pairs k0..k0+n-1 whose rows lie in the chunk starting at row r0 */
__global__ void k_pairs(const float *logits, int V, const double *lse, const int32_t *amax, const int32_t *prow,
                        const int32_t *ptgt, int k0, int n, int r0, double *logp, uint8_t *greedy) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    k += k0;
    int r = prow[k] - r0, tg = ptgt[k];
    logp[k] = (double)logits[(size_t)r * V + tg] - lse[r];
    greedy[k] = amax[r] == tg;
}

static spqr_status block_run_tree(spqr_gpu_model *g, int layer, work *w, int N, const int32_t *dpos,
                                  const int32_t *dseg0, const int32_t *dbranch, int maxlen) {
    const spqr_config *c = &g->cfg;
    const gblock *b = &g->blocks[layer];
    int D = c->dim, hd = c->head_dim;
    size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
    spqr_status st;
    k_rmsnorm<<<N, NTHREADS>>>(w->xb, w->x, b->attn_norm, D, c->norm_eps);
    CKL("rmsnorm kernel");
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_Q], w->xb, N, w->q))) return st;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_K], w->xb, N, w->k))) return st;
    if ((st = lin_forward(g, &b->lin[SPQR_LIN_V], w->xb, N, w->v))) return st;
    size_t nq = (size_t)N * c->n_heads * (hd / 2), nk = (size_t)N * c->n_kv_heads * (hd / 2);
    k_rope<<<grid_for(nq), NTHREADS>>>(w->q, N, 1, 0, dpos, c->n_heads, hd, (int)qd, g->rope_cos, g->rope_sin,
                                          c->rope_interleaved);
    k_rope<<<grid_for(nk), NTHREADS>>>(w->k, N, 1, 0, dpos, c->n_kv_heads, hd, (int)kvd, g->rope_cos, g->rope_sin,
                                          c->rope_interleaved);
    CKL("rope kernel");
    size_t smem = (size_t)(hd + maxlen + ATTN_THREADS / 32 * hd) * sizeof(float);
    if (smem > 48 * 1024) {
        int dev = 0, maxs = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&maxs, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (smem + 256 > (size_t)maxs)
            return spqr_fail(SPQR_ERR_UNSUPPORTED, "GPU attention: segment of %d tokens is too long", maxlen);
        CK(cudaFuncSetAttribute(k_tree_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attention");
    }
    dim3 grid((unsigned)N, (unsigned)c->n_heads);
    k_tree_attention<<<grid, ATTN_THREADS, smem>>>(w->q, w->k, w->v, w->a, dseg0, dbranch, c->n_heads,
                                                   c->n_heads / c->n_kv_heads, hd, 1.0f / sqrtf((float)hd));
    CKL("tree attention kernel");
    return block_tail(g, b, w, N);
}

extern "C" spqr_status spqr_gpu_tree_score(spqr_gpu_model *g, const struct spqr_tree_batch *b, double *logp,
                                           uint8_t *greedy) {
    if (!g || !b || (b->n_pairs > 0 && (!logp || !greedy)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_gpu_tree_score: bad arguments");
    const spqr_config *c = &g->cfg;
    spqr_status st = spqr_tree_batch_check(c, b);
    if (st) return st;
    for (int k = 1; k < b->n_pairs; k++)
        if (b->pair_row[k] < b->pair_row[k - 1])
            return spqr_fail(SPQR_ERR_INVALID_ARG, "tree batch: pairs are not ordered by row");
    int N = b->n, maxlen = 0;
    size_t D = (size_t)c->dim, V = (size_t)c->vocab_size;
    int32_t *seg0 = (int32_t *)spqr_malloc_array((size_t)N, sizeof(int32_t));
    if (!seg0) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    for (int s = 0; s < b->n_seg; s++) {
        int L = b->seg_off[s + 1] - b->seg_off[s];
        if (L > maxlen) maxlen = L;
        for (int i = b->seg_off[s]; i < b->seg_off[s + 1]; i++) seg0[i] = b->seg_off[s];
    }
    int rows_cap = b->n_rows < HEAD_CHUNK ? (b->n_rows > 0 ? b->n_rows : 1) : HEAD_CHUNK;
    work w;
    if ((st = work_alloc(c, (size_t)N, (size_t)rows_cap, 1, &w))) {
        free(seg0);
        return st;
    }
    int32_t *dpos = NULL, *dseg0 = NULL, *dbr = NULL, *drows = NULL, *dprow = NULL, *dptgt = NULL, *damax = NULL;
    double *dlse = NULL, *dlogp = NULL;
    uint8_t *dgreedy = NULL;
    float *H = NULL;
    size_t np = (size_t)(b->n_pairs > 0 ? b->n_pairs : 1), nrw = (size_t)(b->n_rows > 0 ? b->n_rows : 1);
    if (!st) st = upload((void **)&dpos, b->pos, (size_t)N * 4, "positions");
    if (!st) st = upload((void **)&dseg0, seg0, (size_t)N * 4, "segments");
    if (!st) st = upload((void **)&dbr, b->branch, (size_t)N * 4, "branches");
    if (!st) st = upload((void **)&drows, b->rows, nrw * 4, "rows");
    if (!st) st = upload((void **)&dprow, b->pair_row, np * 4, "pairs");
    if (!st) st = upload((void **)&dptgt, b->pair_tgt, np * 4, "pairs");
    if (!st) st = dmalloc((void **)&damax, (size_t)rows_cap * 4, "argmax");
    if (!st) st = dmalloc((void **)&dlse, (size_t)rows_cap * 8, "log-sum-exp");
    if (!st) st = dmalloc((void **)&dlogp, np * 8, "log-probabilities");
    if (!st) st = dmalloc((void **)&dgreedy, np, "greedy flags");
    if (!st) st = dmalloc((void **)&H, (size_t)rows_cap * D * 4, "hidden rows");
    if (!st && cudaMemcpy(w.tok, b->tokens, (size_t)N * 4, cudaMemcpyHostToDevice) != cudaSuccess)
        st = cuda_err(cudaGetLastError(), "token upload");
    if (!st) {
        k_embed<<<N, NTHREADS>>>(g->emb, w.tok, w.x, c->dim);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = cuda_err(e, "embedding kernel");
    }
    for (int l = 0; l < c->n_layers && !st; l++) st = block_run_tree(g, l, &w, N, dpos, dseg0, dbr, maxlen);
    int k0 = 0;
    for (int r0 = 0; r0 < b->n_rows && !st; r0 += rows_cap) {
        int nr = b->n_rows - r0 < rows_cap ? b->n_rows - r0 : rows_cap;
        int k1 = k0;
        while (k1 < b->n_pairs && b->pair_row[k1] < r0 + nr) k1++;
        k_gather_rows<<<nr, NTHREADS>>>(w.x, drows + r0, H, c->dim);
        k_rmsnorm<<<nr, NTHREADS>>>(H, H, g->final_norm, c->dim, c->norm_eps);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            st = cuda_err(e, "head kernels");
            break;
        }
        if ((st = lin_forward(g, &g->head, H, nr, w.logits))) break;
        k_row_stats<<<nr, NTHREADS>>>(w.logits, (int)V, dlse, damax);
        if (k1 > k0) k_pairs<<<(k1 - k0 + 127) / 128, 128>>>(w.logits, (int)V, dlse, damax, dprow, dptgt, k0, k1 - k0,
                                                            r0, dlogp, dgreedy);
        e = cudaGetLastError();
        if (e != cudaSuccess) st = cuda_err(e, "scoring kernels");
        k0 = k1;
    }
    if (!st && b->n_pairs > 0) {
        cudaError_t e = cudaMemcpy(logp, dlogp, (size_t)b->n_pairs * 8, cudaMemcpyDeviceToHost);
        if (e == cudaSuccess) e = cudaMemcpy(greedy, dgreedy, (size_t)b->n_pairs, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) st = cuda_err(e, "scores download");
    }
    if (!st) {
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) st = cuda_err(e, "tree forward");
    }
    cudaFree(dpos);
    cudaFree(dseg0);
    cudaFree(dbr);
    cudaFree(drows);
    cudaFree(dprow);
    cudaFree(dptgt);
    cudaFree(damax);
    cudaFree(dlse);
    cudaFree(dlogp);
    cudaFree(dgreedy);
    cudaFree(H);
    work_free(&w);
    free(seg0);
    return st;
}
