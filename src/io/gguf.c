/* gguf.c - validated GGUF parsing (see gguf.h and docs/GGUF.md).
 *
 * The input is untrusted: a cursor reads little-endian fields and fails
 * when a field would run past the end; counts are bounded by the bytes that
 * remain (every key/value, tensor info and array element takes at least one
 * byte), so no count drives an allocation larger than the input; sizes and
 * offsets are computed with overflow checks. */
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    const uint8_t *p, *end, *base;
} rd_t;

static bool rd_bytes(rd_t *r, size_t n, const uint8_t **out) {
    if ((size_t)(r->end - r->p) < n) return false;
    *out = r->p;
    r->p += n;
    return true;
}
static bool rd_u64(rd_t *r, uint64_t *v) {
    const uint8_t *b;
    if (!rd_bytes(r, 8, &b)) return false;
    *v = 0;
    for (int i = 7; i >= 0; i--) *v = (*v << 8) | b[i];
    return true;
}
static bool rd_u32(rd_t *r, uint32_t *v) {
    const uint8_t *b;
    if (!rd_bytes(r, 4, &b)) return false;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return true;
}
static bool rd_str(rd_t *r, spqr_gguf_str *s) {
    uint64_t n;
    const uint8_t *b;
    if (!rd_u64(r, &n) || n > (uint64_t)(r->end - r->p) || !rd_bytes(r, (size_t)n, &b)) return false;
    s->s = (const char *)b;
    s->len = (size_t)n;
    return true;
}

static const size_t k_scalar_size[SPQR_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const k_value_names[SPQR_GGUF_NTYPES] = {"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                                            "bool", "string", "array", "u64", "i64", "f64"};

/* the little-endian scalar at b of type t, widened */
static void scalar_value(const uint8_t *b, uint32_t t, int64_t *i, uint64_t *u, double *f) {
    uint64_t v = 0;
    size_t n = k_scalar_size[t];
    for (size_t k = n; k-- > 0;) v = (v << 8) | b[k];
    *u = v;
    switch (t) {
    case SPQR_GGUF_I8: *i = (int8_t)v; break;
    case SPQR_GGUF_I16: *i = (int16_t)v; break;
    case SPQR_GGUF_I32: *i = (int32_t)v; break;
    case SPQR_GGUF_I64: *i = (int64_t)v; break;
    default: *i = (int64_t)v; break;
    }
    if (t == SPQR_GGUF_F32) {
        uint32_t w = (uint32_t)v;
        float x;
        memcpy(&x, &w, 4);
        *f = x;
    } else if (t == SPQR_GGUF_F64) {
        memcpy(f, &v, 8);
    } else if (t == SPQR_GGUF_I8 || t == SPQR_GGUF_I16 || t == SPQR_GGUF_I32 || t == SPQR_GGUF_I64) {
        *f = (double)*i;
    } else {
        *f = (double)v;
    }
}

/* Skip one value of type t (arrays recursively, at most `depth` deep). */
static bool skip_value(rd_t *r, uint32_t t, int depth, const char **why) {
    const uint8_t *b;
    if (t >= SPQR_GGUF_NTYPES) {
        *why = "unknown value type";
        return false;
    }
    if (t == SPQR_GGUF_STRING) {
        spqr_gguf_str s;
        if (!rd_str(r, &s)) {
            *why = "string length runs past the end of the file";
            return false;
        }
        return true;
    }
    if (t == SPQR_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (depth <= 0) {
            *why = "arrays nested too deeply";
            return false;
        }
        if (!rd_u32(r, &et) || !rd_u64(r, &n)) {
            *why = "truncated array header";
            return false;
        }
        if (et >= SPQR_GGUF_NTYPES) {
            *why = "array of an unknown value type";
            return false;
        }
        if (et != SPQR_GGUF_STRING && et != SPQR_GGUF_ARRAY) {
            size_t need;
            if (n > SIZE_MAX || !spqr_mul_size((size_t)n, k_scalar_size[et], &need) || !rd_bytes(r, need, &b)) {
                *why = "array runs past the end of the file";
                return false;
            }
            return true;
        }
        /* each string or array element takes at least 8 bytes */
        if (n > (uint64_t)(r->end - r->p) / 8) {
            *why = "array count runs past the end of the file";
            return false;
        }
        for (uint64_t k = 0; k < n; k++)
            if (!skip_value(r, et, depth - 1, why)) return false;
        return true;
    }
    if (t == SPQR_GGUF_BOOL) {
        if (!rd_bytes(r, 1, &b)) {
            *why = "truncated value";
            return false;
        }
        if (*b > 1) {
            *why = "bool value is neither 0 nor 1";
            return false;
        }
        return true;
    }
    if (!rd_bytes(r, k_scalar_size[t], &b)) {
        *why = "truncated value";
        return false;
    }
    return true;
}

typedef struct {
    uint32_t id;
    const char *name;
    uint32_t block, size; /* size 0: not known here */
} type_info;

static const type_info k_types[] = {
    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},  {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 0, 0},   {17, "IQ2_XS", 0, 0},
    {18, "IQ3_XXS", 0, 0},  {19, "IQ1_S", 0, 0},    {20, "IQ4_NL", 0, 0},    {21, "IQ3_S", 0, 0},
    {22, "IQ2_S", 0, 0},    {23, "IQ4_XS", 0, 0},   {24, "I8", 1, 1},        {25, "I16", 1, 2},
    {26, "I32", 1, 4},      {27, "I64", 1, 8},      {28, "F64", 1, 8},       {29, "IQ1_M", 0, 0},
    {30, "BF16", 1, 2},     {34, "TQ1_0", 0, 0},    {35, "TQ2_0", 0, 0},     {39, "MXFP4", 0, 0},
};

static const type_info *type_find(uint32_t t) {
    for (size_t i = 0; i < sizeof k_types / sizeof *k_types; i++)
        if (k_types[i].id == t) return &k_types[i];
    return NULL;
}

const char *spqr_gguf_type_name(uint32_t type) {
    const type_info *ti = type_find(type);
    return ti ? ti->name : NULL;
}

bool spqr_gguf_str_eq(spqr_gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.s, c, n) == 0;
}

static int str_cmp(spqr_gguf_str a, spqr_gguf_str b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.s, b.s, n) : 0;
    if (c) return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

/* qsort has no context argument: the index comparisons read the file being
 * parsed through this per-thread pointer, set just before each sort. */
static _Thread_local const spqr_gguf *g_sort;
static int cmp_tensor_idx(const void *a, const void *b) {
    const spqr_gguf_tensor *t = g_sort->tensors;
    return str_cmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}
static int cmp_kv(const void *a, const void *b) {
    return str_cmp(((const spqr_gguf_kv *)a)->key, ((const spqr_gguf_kv *)b)->key);
}
static int cmp_offset_idx(const void *a, const void *b) {
    const spqr_gguf_tensor *t = g_sort->tensors;
    uint64_t x = t[*(const size_t *)a].offset, y = t[*(const size_t *)b].offset;
    return x < y ? -1 : x > y;
}

void spqr_gguf_close(spqr_gguf *g) {
    if (!g) return;
    free(g->kv);
    free(g->tensors);
    free(g->by_name);
    free(g->path);
    if (g->mapped) spqr_mmap_close(&g->map);
    memset(g, 0, sizeof *g);
}

static spqr_status fail_at(spqr_gguf *g, size_t at, const char *what) {
    spqr_status st = spqr_fail(SPQR_ERR_FORMAT, "%s: malformed GGUF at byte %zu: %s", g->path, at, what);
    return st;
}

static spqr_status parse(spqr_gguf *g) {
    rd_t r = {g->base, g->base + g->size, g->base};
    const uint8_t *magic;
    if (!rd_bytes(&r, 4, &magic) || memcmp(magic, "GGUF", 4) != 0)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: not a GGUF file (bad magic)", g->path);
    uint64_t n_tensors, n_kv;
    if (!rd_u32(&r, &g->version) || !rd_u64(&r, &n_tensors) || !rd_u64(&r, &n_kv))
        return spqr_fail(SPQR_ERR_FORMAT, "%s: truncated GGUF header (%zu bytes)", g->path, g->size);
    if (g->version != 2 && g->version != 3) {
        if ((g->version & 0xffff) == 0 && g->version != 0)
            return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: big-endian GGUF files are not supported", g->path);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: GGUF version %u is not supported (2 and 3 are)", g->path,
                         g->version);
    }
    size_t rest = (size_t)(r.end - r.p);
    /* a key/value takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8 */
    if (n_kv > rest / 13)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: key/value count %llu is larger than the file can hold", g->path,
                         (unsigned long long)n_kv);
    if (n_tensors > rest / 24)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor count %llu is larger than the file can hold", g->path,
                         (unsigned long long)n_tensors);
    g->n_kv = (size_t)n_kv;
    g->n_tensors = (size_t)n_tensors;
    g->kv = spqr_calloc_array(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = spqr_calloc_array(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    g->by_name = spqr_calloc_array(g->n_tensors ? g->n_tensors : 1, sizeof *g->by_name);
    if (!g->kv || !g->tensors || !g->by_name) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", g->path);

    g->alignment = 32;
    for (size_t k = 0; k < g->n_kv; k++) {
        spqr_gguf_kv *kv = &g->kv[k];
        size_t at = (size_t)(r.p - r.base);
        const char *why = NULL;
        if (!rd_str(&r, &kv->key)) return fail_at(g, at, "key/value key runs past the end of the file");
        if (kv->key.len == 0) return fail_at(g, at, "empty key");
        if (!rd_u32(&r, &kv->type)) return fail_at(g, at, "truncated key/value type");
        if (kv->type >= SPQR_GGUF_NTYPES) {
            char b[160];
            snprintf(b, sizeof b, "key '%.*s' has unknown value type %u", (int)(kv->key.len > 64 ? 64 : kv->key.len),
                     kv->key.s, kv->type);
            return fail_at(g, at, b);
        }
        const uint8_t *vstart = r.p;
        if (kv->type == SPQR_GGUF_ARRAY) {
            /* header first, to record it; then the elements are skipped */
            rd_t h = r;
            if (!rd_u32(&h, &kv->arr_type) || !rd_u64(&h, &kv->arr_n))
                return fail_at(g, at, "truncated array header");
            kv->arr = h.p;
        }
        if (!skip_value(&r, kv->type, 3, &why)) {
            char b[200];
            snprintf(b, sizeof b, "key '%.*s': %s", (int)(kv->key.len > 64 ? 64 : kv->key.len), kv->key.s, why);
            return fail_at(g, at, b);
        }
        if (kv->type == SPQR_GGUF_STRING) {
            kv->str.len = (size_t)(r.p - vstart) - 8;
            kv->str.s = (const char *)vstart + 8;
        } else if (kv->type != SPQR_GGUF_ARRAY) {
            scalar_value(vstart, kv->type, &kv->i, &kv->u, &kv->f);
        }
        if (spqr_gguf_str_eq(kv->key, "general.alignment")) {
            if (kv->type != SPQR_GGUF_U32 || kv->u == 0 || kv->u % 8 != 0 || kv->u > (1u << 20) ||
                (kv->u & (kv->u - 1)) != 0)
                return spqr_fail(SPQR_ERR_FORMAT,
                                 "%s: general.alignment must be a u32 power of two from 8 to 1 MiB", g->path);
            g->alignment = (size_t)kv->u;
        }
    }
    /* duplicate keys (sorting a copy keeps the file order in g->kv) */
    if (g->n_kv > 1) {
        spqr_gguf_kv *s = spqr_malloc_array(g->n_kv, sizeof *s);
        if (!s) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", g->path);
        memcpy(s, g->kv, g->n_kv * sizeof *s);
        qsort(s, g->n_kv, sizeof *s, cmp_kv);
        for (size_t k = 1; k < g->n_kv; k++)
            if (str_cmp(s[k - 1].key, s[k].key) == 0) {
                spqr_status st = spqr_fail(SPQR_ERR_FORMAT, "%s: key '%.*s' appears twice", g->path,
                                           (int)(s[k].key.len > 128 ? 128 : s[k].key.len), s[k].key.s);
                free(s);
                return st;
            }
        free(s);
    }

    for (size_t k = 0; k < g->n_tensors; k++) {
        spqr_gguf_tensor *t = &g->tensors[k];
        size_t at = (size_t)(r.p - r.base);
        if (!rd_str(&r, &t->name)) return fail_at(g, at, "tensor name runs past the end of the file");
        if (t->name.len == 0 || t->name.len > 256) return fail_at(g, at, "tensor name is empty or too long");
        int nl = (int)t->name.len;
        if (!rd_u32(&r, &t->ndim)) return fail_at(g, at, "truncated tensor info");
        if (t->ndim == 0 || t->ndim > SPQR_GGUF_MAX_DIMS)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' has %u dimensions (1 to %d supported)", g->path, nl,
                             t->name.s, t->ndim, SPQR_GGUF_MAX_DIMS);
        for (int d = 0; d < SPQR_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        size_t numel = 1;
        for (uint32_t d = 0; d < t->ndim; d++) {
            if (!rd_u64(&r, &t->ne[d])) return fail_at(g, at, "truncated tensor info");
            if (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 40) || !spqr_mul_size(numel, (size_t)t->ne[d], &numel))
                return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' has a bad dimension %llu", g->path, nl,
                                 t->name.s, (unsigned long long)t->ne[d]);
        }
        if (!rd_u32(&r, &t->type) || !rd_u64(&r, &t->offset)) return fail_at(g, at, "truncated tensor info");
        const type_info *ti = type_find(t->type);
        if (!ti)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' has unknown type %u", g->path, nl, t->name.s,
                             t->type);
        if (ti->size) {
            if (t->ne[0] % ti->block)
                return spqr_fail(SPQR_ERR_FORMAT,
                                 "%s: tensor '%.*s' of type %s has %llu columns, not a multiple of its %u-element "
                                 "blocks",
                                 g->path, nl, t->name.s, ti->name, (unsigned long long)t->ne[0], ti->block);
            if (!spqr_mul_size(numel / ti->block, ti->size, &t->nbytes))
                return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' is too large", g->path, nl, t->name.s);
        }
        if (t->offset % g->alignment)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' offset %llu is not a multiple of the alignment %zu",
                             g->path, nl, t->name.s, (unsigned long long)t->offset, g->alignment);
        g->by_name[k] = k;
    }
    size_t end_info = (size_t)(r.p - r.base);
    size_t pad = (g->alignment - end_info % g->alignment) % g->alignment;
    if (!spqr_add_size(end_info, pad, &g->data_offset) || g->data_offset > g->size) {
        if (g->n_tensors == 0) {
            g->data_offset = g->size;
            return SPQR_OK;
        }
        return spqr_fail(SPQR_ERR_FORMAT, "%s: file ends before its tensor data section", g->path);
    }
    size_t dsize = g->size - g->data_offset;
    for (size_t k = 0; k < g->n_tensors; k++) {
        spqr_gguf_tensor *t = &g->tensors[k];
        size_t end;
        if (t->offset > dsize || !spqr_add_size((size_t)t->offset, t->nbytes, &end) || end > dsize)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' data ends past the end of the file", g->path,
                             (int)t->name.len, t->name.s);
        t->data = g->base + g->data_offset + t->offset;
    }
    g_sort = g;
    qsort(g->by_name, g->n_tensors, sizeof *g->by_name, cmp_tensor_idx);
    for (size_t k = 1; k < g->n_tensors; k++) {
        const spqr_gguf_tensor *t = &g->tensors[g->by_name[k]];
        if (str_cmp(g->tensors[g->by_name[k - 1]].name, t->name) == 0)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%.*s' appears twice", g->path, (int)t->name.len, t->name.s);
    }
    /* overlapping data */
    size_t *ord = spqr_malloc_array(g->n_tensors ? g->n_tensors : 1, sizeof *ord);
    if (!ord) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", g->path);
    for (size_t k = 0; k < g->n_tensors; k++) ord[k] = k;
    qsort(ord, g->n_tensors, sizeof *ord, cmp_offset_idx);
    spqr_status st = SPQR_OK;
    for (size_t k = 1; k < g->n_tensors && !st; k++) {
        const spqr_gguf_tensor *a = &g->tensors[ord[k - 1]], *b = &g->tensors[ord[k]];
        if (a->offset + a->nbytes > b->offset)
            st = spqr_fail(SPQR_ERR_FORMAT, "%s: the data of tensors '%.*s' and '%.*s' overlap", g->path,
                           (int)a->name.len, a->name.s, (int)b->name.len, b->name.s);
    }
    free(ord);
    return st;
}

spqr_status spqr_gguf_parse(const void *data, size_t size, const char *name, spqr_gguf *g) {
    memset(g, 0, sizeof *g);
    g->path = strdup(name ? name : "gguf");
    if (!g->path) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    g->base = data;
    g->size = size;
    spqr_status st = parse(g);
    if (st) spqr_gguf_close(g);
    return st;
}

spqr_status spqr_gguf_open(const char *path, spqr_gguf *g) {
    memset(g, 0, sizeof *g);
    spqr_mmap m;
    spqr_status st = spqr_mmap_open(path, &m);
    if (st) return st;
    st = spqr_gguf_parse(m.data, m.size, path, g);
    if (st) {
        spqr_mmap_close(&m);
        return st;
    }
    g->map = m;
    g->mapped = 1;
    return SPQR_OK;
}

bool spqr_gguf_probe(const char *path) {
    if (spqr_is_dir(path)) return false;
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    bool yes = f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    if (f) fclose(f);
    return yes;
}

const spqr_gguf_kv *spqr_gguf_kv_find(const spqr_gguf *g, const char *key) {
    for (size_t k = 0; k < g->n_kv; k++)
        if (spqr_gguf_str_eq(g->kv[k].key, key)) return &g->kv[k];
    return NULL;
}

const spqr_gguf_tensor *spqr_gguf_tensor_find(const spqr_gguf *g, const char *name) {
    spqr_gguf_str key = {name, strlen(name)};
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const spqr_gguf_tensor *t = &g->tensors[g->by_name[mid]];
        int c = str_cmp(t->name, key);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

bool spqr_gguf_kv_int(const spqr_gguf_kv *kv, int64_t lo, int64_t hi, int64_t *out) {
    if (!kv) return false;
    switch (kv->type) {
    case SPQR_GGUF_U8: case SPQR_GGUF_U16: case SPQR_GGUF_U32: case SPQR_GGUF_U64: case SPQR_GGUF_BOOL:
        if (kv->u > (uint64_t)INT64_MAX || (int64_t)kv->u < lo || (int64_t)kv->u > hi) return false;
        *out = (int64_t)kv->u;
        return true;
    case SPQR_GGUF_I8: case SPQR_GGUF_I16: case SPQR_GGUF_I32: case SPQR_GGUF_I64:
        if (kv->i < lo || kv->i > hi) return false;
        *out = kv->i;
        return true;
    default: return false;
    }
}

bool spqr_gguf_kv_num(const spqr_gguf_kv *kv, double *out) {
    if (!kv || kv->type == SPQR_GGUF_STRING || kv->type == SPQR_GGUF_ARRAY || kv->type == SPQR_GGUF_BOOL) return false;
    *out = kv->f;
    return true;
}

double spqr_gguf_arr_num(const spqr_gguf_kv *kv, uint64_t i) {
    int64_t iv;
    uint64_t uv;
    double f;
    scalar_value(kv->arr + i * k_scalar_size[kv->arr_type], kv->arr_type, &iv, &uv, &f);
    return f;
}

spqr_gguf_str spqr_gguf_arr_next_str(const spqr_gguf_kv *kv, size_t *cursor) {
    const uint8_t *b = kv->arr + *cursor;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | b[i];
    spqr_gguf_str s = {(const char *)b + 8, (size_t)n};
    *cursor += 8 + (size_t)n;
    return s;
}

const char *spqr_gguf_value_type_name(uint32_t t) { return t < SPQR_GGUF_NTYPES ? k_value_names[t] : "?"; }
