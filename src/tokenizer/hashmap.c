/* hashmap.c - piece table and the two open-addressing hash maps of the
 * tokenizer (piece bytes -> id, id pair -> ranked merge). */
#include "tok_internal.h"

#include <stdlib.h>

uint32_t tok_hash_bytes(const void *s, size_t n) {
    /* FNV-1a, then a final avalanche so that the low bits are usable. */
    const unsigned char *p = s;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    return h;
}

/* ---- piece table ---------------------------------------------------------- */

bool tok_pieces_add(tok_pieces *p, const char *s, size_t len, float score, uint8_t type) {
    if (p->n + 1 >= p->cap_n) {
        size_t nc = p->cap_n ? p->cap_n * 2 : 1024;
        if (nc > (size_t)TOK_MAX_VOCAB + 2) nc = (size_t)TOK_MAX_VOCAB + 2;
        if (p->n + 1 >= nc) return false;
        uint32_t *off = realloc(p->off, nc * sizeof *off);
        if (!off) return false;
        p->off = off;
        float *sc = realloc(p->score, nc * sizeof *sc);
        if (!sc) return false;
        p->score = sc;
        uint8_t *ty = realloc(p->type, nc);
        if (!ty) return false;
        p->type = ty;
        if (p->n == 0) p->off[0] = 0;
        p->cap_n = nc;
    }
    size_t need;
    if (!spqr_add_size(p->blob_len, len + 1, &need) || need > UINT32_MAX) return false;
    if (need > p->blob_cap) {
        size_t nc = p->blob_cap ? p->blob_cap : 4096;
        while (nc < need) nc *= 2;
        char *b = realloc(p->blob, nc);
        if (!b) return false;
        p->blob = b;
        p->blob_cap = nc;
    }
    if (len) memcpy(p->blob + p->blob_len, s, len);
    p->blob_len += len;
    p->blob[p->blob_len] = '\0';
    p->score[p->n] = score;
    p->type[p->n] = type;
    p->n++;
    p->off[p->n] = (uint32_t)p->blob_len;
    return true;
}

void tok_pieces_free(tok_pieces *p) {
    free(p->blob);
    free(p->off);
    free(p->score);
    free(p->type);
    memset(p, 0, sizeof *p);
}

/* ---- piece -> id ---------------------------------------------------------- */

static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < n * 2 + 1) cap *= 2;
    return cap;
}

bool tok_strmap_build(tok_strmap *m, const tok_pieces *p) {
    size_t cap = table_size(p->n);
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return false;
    m->mask = cap - 1;
    for (size_t id = 0; id < p->n; id++) {
        size_t len;
        const char *s = tok_piece(p, (int32_t)id, &len);
        if (len == 0) continue;
        uint32_t h = tok_hash_bytes(s, len);
        size_t i = h & m->mask;
        bool dup = false;
        while (m->slots[i]) {
            uint64_t e = m->slots[i];
            if ((uint32_t)(e >> 32) == h) {
                size_t olen;
                const char *o = tok_piece(p, (int32_t)((e & 0xffffffffu) - 1), &olen);
                if (olen == len && memcmp(o, s, len) == 0) {
                    dup = true;
                    break;
                }
            }
            i = (i + 1) & m->mask;
        }
        if (!dup) m->slots[i] = ((uint64_t)h << 32) | (uint64_t)(id + 1);
    }
    return true;
}

int32_t tok_strmap_find(const tok_strmap *m, const tok_pieces *p, const char *s, size_t n) {
    if (!m->slots || n == 0) return -1;
    uint32_t h = tok_hash_bytes(s, n);
    size_t i = h & m->mask;
    for (;;) {
        uint64_t e = m->slots[i];
        if (!e) return -1;
        if ((uint32_t)(e >> 32) == h) {
            int32_t id = (int32_t)((e & 0xffffffffu) - 1);
            size_t olen;
            const char *o = tok_piece(p, id, &olen);
            if (olen == n && memcmp(o, s, n) == 0) return id;
        }
        i = (i + 1) & m->mask;
    }
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->mask = 0;
}

/* ---- (left, right) -> merge ------------------------------------------------ */

static inline size_t pair_hash(uint64_t key) {
    key *= 0x9E3779B97F4A7C15ull;
    return (size_t)(key >> 29);
}

bool tok_pairmap_init(tok_pairmap *m, size_t expected) {
    size_t cap = table_size(expected);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return false;
    for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->count = 0;
    return true;
}

void tok_pairmap_put(tok_pairmap *m, int32_t left, int32_t right, uint32_t rank, int32_t id) {
    /* capacity was sized for every merge at init: at most half full */
    if (m->count * 2 + 1 > m->mask) return;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = pair_hash(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key) return;
        i = (i + 1) & m->mask;
    }
    m->slots[i].key = key;
    m->slots[i].rank = rank;
    m->slots[i].id = id;
    m->count++;
}

const tok_pair_slot *tok_pairmap_find(const tok_pairmap *m, int32_t left, int32_t right) {
    if (!m->slots) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = pair_hash(key) & m->mask;
    for (;;) {
        const tok_pair_slot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}
