/* model_file.h - writing a whole model into the .spqr container
 * (docs/FORMAT.md, "Metadata keys" and "Tensors"); the reader is
 * load_spqr.c. */
#ifndef SPQR_MODEL_FILE_H
#define SPQR_MODEL_FILE_H

#include "model.h"

typedef struct spqr_mwriter spqr_mwriter;

/* Start a .spqr file for model m at path (temporary file until finish):
 * writes the tokenizer, embeddings, final norm and (untied) head right
 * away; the blocks' norms go in at finish (as they are then). */
spqr_status spqr_mwriter_open(const char *path, const spqr_model *m, spqr_mwriter **w);
/* A linear of any format: its sections (and bias, if any); quantized
 * formats also get an entry in the "layers" metadata (name, "layout" = the
 * format's name, its geometry, bytes, formula and real bits). */
spqr_status spqr_mwriter_add_linear(spqr_mwriter *w, int block, int which, const spqr_linear *l);
/* Metadata: provenance (a JSON object text) goes in as "provenance";
 * the per-layer summary collected by add_linear goes in as "layers". */
spqr_status spqr_mwriter_finish(spqr_mwriter *w, const char *provenance_json);
void spqr_mwriter_abort(spqr_mwriter *w);

/* Version of the model layout inside the container (docs/FORMAT.md,
 * "Metadata keys"): 1 = outlier counts always of the index width, 2 = the
 * layer key "ocw" gives their width, 3 = every quantized layer names its
 * format ("layout"). Readers accept 1..this. */
#define SPQR_MODEL_FORMAT_VERSION 3

/* "llama2c", "hf_json", "spm" or "none". */
const char *spqr_tok_kind_name(int kind);

#endif
