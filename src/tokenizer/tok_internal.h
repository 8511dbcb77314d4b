/* tok_internal.h - internals shared by the files of the tokenizer module.
 *
 * All three file formats load into the same structure: a table of pieces
 * (bytes, score, type) indexed by id, a hash map piece -> id, optional ranked
 * merges (tokenizer.json), and a few switches that say how text is normalized
 * before the BPE merge engine (bpe.c) runs. */
#ifndef SPQR_TOK_INTERNAL_H
#define SPQR_TOK_INTERNAL_H

#include "tokenizer.h"

/* Piece types, numbered as in SentencePiece's ModelProto. */
enum {
    TOK_NORMAL = 1,
    TOK_UNKNOWN = 2,
    TOK_CONTROL = 3,
    TOK_USER_DEFINED = 4,
    TOK_UNUSED = 5,
    TOK_BYTE = 6
};

/* Largest vocabulary we accept (guards allocations driven by file data). */
#define TOK_MAX_VOCAB (1 << 24)

/* ---- hash maps (hashmap.c) ------------------------------------------------ */

uint32_t tok_hash_bytes(const void *s, size_t n);

/* piece bytes -> id. Keys are the pieces of a tok_pieces table (not copied). */
typedef struct tok_strmap {
    uint64_t *slots; /* (hash << 32) | (id + 1); 0 = empty */
    size_t mask;
} tok_strmap;

/* pair of ids -> (rank, merged id), for ranked merges. */
typedef struct tok_pair_slot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX = empty */
    uint32_t rank;
    int32_t id;
} tok_pair_slot;
typedef struct tok_pairmap {
    tok_pair_slot *slots;
    size_t mask;
    size_t count;
} tok_pairmap;

/* ---- piece table ---------------------------------------------------------- */

typedef struct tok_pieces {
    char *blob;     /* all pieces back to back (plus a final NUL) */
    uint32_t *off;  /* piece i is blob[off[i] .. off[i+1]) ; n+1 entries */
    float *score;
    uint8_t *type;
    size_t n, cap_n;
    size_t blob_len, blob_cap;
} tok_pieces;

/* Append a piece; false on allocation failure or size overflow. */
bool tok_pieces_add(tok_pieces *p, const char *s, size_t len, float score, uint8_t type);
void tok_pieces_free(tok_pieces *p);

static inline const char *tok_piece(const tok_pieces *p, int32_t id, size_t *len) {
    *len = p->off[id + 1] - p->off[id];
    return p->blob + p->off[id];
}

/* Build the map of every non-empty piece. When two pieces are equal the
 * lower id wins. false on allocation failure. */
bool tok_strmap_build(tok_strmap *m, const tok_pieces *p);
int32_t tok_strmap_find(const tok_strmap *m, const tok_pieces *p, const char *s, size_t n);
void tok_strmap_free(tok_strmap *m);

bool tok_pairmap_init(tok_pairmap *m, size_t expected);
/* Insert unless the pair is present already (then the earlier rank stays). */
void tok_pairmap_put(tok_pairmap *m, int32_t left, int32_t right, uint32_t rank, int32_t id);
const tok_pair_slot *tok_pairmap_find(const tok_pairmap *m, int32_t left, int32_t right);
void tok_pairmap_free(tok_pairmap *m);

/* ---- the tokenizer ------------------------------------------------------- */

/* How the dummy prefix (a leading space symbol) is added to non-empty text. */
enum {
    TOK_PREFIX_NONE = 0,
    TOK_PREFIX_ALWAYS = 1,       /* SentencePiece, HF Prepend normalizer   */
    TOK_PREFIX_IF_NO_SPACE = 2   /* HF Metaspace: unless text starts with it */
};

struct spqr_tokenizer {
    spqr_tok_kind kind;
    char *name;              /* for messages */
    unsigned char *raw;      /* the file bytes, verbatim */
    size_t raw_size;

    tok_pieces pieces;
    tok_strmap map;
    tok_pairmap merges;      /* ranked merges (tokenizer.json) */
    int32_t byte_id[256];    /* id of <0xXX>, or -1 */

    int32_t unk_id, bos_id, eos_id; /* -1 if none */

    /* normalization and merge switches */
    uint8_t merge_by_rank;   /* 1: tokenizer.json merges; 0: piece scores */
    uint8_t byte_fallback;   /* unknown symbols become <0xXX> tokens */
    uint8_t prefix_mode;     /* TOK_PREFIX_* */
    uint8_t remove_extra_ws; /* strip and collapse ' ' (SentencePiece) */
    uint8_t escape_ws;       /* ' ' -> U+2581 */
    uint8_t replace_invalid; /* invalid UTF-8 byte -> U+FFFD (SentencePiece) */
    uint8_t split_words;     /* no merge across a U+2581 (HF Metaspace split) */
    uint8_t fuse_unk;        /* consecutive unknowns give one <unk> */
    uint8_t has_unused;      /* UNUSED pieces present (SentencePiece resegments) */
    uint32_t max_user_len;   /* longest USER_DEFINED piece, 0 if none */
    uint8_t user_first[256]; /* 1 for the first bytes of USER_DEFINED pieces */
    /* Encoding speed-up: an ASCII character that occurs in no piece a merge
     * can produce is a wall no merge crosses, so the text between two walls
     * (typically lines) is merged on its own with a small heap. */
    uint8_t no_walls;        /* set when the shortcut would not be exact */
    uint8_t wall[128];

    char *unk_surface;       /* SentencePiece: what <unk> decodes as (NULL:
                                default " \xE2\x81\x87 ") */
    size_t unk_surface_len;

    /* decoding: decoded bytes of each id */
    char *dec;
    uint32_t *dec_off;       /* n+1 entries */
};

/* Format loaders: fill t (allocated and zeroed by the caller, with name and
 * raw set). On failure they return a status set with spqr_fail(); the caller
 * frees t. */
spqr_status tok_load_spm(spqr_tokenizer *t, const uint8_t *data, size_t size);
spqr_status tok_load_hf_json(spqr_tokenizer *t, const char *data, size_t size);
spqr_status tok_load_llama2c(spqr_tokenizer *t, const uint8_t *data, size_t size);

/* Quick structural probes used to detect the format of a file. */
bool tok_probe_spm(const uint8_t *data, size_t size);
bool tok_probe_llama2c(const uint8_t *data, size_t size);

/* If s[0..n) is "<0xXX>", return XX, else -1. */
int tok_parse_byte_piece(const char *s, size_t n);

/* Decode one UTF-8 character at s (n bytes available). Returns its length
 * (1..4) and sets *valid; an invalid or truncated sequence counts as 1 byte
 * with *valid = false. Rejects overlongs, surrogates and > U+10FFFF. */
size_t tok_utf8_char(const uint8_t *s, size_t n, bool *valid);

/* The BPE engine (bpe.c). */
spqr_status tok_bpe_encode(const spqr_tokenizer *t, const char *text, size_t len,
                           int add_bos, int32_t **ids, size_t *n_ids);

#endif
