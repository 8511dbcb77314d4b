/* spqr_cuda.cu - the layer entry points of spqr_cuda.h: upload (the layer
 * packed on the host by gpu_layout.c, then copied), clone, free, info, and
 * the qgemm dispatch: kernel choice, split-K factor, scratch buffers and the
 * launches of the prep, main and outlier kernels (gemv.cu, gemm.cu, ref.cu).
 * The layout is defined in gpu_layout.h, the kernels are described in
 * spqr_cuda.h. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <mutex>

extern "C" {
#include "formats/spqr/qlayer.h"
#include "util/common.h"
}
#include "formats/spqr/cuda/gpu_layout.h"
#include "formats/spqr/cuda/kernels.cuh"
#include "formats/spqr/cuda/pipeline.cuh" /* MAXQ */
#include "kernels/cuda/runtime.cuh"
#include "formats/spqr/cuda/spqr_cuda.h"

struct spqr_cuda_qlinear {
    DevLayer L;
    void *dbuf;
    size_t bytes;
    size_t b_codes, b_stats, b_stats2, b_ol, b_perm;
    int64_t n_ol;
    int exact_stats;
};

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* ---- layers ---------------------------------------------------------------- */

extern "C" spqr_status spqr_cuda_qlinear_upload(const spqr_qlayer *q, spqr_cuda_qlinear **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: out is NULL");
    *out = NULL;
    if (!q) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda upload: layer is NULL");
    spqr_gpu_plan p;
    spqr_status st = spqr_gpu_layout_plan(q, &p);
    if (st != SPQR_OK) return st;
    const size_t total = p.total;

    {
        std::lock_guard<std::mutex> lk(g_mu);
        st = dev_init();
        if (st != SPQR_OK) return st;
    }
    size_t fr = 0, tot = 0;
    st = spqr_cuda_mem_info(&fr, &tot);
    if (st != SPQR_OK) return st;
    const size_t margin = 64ull << 20;
    if (total + margin > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE,
                         "cuda upload: %dx%d layer needs %.1f MiB of GPU memory (+%.0f MiB "
                         "reserve) but only %.1f MiB of %.1f MiB are free",
                         q->rows, q->cols, total / 1048576.0, margin / 1048576.0, fr / 1048576.0,
                         tot / 1048576.0);
    unsigned char *h = NULL;
    st = spqr_gpu_layout_pack(q, &p, &h); /* checks the contents first */
    if (st != SPQR_OK) return st;

    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, total);
    if (e != cudaSuccess) {
        free(h);
        (void)cudaGetLastError();
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuda upload: cudaMalloc of %.1f MiB failed: %s", total / 1048576.0,
                         cudaGetErrorString(e));
    }
    e = cudaMemcpy(d, h, total, cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) {
        cudaFree(d);
        return cuda_fail(e, "upload memcpy");
    }
    spqr_cuda_qlinear *w = (spqr_cuda_qlinear *)calloc(1, sizeof *w);
    if (!w) {
        cudaFree(d);
        return spqr_fail(SPQR_ERR_NOMEM, "cuda upload: handle");
    }
    DevLayer L;
    memset(&L, 0, sizeof L);
    memcpy(&L, &p.geo, sizeof p.geo); /* the geometry fields come first */
    spqr_gpu_sections s;
    spqr_gpu_layout_sections(&p, d, &s);
    L.codes = reinterpret_cast<const uint4 *>(s.codes);
    L.stats = s.stats;
    L.stats2 = reinterpret_cast<const uint2 *>(s.stats2);
    L.ol_off = s.ol_off;
    L.ol = s.ol;
    L.perm = s.perm;
    L.orow = s.orow;
    L.ocol = s.ocol;
    L.oval = s.oval;
    L.gcodes = s.gcodes;
    L.gstats = reinterpret_cast<const float2 *>(s.gstats);
    L.grow = s.grow;
    L.gcol = s.gcol;
    L.gval = s.gval;
    w->L = L;
    w->dbuf = d;
    w->bytes = total;
    w->b_codes = p.b_codes;
    w->b_stats = p.b_stats;
    w->b_stats2 = p.b_stats2;
    w->b_ol = p.b_ol + p.b_olptr;
    w->b_perm = p.b_perm;
    w->n_ol = q->n_outliers;
    w->exact_stats = p.exact_stats;
    *out = w;
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_qlinear_clone(const spqr_cuda_qlinear *w, spqr_cuda_qlinear **out) {
    if (!out || !w) return spqr_fail(SPQR_ERR_INVALID_ARG, "cuda clone: NULL argument");
    *out = NULL;
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    if (w->bytes + (64ull << 20) > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cuda clone: needs %.1f MiB, %.1f MiB free", w->bytes / 1048576.0,
                         fr / 1048576.0);
    void *d = NULL;
    CK(cudaMalloc(&d, w->bytes), "cudaMalloc");
    cudaError_t e = cudaMemcpy(d, w->dbuf, w->bytes, cudaMemcpyDeviceToDevice);
    if (e != cudaSuccess) {
        cudaFree(d);
        return cuda_fail(e, "clone memcpy");
    }
    spqr_cuda_qlinear *c = (spqr_cuda_qlinear *)malloc(sizeof *c);
    if (!c) {
        cudaFree(d);
        return spqr_fail(SPQR_ERR_NOMEM, "cuda clone: handle");
    }
    *c = *w;
    const ptrdiff_t delta = (unsigned char *)d - (unsigned char *)w->dbuf;
    auto mv = [&](const void *p) -> const unsigned char * { return p ? (const unsigned char *)p + delta : NULL; };
    c->L.codes = (const uint4 *)mv(w->L.codes);
    c->L.stats = (const uint32_t *)mv(w->L.stats);
    c->L.stats2 = (const uint2 *)mv(w->L.stats2);
    c->L.ol_off = (const uint32_t *)mv(w->L.ol_off);
    c->L.ol = (const uint32_t *)mv(w->L.ol);
    c->L.perm = (const int32_t *)mv(w->L.perm);
    c->L.gcodes = (const uint8_t *)mv(w->L.gcodes);
    c->L.gstats = (const float2 *)mv(w->L.gstats);
    c->L.grow = (const uint32_t *)mv(w->L.grow);
    c->L.gcol = (const uint32_t *)mv(w->L.gcol);
    c->L.gval = (const float *)mv(w->L.gval);
    c->L.orow = (const uint32_t *)mv(w->L.orow);
    c->L.ocol = (const uint32_t *)mv(w->L.ocol);
    c->L.oval = (const uint16_t *)mv(w->L.oval);
    c->dbuf = d;
    *out = c;
    return SPQR_OK;
}

extern "C" void spqr_cuda_qlinear_free(spqr_cuda_qlinear *w) {
    if (!w) return;
    cudaFree(w->dbuf);
    free(w);
}

extern "C" void spqr_cuda_qlinear_get_info(const spqr_cuda_qlinear *w, spqr_cuda_qlinear_info *info) {
    if (!info) return;
    memset(info, 0, sizeof *info);
    if (!w) return;
    info->rows = w->L.rows;
    info->cols = w->L.cols;
    info->wbits = w->L.wbits;
    info->beta1 = w->L.beta1;
    info->beta2 = w->L.beta2;
    info->bytes_codes = w->b_codes;
    info->bytes_stats = w->b_stats;
    info->bytes_stats2 = w->b_stats2;
    info->bytes_outliers = w->b_ol;
    info->bytes_perm = w->b_perm;
    info->bytes_total = w->b_codes + w->b_stats + w->b_stats2 + w->b_ol + w->b_perm;
    info->n_outliers = w->n_ol;
    info->fast = w->L.fast;
    info->exact_stats = w->exact_stats;
}

/* ---- qgemm ----------------------------------------------------------------- */

static __half *g_xp;
static size_t g_xp_cap;
static float *g_ws;
static size_t g_ws_cap;
static unsigned *g_cnt;
static size_t g_cnt_cap;

static spqr_status ensure_buf(void **p, size_t *cap, size_t need, bool zero) {
    if (need <= *cap) return SPQR_OK;
    size_t n = std::max(need, *cap * 2);
    if (*p) cudaFree(*p);
    *p = NULL;
    *cap = 0;
    cudaError_t e = cudaMalloc(p, n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        return spqr_fail(SPQR_ERR_NO_DEVICE, "qgemm: scratch allocation of %zu bytes failed: %s", n,
                         cudaGetErrorString(e));
    }
    if (zero) CK(cudaMemset(*p, 0, n), "cudaMemset");
    *cap = n;
    return SPQR_OK;
}

static int nt_slot(int nt) { return nt == 0 ? 0 : nt == 1 ? 1 : nt == 2 ? 2 : nt == 4 ? 3 : 4; }

struct KInfo {
    MainK k;
    int bps;  /* resident blocks per SM */
    bool pdl; /* compiled with griddepcontrol (sm_90 code) */
    bool init;
};
/* [B slot][smode][g8][nt slot] */
static KInfo g_ki[4][2][2][5];

static spqr_status kinfo(const DevLayer &L, int nt, KInfo **out) {
    const int bs = L.B == 2 ? 0 : L.B == 3 ? 1 : L.B == 4 ? 2 : 3;
    KInfo &ki = g_ki[bs][L.smode][L.g8][nt_slot(nt)];
    if (!ki.init) {
        ki.k = nt == 0 ? gemv_main_kernel(L) : gemm_main_kernel(L, nt);
        const void *fn = (const void *)ki.k.fn;
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, fn), "cudaFuncGetAttributes");
        CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, ki.k.smem), "cudaFuncSetAttribute");
        int bps = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, fn, WPB * 32, ki.k.smem), "occupancy");
        if (bps < 1) return spqr_fail(SPQR_ERR_NO_DEVICE, "qgemm: kernel does not fit on this device");
        ki.bps = bps;
        ki.pdl = fa.ptxVersion >= 90 && g_prop.major >= 9;
        ki.init = true;
    }
    *out = &ki;
    return SPQR_OK;
}

/* split-K factor: enough warps for one full wave of the device, at least two
 * quads per split, at most MAXQ */
static int pick_split(const DevLayer &L, int bps) {
    const int slots = g_prop.multiProcessorCount * bps; /* resident blocks */
    const int row_blocks = ceil_div(L.ntiles, WPB);
    const int need = ceil_div(L.nquads, MAXQ);
    const int cap = std::max(need, L.nquads / 2);
    if (row_blocks * need >= slots) return need;
    int best = need;
    double best_eff = -1;
    for (int ns = need; ns <= cap; ns++) {
        const int qper = ceil_div(L.nquads, ns);
        const int used = ceil_div(L.nquads, qper); /* splits that get work */
        const double waves = (double)row_blocks * used / slots;
        /* utilization of the last wave, with a small cost per extra split */
        const double eff = waves / std::ceil(waves) * std::min(1.0, waves) - 0.01 * used;
        if (eff > best_eff + 1e-9) {
            best_eff = eff;
            best = used;
        }
    }
    return best;
}

static spqr_status launch_main(const MainK &k, dim3 grid, bool pdl, MainArgs A) {
    void *args[1] = {&A};
    main_fn fn = k.fn;
    if (pdl) {
        cudaLaunchConfig_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.gridDim = grid;
        cfg.blockDim = dim3(WPB * 32);
        cfg.dynamicSmemBytes = (size_t)k.smem;
        cfg.stream = 0;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cudaError_t e = cudaLaunchKernelExC(&cfg, (const void *)fn, args);
        if (e == cudaSuccess) return SPQR_OK;
        (void)cudaGetLastError(); /* fall back to a plain launch */
    }
    CK(cudaLaunchKernel((const void *)fn, grid, dim3(WPB * 32), args, (size_t)k.smem, 0), "kernel launch");
    return SPQR_OK;
}

static int auto_nt(int T) { return T <= 8 ? 1 : T <= 16 ? 2 : T <= 32 ? 4 : 8; }

extern "C" int spqr_cuda_qgemm_auto_split(const spqr_cuda_qlinear *W, int n_tok) {
    if (!W || n_tok < 1) return 0;
    if (!W->L.fast) return 1;
    std::lock_guard<std::mutex> lk(g_mu);
    if (dev_init() != SPQR_OK) return 0;
    KInfo *ki = NULL;
    if (kinfo(W->L, n_tok == 1 ? 0 : auto_nt(std::min(n_tok, 64)), &ki) != SPQR_OK) return 0;
    return pick_split(W->L, ki->bps);
}

extern "C" spqr_status spqr_cuda_qgemm_ex(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY,
                                          const spqr_cuda_qgemm_opts *opts) {
    if (!W) return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: layer is NULL");
    if (n_tok < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: n_tok %d < 0", n_tok);
    if (n_tok == 0) return SPQR_OK;
    if (!dX || !dY) return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: NULL X or Y");
    spqr_cuda_qgemm_opts o;
    memset(&o, 0, sizeof o);
    if (opts) o = *opts;
    if (o.kernel < 0 || o.kernel > SPQR_CUDA_KERNEL_REF)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "qgemm: unknown kernel %d", o.kernel);
    const DevLayer &L = W->L;
    std::lock_guard<std::mutex> lk(g_mu);
    spqr_status st = dev_init();
    if (st != SPQR_OK) return st;
    int kern = o.kernel;
    if (kern == SPQR_CUDA_KERNEL_AUTO)
        kern = !L.fast ? SPQR_CUDA_KERNEL_REF : n_tok == 1 ? SPQR_CUDA_KERNEL_GEMV : SPQR_CUDA_KERNEL_GEMM;
    if (kern != SPQR_CUDA_KERNEL_REF && !L.fast)
        return spqr_fail(SPQR_ERR_UNSUPPORTED,
                         "qgemm: tensor-core kernels need beta1 = 8 or a multiple of 16 (beta1=%d)", L.beta1);
    if (kern == SPQR_CUDA_KERNEL_REF) {
        for (int t0 = 0; t0 < n_tok; t0 += 65535) {
            const int T = std::min(n_tok - t0, 65535);
            ref_launch(L, dX + (size_t)t0 * L.cols, T, dY + (size_t)t0 * L.rows);
            CK(cudaGetLastError(), "reference kernel launch");
        }
        return SPQR_OK;
    }
    /* tokens per pass: GEMV = 1, GEMM = max_tokens or automatic (<= 64) */
    int maxT = 64;
    if (kern == SPQR_CUDA_KERNEL_GEMV) maxT = 1;
    else if (o.max_tokens > 0) maxT = o.max_tokens <= 8 ? 8 : o.max_tokens <= 16 ? 16 : o.max_tokens <= 32 ? 32 : 64;
    const int nwin = L.cols_pad / WCOLS, row_blocks = ceil_div(L.ntiles, WPB);
    for (int t0 = 0; t0 < n_tok;) {
        const int T = std::min(n_tok - t0, maxT);
        const bool gemv = kern == SPQR_CUDA_KERNEL_GEMV;
        const int nt = gemv ? 0 : auto_nt(T);
        KInfo *ki = NULL;
        st = kinfo(L, nt, &ki);
        if (st != SPQR_OK) return st;
        int nsplit = o.nsplit > 0 ? std::min(o.nsplit, L.nquads) : pick_split(L, ki->bps);
        nsplit = std::max(nsplit, ceil_div(L.nquads, MAXQ));
        const int qper = ceil_div(L.nquads, nsplit);
        nsplit = ceil_div(L.nquads, qper);
        /* input buffers: batch 1: xg | ox | xf; batch T: xp | xpT */
        const size_t b_xg = align256((size_t)(nwin + 1) * 8 * 16 * sizeof(__half));
        const size_t b_ox = align256((size_t)nwin * 4 * 2 * sizeof(float2));
        const size_t b_xf = align256((size_t)L.cols_pad * sizeof(float));
        const size_t b_xp = align256((size_t)8 * std::max(nt, 1) * L.cols_pad * sizeof(__half));
        st = ensure_buf((void **)&g_xp, &g_xp_cap, gemv ? b_xg + b_ox + b_xf : 2 * b_xp, false);
        if (st != SPQR_OK) return st;
        if (nsplit > 1) {
            st = ensure_buf((void **)&g_ws, &g_ws_cap, (size_t)nsplit * T * L.rows_pad * sizeof(float), false);
            if (st != SPQR_OK) return st;
            st = ensure_buf((void **)&g_cnt, &g_cnt_cap, (size_t)row_blocks * sizeof(unsigned), true);
            if (st != SPQR_OK) return st;
        }
        const float *X = dX + (size_t)t0 * L.cols;
        unsigned char *xb = (unsigned char *)g_xp;
        MainArgs A;
        memset(&A, 0, sizeof A);
        A.L = L;
        A.T = T;
        A.qper = qper;
        A.Y = dY + (size_t)t0 * L.rows;
        A.ws = g_ws;
        A.cnt = g_cnt;
        if (gemv) {
            A.xg = (const uint4 *)xb;
            A.ox = (const float2 *)(xb + b_xg);
            A.xf = (const float *)(xb + b_xg + b_ox);
            gemv_prep_launch(L, X, (__half *)xb, (float2 *)(xb + b_xg), (float *)(xb + b_xg + b_ox));
        } else {
            __half *xp = (__half *)xb, *xpT = (__half *)(xb + b_xp);
            A.xp = xp;
            gemm_prep_launch(L, X, T, nt, xp, xpT);
        }
        CK(cudaGetLastError(), "prep kernel launch");
        st = launch_main(ki->k, dim3(row_blocks, nsplit), !o.no_pdl && ki->pdl, A);
        if (st != SPQR_OK) return st;
        if (!gemv && W->n_ol > 0) {
            const __half *xpT = (const __half *)(xb + b_xp);
            gemm_outliers_launch(L, nt, xpT, T, A.Y);
            CK(cudaGetLastError(), "outlier kernel launch");
        }
        t0 += T;
    }
    return SPQR_OK;
}

extern "C" spqr_status spqr_cuda_qgemm(const spqr_cuda_qlinear *W, const float *dX, int n_tok, float *dY) {
    return spqr_cuda_qgemm_ex(W, dX, n_tok, dY, NULL);
}
