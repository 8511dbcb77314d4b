/* host versions of train_cuda.cu's kernels, (grid, block, args) */
#include <math.h>
static void k_rmsnorm_fwd_h(unsigned grid, int, float *out, float *rinv, const float *x, const float *w, int D, float eps) {
    for (unsigned r = 0; r < grid; r++) {
        const float *xr = x + (size_t)r * D; float *o = out + (size_t)r * D;
        float ss = 0; for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        ss /= (float)D; ss += eps; ss = 1.0f / sqrtf(ss);
        for (int i = 0; i < D; i++) o[i] = w[i] * (ss * xr[i]);
        rinv[r] = ss;
    }
}
static void k_rmsnorm_bwd_dx_h(unsigned grid, int, float *dx, const float *dy, const float *x, const float *w, const float *rinv, int D) {
    for (unsigned r = 0; r < grid; r++) {
        size_t off = (size_t)r * D; double dot = 0;
        for (int i = 0; i < D; i++) dot += (double)dy[off + i] * w[i] * x[off + i];
        float rr = rinv[r], coef = (float)((double)rr * rr * rr * dot / D);
        for (int i = 0; i < D; i++) dx[off + i] += rr * w[i] * dy[off + i] - coef * x[off + i];
    }
}
static void k_rmsnorm_bwd_dw_h(unsigned grid, dim3, float *dw, const float *dy, const float *x, const float *rinv, int N, int D) {
    for (int i = 0; i < D && i < (int)grid * 32; i++) {
        float s = 0; for (int t = 0; t < N; t++) s += dy[(size_t)t * D + i] * (rinv[t] * x[(size_t)t * D + i]);
        dw[i] = s;
    }
}
static void k_rope_h(unsigned, int, float *v, int N, int T1, int nh, int hd, int stride, const float *cosv, const float *sinv, int interleaved, float dir) {
    int half = hd / 2;
    for (int r = 0; r < N; r++) for (int h = 0; h < nh; h++) for (int i = 0; i < half; i++) {
        int p = r % T1; float cs = cosv[(size_t)p * half + i], sn = dir * sinv[(size_t)p * half + i];
        float *xx = v + (size_t)r * stride + (size_t)h * hd;
        int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        float a = xx[ia], b = xx[ib]; xx[ia] = a * cs - b * sn; xx[ib] = b * cs + a * sn;
    }
}
static void k_softmax_causal_h(unsigned grid, int, float *P, int T) {
    for (unsigned r = 0; r < grid; r++) {
        int t = r % T, n = t + 1; float *row = P + (size_t)r * T;
        float mx = -INFINITY; for (int s = 0; s < n; s++) mx = fmaxf(mx, row[s]);
        float sum = 0; for (int s = 0; s < n; s++) { row[s] = expf(row[s] - mx); sum += row[s]; }
        for (int s = 0; s < T; s++) row[s] = s < n ? row[s] / sum : 0.0f;
    }
}
static void k_dsoftmax_causal_h(unsigned grid, int, float *dP, const float *P, int T) {
    for (unsigned r = 0; r < grid; r++) {
        int t = r % T, n = t + 1; const float *p = P + (size_t)r * T; float *d = dP + (size_t)r * T;
        float dot = 0; for (int s = 0; s < n; s++) dot += p[s] * d[s];
        for (int s = 0; s < T; s++) d[s] = s < n ? p[s] * (d[s] - dot) : 0.0f;
    }
}
static void k_group_sum_h(unsigned, int, float *dK, float *dV, const float *gK, const float *gV, int T, int nkv, int kv_mul, int hd) {
    size_t qd = (size_t)nkv * kv_mul * hd, kvd = (size_t)nkv * hd;
    for (size_t t = 0; t < (size_t)T; t++) for (size_t c = 0; c < kvd; c++) {
        size_t kvh = c / hd, i = c % hd; float k = 0, v = 0;
        for (int j = 0; j < kv_mul; j++) { k += gK[t * qd + (kvh * kv_mul + j) * hd + i]; v += gV[t * qd + (kvh * kv_mul + j) * hd + i]; }
        dK[t * kvd + c] = k; dV[t * kvd + c] = v;
    }
}
static void k_swiglu_fwd_h(unsigned, int, float *s, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) { float v = g[i]; s[i] = v / (1.0f + expf(-v)) * u[i]; }
}
static void k_swiglu_bwd_h(unsigned, int, float *dg, float *du, const float *dout, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) { float d = dout[i], v = g[i], sg = 1.0f / (1.0f + expf(-v)); du[i] = d * v * sg; dg[i] = d * u[i] * sg * (1.0f + v * (1.0f - sg)); }
}
static void k_add_h(unsigned, int, float *out, const float *a, const float *b, size_t n) { for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i]; }
static void k_add_bias_h(unsigned, int, float *Y, const float *b, int rows, size_t n) { for (size_t i = 0; i < n; i++) Y[i] += b[i % rows]; }
