/* cc_cuda.cu - the ClusComp CUDA entry points (cc_cuda.h, cc_cuda_ex.h):
 * upload (the payload's index stream regrouped into 128-field chunks per
 * row block, see cc_kernels.cuh), clone, free, info, and the gemm dispatch:
 *  - T < SPQR_CC_CUDA_DEQ_MIN_T (and kernel LOOKUP): the lookup kernel
 *    (lookup.cu) in passes of tt <= 8 tokens (<= 4 for d = 16), with the
 *    launch plan (codebook in shared memory, in pieces or read from global
 *    memory; column slices; warps per block and per row block; persistent
 *    grid) chosen here;
 *  - larger T (kernel DEQ): rows dequantized to fp16 in slabs of <= 64 MB,
 *    X converted to fp16, cuBLAS GemmEx (fp32 accumulation) through the
 *    runtime helper, fp16 results widened into Y;
 *  - kernel REF: the one-thread-per-output reference (ref.cu).
 * The scratch buffer (slice partials, fp16 slabs) is shared by all layers
 * of the process and guarded by a mutex held while a gemm enqueues its
 * work; everything runs on the legacy default stream, so the next call's
 * reuse is ordered after it. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <mutex>
#include <vector>

extern "C" {
#include "formats/cluscomp/cluscomp.h"
#include "util/common.h"
#include "formats/cluscomp/cuda/cc_cuda.h"
}
#include "formats/cluscomp/cuda/cc_cuda_ex.h"
#include "formats/cluscomp/cuda/cc_kernels.cuh"
#include "kernels/cuda/cuda_rt.h"
#include "kernels/cuda/runtime.cuh"

using namespace spqr_cc;

/* fp16 weight slab of the cuBLAS path */
#define CC_SLAB_BYTES (64ull << 20)

struct cc_dev {
    DevLayer L;
    void *dbuf;
    size_t bytes;
};

static inline size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }
static inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* ---- validation and sizes ------------------------------------------------- */

typedef struct geom {
    int rows, cols, d, n, ibits, nb, nchunks, dv, S;
    size_t cb_bytes, idx_bytes, src_bytes;
} geom;

static spqr_status check_layer(const spqr_cc_layer *L, geom *g) {
    if (!L) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: layer is NULL");
    if (L->rows < 1 || L->cols < 1 || L->d < 1 || L->d > SPQR_CC_MAX_D || L->n < 1 || L->n > SPQR_CC_MAX_N)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: bad geometry rows=%d cols=%d d=%d n=%d", L->rows,
                         L->cols, L->d, L->n);
    if (L->ibits < 1 || L->ibits > 24 || (L->ibits < 24 && (int64_t)L->n > ((int64_t)1 << L->ibits)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: ibits=%d cannot index n=%d", L->ibits, L->n);
    const int nb = (L->rows + L->d - 1) / L->d;
    if (L->nb != nb) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: nb=%d, expected %d", L->nb, nb);
    if (!L->codebook || !L->idx) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: missing codebook or indices");
    const uint64_t fields = (uint64_t)nb * (uint64_t)L->cols;
    const uint64_t src = (fields * (uint64_t)L->ibits + 7) / 8;
    if (L->idx_bytes < src)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: index stream has %zu bytes, %llu needed", L->idx_bytes,
                         (unsigned long long)src);
    g->rows = L->rows;
    g->cols = L->cols;
    g->d = L->d;
    g->n = L->n;
    g->ibits = L->ibits;
    g->nb = nb;
    g->nchunks = (L->cols + CHUNK - 1) / CHUNK;
    int dv = 16;
    while (L->d % dv) dv >>= 1;
    g->dv = dv;
    g->S = L->d / dv;
    g->cb_bytes = align16((size_t)L->n * L->d * 2);
    g->idx_bytes = (size_t)nb * g->nchunks * 16u * (size_t)L->ibits;
    g->src_bytes = (size_t)src;
    if ((int64_t)nb * g->S > INT32_MAX / 2) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: too many rows");
    return SPQR_OK;
}

extern "C" size_t spqr_cc_cuda_estimate(const void *payload) {
    geom g;
    if (check_layer((const spqr_cc_layer *)payload, &g) != SPQR_OK) return 0;
    return g.cb_bytes + g.idx_bytes + 16;
}

/* Regroup the payload stream into the chunked layout (row block b's fields
 * at bit (b * nchunks * 128 + j) * ibits, zero fields up to nchunks*128)
 * and check every index against n. Reads only the src_bytes the fields
 * occupy. */
static spqr_status relayout(const spqr_cc_layer *L, const geom *g, uint32_t *dst) {
    const int ib = g->ibits;
    const uint64_t mask = (1ull << ib) - 1ull;
    const int colsP = g->nchunks * CHUNK;
    const uint8_t *p = L->idx;
    const size_t nbytes = g->src_bytes;
    const bool check = (int64_t)g->n < ((int64_t)1 << ib);
    uint32_t bad = 0;
    for (int b = 0; b < g->nb; b++) {
        /* reader at bit b*cols*ib */
        const uint64_t sb = (uint64_t)b * g->cols * ib;
        size_t byte = (size_t)(sb >> 3);
        uint64_t acc = 0;
        int have = 0;
        while (have <= 56 && byte < nbytes) {
            acc |= (uint64_t)p[byte++] << have;
            have += 8;
        }
        acc >>= (sb & 7);
        have -= (int)(sb & 7);
        /* writer at word b*colsP*ib/32 */
        uint32_t *out = dst + (size_t)b * colsP * ib / 32;
        uint64_t wacc = 0;
        int wn = 0;
        for (int j = 0; j < colsP; j++) {
            uint32_t v = 0;
            if (j < g->cols) {
                if (have < ib) {
                    while (have <= 56 && byte < nbytes) {
                        acc |= (uint64_t)p[byte++] << have;
                        have += 8;
                    }
                }
                v = (uint32_t)(acc & mask);
                acc >>= ib;
                have -= ib;
                if (check && v >= (uint32_t)g->n) bad++;
            }
            wacc |= (uint64_t)v << wn;
            wn += ib;
            if (wn >= 32) {
                *out++ = (uint32_t)wacc;
                wacc >>= 32;
                wn -= 32;
            }
        }
    }
    if (bad) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: %u indices >= n=%d", bad, g->n);
    return SPQR_OK;
}

extern "C" spqr_status spqr_cc_cuda_upload(const void *payload, void **dev, size_t *dev_bytes) {
    if (dev) *dev = NULL;
    if (dev_bytes) *dev_bytes = 0;
    if (!dev) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda upload: dev is NULL");
    const spqr_cc_layer *L = (const spqr_cc_layer *)payload;
    geom g;
    spqr_status st = check_layer(L, &g);
    if (st != SPQR_OK) return st;
    st = spqr_cuda_available(NULL, 0);
    if (st != SPQR_OK) return st;
    const size_t total = g.cb_bytes + g.idx_bytes + 16;
    size_t fr = 0, tot = 0;
    st = spqr_cuda_mem_info(&fr, &tot);
    if (st != SPQR_OK) return st;
    if (total + (64ull << 20) > fr)
        return spqr_fail(SPQR_ERR_NO_DEVICE, "cluscomp cuda upload: %zu bytes needed, %zu free on the device", total, fr);

    uint32_t *host = (uint32_t *)calloc(g.idx_bytes / 4 + 4, 4);
    if (!host) return spqr_fail(SPQR_ERR_NOMEM, "cluscomp cuda upload: %zu bytes", g.idx_bytes);
    st = relayout(L, &g, host);
    if (st != SPQR_OK) {
        free(host);
        return st;
    }
    cc_dev *h = (cc_dev *)calloc(1, sizeof *h);
    if (!h) {
        free(host);
        return spqr_fail(SPQR_ERR_NOMEM, "cluscomp cuda upload");
    }
    st = spqr_cuda_malloc(&h->dbuf, total);
    if (st == SPQR_OK) st = spqr_cuda_memset(h->dbuf, 0, total);
    if (st == SPQR_OK) st = spqr_cuda_memcpy_h2d(h->dbuf, L->codebook, (size_t)g.n * g.d * 2);
    if (st == SPQR_OK) st = spqr_cuda_memcpy_h2d((char *)h->dbuf + g.cb_bytes, host, g.idx_bytes);
    free(host);
    if (st != SPQR_OK) {
        spqr_cuda_free(h->dbuf);
        free(h);
        return st;
    }
    DevLayer &D = h->L;
    D.rows = g.rows;
    D.cols = g.cols;
    D.d = g.d;
    D.n = g.n;
    D.ibits = g.ibits;
    D.nb = g.nb;
    D.nchunks = g.nchunks;
    D.dv = g.dv;
    D.S = g.S;
    D.cb = (const __half *)h->dbuf;
    D.idx = (const uint8_t *)h->dbuf + g.cb_bytes;
    D.cb_bytes = g.cb_bytes;
    D.idx_bytes = g.idx_bytes;
    h->bytes = total;
    *dev = h;
    if (dev_bytes) *dev_bytes = total;
    return SPQR_OK;
}

extern "C" void spqr_cc_cuda_free(void *dev) {
    cc_dev *h = (cc_dev *)dev;
    if (!h) return;
    spqr_cuda_free(h->dbuf);
    free(h);
}

extern "C" spqr_status spqr_cc_cuda_clone(const void *dev, void **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda clone: out is NULL");
    *out = NULL;
    const cc_dev *h = (const cc_dev *)dev;
    if (!h) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda clone: NULL layer");
    cc_dev *c = (cc_dev *)calloc(1, sizeof *c);
    if (!c) return spqr_fail(SPQR_ERR_NOMEM, "cluscomp cuda clone");
    *c = *h;
    spqr_status st = spqr_cuda_malloc(&c->dbuf, h->bytes);
    if (st == SPQR_OK) st = spqr_cuda_memcpy_d2d(c->dbuf, h->dbuf, h->bytes);
    if (st != SPQR_OK) {
        spqr_cuda_free(c->dbuf);
        free(c);
        return st;
    }
    c->L.cb = (const __half *)c->dbuf;
    c->L.idx = (const uint8_t *)c->dbuf + h->L.cb_bytes;
    *out = c;
    return SPQR_OK;
}

/* ---- launch plans ----------------------------------------------------------- */

struct Plan {
    int mode, tt, nw, ks, kg, npieces, pb, cps, cpj, rbt, ntiles, gx, occ;
    size_t smem, cb_smem;
    const void *fn;
};

struct FnInfo {
    const void *fn;
    int nthreads;
    size_t smem;
    int occ;
};
static std::mutex g_plan_mu;
static std::vector<std::pair<const void *, bool>> g_fn_pdl; /* attribute set; PDL usable */
static std::vector<FnInfo> g_occ;

static size_t smem_optin(void) { return (size_t)g_prop.sharedMemPerBlockOptin; }

/* raise fn's dynamic shared memory limit once; whether its code has PDL */
static spqr_status fn_init(const void *fn, bool *pdl) {
    for (const auto &f : g_fn_pdl)
        if (f.first == fn) {
            *pdl = f.second;
            return SPQR_OK;
        }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_optin()),
       "cudaFuncSetAttribute");
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, fn), "cudaFuncGetAttributes");
    *pdl = fa.binaryVersion >= 90 && g_prop.major >= 9;
    g_fn_pdl.push_back({fn, *pdl});
    return SPQR_OK;
}

/* blocks per SM of fn with this shape */
static spqr_status occupancy(const void *fn, int nthreads, size_t smem, int *occ, bool *pdl) {
    std::lock_guard<std::mutex> lk(g_plan_mu);
    spqr_status st = fn_init(fn, pdl);
    if (st != SPQR_OK) return st;
    for (const FnInfo &f : g_occ)
        if (f.fn == fn && f.nthreads == nthreads && f.smem == smem) {
            *occ = f.occ;
            return SPQR_OK;
        }
    int o = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, fn, nthreads, smem), "occupancy");
    if (o < 1) return spqr_fail(SPQR_ERR_NO_DEVICE, "cluscomp cuda: kernel does not fit (%zu bytes shared)", smem);
    if (g_occ.size() > 256) g_occ.clear();
    g_occ.push_back({fn, nthreads, smem, o});
    *occ = o;
    return SPQR_OK;
}

static int tt_max(int dv, const spqr_cc_cuda_opts *o) {
    int m = std::min(8, 64 / dv);
    if (o && o->max_tt > 0) {
        int c = 1;
        while (c * 2 <= o->max_tt && c * 2 <= m) c *= 2;
        m = c;
    }
    return m;
}

static inline int cdiv(int a, int b) { return (a + b - 1) / b; }

/* MODE_PIECE for nw warps and kg column slices: entries per piece and the
 * number of pieces (0 when nothing fits) */
static void piece_fit(const DevLayer &L, int nw, int tt, int kg, int force_pb, int *pb, int *np) {
    const int cps = cdiv(L.nchunks, kg);
    const size_t fixed = lookup_smem_bytes(MODE_PIECE, nw, L.dv, tt, L.ibits, cps * CHUNK, 0);
    *pb = 0;
    *np = 0;
    if (fixed + 16 * (size_t)L.d > smem_optin()) return;
    size_t e = (smem_optin() - fixed) / ((size_t)L.d * 2);
    if (force_pb > 0 && (size_t)force_pb < e) e = (size_t)force_pb;
    e &= ~(size_t)7;
    if (e < 8) return;
    if (e > (size_t)L.n) e = ((size_t)L.n + 7) & ~(size_t)7;
    *pb = (int)e;
    *np = cdiv(L.n, (int)e);
}

/* plan of one pass of the lookup kernel over `rem` remaining tokens */
static spqr_status make_plan(const DevLayer &L, int rem, const spqr_cc_cuda_opts *o, Plan *P) {
    const int tm = tt_max(L.dv, o);
    int tt = 1;
    while (tt < rem && tt < tm) tt *= 2;
    const int maxw = lookup_max_warps(L.dv, tt);
    int fnw = o ? o->nwarps : 0;
    if (fnw && fnw != 4 && fnw != 8 && fnw != 16 && fnw != 32)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: nwarps=%d (4, 8, 16 or 32)", fnw);
    if (fnw > maxw) fnw = maxw;
    if (o && o->ks > 0 && (o->ks & (o->ks - 1)))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: ks=%d (a power of two)", o->ks);
    const size_t optin = smem_optin();
    const int colsP = L.nchunks * CHUNK;
    const int force_pb = o ? o->piece : 0;
    const bool global = o && o->cb_global;

    /* the fewest column slices whose inputs fit next to `other` bytes */
    auto min_kg = [&](size_t other, size_t xcap) -> int {
        if (other + (size_t)tt * CHUNK * 4 > optin) return -1;
        const size_t budget = std::min(xcap, optin - other);
        const size_t per_chunk = (size_t)tt * CHUNK * 4;
        const int fit = (int)(budget / per_chunk); /* chunks per slice */
        return fit < 1 ? -1 : cdiv(L.nchunks, std::min(fit, L.nchunks));
    };

    int mode = -1, nw = 0, kg = 0, pb = L.n, np = 1;
    size_t cb_smem = 0;
    /* the whole codebook in shared memory, with inputs of >= 16 KB per slice
     * (or all of them) beside it */
    if (!global && force_pb <= 0) {
        nw = fnw ? fnw : maxw;
        const size_t other = lookup_smem_bytes(MODE_SMEM, nw, L.dv, tt, L.ibits, 0, L.cb_bytes);
        const size_t need = std::min<size_t>((size_t)tt * colsP * 4, 16384);
        if (other + need <= optin) {
            mode = MODE_SMEM;
            cb_smem = L.cb_bytes;
            kg = min_kg(other, SIZE_MAX);
        }
    }
    /* pieces: the fewest, then the fewest column slices */
    if (mode < 0 && !global && force_pb >= 0) {
        int best_np = 0;
        double best = 1e300;
        for (int w = 4; w <= 16; w *= 2) {
            if (fnw ? w != fnw : w == 4) continue; /* 4 warps only when asked for */
            for (int k = 1; k <= std::min(L.nchunks, 32); k = k < 4 ? k + 1 : k * 2) {
                int b = 0, n2 = 0;
                piece_fit(L, w, tt, k, force_pb, &b, &n2);
                if (!n2) continue;
                const double cost = n2 + 0.25 * (k - 1) + (w == 16 ? 0 : 0.1);
                if (cost < best) {
                    best = cost;
                    best_np = n2;
                    nw = w;
                    kg = k;
                    pb = b;
                }
            }
        }
        if (best_np && (force_pb > 0 || best_np <= 16)) {
            mode = MODE_PIECE;
            np = best_np;
            cb_smem = align16((size_t)pb * L.d * 2);
        }
    }
    if (mode < 0) {
        mode = MODE_GLOBAL;
        nw = fnw ? fnw : maxw;
        kg = min_kg(lookup_smem_bytes(MODE_GLOBAL, nw, L.dv, tt, L.ibits, 0, 0), 65536);
        np = 1;
        pb = L.n;
        cb_smem = 0;
    }
    if (kg < 1) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: no launch plan fits shared memory");
    if (o && o->kg > kg) kg = o->kg; /* more slices than needed: allowed */
    kg = std::max(1, std::min(kg, L.nchunks));
    const int cps = cdiv(L.nchunks, kg);
    kg = cdiv(L.nchunks, cps);
    const size_t smem = lookup_smem_bytes(mode, nw, L.dv, tt, L.ibits, cps * CHUNK, cb_smem);
    if (smem > optin)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: plan needs %zu bytes of shared memory (%zu)", smem,
                         optin);
    const void *fn = lookup_kernel(L.dv, tt, mode);
    if (!fn) return spqr_fail(SPQR_ERR_UNSUPPORTED, "cluscomp cuda: no kernel for dv=%d tt=%d", L.dv, tt);
    int occ = 0;
    bool pdl = false;
    spqr_status st = occupancy(fn, nw * 32, smem, &occ, &pdl);
    if (st != SPQR_OK) return st;
    const int nvb = L.nb * L.S;
    const int slots = g_prop.multiProcessorCount * occ;
    const int gx_target = std::max(1, slots / (kg * np));
    int best_ks = 0;
    double best = 1e300;
    for (int ks = 1; ks <= nw; ks *= 2) {
        if (o && o->ks > 0 && ks != o->ks) continue;
        const int rbt = nw / ks, cpj = cdiv(cps, ks);
        const int ntiles = cdiv(nvb, rbt);
        const int gx = std::min(gx_target, ntiles);
        const int rounds = cdiv(ntiles, gx);
        const double cost = rounds * (cpj + 1.0);
        if (cost < best - 1e-9) {
            best = cost;
            best_ks = ks;
        }
    }
    if (!best_ks) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda: ks=%d > %d warps", o ? o->ks : 0, nw);
    P->mode = mode;
    P->tt = tt;
    P->nw = nw;
    P->ks = best_ks;
    P->kg = kg;
    P->npieces = np;
    P->pb = pb;
    P->cps = cps;
    P->cpj = cdiv(cps, best_ks);
    P->rbt = nw / best_ks;
    P->ntiles = cdiv(nvb, P->rbt);
    P->gx = std::min(gx_target, P->ntiles);
    P->occ = occ;
    P->smem = smem;
    P->cb_smem = cb_smem;
    P->fn = fn;
    return SPQR_OK;
}

static bool fn_pdl(const void *fn) {
    std::lock_guard<std::mutex> lk(g_plan_mu);
    for (const auto &f : g_fn_pdl)
        if (f.first == fn) return f.second;
    return false;
}

/* ---- scratch ------------------------------------------------------------------ */

static std::mutex g_scr_mu;
static void *g_scr;
static size_t g_scr_bytes;

static spqr_status scratch(size_t bytes, void **p) {
    if (bytes > g_scr_bytes) {
        spqr_cuda_free(g_scr); /* cudaFree waits for queued work */
        g_scr = NULL;
        g_scr_bytes = 0;
        spqr_status st = spqr_cuda_malloc(&g_scr, bytes);
        if (st != SPQR_OK) return st;
        g_scr_bytes = bytes;
    }
    *p = g_scr;
    return SPQR_OK;
}

/* ---- gemm ------------------------------------------------------------------------ */

static spqr_status gemm_lookup(const cc_dev *h, const float *dX, int T, float *dY, const spqr_cc_cuda_opts *o) {
    const DevLayer &L = h->L;
    const bool xvec = (L.cols % 4) == 0 && ((uintptr_t)dX & 15) == 0;
    for (int t0 = 0; t0 < T;) {
        Plan P;
        spqr_status st = make_plan(L, T - t0, o, &P);
        if (st != SPQR_OK) return st;
        LookupArgs a;
        memset(&a, 0, sizeof a);
        a.cb = L.cb;
        a.idx = L.idx;
        a.X = dX;
        a.Y = dY;
        a.rows = L.rows;
        a.cols = L.cols;
        a.d = L.d;
        a.n = L.n;
        a.ibits = L.ibits;
        a.nchunks = L.nchunks;
        a.S = L.S;
        a.nvb = L.nb * L.S;
        a.t0 = t0;
        a.tt = std::min(P.tt, T - t0);
        a.ks = P.ks;
        a.npieces = P.npieces;
        a.pb = P.pb;
        a.nslices = P.kg * P.npieces;
        a.cps = P.cps;
        a.cpj = P.cpj;
        a.rbt = P.rbt;
        a.ntiles = P.ntiles;
        a.stage_words = 4 * L.ibits + 4;
        a.xs = P.cps * CHUNK;
        a.xvec = xvec;
        a.cb_smem_bytes = (uint32_t)P.cb_smem;
        a.cb_bytes = (uint32_t)L.cb_bytes;
        std::unique_lock<std::mutex> lk(g_scr_mu, std::defer_lock);
        if (a.nslices > 1) {
            lk.lock();
            void *ws = NULL;
            st = scratch((size_t)a.nslices * a.tt * L.rows * sizeof(float), &ws);
            if (st != SPQR_OK) return st;
            a.ws = (float *)ws;
        }
        const bool pdl = !(o && o->no_pdl) && fn_pdl(P.fn);
        CK(lookup_launch(P.fn, dim3(P.gx, a.nslices), P.nw, P.smem, pdl, a), "cluscomp lookup kernel launch");
        if (a.nslices > 1) CK(ksum_launch(a.ws, a.nslices, a.tt, L.rows, t0, dY), "cluscomp ksum launch");
        t0 += a.tt;
    }
    return SPQR_OK;
}

static spqr_status gemm_deq(const cc_dev *h, const float *dX, int T, float *dY) {
    const DevLayer &L = h->L;
    size_t rc = CC_SLAB_BYTES / ((size_t)L.cols * 2);
    if (rc < 1) rc = 1;
    if (rc > (size_t)L.rows) rc = (size_t)L.rows;
    const size_t bx = align256((size_t)T * L.cols * 2), bw = align256(rc * L.cols * 2), by = align256((size_t)T * rc * 2);
    std::lock_guard<std::mutex> lk(g_scr_mu);
    void *s = NULL;
    spqr_status st = scratch(bx + bw + by, &s);
    if (st != SPQR_OK) return st;
    uint16_t *X16 = (uint16_t *)s;
    __half *W16 = (__half *)((char *)s + bx);
    __half *Y16 = (__half *)((char *)s + bx + bw);
    st = spqr_cuda_f32_to_f16(dX, X16, (size_t)T * L.cols);
    if (st != SPQR_OK) return st;
    for (int r0 = 0; r0 < L.rows; r0 += (int)rc) {
        const int n = std::min((int)rc, L.rows - r0);
        CK(dequant16_launch(L, r0, n, W16), "cluscomp dequant launch");
        st = spqr_cuda_dense_gemm(SPQR_CUDA_F16, W16, X16, Y16, n, L.cols, T);
        if (st != SPQR_OK) return st;
        CK(scatter16_launch(Y16, T, n, r0, L.rows, dY), "cluscomp scatter launch");
    }
    return SPQR_OK;
}

extern "C" spqr_status spqr_cc_cuda_gemm_ex(const void *dev, const float *dX, int T, float *dY,
                                            const spqr_cc_cuda_opts *o) {
    const cc_dev *h = (const cc_dev *)dev;
    if (!h) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda gemm: NULL layer");
    if (T < 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda gemm: T=%d", T);
    if (T == 0) return SPQR_OK;
    if (!dX || !dY) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda gemm: NULL input or output");
    int k = o ? o->kernel : SPQR_CC_KERNEL_AUTO;
    if (k == SPQR_CC_KERNEL_AUTO) k = T >= SPQR_CC_CUDA_DEQ_MIN_T ? SPQR_CC_KERNEL_DEQ : SPQR_CC_KERNEL_LOOKUP;
    switch (k) {
    case SPQR_CC_KERNEL_LOOKUP: return gemm_lookup(h, dX, T, dY, o);
    case SPQR_CC_KERNEL_DEQ: return gemm_deq(h, dX, T, dY);
    case SPQR_CC_KERNEL_REF: CK(ref_launch(h->L, dX, T, dY), "cluscomp ref kernel launch"); return SPQR_OK;
    default: return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda gemm: kernel %d", k);
    }
}

extern "C" spqr_status spqr_cc_cuda_gemm(const void *dev, const float *dX, int T, float *dY) {
    return spqr_cc_cuda_gemm_ex(dev, dX, T, dY, NULL);
}

extern "C" void spqr_cc_cuda_get_info(const void *dev, spqr_cc_cuda_info *info) {
    if (!info) return;
    memset(info, 0, sizeof *info);
    const cc_dev *h = (const cc_dev *)dev;
    if (!h) return;
    const DevLayer &L = h->L;
    info->rows = L.rows;
    info->cols = L.cols;
    info->d = L.d;
    info->n = L.n;
    info->ibits = L.ibits;
    info->nb = L.nb;
    info->nchunks = L.nchunks;
    info->bytes_cb = L.cb_bytes;
    info->bytes_idx = L.idx_bytes;
    info->bytes_total = h->bytes;
    Plan P;
    if (make_plan(L, 1, NULL, &P) == SPQR_OK) {
        info->mode = P.mode;
        info->pieces = P.npieces;
    }
}

extern "C" spqr_status spqr_cc_cuda_plan_str(const void *dev, int T, const spqr_cc_cuda_opts *o, char *buf,
                                             size_t n) {
    if (buf && n) buf[0] = 0;
    const cc_dev *h = (const cc_dev *)dev;
    if (!h || T < 1) return spqr_fail(SPQR_ERR_INVALID_ARG, "cluscomp cuda plan: bad arguments");
    Plan P;
    spqr_status st = make_plan(h->L, T, o, &P);
    if (st != SPQR_OK) return st;
    if (buf && n)
        snprintf(buf, n, "mode=%s tt=%d nw=%d ks=%d kg=%d pieces=%d (%d entries) cpj=%d grid=%dx%d occ=%d smem=%zu",
                 P.mode == MODE_SMEM ? "smem" : P.mode == MODE_GLOBAL ? "global" : "pieces", P.tt, P.nw, P.ks, P.kg,
                 P.npieces, P.pb, P.cpj, P.gx, P.kg * P.npieces, P.occ, P.smem);
    return SPQR_OK;
}
