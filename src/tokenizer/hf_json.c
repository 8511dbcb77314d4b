/* hf_json.c - Hugging Face tokenizer.json with a BPE model (LLaMA/Mistral
 * layout: U+2581 for spaces, optional byte fallback). Merges are ranked by
 * their position in model.merges, given as "a b" strings or [a, b] arrays.
 * Special-token strings in text are not parsed (they are plain text). */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char k_meta[] = "\xE2\x96\x81"; /* U+2581 */

static const char *type_of(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static bool is_null_or_absent(const cJSON *o) { return o == NULL || cJSON_IsNull(o); }

static spqr_status unsupported(const spqr_tokenizer *t, const char *what, const char *type) {
    return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: %s '%s' is not supported", t->name, what,
                     type ? type : "(no type)");
}

/* One normalizer of tokenizer.json. */
static spqr_status apply_normalizer(spqr_tokenizer *t, const cJSON *n) {
    const char *ty = type_of(n);
    if (!ty) return unsupported(t, "normalizer", NULL);
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: Sequence normalizer without a normalizers array", t->name);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            spqr_status st = apply_normalizer(t, it);
            if (st != SPQR_OK) return st;
        }
        return SPQR_OK;
    }
    if (strcmp(ty, "Prepend") == 0) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, "prepend");
        if (!cJSON_IsString(p) || strcmp(p->valuestring, k_meta) != 0)
            return unsupported(t, "Prepend normalizer with a string other than U+2581", ty);
        t->prefix_mode = TOK_PREFIX_ALWAYS;
        return SPQR_OK;
    }
    if (strcmp(ty, "Replace") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(n, "content");
        if (!cJSON_IsString(s) || !cJSON_IsString(c) || strcmp(s->valuestring, " ") != 0 ||
            strcmp(c->valuestring, k_meta) != 0)
            return unsupported(t, "Replace normalizer other than ' ' -> U+2581", ty);
        t->escape_ws = 1;
        return SPQR_OK;
    }
    return unsupported(t, "normalizer", ty);
}

static spqr_status apply_pretokenizer(spqr_tokenizer *t, const cJSON *p) {
    const char *ty = type_of(p);
    if (!ty) return unsupported(t, "pre_tokenizer", NULL);
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: Sequence pre_tokenizer without a pretokenizers array",
                             t->name);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            spqr_status st = apply_pretokenizer(t, it);
            if (st != SPQR_OK) return st;
        }
        return SPQR_OK;
    }
    if (strcmp(ty, "Metaspace") == 0) {
        const cJSON *rep = cJSON_GetObjectItemCaseSensitive(p, "replacement");
        if (cJSON_IsString(rep) && strcmp(rep->valuestring, k_meta) != 0)
            return unsupported(t, "Metaspace replacement other than U+2581", rep->valuestring);
        t->escape_ws = 1;
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(p, "prepend_scheme");
        const cJSON *aps = cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space");
        bool prepend = true;
        if (cJSON_IsString(scheme))
            prepend = strcmp(scheme->valuestring, "never") != 0;
        else if (cJSON_IsBool(aps))
            prepend = cJSON_IsTrue(aps);
        /* after a Prepend normalizer the text starts with U+2581 already */
        if (prepend && t->prefix_mode == TOK_PREFIX_NONE) t->prefix_mode = TOK_PREFIX_IF_NO_SPACE;
        const cJSON *split = cJSON_GetObjectItemCaseSensitive(p, "split");
        t->split_words = cJSON_IsBool(split) ? (uint8_t)cJSON_IsTrue(split) : 1;
        return SPQR_OK;
    }
    if (strcmp(ty, "ByteLevel") == 0)
        return spqr_fail(SPQR_ERR_UNSUPPORTED,
                         "%s: byte-level BPE tokenizers (GPT-2 / LLaMA-3 style) are not supported",
                         t->name);
    return unsupported(t, "pre_tokenizer", ty);
}

/* id from a JSON number that must be a small non-negative integer */
static bool json_id(const cJSON *v, int64_t *id) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < TOK_MAX_VOCAB) || floor(d) != d) return false;
    *id = (int64_t)d;
    return true;
}

typedef struct hf_ctx {
    spqr_tokenizer *t;
    cJSON *root;
    const char **strs; /* piece of each id (borrowed from the cJSON tree) */
    uint8_t *special;
    char *cat;
    size_t cat_cap;
} hf_ctx;

static spqr_status load_merges(hf_ctx *c, const cJSON *merges) {
    spqr_tokenizer *t = c->t;
    size_t count = (size_t)cJSON_GetArraySize(merges);
    if (!tok_pairmap_init(&t->merges, count)) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
    size_t rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(m)) {
            const char *s = m->valuestring;
            const char *sp = strchr(s, ' ');
            if (!sp || sp == s || sp[1] == '\0')
                return spqr_fail(SPQR_ERR_FORMAT, "%s: merge %zu (\"%s\") is not of the form \"a b\"",
                                 t->name, rank, s);
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 0)) && cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            a = cJSON_GetArrayItem(m, 0)->valuestring;
            b = cJSON_GetArrayItem(m, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else {
            return spqr_fail(SPQR_ERR_FORMAT, "%s: merge %zu is neither a string nor a pair of strings",
                             t->name, rank);
        }
        if (la + lb > c->cat_cap) {
            size_t nc = (la + lb) * 2 + 64;
            char *nb = realloc(c->cat, nc);
            if (!nb) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
            c->cat = nb;
            c->cat_cap = nc;
        }
        memcpy(c->cat, a, la);
        memcpy(c->cat + la, b, lb);
        int32_t ia = tok_strmap_find(&t->map, &t->pieces, a, la);
        int32_t ib = tok_strmap_find(&t->map, &t->pieces, b, lb);
        int32_t ic = tok_strmap_find(&t->map, &t->pieces, c->cat, la + lb);
        if (ia < 0 || ib < 0 || ic < 0)
            return spqr_fail(SPQR_ERR_FORMAT,
                             "%s: merge %zu (\"%.*s\" + \"%.*s\") uses a token missing from model.vocab",
                             t->name, rank, (int)(la > 64 ? 64 : la), a, (int)(lb > 64 ? 64 : lb), b);
        /* merges of byte or special tokens would defeat the walls of bpe.c */
        if (t->pieces.type[ia] != TOK_NORMAL || t->pieces.type[ib] != TOK_NORMAL ||
            t->pieces.type[ic] != TOK_NORMAL)
            t->no_walls = 1;
        tok_pairmap_put(&t->merges, ia, ib, (uint32_t)rank, ic);
        rank++;
    }
    return SPQR_OK;
}

static int32_t find_cstr(const spqr_tokenizer *t, const char *s) {
    return tok_strmap_find(&t->map, &t->pieces, s, strlen(s));
}

static spqr_status load(hf_ctx *c, const char *data, size_t size) {
    spqr_tokenizer *t = c->t;
    const char *end = NULL;
    c->root = cJSON_ParseWithLengthOpts(data, size, &end, 0);
    if (!c->root) {
        size_t at = end && end >= data && end <= data + size ? (size_t)(end - data) : 0;
        return spqr_fail(SPQR_ERR_FORMAT, "%s: invalid JSON near byte %zu", t->name, at);
    }
    if (!cJSON_IsObject(c->root)) return spqr_fail(SPQR_ERR_FORMAT, "%s: JSON top level is not an object", t->name);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(c->root, "model");
    if (!cJSON_IsObject(model)) return spqr_fail(SPQR_ERR_FORMAT, "%s: no \"model\" object", t->name);
    const char *mty = type_of(model);
    if (mty && strcmp(mty, "BPE") != 0) return unsupported(t, "model type", mty);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: model.vocab is missing or not an object", t->name);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!is_null_or_absent(merges) && !cJSON_IsArray(merges))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: model.merges is not an array", t->name);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(c->root, "added_tokens");
    if (!is_null_or_absent(added) && !cJSON_IsArray(added))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: added_tokens is not an array", t->name);
    const char *fields[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(model, fields[i]);
        if (cJSON_IsString(f) && f->valuestring[0])
            return unsupported(t, fields[i], f->valuestring);
    }

    /* the id space: model.vocab plus added tokens */
    int64_t max_id = -1, id;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!json_id(it, &id))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: model.vocab entry \"%.64s\" has an invalid id", t->name,
                             it->string ? it->string : "");
        if (id > max_id) max_id = id;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!json_id(cid, &id) || !cJSON_IsString(content))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: added_tokens entry without a valid id and content", t->name);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: model.vocab is empty", t->name);
    size_t n = (size_t)max_id + 1;
    c->strs = calloc(n, sizeof *c->strs);
    c->special = calloc(n, 1);
    if (!c->strs || !c->special) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
    cJSON_ArrayForEach(it, vocab) {
        json_id(it, &id);
        if (c->strs[id])
            return spqr_fail(SPQR_ERR_FORMAT, "%s: model.vocab gives id %lld to both \"%.64s\" and \"%.64s\"",
                             t->name, (long long)id, c->strs[id], it->string ? it->string : "");
        c->strs[id] = it->string ? it->string : "";
    }
    cJSON_ArrayForEach(it, added) {
        json_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id);
        if (!c->strs[id]) c->strs[id] = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        c->special[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"));
    }

    const cJSON *bf = cJSON_GetObjectItemCaseSensitive(model, "byte_fallback");
    t->byte_fallback = cJSON_IsTrue(bf);
    const cJSON *fu = cJSON_GetObjectItemCaseSensitive(model, "fuse_unk");
    t->fuse_unk = cJSON_IsTrue(fu);
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");

    for (size_t i = 0; i < n; i++) {
        const char *s = c->strs[i] ? c->strs[i] : "";
        size_t len = strlen(s);
        uint8_t type = TOK_NORMAL;
        if (!c->strs[i])
            type = TOK_UNUSED; /* a hole in the id space: never produced */
        else if (cJSON_IsString(unk) && strcmp(s, unk->valuestring) == 0)
            type = TOK_UNKNOWN;
        else if (c->special[i])
            type = TOK_CONTROL;
        else if (t->byte_fallback && tok_parse_byte_piece(s, len) >= 0)
            type = TOK_BYTE;
        if (!tok_pieces_add(&t->pieces, s, len, 0.0f, type))
            return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
    }
    if (!tok_strmap_build(&t->map, &t->pieces)) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);

    t->unk_id = -1;
    if (cJSON_IsString(unk)) {
        t->unk_id = find_cstr(t, unk->valuestring);
        if (t->unk_id < 0)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: unk_token \"%.64s\" is not in the vocabulary", t->name,
                             unk->valuestring);
    }
    if (t->byte_fallback) {
        for (int b = 0; b < 256; b++) {
            char s[8];
            snprintf(s, sizeof s, "<0x%02X>", b);
            t->byte_id[b] = find_cstr(t, s);
        }
    }
    if (cJSON_IsArray(merges)) {
        spqr_status st = load_merges(c, merges);
        if (st != SPQR_OK) return st;
    } else if (!tok_pairmap_init(&t->merges, 0)) {
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
    }

    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(c->root, "normalizer");
    if (!is_null_or_absent(norm)) {
        spqr_status st = apply_normalizer(t, norm);
        if (st != SPQR_OK) return st;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(c->root, "pre_tokenizer");
    if (!is_null_or_absent(pre)) {
        spqr_status st = apply_pretokenizer(t, pre);
        if (st != SPQR_OK) return st;
    }

    /* BOS / EOS: the added tokens <s> and </s>, else the LLaMA ids 1 and 2 */
    t->bos_id = find_cstr(t, "<s>");
    t->eos_id = find_cstr(t, "</s>");
    if (t->bos_id < 0 && n > 1) t->bos_id = 1;
    if (t->eos_id < 0 && n > 2) t->eos_id = 2;

    t->merge_by_rank = 1;
    t->remove_extra_ws = 0;
    t->replace_invalid = 1;
    return SPQR_OK;
}

spqr_status tok_load_hf_json(spqr_tokenizer *t, const char *data, size_t size) {
    hf_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    if (size >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) { /* UTF-8 BOM */
        data += 3;
        size -= 3;
    }
    spqr_status st = load(&c, data, size);
    cJSON_Delete(c.root);
    free(c.strs);
    free(c.special);
    free(c.cat);
    return st;
}
