/* tokenizer.h - internal tokenizer interface (public part is in spqr.h). */
#ifndef SPQR_TOKENIZER_H
#define SPQR_TOKENIZER_H

#include "../util/common.h"

typedef enum spqr_tok_kind {
    SPQR_TOK_AUTO = 0,     /* load_mem only: detect from the contents    */
    SPQR_TOK_LLAMA2C = 1,  /* llama2.c tokenizer.bin                     */
    SPQR_TOK_HF_JSON = 2,  /* Hugging Face tokenizer.json (BPE, byte fb) */
    SPQR_TOK_SPM = 3       /* SentencePiece tokenizer.model protobuf     */
} spqr_tok_kind;

/* Load from bytes already in memory (e.g. embedded in a .spqr file). name is
 * used in error messages. The bytes are copied/parsed; caller keeps data. */
spqr_status spqr_tokenizer_load_mem(spqr_tok_kind kind, const void *data,
                                    size_t size, const char *name,
                                    spqr_tokenizer **out);

/* The kind and raw bytes the tokenizer was loaded from (borrowed), so a
 * writer can embed it verbatim. */
spqr_tok_kind spqr_tokenizer_kind(const spqr_tokenizer *t);
const void *spqr_tokenizer_raw(const spqr_tokenizer *t, size_t *size);

int32_t spqr_tokenizer_bos(const spqr_tokenizer *t);
int32_t spqr_tokenizer_eos(const spqr_tokenizer *t);

#endif
