/* spqr_format.c - the SpQR packed layout (packed.h) as a registered
 * quantized-layer format ("spqr"): file sections and geometry, accounting,
 * the CPU kernels (cpu/qgemm.h) and the CUDA kernels (cuda/spqr_cuda.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../format/qformat.h"
#include "cuda/spqr_cuda.h"
#include "cpu/qgemm.h"
#include "packed.h"

static spqr_dtype section_dtype(const char *name, int wide) {
    if (!strcmp(name, "codes") || !strcmp(name, "stat_codes")) return SPQR_DT_U32;
    if (!strcmp(name, "stats2") || !strcmp(name, "stats") || !strcmp(name, "ol_val")) return SPQR_DT_F16;
    return wide ? SPQR_DT_U32 : SPQR_DT_U16;
}

static int s_sections(const void *payload, spqr_qsection *out, int max) {
    const spqr_packed *p = payload;
    spqr_packed_section sec[SPQR_PACKED_MAX_SECTIONS];
    int n = spqr_packed_sections(p, sec, SPQR_PACKED_MAX_SECTIONS);
    if (n < 0 || n > max) return -1;
    for (int i = 0; i < n; i++) {
        /* ol_count is recorded with its real element type (the "ocw" key is
         * authoritative; layouts 1-2 recorded the index dtype, which could
         * not describe an odd number of 1-byte counts) */
        spqr_dtype dt = !strcmp(sec[i].name, "ol_count") ? (p->ocsz == 1 ? SPQR_DT_U8 : p->ocsz == 2 ? SPQR_DT_U16 : SPQR_DT_U32)
                                                         : section_dtype(sec[i].name, p->wide);
        out[i] = (spqr_qsection){sec[i].name, dt, sec[i].data, sec[i].bytes};
    }
    return n;
}

static spqr_status s_write_geometry(const void *payload, cJSON *o) {
    const spqr_packed *p = payload;
    spqr_packed_geom g;
    spqr_packed_geometry(p, &g);
    const struct {
        const char *k;
        int v;
    } keys[] = {{"rows", g.rows},   {"cols", g.cols},   {"wbits", g.wbits}, {"beta1", g.beta1},
                {"beta2", g.beta2}, {"sbits", g.sbits}, {"zbits", g.zbits}, {"ocw", g.ocw}};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!cJSON_AddNumberToObject(o, keys[i].k, keys[i].v)) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if (!cJSON_AddNumberToObject(o, "n_outliers", (double)p->n_outliers))
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    return SPQR_OK;
}

static bool jint(const cJSON *o, const char *k, int lo, int hi, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi)) return false;
    if (j->valuedouble != floor(j->valuedouble)) return false;
    *out = (int)j->valuedouble;
    return true;
}

/* Geometry of a layer's metadata object (files of model layouts 1-3). */
static spqr_status read_geom(const cJSON *lj, spqr_packed_geom *g) {
    if (!jint(lj, "rows", 1, 1 << 30, &g->rows) || !jint(lj, "cols", 1, 1 << 30, &g->cols) ||
        !jint(lj, "wbits", 1, 16, &g->wbits) || !jint(lj, "beta1", 0, 1 << 30, &g->beta1) ||
        !jint(lj, "beta2", 0, 1 << 30, &g->beta2) || !jint(lj, "sbits", 0, 16, &g->sbits) ||
        !jint(lj, "zbits", 0, 16, &g->zbits))
        return spqr_fail(SPQR_ERR_FORMAT, "bad geometry in the metadata");
    g->ocw = 0; /* layout 1: counts of the index width */
    if (cJSON_GetObjectItemCaseSensitive(lj, "ocw") && !jint(lj, "ocw", 0, 4, &g->ocw))
        return spqr_fail(SPQR_ERR_FORMAT, "bad outlier count width in the metadata");
    return SPQR_OK;
}

static spqr_status s_open(const cJSON *layer, int rows, int cols, spqr_qsection_find_fn find, void *ctx,
                          void **payload) {
    spqr_packed_geom g;
    spqr_status st = read_geom(layer, &g);
    if (st) return st;
    if (g.rows != rows || g.cols != cols)
        return spqr_fail(SPQR_ERR_FORMAT, "the layer is %dx%d but the config implies %dx%d", g.rows, g.cols, rows,
                         cols);
    spqr_packed_section sec[SPQR_PACKED_MAX_SECTIONS];
    int n = 0;
    const char *name;
    for (int i = 0; (name = spqr_packed_section_name(i)) != NULL; i++) {
        size_t bytes;
        if (spqr_packed_section_bytes(&g, name, 0, &bytes) != SPQR_OK) continue; /* not of this kind */
        spqr_qsection s;
        if ((st = find(ctx, name, &s))) return st;
        sec[n++] = (spqr_packed_section){name, s.data, s.bytes};
    }
    spqr_packed *pk = calloc(1, sizeof *pk);
    if (!pk) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    if ((st = spqr_packed_from_sections(&g, sec, n, pk))) {
        free(pk);
        return st;
    }
    *payload = pk;
    return SPQR_OK;
}

static void s_free(void *payload) {
    spqr_packed_free(payload);
    free(payload);
}

static size_t s_bytes(const void *payload) { return spqr_packed_bytes(payload); }

static double s_formula_bits(const void *payload) {
    const spqr_packed *p = payload;
    return spqr_formula_bits(p->rows, p->cols, p->wbits, p->beta1, p->beta2, p->sbits, p->zbits, p->n_outliers);
}

static int64_t s_n_outliers(const void *payload) { return ((const spqr_packed *)payload)->n_outliers; }

static void s_describe(const void *payload, char *buf, size_t n) {
    const spqr_packed *p = payload;
    if (p->beta2 > 0)
        snprintf(buf, n, "w%d b1=%d b2=%d s%d/z%d", p->wbits, p->beta1, p->beta2, p->sbits, p->zbits);
    else
        snprintf(buf, n, "w%d b1=%d fp16-stats", p->wbits, p->beta1);
}

static spqr_status s_dequantize(const void *payload, float *W) {
    spqr_qlayer q;
    memset(&q, 0, sizeof q);
    spqr_status st = spqr_unpack(payload, &q);
    if (st) return st;
    spqr_qlayer_dequantize(&q, W);
    spqr_qlayer_free(&q);
    return SPQR_OK;
}

static spqr_status s_gemm_ref(const void *payload, const float *X, int T, float *Y) {
    return spqr_qgemm_ref(payload, X, T, Y);
}

static spqr_status s_gemm(const void *payload, const float *X, int T, float *Y) { return spqr_qgemm(payload, X, T, Y); }

/* ---- CUDA ------------------------------------------------------------------- */

static size_t s_cuda_estimate(const void *payload) { return spqr_packed_bytes(payload) * 5 / 4 + 4096; }

static spqr_status s_cuda_upload(const void *payload, void **dev, size_t *dev_bytes) {
    spqr_qlayer q;
    memset(&q, 0, sizeof q);
    spqr_status st = spqr_unpack(payload, &q);
    if (st) return st;
    spqr_cuda_qlinear *w = NULL;
    st = spqr_cuda_qlinear_upload(&q, &w);
    spqr_qlayer_free(&q);
    if (st) return st;
    spqr_cuda_qlinear_info info;
    spqr_cuda_qlinear_get_info(w, &info);
    *dev_bytes = info.bytes_total;
    *dev = w;
    return SPQR_OK;
}

static spqr_status s_cuda_gemm(const void *dev, const float *dX, int T, float *dY) {
    return spqr_cuda_qgemm(dev, dX, T, dY);
}

static void s_cuda_free(void *dev) { spqr_cuda_qlinear_free(dev); }

const spqr_qformat spqr_qformat_spqr = {
    .name = "spqr",
    .summary = "SpQR: bit-packed codes, bilevel or fp16 group statistics, fp16 outliers (packed.h)",
    .quantized = 1,
    .sections = s_sections,
    .write_geometry = s_write_geometry,
    .open = s_open,
    .free = s_free,
    .bytes = s_bytes,
    .formula_bits = s_formula_bits,
    .n_outliers = s_n_outliers,
    .describe = s_describe,
    .dequantize = s_dequantize,
    .gemm_ref = s_gemm_ref,
    .gemm = s_gemm,
    .cuda_estimate = s_cuda_estimate,
    .cuda_upload = s_cuda_upload,
    .cuda_gemm = s_cuda_gemm,
    .cuda_free = s_cuda_free,
};
