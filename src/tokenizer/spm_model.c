/* spm_model.c - SentencePiece tokenizer.model (a ModelProto protobuf),
 * parsed by hand. The file is untrusted: every varint and length is checked
 * against the end of its enclosing message.
 *
 * ModelProto
 *   1 repeated SentencePiece { 1 piece: string, 2 score: float, 3 type: enum }
 *   2 TrainerSpec    { 3 model_type, 24 treat_whitespace_as_suffix,
 *                      35 byte_fallback, 40 unk_id, 41 bos_id, 42 eos_id,
 *                      44 unk_surface, ... }
 *   3 NormalizerSpec { 1 name, 2 precompiled_charsmap, 3 add_dummy_prefix,
 *                      4 remove_extra_whitespaces, 5 escape_whitespaces }   */
#include "tok_internal.h"

#include <stdio.h>
#include <stdlib.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

typedef struct pb {
    const uint8_t *p, *end, *base;
} pb;

typedef struct pb_field {
    uint32_t num, wt;
    uint64_t v;           /* varint / fixed value */
    const uint8_t *data;  /* length-delimited payload */
    size_t len;
    size_t at;            /* offset of the tag, for messages */
} pb_field;

static bool pb_varint(pb *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return false;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1) return false; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Read the next field. Returns 1 on success, 0 at the end of the message,
 * -1 if malformed (*why says how). */
static int pb_next(pb *r, pb_field *f, const char **why) {
    if (r->p >= r->end) return 0;
    f->at = (size_t)(r->p - r->base);
    uint64_t tag;
    if (!pb_varint(r, &tag)) {
        *why = "truncated field tag";
        return -1;
    }
    f->num = (uint32_t)(tag >> 3);
    f->wt = (uint32_t)(tag & 7);
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1fffffff) {
        *why = "invalid field number";
        return -1;
    }
    f->data = NULL;
    f->len = 0;
    f->v = 0;
    switch (f->wt) {
    case WT_VARINT:
        if (!pb_varint(r, &f->v)) {
            *why = "truncated varint";
            return -1;
        }
        return 1;
    case WT_I64:
        if (r->end - r->p < 8) {
            *why = "truncated 64-bit value";
            return -1;
        }
        for (int i = 7; i >= 0; i--) f->v = (f->v << 8) | r->p[i];
        r->p += 8;
        return 1;
    case WT_I32:
        if (r->end - r->p < 4) {
            *why = "truncated 32-bit value";
            return -1;
        }
        f->v = (uint64_t)r->p[0] | ((uint64_t)r->p[1] << 8) | ((uint64_t)r->p[2] << 16) |
               ((uint64_t)r->p[3] << 24);
        r->p += 4;
        return 1;
    case WT_LEN: {
        uint64_t n;
        if (!pb_varint(r, &n)) {
            *why = "truncated length";
            return -1;
        }
        if (n > (uint64_t)(r->end - r->p)) {
            *why = "length runs past the end of the data";
            return -1;
        }
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 1;
    }
    default:
        *why = "unsupported wire type";
        return -1;
    }
}

static pb pb_sub(const pb *parent, const pb_field *f) {
    pb s = {f->data, f->data + f->len, parent->base};
    return s;
}

/* Structural scan: the top level is a sequence of well-formed fields that
 * ends exactly at EOF and holds at least one length-delimited field 1. */
bool tok_probe_spm(const uint8_t *data, size_t size) {
    pb r = {data, data + size, data};
    pb_field f;
    const char *why;
    int rc, pieces = 0;
    while ((rc = pb_next(&r, &f, &why)) == 1) {
        if (f.num == 1 && f.wt == WT_LEN) pieces++;
    }
    return rc == 0 && pieces > 0;
}

typedef struct spm_ctx {
    spqr_tokenizer *t;
    const char *name;
    /* trainer spec */
    int64_t model_type;
    bool byte_fallback, ws_suffix;
    int64_t unk_id, bos_id, eos_id;
    const uint8_t *unk_surface;
    size_t unk_surface_len;
    /* normalizer spec */
    bool add_dummy_prefix, remove_extra_ws, escape_ws;
    size_t charsmap_len;
    char norm_name[32];
} spm_ctx;

static spqr_status bad(const spm_ctx *c, size_t at, const char *what) {
    return spqr_fail(SPQR_ERR_FORMAT, "%s: malformed SentencePiece model at byte %zu: %s", c->name,
                     at, what);
}

static spqr_status wrong_type(const spm_ctx *c, const pb_field *f, const char *msg) {
    char buf[96];
    snprintf(buf, sizeof buf, "%s field %u has wire type %u", msg, f->num, f->wt);
    return bad(c, f->at, buf);
}

static spqr_status parse_piece(spm_ctx *c, pb *r, size_t at) {
    const uint8_t *piece = NULL;
    size_t plen = 0;
    float score = 0.0f;
    uint64_t type = TOK_NORMAL;
    pb_field f;
    const char *why;
    int rc;
    bool have_piece = false;
    while ((rc = pb_next(r, &f, &why)) == 1) {
        switch (f.num) {
        case 1:
            if (f.wt != WT_LEN) return wrong_type(c, &f, "SentencePiece");
            piece = f.data;
            plen = f.len;
            have_piece = true;
            break;
        case 2:
            if (f.wt != WT_I32) return wrong_type(c, &f, "SentencePiece");
            {
                uint32_t u = (uint32_t)f.v;
                memcpy(&score, &u, 4);
            }
            break;
        case 3:
            if (f.wt != WT_VARINT) return wrong_type(c, &f, "SentencePiece");
            type = f.v;
            break;
        default:
            break;
        }
    }
    if (rc < 0) return bad(c, (size_t)(r->p - r->base), why);
    size_t id = c->t->pieces.n;
    if (!have_piece || plen == 0) {
        char buf[64];
        snprintf(buf, sizeof buf, "piece %zu is empty", id);
        return bad(c, at, buf);
    }
    if (type < TOK_NORMAL || type > TOK_BYTE) {
        char buf[64];
        snprintf(buf, sizeof buf, "piece %zu has invalid type %llu", id, (unsigned long long)type);
        return bad(c, at, buf);
    }
    if (id >= TOK_MAX_VOCAB) return bad(c, at, "too many pieces");
    if (!tok_pieces_add(&c->t->pieces, (const char *)piece, plen, score, (uint8_t)type))
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", c->name);
    return SPQR_OK;
}

static bool get_bool(const pb_field *f) { return f->v != 0; }
static int64_t get_int32(const pb_field *f) { return (int64_t)(int32_t)(uint32_t)f->v; }

static spqr_status parse_trainer(spm_ctx *c, pb *r) {
    pb_field f;
    const char *why;
    int rc;
    while ((rc = pb_next(r, &f, &why)) == 1) {
        bool is_varint = f.wt == WT_VARINT;
        switch (f.num) {
        case 3:
            if (!is_varint) return wrong_type(c, &f, "TrainerSpec");
            c->model_type = get_int32(&f);
            break;
        case 24:
            if (!is_varint) return wrong_type(c, &f, "TrainerSpec");
            c->ws_suffix = get_bool(&f);
            break;
        case 35:
            if (!is_varint) return wrong_type(c, &f, "TrainerSpec");
            c->byte_fallback = get_bool(&f);
            break;
        case 40:
        case 41:
        case 42:
            if (!is_varint) return wrong_type(c, &f, "TrainerSpec");
            if (f.num == 40) c->unk_id = get_int32(&f);
            if (f.num == 41) c->bos_id = get_int32(&f);
            if (f.num == 42) c->eos_id = get_int32(&f);
            break;
        case 44:
            if (f.wt != WT_LEN) return wrong_type(c, &f, "TrainerSpec");
            c->unk_surface = f.data;
            c->unk_surface_len = f.len;
            break;
        default:
            break;
        }
    }
    if (rc < 0) return bad(c, (size_t)(r->p - r->base), why);
    return SPQR_OK;
}

static spqr_status parse_normalizer(spm_ctx *c, pb *r) {
    pb_field f;
    const char *why;
    int rc;
    while ((rc = pb_next(r, &f, &why)) == 1) {
        switch (f.num) {
        case 1:
            if (f.wt != WT_LEN) return wrong_type(c, &f, "NormalizerSpec");
            {
                size_t n = f.len < sizeof c->norm_name - 1 ? f.len : sizeof c->norm_name - 1;
                memcpy(c->norm_name, f.data, n);
                c->norm_name[n] = '\0';
            }
            break;
        case 2:
            if (f.wt != WT_LEN) return wrong_type(c, &f, "NormalizerSpec");
            c->charsmap_len = f.len;
            break;
        case 3:
        case 4:
        case 5:
            if (f.wt != WT_VARINT) return wrong_type(c, &f, "NormalizerSpec");
            if (f.num == 3) c->add_dummy_prefix = get_bool(&f);
            if (f.num == 4) c->remove_extra_ws = get_bool(&f);
            if (f.num == 5) c->escape_ws = get_bool(&f);
            break;
        default:
            break;
        }
    }
    if (rc < 0) return bad(c, (size_t)(r->p - r->base), why);
    return SPQR_OK;
}

spqr_status tok_load_spm(spqr_tokenizer *t, const uint8_t *data, size_t size) {
    spm_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    c.name = t->name;
    /* proto2 defaults */
    c.model_type = 1; /* UNIGRAM */
    c.unk_id = 0;
    c.bos_id = 1;
    c.eos_id = 2;
    c.add_dummy_prefix = true;
    c.remove_extra_ws = true;
    c.escape_ws = true;
    bool have_trainer = false;

    if (size == 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: empty SentencePiece model", c.name);
    pb r = {data, data + size, data};
    pb_field f;
    const char *why;
    int rc;
    spqr_status st;
    while ((rc = pb_next(&r, &f, &why)) == 1) {
        if (f.num < 1 || f.num > 3) continue;
        if (f.wt != WT_LEN) return wrong_type(&c, &f, "ModelProto");
        pb sub = pb_sub(&r, &f);
        if (f.num == 1)
            st = parse_piece(&c, &sub, f.at);
        else if (f.num == 2) {
            have_trainer = true;
            st = parse_trainer(&c, &sub);
        } else
            st = parse_normalizer(&c, &sub);
        if (st != SPQR_OK) return st;
    }
    if (rc < 0) return bad(&c, (size_t)(r.p - r.base), why);

    size_t n = t->pieces.n;
    if (n == 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: SentencePiece model has no pieces", c.name);
    if (!have_trainer)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: SentencePiece model has no trainer_spec", c.name);
    if (c.model_type != 2) {
        static const char *names[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
        const char *nm = c.model_type >= 0 && c.model_type <= 4 ? names[c.model_type] : "?";
        return spqr_fail(SPQR_ERR_UNSUPPORTED,
                         "%s: SentencePiece model type %s (%lld) is not supported (only BPE)", c.name,
                         nm, (long long)c.model_type);
    }
    if (c.unk_id < 0 || (size_t)c.unk_id >= n || t->pieces.type[c.unk_id] != TOK_UNKNOWN)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: unk_id %lld is not an UNKNOWN piece", c.name,
                         (long long)c.unk_id);
    if (c.bos_id < -1 || c.bos_id >= (int64_t)n || c.eos_id < -1 || c.eos_id >= (int64_t)n)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: bos_id %lld / eos_id %lld out of range (%zu pieces)",
                         c.name, (long long)c.bos_id, (long long)c.eos_id, n);
    if (c.charsmap_len > 0)
        spqr_log(SPQR_LOG_WARN,
                 "%s: normalizer '%s' has a character map that is not applied (identity assumed)",
                 c.name, c.norm_name);
    if (c.ws_suffix)
        spqr_log(SPQR_LOG_WARN, "%s: treat_whitespace_as_suffix is not supported (ignored)", c.name);

    t->unk_id = (int32_t)c.unk_id;
    t->bos_id = (int32_t)c.bos_id;
    t->eos_id = (int32_t)c.eos_id;
    t->merge_by_rank = 0;
    t->byte_fallback = c.byte_fallback;
    t->prefix_mode = c.add_dummy_prefix ? TOK_PREFIX_ALWAYS : TOK_PREFIX_NONE;
    t->remove_extra_ws = c.remove_extra_ws;
    t->escape_ws = c.escape_ws;
    t->replace_invalid = 1;
    t->split_words = 0;
    t->fuse_unk = 1;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tok_piece(&t->pieces, (int32_t)i, &len);
        uint8_t ty = t->pieces.type[i];
        if (ty == TOK_BYTE) {
            int b = tok_parse_byte_piece(s, len);
            if (b < 0)
                return spqr_fail(SPQR_ERR_FORMAT, "%s: BYTE piece %zu is not of the form <0xXX>",
                                 c.name, i);
            if (t->byte_id[b] < 0) t->byte_id[b] = (int32_t)i;
        } else if (ty == TOK_UNUSED) {
            t->has_unused = 1;
        } else if (ty == TOK_USER_DEFINED) {
            if (len > t->max_user_len) t->max_user_len = (uint32_t)len;
            t->user_first[(unsigned char)s[0]] = 1;
        }
    }
    if (c.unk_surface) { /* how the unknown piece decodes */
        t->unk_surface = malloc(c.unk_surface_len + 1);
        if (!t->unk_surface) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", c.name);
        memcpy(t->unk_surface, c.unk_surface, c.unk_surface_len);
        t->unk_surface[c.unk_surface_len] = '\0';
        t->unk_surface_len = c.unk_surface_len;
    }
    return SPQR_OK;
}
