/* registry.c - the quantized-layer formats this build knows: the built-in
 * list (one line per format module) plus those registered at run time. */
#include <stdlib.h>

#include "../format/qformat.h"

extern const spqr_qformat spqr_qformat_spqr;
extern const spqr_qformat spqr_qformat_cluscomp;

static const spqr_qformat *const k_builtin[] = {
    &spqr_qformat_dense, /* formats/dense */
    &spqr_qformat_spqr,  /* formats/spqr  */
    &spqr_qformat_cluscomp, /* formats/cluscomp */
};
#define N_BUILTIN ((int)(sizeof k_builtin / sizeof *k_builtin))
#define MAX_EXTRA 32

static const spqr_qformat *g_extra[MAX_EXTRA];
static int g_n_extra;

int spqr_qformat_count(void) { return N_BUILTIN + g_n_extra; }

const spqr_qformat *spqr_qformat_at(int i) {
    if (i < 0 || i >= spqr_qformat_count()) return NULL;
    return i < N_BUILTIN ? k_builtin[i] : g_extra[i - N_BUILTIN];
}

const spqr_qformat *spqr_qformat_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < spqr_qformat_count(); i++)
        if (!strcmp(spqr_qformat_at(i)->name, name)) return spqr_qformat_at(i);
    return NULL;
}

spqr_status spqr_qformat_register(const spqr_qformat *f) {
    if (!f || !f->name || !*f->name || !f->sections || !f->write_geometry || !f->open || !f->free || !f->bytes ||
        !f->formula_bits || !f->dequantize || !f->gemm_ref || !f->gemm)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_qformat_register: a format needs a name and every required function");
    if ((f->cuda_upload != NULL) != (f->cuda_gemm != NULL) || (f->cuda_upload != NULL) != (f->cuda_free != NULL))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "format '%s': CUDA upload, gemm and free come together", f->name);
    if (spqr_qformat_find(f->name)) return spqr_fail(SPQR_ERR_INVALID_ARG, "format '%s' is already registered", f->name);
    if (g_n_extra == MAX_EXTRA) return spqr_fail(SPQR_ERR_NOMEM, "too many registered formats");
    g_extra[g_n_extra++] = f;
    return SPQR_OK;
}
