/* bpe.c - the BPE merge engine shared by all tokenizer formats.
 *
 * Text is normalized (SentencePiece style: optional whitespace cleanup,
 * ' ' -> U+2581, dummy prefix), cut into characters, and adjacent symbols are
 * merged greedily: the pair with the best priority first (highest piece score,
 * or lowest merge rank for tokenizer.json), ties to the leftmost pair. The
 * symbols form a doubly linked list over an array and candidate pairs live in
 * a binary heap; a heap entry that no longer matches the list (one of its two
 * symbols changed) is skipped when popped, so the whole run is O(n log n).
 * Symbols that are not pieces at the end become byte-fallback tokens. */
#include "tok_internal.h"

#include <stdlib.h>

/* ---- helpers --------------------------------------------------------------- */

size_t tok_utf8_char(const uint8_t *s, size_t n, bool *valid) {
    uint8_t c = s[0];
    *valid = true;
    if (c < 0x80) return 1;
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        cp = c & 0x1Fu;
        min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        cp = c & 0x0Fu;
        min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        cp = c & 0x07u;
        min = 0x10000;
    } else {
        *valid = false;
        return 1;
    }
    if (len > n) {
        *valid = false;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *valid = false;
            return 1;
        }
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        *valid = false;
        return 1;
    }
    return len;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int tok_parse_byte_piece(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

static const char k_space_sym[3] = {'\xE2', '\x96', '\x81'}; /* U+2581 */
static const char k_replacement[3] = {'\xEF', '\xBF', '\xBD'}; /* U+FFFD */

/* ---- normalization ---------------------------------------------------------- */

/* Writes the normalized text into out (capacity 3*len + 3) and returns its
 * length. */
static size_t normalize(const spqr_tokenizer *t, const uint8_t *in, size_t len, uint8_t *out) {
    const char *sp = t->escape_ws ? k_space_sym : " ";
    size_t sp_len = t->escape_ws ? 3 : 1;
    size_t i = 0;
    if (t->remove_extra_ws)
        while (i < len && in[i] == ' ') i++;
    if (i == len) return 0;
    uint8_t *body = out + 3; /* room for the dummy prefix */
    size_t n = 0;
    bool prev_space = t->remove_extra_ws; /* the prefix counts as a space */
    while (i < len) {
        bool valid;
        size_t cl = tok_utf8_char(in + i, len - i, &valid);
        if (in[i] == ' ') {
            if (!(prev_space && t->remove_extra_ws)) {
                memcpy(body + n, sp, sp_len);
                n += sp_len;
            }
            prev_space = true;
        } else {
            if (!valid && t->replace_invalid) {
                memcpy(body + n, k_replacement, 3);
                n += 3;
            } else {
                memcpy(body + n, in + i, cl);
                n += cl;
            }
            prev_space = false;
        }
        i += cl;
    }
    if (t->remove_extra_ws)
        while (n >= sp_len && memcmp(body + n - sp_len, sp, sp_len) == 0) n -= sp_len;
    bool prefix = false;
    if (t->prefix_mode == TOK_PREFIX_ALWAYS)
        prefix = true;
    else if (t->prefix_mode == TOK_PREFIX_IF_NO_SPACE)
        prefix = !(n >= sp_len && memcmp(body, sp, sp_len) == 0);
    if (prefix) {
        memcpy(out + 3 - sp_len, sp, sp_len);
        memmove(out, out + 3 - sp_len, sp_len + n);
        return sp_len + n;
    }
    memmove(out, body, n);
    return n;
}

/* ---- symbols and the candidate heap ---------------------------------------- */

typedef struct sym {
    uint32_t start, len; /* bytes of the normalized text; len 0 = merged away */
    int32_t prev, next;
    int32_t id;          /* piece id, or -1 */
    int32_t frozen;      /* a USER_DEFINED piece of the input: never merges */
} sym;

typedef struct cand {
    uint32_t key;  /* larger is better */
    int32_t left;  /* symbol index */
    uint32_t size; /* len(left) + len(right) when the candidate was made */
    int32_t id;    /* merged piece */
} cand;

typedef struct heap {
    cand *a;
    size_t n, cap;
} heap;

static inline bool cand_better(const cand *x, const cand *y) {
    return x->key > y->key || (x->key == y->key && x->left < y->left);
}

static bool heap_push(heap *h, cand c) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 1024;
        cand *na = spqr_malloc_array(nc, sizeof *na);
        if (!na) return false;
        if (h->n) memcpy(na, h->a, h->n * sizeof *na);
        free(h->a);
        h->a = na;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_better(&c, &h->a[p])) break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = c;
    return true;
}

static cand heap_pop(heap *h) {
    cand top = h->a[0];
    cand last = h->a[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t b = l;
        if (l + 1 < n && cand_better(&h->a[l + 1], &h->a[l])) b = l + 1;
        if (!cand_better(&h->a[b], &last)) break;
        h->a[i] = h->a[b];
        i = b;
    }
    if (n) h->a[i] = last;
    return top;
}

static inline uint32_t score_key(float f) {
    uint32_t u;
    if (f == 0.0f) f = 0.0f; /* -0 == +0 */
    if (f != f) return 0;    /* NaN: worst */
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* SentencePiece's record of how an UNUSED piece was formed, so that it can be
 * split again at the end ("resegmentation"). Keyed by the piece bytes; the
 * latest record of a string wins. */
typedef struct rev_slot {
    uint32_t off, len, left_len, used;
} rev_slot;
typedef struct rev_map {
    rev_slot *s;
    size_t mask, count;
} rev_map;

typedef struct enc {
    const spqr_tokenizer *t;
    const uint8_t *buf;
    sym *s;
    heap h;
    rev_map rev;
    bool walls;
    bool oom;
} enc;

static void rev_put(enc *e, uint32_t off, uint32_t len, uint32_t left_len) {
    rev_map *r = &e->rev;
    if (r->count * 2 + 2 > r->mask + 1) {
        size_t ncap = r->s ? (r->mask + 1) * 2 : 64;
        rev_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns) {
            e->oom = true;
            return;
        }
        for (size_t i = 0; r->s && i <= r->mask; i++) {
            if (!r->s[i].used) continue;
            size_t j = tok_hash_bytes(e->buf + r->s[i].off, r->s[i].len) & (ncap - 1);
            while (ns[j].used) j = (j + 1) & (ncap - 1);
            ns[j] = r->s[i];
        }
        free(r->s);
        r->s = ns;
        r->mask = ncap - 1;
    }
    size_t j = tok_hash_bytes(e->buf + off, len) & r->mask;
    while (r->s[j].used) {
        if (r->s[j].len == len && memcmp(e->buf + r->s[j].off, e->buf + off, len) == 0) {
            r->s[j].off = off;
            r->s[j].left_len = left_len;
            return;
        }
        j = (j + 1) & r->mask;
    }
    r->s[j] = (rev_slot){off, len, left_len, 1};
    r->count++;
}

static const rev_slot *rev_get(const enc *e, const uint8_t *p, uint32_t len) {
    const rev_map *r = &e->rev;
    if (!r->s) return NULL;
    size_t j = tok_hash_bytes(p, len) & r->mask;
    while (r->s[j].used) {
        if (r->s[j].len == len && memcmp(e->buf + r->s[j].off, p, len) == 0) return &r->s[j];
        j = (j + 1) & r->mask;
    }
    return NULL;
}

static inline bool is_wall(const enc *e, const sym *S) {
    return S->len == 1 && e->buf[S->start] < 128 && e->t->wall[e->buf[S->start]];
}

/* Queue the pair (l, r) if it may merge. */
static void add_pair(enc *e, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const spqr_tokenizer *t = e->t;
    const sym *L = &e->s[l], *R = &e->s[r];
    if (e->walls && (is_wall(e, L) || is_wall(e, R))) return;
    if (L->frozen || R->frozen) return;
    if (t->split_words && R->len >= 3 && memcmp(e->buf + R->start, k_space_sym, 3) == 0) return;
    cand c;
    c.left = l;
    c.size = L->len + R->len;
    if (t->merge_by_rank) {
        if (L->id < 0 || R->id < 0) return;
        const tok_pair_slot *m = tok_pairmap_find(&t->merges, L->id, R->id);
        if (!m) return;
        c.id = m->id;
        c.key = UINT32_MAX - m->rank;
    } else {
        int32_t id = tok_strmap_find(&t->map, &t->pieces, (const char *)e->buf + L->start, c.size);
        if (id < 0) return;
        uint8_t ty = t->pieces.type[id];
        if (ty != TOK_NORMAL && ty != TOK_USER_DEFINED && ty != TOK_UNUSED) return;
        if (ty == TOK_UNUSED) rev_put(e, L->start, c.size, L->len);
        c.id = id;
        c.key = score_key(t->pieces.score[id]);
    }
    if (!heap_push(&e->h, c)) e->oom = true;
}

/* ---- output ------------------------------------------------------------------ */

typedef struct out_ids {
    int32_t *v;
    size_t n, cap;
    bool prev_unk;
} out_ids;

static inline void out_put(out_ids *o, int32_t id) {
    if (o->n < o->cap) o->v[o->n++] = id;
}

/* Emit a final symbol (bytes p[0..len), id or -1) SentencePiece style. */
static void emit_symbol(const spqr_tokenizer *t, out_ids *o, const uint8_t *p, size_t len, int32_t id) {
    bool unknown = id < 0 || id == t->unk_id;
    if (!unknown) {
        out_put(o, id);
        o->prev_unk = false;
        return;
    }
    if (t->byte_fallback) {
        for (size_t i = 0; i < len; i++) {
            int32_t b = t->byte_id[p[i]];
            if (b < 0) b = t->unk_id;
            if (b >= 0) out_put(o, b);
        }
        o->prev_unk = false;
        return;
    }
    if (t->unk_id < 0) return;
    if (t->fuse_unk && o->prev_unk) return;
    out_put(o, t->unk_id);
    o->prev_unk = true;
}

/* Emit a symbol, splitting UNUSED pieces back into the pieces that formed
 * them (iteratively: a crafted vocabulary may nest deeply). */
static bool emit_resegment(enc *e, out_ids *o, uint32_t off, uint32_t len, int32_t id) {
    const spqr_tokenizer *t = e->t;
    if (id < 0 || t->pieces.type[id] != TOK_UNUSED || !e->rev.s) {
        emit_symbol(t, o, e->buf + off, len, id);
        return true;
    }
    size_t cap = 64, n = 0;
    uint32_t *st = malloc(cap * 2 * sizeof *st);
    if (!st) return false;
    st[0] = off;
    st[1] = len;
    n = 1;
    while (n > 0) {
        n--;
        uint32_t o2 = st[2 * n], l2 = st[2 * n + 1];
        int32_t pid = tok_strmap_find(&t->map, &t->pieces, (const char *)e->buf + o2, l2);
        const rev_slot *rs = NULL;
        if (pid >= 0 && t->pieces.type[pid] == TOK_UNUSED) rs = rev_get(e, e->buf + o2, l2);
        if (!rs || rs->left_len == 0 || rs->left_len >= l2) {
            emit_symbol(t, o, e->buf + o2, l2, pid);
            continue;
        }
        if (n + 2 > cap) {
            uint32_t *ns = realloc(st, cap * 4 * sizeof *st);
            if (!ns) {
                free(st);
                return false;
            }
            st = ns;
            cap *= 2;
        }
        /* right part below the left part, so the left one is emitted first */
        st[2 * n] = o2 + rs->left_len;
        st[2 * n + 1] = l2 - rs->left_len;
        st[2 * n + 2] = o2;
        st[2 * n + 3] = rs->left_len;
        n += 2;
    }
    free(st);
    return true;
}

/* ---- the encoder ------------------------------------------------------------- */

spqr_status tok_bpe_encode(const spqr_tokenizer *t, const char *text, size_t len,
                           int add_bos, int32_t **ids, size_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    if (len > (UINT32_MAX - 16) / 3)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: text of %zu bytes is too long to encode", t->name, len);
    if (add_bos && t->bos_id < 0)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: the tokenizer has no BOS token", t->name);

    spqr_status st = SPQR_OK;
    enc e;
    memset(&e, 0, sizeof e);
    e.t = t;
    out_ids o = {0};
    uint8_t *buf = malloc(3 * len + 4);
    if (!buf) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory encoding %zu bytes", t->name, len);
    size_t n = normalize(t, (const uint8_t *)text, len, buf);
    e.buf = buf;

    /* every output id covers at least one byte of the normalized text */
    o.cap = n + 1;
    o.v = spqr_malloc_array(o.cap, sizeof *o.v);
    e.s = spqr_malloc_array(n ? n : 1, sizeof *e.s);
    if (!o.v || !e.s) goto oom;
    if (add_bos) out_put(&o, t->bos_id);

    /* initial symbols: characters, user-defined pieces, byte fallback (HF) */
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = 0;
        int32_t id = -1;
        if (t->max_user_len && t->user_first[buf[i]]) { /* longest USER_DEFINED piece here */
            size_t maxl = t->max_user_len < n - i ? t->max_user_len : n - i;
            for (size_t l = maxl; l >= 1; l--) {
                int32_t u = tok_strmap_find(&t->map, &t->pieces, (const char *)buf + i, l);
                if (u >= 0 && t->pieces.type[u] == TOK_USER_DEFINED) {
                    cl = l;
                    id = u;
                    break;
                }
            }
        }
        if (cl) {
            e.s[ns] = (sym){(uint32_t)i, (uint32_t)cl, ns - 1, ns + 1, id, 1};
            ns++;
            i += cl;
            continue;
        }
        {
            bool valid;
            cl = tok_utf8_char(buf + i, n - i, &valid);
            id = tok_strmap_find(&t->map, &t->pieces, (const char *)buf + i, cl);
        }
        if (t->merge_by_rank && id < 0) {
            /* tokenizer.json: unknown characters become bytes before merging */
            bool all = t->byte_fallback;
            for (size_t k = 0; all && k < cl; k++) all = t->byte_id[buf[i + k]] >= 0;
            if (all) {
                for (size_t k = 0; k < cl; k++, ns++)
                    e.s[ns] = (sym){(uint32_t)(i + k), 1, ns - 1, ns + 1, t->byte_id[buf[i + k]], 0};
                i += cl;
                continue;
            }
            if (t->unk_id < 0) { /* no unknown token: the character is dropped */
                i += cl;
                continue;
            }
            if (t->fuse_unk && ns > 0 && e.s[ns - 1].id == t->unk_id) {
                e.s[ns - 1].len += (uint32_t)cl;
                i += cl;
                continue;
            }
            id = t->unk_id;
        }
        e.s[ns] = (sym){(uint32_t)i, (uint32_t)cl, ns - 1, ns + 1, id, 0};
        ns++;
        i += cl;
    }
    if (ns > 0) e.s[ns - 1].next = -1;

    /* Merge wall-free stretches one at a time (or everything at once). */
    e.walls = !t->no_walls;
    for (int32_t a = 0; a < ns;) {
        int32_t b = a + 1;
        if (e.walls) {
            while (b < ns && !is_wall(&e, &e.s[b])) b++;
        } else {
            b = ns;
        }
        for (int32_t i = a; i + 1 < b; i++) add_pair(&e, i, i + 1);
        if (e.oom) goto oom;
        while (e.h.n > 0) {
            cand c = heap_pop(&e.h);
            sym *L = &e.s[c.left];
            if (L->len == 0 || L->next < 0) continue;
            sym *R = &e.s[L->next];
            if (L->len + R->len != c.size) continue; /* stale */
            L->len = c.size;
            L->id = c.id;
            L->next = R->next;
            if (R->next >= 0) e.s[R->next].prev = c.left;
            R->len = 0;
            add_pair(&e, L->prev, c.left);
            add_pair(&e, c.left, L->next);
            if (e.oom) goto oom;
        }
        a = b;
    }

    for (int32_t i = ns > 0 ? 0 : -1; i >= 0; i = e.s[i].next) {
        const sym *S = &e.s[i];
        if (t->merge_by_rank) {
            out_put(&o, S->id);
        } else if (t->has_unused) {
            if (!emit_resegment(&e, &o, S->start, S->len, S->id)) goto oom;
        } else {
            emit_symbol(t, &o, buf + S->start, S->len, S->id);
        }
    }

    *n_ids = o.n;
    if (o.n < o.cap) {
        int32_t *shrunk = realloc(o.v, (o.n ? o.n : 1) * sizeof *shrunk);
        if (shrunk) o.v = shrunk;
    }
    *ids = o.v;
    o.v = NULL;
    goto done;
oom:
    st = spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory encoding %zu bytes", t->name, len);
done:
    free(o.v);
    free(buf);
    free(e.s);
    free(e.h.a);
    free(e.rev.s);
    return st;
}
