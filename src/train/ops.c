/* ops.c - forward and backward of the ops of one LLaMA block: RMSNorm, RoPE,
 * causal GQA attention, SwiGLU and linear layers, each in float32 (OpenBLAS
 * sgemm and OpenMP where it pays) and as a double-precision `_ref` twin made
 * of plain loops (train_ops.h). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "train_ops.h"
#include "../kernels/cpu/blas_fixed.h"

/* ---- RMSNorm ------------------------------------------------------------------
 * y_i = w_i r x_i with r = (sum_j x_j^2 / n + eps)^(-1/2), so
 *   dL/dw_i = dy_i r x_i
 *   dL/dx_j = r w_j dy_j - (r^3 / n) x_j sum_i dy_i w_i x_i            */

void spqr_rmsnorm_fwd(float *out, float *rinv, const float *x, const float *w, int T, int n, float eps) {
    const size_t N = (size_t)n;
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (T > 64)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * N;
        float *ot = out + (size_t)t * N;
        /* spqr_rmsnorm's operations in its order */
        float ss = 0.0f;
        for (int i = 0; i < n; i++) ss += xt[i] * xt[i];
        ss /= (float)n;
        ss += eps;
        ss = 1.0f / sqrtf(ss);
        for (int i = 0; i < n; i++) ot[i] = w[i] * (ss * xt[i]);
        rinv[t] = ss;
    }
}

void spqr_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rinv, int T,
                      int n) {
    const size_t N = (size_t)n;
    if (dx) {
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (T > 64)
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * N, *dyt = dy + (size_t)t * N;
            float *dxt = dx + (size_t)t * N;
            double dot = 0.0;
            for (int i = 0; i < n; i++) dot += (double)dyt[i] * w[i] * xt[i];
            const float r = rinv[t], coef = (float)((double)r * r * r * dot / n);
            for (int i = 0; i < n; i++) dxt[i] += r * w[i] * dyt[i] - coef * xt[i];
        }
    }
    if (dw) {
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * N, *dyt = dy + (size_t)t * N;
            const float r = rinv[t];
            for (int i = 0; i < n; i++) dw[i] += dyt[i] * (r * xt[i]);
        }
    }
}

void spqr_rmsnorm_fwd_ref(double *out, double *rinv, const double *x, const double *w, int T, int n, double eps) {
    for (int t = 0; t < T; t++) {
        const double *xt = x + (size_t)t * n;
        double ss = 0.0;
        for (int i = 0; i < n; i++) ss += xt[i] * xt[i];
        double r = 1.0 / sqrt(ss / n + eps);
        for (int i = 0; i < n; i++) out[(size_t)t * n + i] = w[i] * r * xt[i];
        if (rinv) rinv[t] = r;
    }
}

void spqr_rmsnorm_bwd_ref(double *dx, double *dw, const double *dy, const double *x, const double *w, int T, int n,
                          double eps) {
    for (int t = 0; t < T; t++) {
        const double *xt = x + (size_t)t * n, *dyt = dy + (size_t)t * n;
        double ss = 0.0, dot = 0.0;
        for (int i = 0; i < n; i++) {
            ss += xt[i] * xt[i];
            dot += dyt[i] * w[i] * xt[i];
        }
        double r = 1.0 / sqrt(ss / n + eps);
        for (int i = 0; i < n; i++) {
            if (dx) dx[(size_t)t * n + i] += r * w[i] * dyt[i] - r * r * r / n * dot * xt[i];
            if (dw) dw[i] += dyt[i] * r * xt[i];
        }
    }
}

/* ---- RoPE ---------------------------------------------------------------------
 * Each pair (a, b) turns by angle th: (a c - b s, a s + b c). The Jacobian is
 * the rotation matrix; its transpose turns by -th. */

void spqr_rope_bwd(const spqr_config *c, float *v, int T, int n_heads, int stride, const float *cosv,
                   const float *sinv) {
    const int hd = c->head_dim, half = hd / 2;
    for (int t = 0; t < T; t++) {
        const float *cs = cosv + (size_t)t * half, *sn = sinv + (size_t)t * half;
        for (int h = 0; h < n_heads; h++) {
            float *x = v + (size_t)t * stride + (size_t)h * hd;
            if (c->rope_interleaved) {
                for (int i = 0; i < half; i++) {
                    float a = x[2 * i], b = x[2 * i + 1];
                    x[2 * i] = a * cs[i] + b * sn[i];
                    x[2 * i + 1] = b * cs[i] - a * sn[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float a = x[i], b = x[i + half];
                    x[i] = a * cs[i] + b * sn[i];
                    x[i + half] = b * cs[i] - a * sn[i];
                }
            }
        }
    }
}

void spqr_rope_ref(const spqr_config *c, double *v, int T, int n_heads, int stride, const double *cosv,
                   const double *sinv, int dir) {
    const int hd = c->head_dim, half = hd / 2;
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < n_heads; h++) {
            double *x = v + (size_t)t * stride + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                double cs = cosv[(size_t)t * half + i], sn = dir * sinv[(size_t)t * half + i];
                int ia = c->rope_interleaved ? 2 * i : i, ib = c->rope_interleaved ? 2 * i + 1 : i + half;
                double a = x[ia], b = x[ib];
                x[ia] = a * cs - b * sn;
                x[ib] = a * sn + b * cs;
            }
        }
    }
}

/* ---- causal GQA attention -------------------------------------------------------
 * Per query head h on kv head k = h / kv_mul:
 *   S = Q_h K_k^T / sqrt(hd), P = softmax_causal(S), O_h = P V_k
 * Backward, with dO_h:
 *   dV_k += P^T dO_h;  dP = dO_h V_k^T;  dS = P (dP - rowsum(P dP))
 *   dQ_h = dS K_k / sqrt(hd);  dK_k += dS^T Q_h / sqrt(hd)                 */

/* P[T][T] = causal softmax of head h's scaled scores (zeros above the diagonal) */
static void attn_probs(const spqr_config *c, const float *Q, const float *K, int h, int T, float *P) {
    const int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int kvh = h / (c->n_heads / c->n_kv_heads);
    const float scale = 1.0f / sqrtf((float)hd);
    spqr_sgemm_fixed(false, true, T, T, hd, scale, Q + (size_t)h * hd, qd,
                K + (size_t)kvh * hd, kvd, 0.0f, P, T);
    for (int t = 0; t < T; t++) {
        float *row = P + (size_t)t * T;
        spqr_softmax_row(row, t + 1);
        for (int s = t + 1; s < T; s++) row[s] = 0.0f;
    }
}

spqr_status spqr_attn_fwd(const spqr_config *c, const float *Q, const float *K, const float *V, int T, float *Out) {
    const int hd = c->head_dim, nh = c->n_heads, qd = nh * hd, kvd = c->n_kv_heads * hd;
    const int kv_mul = nh / c->n_kv_heads, nthreads = spqr_num_threads();
    const size_t per = (size_t)T * (size_t)T;
    float *scratch = spqr_malloc_array(per, sizeof(float) * (size_t)nthreads);
    if (!scratch) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for attention scores (%d x %d)", T, T);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int h = 0; h < nh; h++) {
        float *P = scratch + (size_t)omp_get_thread_num() * per;
        attn_probs(c, Q, K, h, T, P);
        spqr_sgemm_fixed(false, false, T, hd, T, 1.0f, P, T, V + (size_t)(h / kv_mul) * hd,
                    kvd, 0.0f, Out + (size_t)h * hd, qd);
    }
    free(scratch);
    return SPQR_OK;
}

size_t spqr_attn_bwd_scratch(const spqr_config *c, int T, int nthreads) {
    size_t per = 2 * (size_t)T * (size_t)T * (size_t)nthreads;
    if (c->n_heads > c->n_kv_heads) per += 2 * (size_t)T * (size_t)c->n_heads * (size_t)c->head_dim;
    return per;
}

spqr_status spqr_attn_bwd(const spqr_config *c, const float *Q, const float *K, const float *V, const float *dO, int T,
                          float *dQ, float *dK, float *dV) {
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * hd, kvd = nkv * hd;
    const int kv_mul = nh / nkv, nthreads = spqr_num_threads();
    const size_t per = 2 * (size_t)T * (size_t)T;
    const float scale = 1.0f / sqrtf((float)hd);
    float *scratch = spqr_malloc_array(spqr_attn_bwd_scratch(c, T, nthreads), sizeof(float));
    if (!scratch) return spqr_fail(SPQR_ERR_NOMEM, "out of memory for attention backward (%d x %d)", T, T);
    /* one query head per task; with grouped kv heads each head writes its own
     * dK/dV share [T][qd] (summed over the group below), else straight into
     * dK/dV (then kvd == qd) */
    float *gK = dK, *gV = dV;
    if (kv_mul > 1) {
        gK = scratch + per * (size_t)nthreads;
        gV = gK + (size_t)T * qd;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int h = 0; h < nh; h++) {
        float *P = scratch + (size_t)omp_get_thread_num() * per, *dP = P + (size_t)T * T;
        const int kvh = h / kv_mul;
        const float *Kh = K + (size_t)kvh * hd, *Vh = V + (size_t)kvh * hd;
        const float *Qh = Q + (size_t)h * hd, *dOh = dO + (size_t)h * hd;
        attn_probs(c, Q, K, h, T, P);
        spqr_sgemm_fixed(true, false, T, hd, T, 1.0f, P, T, dOh, qd, 0.0f, gV + (size_t)h * hd,
                    qd);
        spqr_sgemm_fixed(false, true, T, T, hd, 1.0f, dOh, qd, Vh, kvd, 0.0f, dP, T);
        for (int t = 0; t < T; t++) { /* dP <- dS */
            const float *p = P + (size_t)t * T;
            float *d = dP + (size_t)t * T;
            float dot = 0.0f;
            for (int s = 0; s <= t; s++) dot += p[s] * d[s];
            for (int s = 0; s <= t; s++) d[s] = p[s] * (d[s] - dot);
            for (int s = t + 1; s < T; s++) d[s] = 0.0f;
        }
        spqr_sgemm_fixed(false, false, T, hd, T, scale, dP, T, Kh, kvd, 0.0f,
                    dQ + (size_t)h * hd, qd);
        spqr_sgemm_fixed(true, false, T, hd, T, scale, dP, T, Qh, qd, 0.0f, gK + (size_t)h * hd,
                    qd);
    }
    if (kv_mul > 1) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int t = 0; t < T; t++) {
            for (int kvh = 0; kvh < nkv; kvh++) {
                float *k = dK + (size_t)t * kvd + (size_t)kvh * hd, *v = dV + (size_t)t * kvd + (size_t)kvh * hd;
                const float *pk = gK + (size_t)t * qd + (size_t)kvh * kv_mul * hd;
                const float *pv = gV + (size_t)t * qd + (size_t)kvh * kv_mul * hd;
                for (int i = 0; i < hd; i++) k[i] = v[i] = 0.0f;
                for (int j = 0; j < kv_mul; j++)
                    for (int i = 0; i < hd; i++) {
                        k[i] += pk[(size_t)j * hd + i];
                        v[i] += pv[(size_t)j * hd + i];
                    }
            }
        }
    }
    free(scratch);
    return SPQR_OK;
}

/* probabilities p[0..t] of query t of head h (double) */
static void attn_row_ref(const spqr_config *c, const double *Q, const double *K, int h, int t, double *p) {
    const int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int kvh = h / (c->n_heads / c->n_kv_heads);
    const double *q = Q + (size_t)t * qd + (size_t)h * hd;
    double mx = -INFINITY, sum = 0.0;
    for (int s = 0; s <= t; s++) {
        const double *k = K + (size_t)s * kvd + (size_t)kvh * hd;
        double d = 0.0;
        for (int i = 0; i < hd; i++) d += q[i] * k[i];
        p[s] = d / sqrt((double)hd);
        mx = p[s] > mx ? p[s] : mx;
    }
    for (int s = 0; s <= t; s++) sum += p[s] = exp(p[s] - mx);
    for (int s = 0; s <= t; s++) p[s] /= sum;
}

spqr_status spqr_attn_fwd_ref(const spqr_config *c, const double *Q, const double *K, const double *V, int T,
                              double *Out) {
    const int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int kv_mul = c->n_heads / c->n_kv_heads;
    double *p = spqr_malloc_array((size_t)T, sizeof(double));
    if (!p) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    for (int h = 0; h < c->n_heads; h++) {
        for (int t = 0; t < T; t++) {
            attn_row_ref(c, Q, K, h, t, p);
            double *o = Out + (size_t)t * qd + (size_t)h * hd;
            for (int i = 0; i < hd; i++) o[i] = 0.0;
            for (int s = 0; s <= t; s++)
                for (int i = 0; i < hd; i++) o[i] += p[s] * V[(size_t)s * kvd + (size_t)(h / kv_mul) * hd + i];
        }
    }
    free(p);
    return SPQR_OK;
}

spqr_status spqr_attn_bwd_ref(const spqr_config *c, const double *Q, const double *K, const double *V,
                              const double *dO, int T, double *dQ, double *dK, double *dV) {
    const int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int kv_mul = c->n_heads / c->n_kv_heads;
    const double scale = 1.0 / sqrt((double)hd);
    double *p = spqr_malloc_array((size_t)T, 2 * sizeof(double));
    if (!p) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    double *dp = p + T;
    for (size_t i = 0; i < (size_t)T * qd; i++) dQ[i] = 0.0;
    for (size_t i = 0; i < (size_t)T * kvd; i++) dK[i] = dV[i] = 0.0;
    for (int h = 0; h < c->n_heads; h++) {
        const size_t ko = (size_t)(h / kv_mul) * hd;
        for (int t = 0; t < T; t++) {
            attn_row_ref(c, Q, K, h, t, p);
            const double *q = Q + (size_t)t * qd + (size_t)h * hd, *dout = dO + (size_t)t * qd + (size_t)h * hd;
            double *dq = dQ + (size_t)t * qd + (size_t)h * hd;
            double dot = 0.0;
            for (int s = 0; s <= t; s++) {
                dp[s] = 0.0;
                for (int i = 0; i < hd; i++) {
                    dp[s] += dout[i] * V[(size_t)s * kvd + ko + i];
                    dV[(size_t)s * kvd + ko + i] += p[s] * dout[i];
                }
                dot += p[s] * dp[s];
            }
            for (int s = 0; s <= t; s++) {
                double ds = p[s] * (dp[s] - dot) * scale;
                for (int i = 0; i < hd; i++) {
                    dq[i] += ds * K[(size_t)s * kvd + ko + i];
                    dK[(size_t)s * kvd + ko + i] += ds * q[i];
                }
            }
        }
    }
    free(p);
    return SPQR_OK;
}

/* ---- SwiGLU ---------------------------------------------------------------------
 * out = g s(g) u with the sigmoid s; d silu/dg = s (1 + g (1 - s)). */

void spqr_swiglu_fwd(float *out, const float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float v = g[i];
        out[i] = v / (1.0f + expf(-v)) * u[i]; /* model/forward.c's expression */
    }
}

void spqr_swiglu_bwd(float *dg, float *du, const float *dout, const float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) num_threads(spqr_num_threads()) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float d = dout[i], v = g[i], s = 1.0f / (1.0f + expf(-v));
        du[i] = d * v * s;
        dg[i] = d * u[i] * s * (1.0f + v * (1.0f - s));
    }
}

void spqr_swiglu_fwd_ref(double *out, const double *g, const double *u, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
}

void spqr_swiglu_bwd_ref(double *dg, double *du, const double *dout, const double *g, const double *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double d = dout[i], s = 1.0 / (1.0 + exp(-g[i]));
        du[i] = d * g[i] * s;
        dg[i] = d * u[i] * s * (1.0 + g[i] * (1.0 - s));
    }
}

/* ---- linear ----------------------------------------------------------------------
 * Y = X W^T + b: dX = dY W, dW = dY^T X. */

void spqr_lin_fwd(float *Y, const float *X, const float *W, const float *bias, int T, int rows, int cols) {
    /* the dense format's call (formats/dense), so the same floats */
    spqr_sgemm_fixed(false, true, T, rows, cols, 1.0f, X, cols, W, cols, 0.0f, Y, rows);
    if (bias)
        for (int t = 0; t < T; t++)
            for (int r = 0; r < rows; r++) Y[(size_t)t * rows + r] += bias[r];
}

void spqr_lin_bwd(float *dX, float *dW, const float *dY, const float *X, const float *W, int T, int rows, int cols) {
    if (dX)
        spqr_sgemm_fixed(false, false, T, cols, rows, 1.0f, dY, rows, W, cols, 1.0f, dX,
                    cols);
    if (dW)
        spqr_sgemm_fixed(true, false, rows, cols, T, 1.0f, dY, rows, X, cols, 1.0f, dW, cols);
}

void spqr_lin_fwd_ref(double *Y, const double *X, const double *W, const double *bias, int T, int rows, int cols) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) {
            double s = bias ? bias[r] : 0.0;
            for (int k = 0; k < cols; k++) s += X[(size_t)t * cols + k] * W[(size_t)r * cols + k];
            Y[(size_t)t * rows + r] = s;
        }
}

void spqr_lin_bwd_ref(double *dX, double *dW, const double *dY, const double *X, const double *W, int T, int rows,
                      int cols) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) {
            double d = dY[(size_t)t * rows + r];
            for (int k = 0; k < cols; k++) {
                if (dX) dX[(size_t)t * cols + k] += d * W[(size_t)r * cols + k];
                if (dW) dW[(size_t)r * cols + k] += d * X[(size_t)t * cols + k];
            }
        }
}
