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

/* A SentencePiece BPE vocabulary given as arrays (e.g. from GGUF metadata):
 * n pieces with their bytes, scores and SentencePiece types (1 normal,
 * 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte). The tokenizer is
 * built by writing the equivalent tokenizer.model (ModelProto) and loading
 * it, so it encodes exactly as that file would and a .spqr writer can embed
 * it as an SPQR_TOK_SPM tokenizer. The normalizer is SentencePiece's
 * "identity" with add_dummy_prefix as given, whitespace escaped and extra
 * whitespace kept (LLaMA's settings). */
typedef struct spqr_spm_vocab {
    size_t n;
    const char *const *piece;
    const size_t *len;
    const float *score;
    const int32_t *type;
    int32_t unk_id, bos_id, eos_id; /* -1: none (unk_id must name an unknown piece) */
    bool add_dummy_prefix, byte_fallback;
} spqr_spm_vocab;
spqr_status spqr_tokenizer_from_spm_vocab(const spqr_spm_vocab *v, const char *name, spqr_tokenizer **out);

/* The kind and raw bytes the tokenizer was loaded from (borrowed), so a
 * writer can embed it verbatim. */
spqr_tok_kind spqr_tokenizer_kind(const spqr_tokenizer *t);
const void *spqr_tokenizer_raw(const spqr_tokenizer *t, size_t *size);

int32_t spqr_tokenizer_bos(const spqr_tokenizer *t);
int32_t spqr_tokenizer_eos(const spqr_tokenizer *t);

#endif
