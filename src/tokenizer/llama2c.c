/* llama2c.c - llama2.c tokenizer.bin:
 *   int32 max_token_length
 *   per token until EOF: float32 score, int32 len, len bytes
 * (little endian). Pieces keep spaces as ' ' and byte pieces as "<0xXX>";
 * ids 0/1/2 are <unk>/BOS/EOS by llama2.c convention. */
#include "tok_internal.h"

static int32_t rd_i32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    return (int32_t)u;
}

static float rd_f32(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 0 if the layout holds exactly to EOF; otherwise the offset of the problem
 * (with *why) as a positive number, or (size_t)-1 for a bad header. */
static size_t scan(const uint8_t *data, size_t size, size_t *count, const char **why) {
    *count = 0;
    if (size < 4) {
        *why = "shorter than its 4-byte header";
        return (size_t)-1;
    }
    int32_t maxlen = rd_i32(data);
    if (maxlen <= 0 || maxlen > (1 << 20)) {
        *why = "implausible max_token_length in the header";
        return (size_t)-1;
    }
    size_t pos = 4;
    while (pos < size) {
        if (size - pos < 8) {
            *why = "truncated token record";
            return pos;
        }
        int32_t len = rd_i32(data + pos + 4);
        if (len < 0 || len > maxlen) {
            *why = "token length outside 0..max_token_length";
            return pos;
        }
        if ((size_t)len > size - pos - 8) {
            *why = "token bytes run past the end of the file";
            return pos;
        }
        pos += 8 + (size_t)len;
        if (++*count > TOK_MAX_VOCAB) {
            *why = "too many tokens";
            return pos;
        }
    }
    if (*count == 0) {
        *why = "no tokens";
        return (size_t)-1;
    }
    return 0;
}

bool tok_probe_llama2c(const uint8_t *data, size_t size) {
    size_t count;
    const char *why;
    return scan(data, size, &count, &why) == 0;
}

spqr_status tok_load_llama2c(spqr_tokenizer *t, const uint8_t *data, size_t size) {
    size_t count;
    const char *why = "";
    size_t bad = scan(data, size, &count, &why);
    if (bad == (size_t)-1)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: not a llama2.c tokenizer: %s", t->name, why);
    if (bad)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: malformed llama2.c tokenizer at byte %zu (token %zu): %s",
                         t->name, bad, count, why);
    size_t pos = 4;
    for (size_t id = 0; id < count; id++) {
        float score = rd_f32(data + pos);
        size_t len = (size_t)rd_i32(data + pos + 4);
        const char *s = (const char *)data + pos + 8;
        uint8_t type = TOK_NORMAL;
        int b = tok_parse_byte_piece(s, len);
        if (id == 0)
            type = TOK_UNKNOWN;
        else if (id == 1 || id == 2)
            type = TOK_CONTROL;
        else if (b >= 0)
            type = TOK_BYTE;
        if (!tok_pieces_add(&t->pieces, s, len, score, type))
            return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", t->name);
        if (type == TOK_BYTE && t->byte_id[b] < 0) t->byte_id[b] = (int32_t)id;
        pos += 8 + len;
    }
    t->unk_id = count > 0 ? 0 : -1;
    t->bos_id = count > 1 ? 1 : -1;
    t->eos_id = count > 2 ? 2 : -1;
    t->merge_by_rank = 0;
    t->byte_fallback = 1;
    t->prefix_mode = TOK_PREFIX_ALWAYS;
    t->remove_extra_ws = 0;
    t->escape_ws = 0;
    t->replace_invalid = 0;
    t->split_words = 0;
    t->fuse_unk = 0;
    return SPQR_OK;
}
