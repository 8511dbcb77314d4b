/* fuzz_cluscomp.c - libFuzzer target for the ClusComp layer reader (the
 * "cluscomp" format's open(), what load_spqr.c calls on every cluscomp
 * linear of a .spqr file) and for the kernels that run on what it accepts.
 *
 * The input is read as: 7 geometry bytes (rows, cols, d, n (2 bytes), ibits,
 * cb_share; each reduced to a small range that is sometimes inconsistent,
 * e.g. ibits that does not match n), 2 bytes that perturb the two section
 * lengths (mostly exact, sometimes short or long), then the bytes of the
 * "codebook" and "indices" sections (missing bytes are zero). A layer open()
 * accepts is dequantized and multiplied by the scalar reference and by the
 * selected SIMD kernel on one and three tokens: under ASan/UBSan any
 * out-of-bounds access is a finding (numeric agreement is the job of
 * tests/test_cluscomp_format.c).
 *
 * Run: build with -DSPQR_FUZZ=ON (see CMakeLists.txt), then
 *   ./fuzz_cluscomp -max_total_time=30 corpus_dir
 */
#include <stdlib.h>
#include <string.h>

#include "format/qformat.h"
#include "formats/cluscomp/cluscomp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    spqr_qsection sec[2];
} secs;

static spqr_status find(void *ctx, const char *name, spqr_qsection *out) {
    const secs *s = ctx;
    for (int i = 0; i < 2; i++)
        if (!strcmp(s->sec[i].name, name)) {
            *out = s->sec[i];
            return SPQR_OK;
        }
    return spqr_fail(SPQR_ERR_FORMAT, "no section %s", name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 9) return 0;
    const int rows = 1 + data[0] % 40, cols = 1 + data[1] % 70, d = 1 + data[2] % 17;
    const int n = 1 + (data[3] | data[4] << 8) % 300;
    int ibits = spqr_cc_index_bits(n);
    if (data[5] % 8 == 0) ibits = 1 + data[5] % 24; /* sometimes inconsistent */
    const int share = 1 + data[6] % 3;
    const int nb = (rows + d - 1) / d;
    size_t cb_bytes = (size_t)n * d * 2, ix_bytes = spqr_cc_index_bytes((int64_t)nb * cols, ibits);
    if (data[7] % 16 == 0) cb_bytes = data[7] % 2 ? cb_bytes + 2 : cb_bytes - 2;
    if (data[8] % 16 == 0) ix_bytes = data[8] % 2 ? ix_bytes + 1 : (ix_bytes ? ix_bytes - 1 : 0);
    size_t pos = 9;
    uint8_t *cb = calloc(1, cb_bytes + 1), *ix = calloc(1, ix_bytes + 1);
    if (!cb || !ix) abort();
    for (size_t i = 0; i < cb_bytes && pos < size; i++) cb[i] = data[pos++];
    for (size_t i = 0; i < ix_bytes && pos < size; i++) ix[i] = data[pos++];
    secs s = {{{"codebook", SPQR_DT_F16, cb, cb_bytes}, {"indices", SPQR_DT_U8, ix, ix_bytes}}};
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "rows", rows);
    cJSON_AddNumberToObject(o, "cols", cols);
    cJSON_AddNumberToObject(o, "d", d);
    cJSON_AddNumberToObject(o, "n", n);
    cJSON_AddNumberToObject(o, "ibits", ibits);
    cJSON_AddNumberToObject(o, "cb_share", share);
    const spqr_qformat *f = &spqr_qformat_cluscomp;
    void *pl = NULL;
    if (f->open(o, rows, cols, find, &s, &pl) == SPQR_OK) {
        float x[3 * 70], y[3 * 40], *w = malloc(sizeof(float) * rows * cols);
        if (!w) abort();
        for (int i = 0; i < 3 * cols; i++) x[i] = (float)((i * 7919) % 13) - 6.0f;
        if (f->dequantize(pl, w) != SPQR_OK) abort();
        for (int nt = 1; nt <= 3; nt += 2) {
            if (f->gemm_ref(pl, x, nt, y) != SPQR_OK) abort();
            if (f->gemm(pl, x, nt, y) != SPQR_OK) abort();
        }
        (void)f->bytes(pl);
        (void)f->formula_bits(pl);
        free(w);
        f->free(pl);
    }
    cJSON_Delete(o);
    free(cb);
    free(ix);
    return 0;
}
