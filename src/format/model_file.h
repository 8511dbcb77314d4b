/* model_file.h - writing a whole model into the .spqr container and the
 * names used inside it (docs/FORMAT.md, "Metadata keys" and "Tensors"). */
#ifndef SPQR_MODEL_FILE_H
#define SPQR_MODEL_FILE_H

#include "../model/model.h"

struct spqr_packed;
typedef struct spqr_mwriter spqr_mwriter;

/* Start a .spqr file for model m at path (temporary file until finish):
 * writes the tokenizer, embeddings, norms and (untied) head right away. */
spqr_status spqr_mwriter_open(const char *path, const spqr_model *m, spqr_mwriter **w);
/* A quantized linear: its packed sections (and bias, if any). */
spqr_status spqr_mwriter_add_packed(spqr_mwriter *w, int block, int which, const struct spqr_packed *pk,
                                    const float *bias);
/* A linear kept dense in its stored dtype. */
spqr_status spqr_mwriter_add_dense(spqr_mwriter *w, int block, int which, const spqr_linear *l);
/* Metadata: provenance (a JSON object text) goes in as "provenance";
 * the per-layer summary collected by add_packed goes in as "layers". */
spqr_status spqr_mwriter_finish(spqr_mwriter *w, const char *provenance_json);
void spqr_mwriter_abort(spqr_mwriter *w);

/* Version of the model layout inside the container (docs/FORMAT.md,
 * "Metadata keys"): 1 = outlier counts always of the index width, 2 = the
 * layer key "ocw" gives their width. Readers accept 1..this. */
#define SPQR_MODEL_FORMAT_VERSION 2

struct spqr_packed_geom;
/* Paper formula bits per weight for a packed geometry and outlier count. */
double spqr_geom_formula_bits(const struct spqr_packed_geom *g, int64_t n_outliers);
/* "llama2c", "hf_json", "spm" or "none". */
const char *spqr_tok_kind_name(int kind);

#endif
