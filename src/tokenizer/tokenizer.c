/* tokenizer.c - the public tokenizer functions: loading (with format
 * detection), encode, decode, accessors. */
#include "tok_internal.h"

#include <stdlib.h>

static const char *kind_name(spqr_tok_kind k) {
    switch (k) {
    case SPQR_TOK_LLAMA2C: return "llama2.c tokenizer.bin";
    case SPQR_TOK_HF_JSON: return "tokenizer.json";
    case SPQR_TOK_SPM: return "SentencePiece model";
    default: return "tokenizer";
    }
}

/* Decide the format from the bytes. JSON starts with '{'; a SentencePiece
 * model is a protobuf whose first field is normally a piece (tag 0x0A); a
 * llama2.c file is an int32 header followed by records up to EOF. When a
 * file is neither, pick the one whose parser will explain the problem best. */
static spqr_tok_kind detect(const uint8_t *d, size_t n) {
    size_t i = 0;
    if (n >= 3 && memcmp(d, "\xEF\xBB\xBF", 3) == 0) i = 3;
    while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n')) i++;
    if (i < n && d[i] == '{') return SPQR_TOK_HF_JSON;
    bool l2c = tok_probe_llama2c(d, n);
    bool spm = tok_probe_spm(d, n);
    if (spm && !l2c) return SPQR_TOK_SPM;
    if (l2c && !spm) return SPQR_TOK_LLAMA2C;
    if (spm && l2c) return d[0] == 0x0A ? SPQR_TOK_SPM : SPQR_TOK_LLAMA2C;
    /* neither parses: a protobuf normally starts with field 1, 2 or 3 */
    if (n > 0 && (d[0] == 0x0A || d[0] == 0x12 || d[0] == 0x1A)) return SPQR_TOK_SPM;
    return SPQR_TOK_LLAMA2C;
}

/* Which ASCII characters no merge can cross (see tok_internal.h). */
static void build_walls(spqr_tokenizer *t) {
    const tok_pieces *p = &t->pieces;
    if (t->has_unused) t->no_walls = 1; /* resegmentation depends on merge order */
    memset(t->wall, 1, sizeof t->wall);
    for (size_t id = 0; id < p->n; id++) {
        uint8_t ty = p->type[id];
        if (ty != TOK_NORMAL && ty != TOK_USER_DEFINED && ty != TOK_UNUSED) continue;
        size_t len;
        const char *s = tok_piece(p, (int32_t)id, &len);
        if (len < 2) continue;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)s[i] < 128) t->wall[(unsigned char)s[i]] = 0;
    }
}

/* Precompute what each id decodes to. */
static spqr_status build_decode(spqr_tokenizer *t) {
    const tok_pieces *p = &t->pieces;
    size_t n = p->n, total = 0;
    static const char k_unk_default[] = " \xE2\x81\x87 ";
    const char *unk = t->unk_surface ? t->unk_surface : k_unk_default;
    size_t unk_len = t->unk_surface ? t->unk_surface_len : sizeof k_unk_default - 1;
    bool spm_style = t->kind != SPQR_TOK_LLAMA2C;
    /* decoded text is never longer than the piece, except the unk surface */
    size_t n_unk = 0;
    for (size_t id = 0; id < n; id++) n_unk += p->type[id] == TOK_UNKNOWN;
    total = p->blob_len + n_unk * unk_len + 1;
    if (total > UINT32_MAX) return spqr_fail(SPQR_ERR_FORMAT, "%s: vocabulary too large", t->name);
    t->dec = malloc(total);
    t->dec_off = spqr_malloc_array(n + 1, sizeof *t->dec_off);
    if (!t->dec || !t->dec_off) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
    size_t w = 0;
    for (size_t id = 0; id < n; id++) {
        t->dec_off[id] = (uint32_t)w;
        size_t len;
        const char *s = tok_piece(p, (int32_t)id, &len);
        uint8_t ty = p->type[id];
        int b = tok_parse_byte_piece(s, len);
        if (b >= 0 && t->byte_id[b] == (int32_t)id) {
            t->dec[w++] = (char)b;
            continue;
        }
        if (spm_style && ty == TOK_CONTROL) continue;
        if (spm_style && ty == TOK_UNKNOWN) {
            memcpy(t->dec + w, unk, unk_len);
            w += unk_len;
            continue;
        }
        for (size_t i = 0; i < len; i++) {
            if (t->escape_ws && i + 3 <= len && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                t->dec[w++] = ' ';
                i += 2;
            } else {
                t->dec[w++] = s[i];
            }
        }
    }
    t->dec_off[n] = (uint32_t)w;
    return SPQR_OK;
}

void spqr_tokenizer_free(spqr_tokenizer *t) {
    if (!t) return;
    free(t->name);
    free(t->raw);
    tok_pieces_free(&t->pieces);
    tok_strmap_free(&t->map);
    tok_pairmap_free(&t->merges);
    free(t->unk_surface);
    free(t->dec);
    free(t->dec_off);
    free(t);
}

/* Takes ownership of raw (malloc'd, size bytes, one extra NUL byte). */
static spqr_status load_owned(spqr_tok_kind kind, unsigned char *raw, size_t size, const char *name,
                              spqr_tokenizer **out) {
    *out = NULL;
    spqr_tokenizer *t = calloc(1, sizeof *t);
    char *nm = strdup(name ? name : "tokenizer");
    if (!t || !nm) {
        free(t);
        free(nm);
        free(raw);
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", name ? name : "tokenizer");
    }
    t->name = nm;
    t->raw = raw;
    t->raw_size = size;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    t->unk_id = t->bos_id = t->eos_id = -1;
    if (kind == SPQR_TOK_AUTO) kind = detect(raw, size);
    t->kind = kind;

    spqr_status st;
    switch (kind) {
    case SPQR_TOK_SPM: st = tok_load_spm(t, raw, size); break;
    case SPQR_TOK_HF_JSON: st = tok_load_hf_json(t, (const char *)raw, size); break;
    case SPQR_TOK_LLAMA2C: st = tok_load_llama2c(t, raw, size); break;
    default:
        st = spqr_fail(SPQR_ERR_INVALID_ARG, "%s: unknown tokenizer kind %d", t->name, (int)kind);
        break;
    }
    if (st == SPQR_OK && t->pieces.n == 0)
        st = spqr_fail(SPQR_ERR_FORMAT, "%s: %s has an empty vocabulary", t->name, kind_name(kind));
    if (st == SPQR_OK && !t->map.slots && !tok_strmap_build(&t->map, &t->pieces))
        st = spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
    if (st == SPQR_OK) st = build_decode(t);
    if (st == SPQR_OK) build_walls(t);
    if (st != SPQR_OK) {
        spqr_tokenizer_free(t);
        return st;
    }
    *out = t;
    return SPQR_OK;
}

spqr_status spqr_tokenizer_load_mem(spqr_tok_kind kind, const void *data, size_t size, const char *name,
                                    spqr_tokenizer **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tokenizer_load_mem: out is NULL");
    *out = NULL;
    if (!data && size) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tokenizer_load_mem: data is NULL");
    if (size == SIZE_MAX) return spqr_fail(SPQR_ERR_NOMEM, "%s: too large", name ? name : "tokenizer");
    unsigned char *copy = malloc(size + 1);
    if (!copy) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", name ? name : "tokenizer");
    if (size) memcpy(copy, data, size);
    copy[size] = 0;
    return load_owned(kind, copy, size, name, out);
}

spqr_status spqr_tokenizer_load(const char *path, spqr_tokenizer **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tokenizer_load: path is NULL");
    char *data;
    size_t size;
    spqr_status st = spqr_read_file(path, &data, &size);
    if (st != SPQR_OK) return st;
    if (size == 0) {
        free(data);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: empty tokenizer file", path);
    }
    return load_owned(SPQR_TOK_AUTO, (unsigned char *)data, size, path, out);
}

int spqr_tokenizer_vocab_size(const spqr_tokenizer *t) { return t ? (int)t->pieces.n : 0; }

spqr_status spqr_tokenizer_encode(const spqr_tokenizer *t, const char *text, size_t len, int add_bos,
                                  int32_t **ids, size_t *n_ids) {
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!t || !ids || !n_ids) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tokenizer_encode: NULL argument");
    if (!text && len) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_tokenizer_encode: text is NULL");
    return tok_bpe_encode(t, text ? text : "", len, add_bos, ids, n_ids);
}

const char *spqr_tokenizer_decode(const spqr_tokenizer *t, int32_t prev_id, int32_t id, size_t *len) {
    if (len) *len = 0;
    if (!t || id < 0 || (size_t)id >= t->pieces.n) return "";
    const char *s = t->dec + t->dec_off[id];
    size_t n = t->dec_off[id + 1] - t->dec_off[id];
    if (prev_id == t->bos_id && prev_id >= 0 && n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    if (len) *len = n;
    return s;
}

spqr_tok_kind spqr_tokenizer_kind(const spqr_tokenizer *t) { return t ? t->kind : SPQR_TOK_AUTO; }

const void *spqr_tokenizer_raw(const spqr_tokenizer *t, size_t *size) {
    if (size) *size = t ? t->raw_size : 0;
    return t ? t->raw : NULL;
}

int32_t spqr_tokenizer_bos(const spqr_tokenizer *t) { return t ? t->bos_id : -1; }
int32_t spqr_tokenizer_eos(const spqr_tokenizer *t) { return t ? t->eos_id : -1; }
