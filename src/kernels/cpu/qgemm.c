/* qgemm.c - kernel selection, the packed-layer product driver, the scalar
 * reference kernel and the dense matrix-vector products. */
#include "kernels_internal.h"

#include <cpuid.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <omp.h>

/* ---- variant selection ---------------------------------------------------- */

enum { K_UNSET = 0, K_REF = 1, K_AVX2 = 2, K_AVX512 = 3 };
static const char *const k_kind_names[] = {"unset", "ref", "avx2", "avx512"};
static _Atomic int g_kind = K_UNSET;

/* F16C (CPUID.1:ECX bit 29); clang 14's __builtin_cpu_supports lacks it. */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c >> 29) & 1u;
}

static bool cpu_has(int kind) {
    __builtin_cpu_init();
    switch (kind) {
    case K_REF: return true;
    case K_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case K_AVX512:
        return cpu_has(K_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    default: return false;
    }
}

static int auto_kind(void) {
    if (cpu_has(K_AVX512)) return K_AVX512;
    if (cpu_has(K_AVX2)) return K_AVX2;
    return K_REF;
}

static int kind_from_name(const char *name) {
    for (int k = K_REF; k <= K_AVX512; k++)
        if (strcmp(name, k_kind_names[k]) == 0) return k;
    return -1;
}

static int active_kind(void) {
    int k = atomic_load_explicit(&g_kind, memory_order_relaxed);
    if (k != K_UNSET) return k;
    k = auto_kind();
    const char *env = getenv("SPQR_KERNEL");
    if (env && *env && strcmp(env, "auto") != 0) {
        int e = kind_from_name(env);
        if (e > 0 && cpu_has(e)) k = e;
        else spqr_log(SPQR_LOG_WARN, "SPQR_KERNEL=%s is %s; using %s", env, e < 0 ? "unknown" : "not supported here",
                      k_kind_names[k]);
    }
    int expected = K_UNSET;
    atomic_compare_exchange_strong(&g_kind, &expected, k);
    return atomic_load(&g_kind);
}

spqr_status spqr_kernel_force(const char *name) {
    if (!name || strcmp(name, "auto") == 0) {
        atomic_store(&g_kind, auto_kind());
        return SPQR_OK;
    }
    int k = kind_from_name(name);
    if (k < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "unknown kernel '%s' (ref, avx2, avx512, auto)", name);
    if (!cpu_has(k)) return spqr_fail(SPQR_ERR_UNSUPPORTED, "kernel '%s' is not supported by this CPU", name);
    atomic_store(&g_kind, k);
    return SPQR_OK;
}

const char *spqr_kernel_name(void) { return k_kind_names[active_kind()]; }

bool spqr_kernel_supported(const char *name) {
    int k = name ? kind_from_name(name) : -1;
    return k > 0 && cpu_has(k);
}

/* ---- per-thread scratch ---------------------------------------------------- */

static _Thread_local void *g_scratch;
static _Thread_local size_t g_scratch_bytes;

static void *scratch_get(size_t bytes) {
    if (bytes > g_scratch_bytes) {
        free(g_scratch);
        g_scratch = spqr_aligned_alloc(bytes);
        g_scratch_bytes = g_scratch ? bytes : 0;
    }
    return g_scratch;
}

void spqr_kernel_scratch_release(void) {
    free(g_scratch);
    g_scratch = NULL;
    g_scratch_bytes = 0;
}

static size_t round64(size_t b) { return (b + 63) & ~(size_t)63; }

size_t spqr_qg_scratch_bytes(const spqr_packed *W) {
    size_t cbuf = (size_t)SPQR_QG_CH * 16 * sizeof(float);
    size_t sbuf = (size_t)spqr_qg_chunk_groups(W) * 32 * sizeof(float);
    size_t state = (size_t)SPQR_QG_TB * 32 * sizeof(float);
    size_t s2f = W->beta2 > 0 ? (size_t)W->ngroups * 4 * sizeof(float) : 0; /* float copy of a row block's stats2 */
    size_t tstats = (size_t)W->ngroups * 32 * sizeof(float); /* a tile's scale and zero per group */
    size_t olbuf = (size_t)W->max_tile_outliers * sizeof(float); /* a tile's outlier products */
    return round64(cbuf) + round64(sbuf) + round64(state) + round64(s2f) + round64(tstats) + round64(olbuf);
}

/* ---- packed product -------------------------------------------------------- */

static inline uint32_t idx_at(const void *a, int wide, int64_t i) {
    return wide ? ((const uint32_t *)a)[i] : ((const uint16_t *)a)[i];
}

static spqr_status check_args(const spqr_packed *W, const float *X, int n_tok, float *Y) {
    if (!W || n_tok < 0 || (n_tok > 0 && (!X || !Y)) || !W->codes || !W->ol_row_ptr)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_qgemm: bad arguments");
    return SPQR_OK;
}

typedef void (*tile_fn)(const spqr_qg_job *, int64_t, void *);

spqr_status spqr_qgemm(const spqr_packed *W, const float *X, int n_tok, float *Y) {
    spqr_status st = check_args(W, X, n_tok, Y);
    if (st || n_tok == 0) return st;
    int kind = active_kind();
    if (kind == K_REF) return spqr_qgemm_ref(W, X, n_tok, Y);
    tile_fn fn = kind == K_AVX512 ? spqr_qg_tile_avx512 : spqr_qg_tile_avx2;

    const int64_t C = W->cols, G = W->ngroups, R = W->rows, T = W->ntiles;
    const int tb = n_tok < SPQR_QG_TB ? n_tok : SPQR_QG_TB;
    int nth = spqr_num_threads();
    if (nth > T) nth = (int)T;
    if (nth < 1) nth = 1;
    const size_t xp_b = round64((size_t)tb * (size_t)C * sizeof(float));
    const size_t xs_b = round64((size_t)tb * (size_t)G * sizeof(float));
    const size_t th_b = spqr_qg_scratch_bytes(W);
    size_t total = xp_b + xs_b + (size_t)nth * th_b;
    char *scr = scratch_get(total);
    if (!scr) return spqr_fail(SPQR_ERR_NOMEM, "spqr_qgemm: out of memory (%zu bytes of scratch)", total);
    float *xp = (float *)scr, *xs = (float *)(scr + xp_b);
    int64_t chunk = T / ((int64_t)nth * 8);
    if (chunk < 1) chunk = 1;
    char *thr = scr + xp_b + xs_b;

    for (int t0 = 0; t0 < n_tok; t0 += SPQR_QG_TB) {
        const int nt = n_tok - t0 < SPQR_QG_TB ? n_tok - t0 : SPQR_QG_TB;
        spqr_qg_job job = {W, xp, xs, nt, Y + (size_t)t0 * (size_t)R};
#pragma omp parallel num_threads(nth)
        {
            /* gather the pass's inputs into permuted order, token-interleaved:
             * xp[j][t] = X[t0 + t][perm[j]] */
#pragma omp for schedule(static)
            for (int64_t j0 = 0; j0 < C; j0 += 256) {
                const int64_t j1 = j0 + 256 < C ? j0 + 256 : C;
                for (int t = 0; t < nt; t++) {
                    const float *x = X + (size_t)(t0 + t) * (size_t)C;
                    if (W->wide)
                        for (int64_t j = j0; j < j1; j++) xp[j * nt + t] = x[((const uint32_t *)W->perm)[j]];
                    else
                        for (int64_t j = j0; j < j1; j++) xp[j * nt + t] = x[((const uint16_t *)W->perm)[j]];
                }
            }
            /* group sums (used by the single-token path) */
#pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                float *s = xs + (size_t)t * (size_t)G;
                for (int64_t g = 0; g < G; g++) {
                    int64_t a = g * W->beta1, b = a + W->beta1 < C ? a + W->beta1 : C;
                    float acc = 0.0f;
                    for (int64_t j = a; j < b; j++) acc += xp[j * nt + t];
                    s[g] = acc;
                }
            }
            void *my = thr + (size_t)omp_get_thread_num() * th_b;
            /* dynamic chunks of contiguous tiles: each thread still streams
             * long runs, and a thread that the OS preempts does not hold up
             * the whole product */
#pragma omp for schedule(dynamic, chunk)
            for (int64_t tile = 0; tile < T; tile++) fn(&job, tile, my);
        }
    }
    return SPQR_OK;
}

/* ---- scalar reference -------------------------------------------------------- */

static inline uint32_t get_bits(const uint32_t *base, int lane, int64_t pos, int nbits) {
    int64_t w = pos >> 5;
    int s = (int)(pos & 31);
    uint32_t v = base[w * 16 + lane] >> s;
    if (s + nbits > 32) v |= base[(w + 1) * 16 + lane] << (32 - s);
    return v & ((1u << nbits) - 1u);
}

/* First-level statistics of (row r, group g), exactly as quant/qlayer.h. */
static void ref_stats(const spqr_packed *W, int64_t r, int64_t g, float *scale, float *zero) {
    const int lane = (int)(r % 16);
    if (W->beta2 > 0) {
        const uint32_t *base = W->stat_codes + (r / 16) * W->stat_words * 16;
        uint32_t v = get_bits(base, lane, g * (W->sbits + W->zbits), W->sbits + W->zbits);
        uint32_t sc = v & ((1u << W->sbits) - 1u), zc = v >> W->sbits;
        const uint16_t *e = W->stats2 + ((r / W->beta2) * W->ngroups + g) * 4;
        *scale = spqr_f16_to_f32(e[0]) * ((float)sc - spqr_f16_to_f32(e[1]));
        *zero = spqr_f16_to_f32(e[2]) * ((float)zc - spqr_f16_to_f32(e[3]));
    } else {
        const uint16_t *e = W->stats + (((r / 16) * W->ngroups + g) * 2) * 16;
        *scale = spqr_f16_to_f32(e[lane]);
        *zero = spqr_f16_to_f32(e[16 + lane]);
    }
}

spqr_status spqr_qgemm_ref(const spqr_packed *W, const float *X, int n_tok, float *Y) {
    spqr_status st = check_args(W, X, n_tok, Y);
    if (st || n_tok == 0) return st;
    const int64_t R = W->rows, C = W->cols, B = W->wbits;
    int failed = 0;
#pragma omp parallel num_threads(spqr_num_threads())
    {
        float *wrow = spqr_malloc_array((size_t)C, sizeof(float)); /* one row, ORIGINAL column order */
        if (!wrow) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            if (!wrow) continue;
            const uint32_t *base = W->codes + (r / 16) * W->code_words * 16;
            int64_t k = W->ol_row_ptr[r], kend = W->ol_row_ptr[r + 1];
            float scale = 0.0f, zero = 0.0f;
            for (int64_t j = 0; j < C; j++) {
                if (j % W->beta1 == 0) ref_stats(W, r, j / W->beta1, &scale, &zero);
                float w = scale * ((float)get_bits(base, (int)(r % 16), j * B, (int)B) - zero);
                if (k < kend && (int64_t)idx_at(W->ol_col, W->wide, k) == j) {
                    w = w + spqr_f16_to_f32(W->ol_val[k]);
                    k++;
                }
                wrow[idx_at(W->perm, W->wide, j)] = w;
            }
            for (int t = 0; t < n_tok; t++) {
                const float *x = X + (size_t)t * (size_t)C;
                double acc = 0.0;
                for (int64_t c = 0; c < C; c++) acc += (double)wrow[c] * (double)x[c];
                Y[(size_t)t * (size_t)R + (size_t)r] = (float)acc;
            }
        }
        free(wrow);
    }
    if (failed) return spqr_fail(SPQR_ERR_NOMEM, "spqr_qgemm_ref: out of memory");
    return SPQR_OK;
}

/* ---- dense matrix-vector ------------------------------------------------------ */

static void gemv_rows_ref(spqr_dtype dt, const void *W, int64_t r0, int64_t r1, int64_t cols, const float *x,
                          float *y) {
    for (int64_t r = r0; r < r1; r++) {
        double acc = 0.0;
        if (dt == SPQR_DT_F32) {
            const float *w = (const float *)W + r * cols;
            for (int64_t c = 0; c < cols; c++) acc += (double)w[c] * x[c];
        } else if (dt == SPQR_DT_BF16) {
            const uint16_t *w = (const uint16_t *)W + r * cols;
            for (int64_t c = 0; c < cols; c++) acc += (double)spqr_bf16_to_f32(w[c]) * x[c];
        } else {
            const uint16_t *w = (const uint16_t *)W + r * cols;
            for (int64_t c = 0; c < cols; c++) acc += (double)spqr_f16_to_f32(w[c]) * x[c];
        }
        y[r] = (float)acc;
    }
}

spqr_status spqr_dense_gemv(spqr_dtype dt, const void *W, int rows, int cols, const float *x, float *y) {
    if (dt != SPQR_DT_F32 && dt != SPQR_DT_F16 && dt != SPQR_DT_BF16)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_dense_gemv: unsupported dtype %s", spqr_dtype_name(dt));
    if (rows < 0 || cols < 0 || (rows > 0 && (!y || (cols > 0 && (!W || !x)))))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_dense_gemv: bad arguments");
    if (rows == 0) return SPQR_OK;
    const int kind = active_kind();
    const int64_t RB = 16; /* rows per work item */
    const int64_t nblk = ((int64_t)rows + RB - 1) / RB;
    int nth = spqr_num_threads();
    if (nth > nblk) nth = (int)nblk;
    if ((int64_t)rows * cols < 65536) nth = 1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t r0 = b * RB, r1 = r0 + RB < rows ? r0 + RB : rows;
        if (kind == K_AVX512) spqr_gemv_rows_avx512(dt, W, r0, r1, cols, x, y);
        else if (kind == K_AVX2) spqr_gemv_rows_avx2(dt, W, r0, r1, cols, x, y);
        else gemv_rows_ref(dt, W, r0, r1, cols, x, y);
    }
    return SPQR_OK;
}
