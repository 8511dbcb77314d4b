/* spm_build.c - a SentencePiece tokenizer from vocabulary arrays: writes the
 * ModelProto protobuf that spm_model.c reads (pieces, a TrainerSpec with
 * model_type BPE, byte_fallback and the special ids, a NormalizerSpec) and
 * loads it. */
#include <stdlib.h>

#include "tok_internal.h"

typedef struct {
    uint8_t *b;
    size_t n, cap;
    bool oom;
} buf_t;

static void put(buf_t *w, const void *p, size_t n) {
    if (w->oom) return;
    size_t need;
    if (!spqr_add_size(w->n, n, &need)) {
        w->oom = true;
        return;
    }
    if (need > w->cap) {
        size_t nc = w->cap ? w->cap : 4096;
        while (nc < need) {
            if (nc > SIZE_MAX / 2) {
                w->oom = true;
                return;
            }
            nc *= 2;
        }
        uint8_t *nb = realloc(w->b, nc);
        if (!nb) {
            w->oom = true;
            return;
        }
        w->b = nb;
        w->cap = nc;
    }
    if (n) memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void put_varint(buf_t *w, uint64_t v) {
    uint8_t t[10];
    size_t k = 0;
    do {
        t[k] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) t[k] |= 0x80;
        k++;
    } while (v);
    put(w, t, k);
}
static void put_tag(buf_t *w, uint32_t field, uint32_t wt) { put_varint(w, (uint64_t)field << 3 | wt); }
static void put_int(buf_t *w, uint32_t field, int64_t v) {
    put_tag(w, field, 0);
    put_varint(w, (uint64_t)v); /* negative int32: 10-byte two's complement, as protobuf writes it */
}
static void put_bytes(buf_t *w, uint32_t field, const void *p, size_t n) {
    put_tag(w, field, 2);
    put_varint(w, n);
    put(w, p, n);
}

spqr_status spqr_tokenizer_from_spm_vocab(const spqr_spm_vocab *v, const char *name, spqr_tokenizer **out) {
    *out = NULL;
    if (!name) name = "vocabulary";
    if (v->n == 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: empty vocabulary", name);
    if (v->n > TOK_MAX_VOCAB) return spqr_fail(SPQR_ERR_FORMAT, "%s: %zu tokens is too many", name, v->n);
    buf_t w = {0};
    buf_t m = {0}; /* one sub-message at a time */
    for (size_t i = 0; i < v->n && !w.oom && !m.oom; i++) {
        if (v->len[i] == 0) {
            free(w.b);
            free(m.b);
            return spqr_fail(SPQR_ERR_FORMAT, "%s: token %zu is empty", name, i);
        }
        if (v->type[i] < TOK_NORMAL || v->type[i] > TOK_BYTE) {
            free(w.b);
            free(m.b);
            return spqr_fail(SPQR_ERR_FORMAT, "%s: token %zu has invalid type %d", name, i, (int)v->type[i]);
        }
        m.n = 0;
        put_bytes(&m, 1, v->piece[i], v->len[i]);
        put_tag(&m, 2, 5);
        uint32_t u;
        memcpy(&u, &v->score[i], 4);
        uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        put(&m, le, 4);
        if (v->type[i] != TOK_NORMAL) put_int(&m, 3, v->type[i]);
        put_bytes(&w, 1, m.b, m.n);
    }
    m.n = 0;
    put_int(&m, 3, 2); /* model_type BPE */
    put_int(&m, 35, v->byte_fallback);
    put_int(&m, 40, v->unk_id);
    put_int(&m, 41, v->bos_id);
    put_int(&m, 42, v->eos_id);
    put_bytes(&w, 2, m.b, m.n);
    m.n = 0;
    put_bytes(&m, 1, "identity", 8);
    put_int(&m, 3, v->add_dummy_prefix);
    put_int(&m, 4, 0);
    put_int(&m, 5, 1);
    put_bytes(&w, 3, m.b, m.n);
    free(m.b);
    if (w.oom || m.oom) {
        free(w.b);
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", name);
    }
    spqr_status st = spqr_tokenizer_load_mem(SPQR_TOK_SPM, w.b, w.n, name, out);
    free(w.b);
    return st;
}
