/* model.h - internal model representation shared by loaders, the forward
 * pass, the quantization pipeline and the file writer. */
#ifndef SPQR_MODEL_H
#define SPQR_MODEL_H

#include <math.h>

#include "../format/qformat.h"
#include "../util/common.h"

/* A 2-D weight [rows][cols] (or a vector with rows == 1) in its stored dtype,
 * usually pointing into a mapped file. */
typedef struct spqr_tensor {
    const void *data;
    spqr_dtype dt;
    int64_t rows, cols;
} spqr_tensor;

/* y = W x (+ bias); W is [rows = out_features][cols = in_features], stored in
 * some quantized-layer format (format/qformat.h): dense, SpQR, ... */
typedef struct spqr_linear {
    const spqr_qformat *fmt;   /* NULL only before a loader filled it        */
    void *payload;             /* owned: released with fmt->free             */
    int rows, cols;
    const float *bias;         /* optional [rows] float32, NULL if none      */
} spqr_linear;

/* The dense weight of l, or NULL when l is stored in another format. */
static inline const spqr_dense *spqr_linear_dense(const spqr_linear *l) {
    return l->fmt == &spqr_qformat_dense ? (const spqr_dense *)l->payload : NULL;
}
/* Make l a dense rows x cols linear over data (borrowed) of dtype dt,
 * releasing its previous payload. The bias is kept. */
spqr_status spqr_linear_set_dense(spqr_linear *l, const void *data, spqr_dtype dt, int rows, int cols);
/* Make l a linear of format fmt with payload (ownership moves to l),
 * releasing the previous payload. */
void spqr_linear_set(spqr_linear *l, const spqr_qformat *fmt, void *payload, int rows, int cols);
/* Release the payload (fmt->free) and clear format and payload. */
void spqr_linear_release(spqr_linear *l);

enum { SPQR_LIN_Q, SPQR_LIN_K, SPQR_LIN_V, SPQR_LIN_O, SPQR_LIN_GATE, SPQR_LIN_UP, SPQR_LIN_DOWN, SPQR_LIN_PER_BLOCK };
extern const char *const spqr_linear_names[SPQR_LIN_PER_BLOCK]; /* "q_proj", ... */

typedef struct spqr_block {
    const float *attn_norm; /* [dim] float32 */
    const float *ffn_norm;  /* [dim] float32 */
    spqr_linear lin[SPQR_LIN_PER_BLOCK];
} spqr_block;

typedef enum spqr_model_source { SPQR_SRC_HF = 1, SPQR_SRC_LLAMA2C = 2, SPQR_SRC_SPQR = 3, SPQR_SRC_GGUF = 4 } spqr_model_source;

struct spqr_model {
    spqr_config cfg;
    spqr_model_source source;
    char *path;
    spqr_tensor tok_emb;        /* [vocab][dim]                              */
    const float *final_norm;    /* [dim]                                     */
    spqr_linear head;           /* [vocab][dim], may alias tok_emb           */
    spqr_block *blocks;         /* [n_layers]                                */
    spqr_tokenizer *tok;        /* owned, may be NULL                        */
    char *provenance;           /* JSON text for .spqr files, else NULL      */
    char *config_json;          /* original config.json text (HF), or NULL   */
    int64_t nonfinite;
    struct spqr_gpu_model *gpu; /* the GPU backend when the model runs there */

    /* storage owned by the model */
    void *storage;              /* loader-specific (st_set, mmap, container) */
    void (*storage_free)(void *);
    void **owned;
    int n_owned, cap_owned;
};

/* Keep p (malloc'd) alive until the model is freed. Frees p on failure. */
spqr_status spqr_model_own(spqr_model *m, void *p);
/* Allocate a float copy of a tensor's elements owned by the model. */
spqr_status spqr_model_f32_copy(spqr_model *m, const void *src, spqr_dtype dt, size_t n, const float **out);

spqr_status spqr_model_alloc(spqr_model **out);
/* [rows][cols] of the linears q..down of a block (spqr_linear_names order). */
void spqr_linear_shapes(const spqr_config *c, int64_t shapes[SPQR_LIN_PER_BLOCK][2]);
/* Check a config for sane values (positive sizes, divisibility, ...). */
spqr_status spqr_config_check(const spqr_config *c, const char *path);

/* Model sources: each loader module (load_*.c) provides a probe (does this
 * path look like mine?) and a load; loaders.c lists them in the order they
 * are tried. */
typedef struct spqr_loader {
    const char *name;
    bool (*probe)(const char *path);
    spqr_status (*load)(const char *path, spqr_model *m);
} spqr_loader;
extern const spqr_loader spqr_loader_hf, spqr_loader_spqr, spqr_loader_gguf, spqr_loader_llama2c;
/* The loader whose probe accepts path (the last one, llama2.c, accepts any
 * regular file), or NULL when none does. */
const spqr_loader *spqr_loader_for(const char *path);

/* Fill m from a parsed GGUF file g (load_gguf.c), which must outlive m: set
 * m->storage = g, m->storage_free = spqr_gguf_storage_free to hand it over. */
struct spqr_gguf;
spqr_status spqr_model_from_gguf(const struct spqr_gguf *g, spqr_model *m);
void spqr_gguf_storage_free(void *g); /* spqr_gguf_close + free */

/* Count NaN/Inf in a float-like buffer. */
int64_t spqr_count_nonfinite(const void *data, spqr_dtype dt, size_t n);

/* ---- forward ---------------------------------------------------------- */

/* Y[T][rows] = X[T][cols] W^T (+ bias). */
spqr_status spqr_linear_forward(const spqr_linear *l, const float *X, int T, float *Y);

/* Observer of the inputs of linear layers during a block forward (used by
 * calibration): called with the [T][cols] activations that enter the
 * linears of `which` (SPQR_LIN_Q for q/k/v, SPQR_LIN_O, SPQR_LIN_GATE for
 * gate/up, SPQR_LIN_DOWN). Returning nonzero stops the block forward early
 * (output then undefined). */
typedef int (*spqr_block_hook)(void *user, int which, const float *X, int T, int cols);

/* Run block `layer` in place on nseq independent sequences of T1 tokens,
 * X[nseq*T1][dim] (positions 0..T1-1 in each). Hooks see all nseq*T1 rows. */
spqr_status spqr_block_forward(const spqr_model *m, int layer, float *X, int nseq, int T1, spqr_block_hook hook,
                               void *user);

/* Embedding rows for tokens into X[T][dim]. */
void spqr_embed(const spqr_model *m, const int32_t *tokens, int T, float *X);
/* Final norm + head: logits[T][vocab] from X[T][dim] (X is overwritten). */
spqr_status spqr_final_logits(const spqr_model *m, float *X, int T, float *logits);

/* The perplexity result of `windows` windows of S tokens (S - 1 targets
 * each) whose negative log-likelihoods sum to nll_sum. */
static inline void spqr_ppl_fill(spqr_ppl_result *res, double nll_sum, int64_t windows, int S, size_t n_ids,
                                 double seconds) {
    res->tokens_scored = windows * (S - 1);
    res->windows = windows;
    res->nll = nll_sum / (double)res->tokens_scored;
    res->ppl = exp(res->nll);
    res->tokens_total = (int64_t)n_ids;
    res->seconds = seconds;
}

/* RoPE, the one definition for the CPU forward passes and the GPU tables:
 * cos/sin tables [T][head_dim/2] for positions pos0..pos0+T-1 (frequencies
 * 1/theta^(2i/hd) in float32, as llama2.c and transformers compute them);
 * and the rotation of v[T][stride] (n_heads heads of head_dim) in place,
 * token t using table row row[t] (row == NULL: row t), interleaved pairs
 * (2i, 2i+1) or rotate-half as the config says. */
void spqr_rope_tables(const spqr_config *c, int pos0, int T, float *cosv, float *sinv);
void spqr_rope_apply(const spqr_config *c, float *v, int T, int n_heads, int stride, const int32_t *row,
                     const float *cosv, const float *sinv);

void spqr_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* att[0..n) = softmax(att[0..n)) in place, the forward pass's order of
 * operations (max, exp, sum, divide). */
void spqr_softmax_row(float *att, int n);

#endif
