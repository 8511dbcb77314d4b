/* container.c - reader and writer of the generic .spqr container.
 *
 * The byte layout is specified in docs/FORMAT.md; keep the two in step.
 * All multi-byte fields are little-endian and are encoded/decoded byte by
 * byte, so neither host endianness nor alignment of the mapping matters.
 */
#include "container.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- layout ----------------------------------------------------------------- */

static const uint8_t k_magic[8] = {0x89, 'S', 'P', 'Q', 'R', '\r', '\n', 0x1a};

enum {
    H_MAGIC = 0,
    H_VMAJOR = 8,
    H_VMINOR = 10,
    H_HSIZE = 12,
    H_FILESIZE = 16,
    H_DATAOFF = 24,
    H_DATASIZE = 32,
    H_DIROFF = 40,
    H_DIRSIZE = 48,
    H_COUNT = 56,
    H_METAOFF = 64,
    H_METASIZE = 72,
    H_RESERVED = 80, /* 40 bytes, zero */
    H_CHECKSUM = 120,
};

/* name_len + 1 name byte + dtype + ndim + offset + nbytes + checksum */
#define MIN_RECORD_SIZE (4 + 1 + 4 + 4 + 8 + 8 + 8)

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }
static void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Also rejects NUL.
 * Returns the offset of the first bad byte, or n if all is well. */
static size_t utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0) return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

/* Validate a metadata document (n bytes at s, s[n] == 0). On failure writes a
 * description into why and returns false. */
static bool metadata_check(const char *s, size_t n, char *why, size_t whyn) {
    size_t bad = utf8_check((const uint8_t *)s, n);
    if (bad != n) {
        if (s[bad] == 0)
            snprintf(why, whyn, "metadata contains a NUL byte at offset %zu", bad);
        else
            snprintf(why, whyn, "metadata is not valid UTF-8 (byte offset %zu)", bad);
        return false;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(s, &end, 1);
    if (!root) {
        size_t at = (end && end >= s && end <= s + n) ? (size_t)(end - s) : 0;
        snprintf(why, whyn, "metadata is not valid JSON (near byte %zu)", at);
        return false;
    }
    bool obj = cJSON_IsObject(root);
    cJSON_Delete(root);
    if (!obj) {
        snprintf(why, whyn, "metadata is not a JSON object");
        return false;
    }
    return true;
}

/* "[3, 5, 7]" */
static void format_shape(char *buf, size_t n, int ndim, const uint64_t *dims) {
    size_t k = 0;
    buf[0] = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRIu64, i ? ", " : "", dims[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* prod(dims) * elem, false on overflow */
static bool shape_bytes(int ndim, const uint64_t *dims, size_t elem, uint64_t *out) {
    uint64_t p = 1;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(p, dims[i], &p)) return false;
    if (__builtin_mul_overflow(p, (uint64_t)elem, &p)) return false;
    *out = p;
    return true;
}

static uint64_t hash_bytes(const void *p, size_t n) { return XXH3_64bits(n ? p : "", n); }

/* ---- reader ----------------------------------------------------------------- */

typedef struct centry {
    const char *name;
    uint32_t name_len;
    spqr_dtype dtype;
    int ndim;
    uint64_t dims[SPQR_CONTAINER_MAX_NDIM];
    uint64_t offset, nbytes, checksum;
} centry;

struct spqr_container {
    spqr_mmap map; /* when opened from a file */
    bool mapped;
    const uint8_t *base;
    size_t size;
    char *name;
    int vmajor, vminor;
    char *meta;
    size_t meta_len;
    size_t n;
    centry *ents;
    char *names;
    centry **by_name; /* sorted by name */
};

static int cmp_offset(const void *a, const void *b) {
    const centry *x = *(const centry *const *)a, *y = *(const centry *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    const centry *x = *(const centry *const *)a, *y = *(const centry *const *)b;
    return strcmp(x->name, y->name);
}

/* off + len <= size without overflow */
static bool in_range(uint64_t off, uint64_t len, uint64_t size) {
    return off <= size && len <= size - off;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
    if (alen == 0 || blen == 0) return false;
    return a < b + blen && b < a + alen; /* callers checked in_range: no overflow */
}

void spqr_container_close(spqr_container *c) {
    if (!c) return;
    if (c->mapped) spqr_mmap_close(&c->map);
    free(c->name);
    free(c->meta);
    free(c->ents);
    free(c->names);
    free(c->by_name);
    free(c);
}

static spqr_status parse_directory(spqr_container *c, uint64_t dir_off, uint64_t dir_size,
                                   uint64_t count, uint64_t data_off, uint64_t data_size) {
    const char *fn = c->name;
    const uint8_t *p = c->base + dir_off, *end = p + dir_size;
    c->n = (size_t)count;
    c->ents = spqr_calloc_array(c->n ? c->n : 1, sizeof *c->ents);
    /* names (without NULs) are part of the directory, so this is bounded */
    c->names = malloc((size_t)dir_size + c->n + 1);
    if (!c->ents || !c->names) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory reading the directory", fn);
    char *np = c->names;
    char shape[256];

    for (size_t i = 0; i < c->n; i++) {
        centry *e = &c->ents[i];
        if ((size_t)(end - p) < 4)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: directory entry %zu is truncated (directory ends at byte %" PRIu64 ")",
                             fn, i, dir_off + dir_size);
        uint32_t nl = rd32(p);
        p += 4;
        if (nl == 0 || nl > SPQR_CONTAINER_MAX_NAME)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: directory entry %zu has name length %" PRIu32 " (must be 1..%d)", fn, i,
                             nl, SPQR_CONTAINER_MAX_NAME);
        if ((size_t)(end - p) < (size_t)nl + 8)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: directory entry %zu is truncated (directory ends at byte %" PRIu64 ")",
                             fn, i, dir_off + dir_size);
        size_t bad = utf8_check(p, nl);
        if (bad != nl)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: directory entry %zu: tensor name %s at byte %zu", fn, i,
                             p[bad] ? "is not valid UTF-8" : "contains a NUL", bad);
        memcpy(np, p, nl);
        np[nl] = 0;
        e->name = np;
        e->name_len = nl;
        np += nl + 1;
        p += nl;
        uint32_t dt = rd32(p), nd = rd32(p + 4);
        p += 8;
        if (dt >= (uint32_t)SPQR_DT_COUNT)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has unknown dtype code %" PRIu32, fn, e->name, dt);
        if (nd > SPQR_CONTAINER_MAX_NDIM)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has ndim %" PRIu32 " (max %d)", fn, e->name, nd,
                             SPQR_CONTAINER_MAX_NDIM);
        e->dtype = (spqr_dtype)dt;
        e->ndim = (int)nd;
        if ((size_t)(end - p) < 8 * (size_t)nd + 24)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: directory entry %zu ('%s') is truncated (directory ends at byte %" PRIu64 ")",
                             fn, i, e->name, dir_off + dir_size);
        for (uint32_t k = 0; k < nd; k++) e->dims[k] = rd64(p + 8 * k);
        p += 8 * (size_t)nd;
        e->offset = rd64(p);
        e->nbytes = rd64(p + 8);
        e->checksum = rd64(p + 16);
        p += 24;

        format_shape(shape, sizeof shape, e->ndim, e->dims);
        uint64_t want;
        if (!shape_bytes(e->ndim, e->dims, spqr_dtype_size(e->dtype), &want))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s': shape %s of %s overflows 64 bits", fn, e->name, shape,
                             spqr_dtype_name(e->dtype));
        if (want != e->nbytes)
            return spqr_fail(SPQR_ERR_FORMAT,
                             "%s: tensor '%s': stored size %" PRIu64 " bytes disagrees with shape %s of %s (%" PRIu64 " bytes)",
                             fn, e->name, e->nbytes, shape, spqr_dtype_name(e->dtype), want);
        if (e->offset % SPQR_CONTAINER_ALIGN != 0)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s': data offset %" PRIu64 " is not %d-byte aligned", fn, e->name,
                             e->offset, SPQR_CONTAINER_ALIGN);
        if (!in_range(e->offset, e->nbytes, c->size))
            return spqr_fail(SPQR_ERR_FORMAT,
                             "%s: tensor '%s' extends past the end of the file (offset %" PRIu64 " + %" PRIu64 " > %zu)", fn,
                             e->name, e->offset, e->nbytes, c->size);
        if (e->offset < data_off || !in_range(e->offset - data_off, e->nbytes, data_size))
            return spqr_fail(SPQR_ERR_FORMAT,
                             "%s: tensor '%s' (offset %" PRIu64 " + %" PRIu64 ") lies outside the data section (%" PRIu64
                             "..%" PRIu64 ")",
                             fn, e->name, e->offset, e->nbytes, data_off, data_off + data_size);
    }
    if (p != end)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: directory has %zu trailing bytes after its %zu entries", fn,
                         (size_t)(end - p), c->n);

    /* overlap and uniqueness, via two sorted views */
    c->by_name = spqr_malloc_array(c->n ? c->n : 1, sizeof *c->by_name);
    centry **by_off = spqr_malloc_array(c->n ? c->n : 1, sizeof *by_off);
    if (!c->by_name || !by_off) {
        free(by_off);
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory reading the directory", fn);
    }
    for (size_t i = 0; i < c->n; i++) by_off[i] = c->by_name[i] = &c->ents[i];
    if (c->n > 1) {
        qsort(by_off, c->n, sizeof *by_off, cmp_offset);
        qsort(c->by_name, c->n, sizeof *c->by_name, cmp_name);
    }
    const centry *far = NULL; /* non-empty tensor reaching furthest so far */
    for (size_t i = 0; i < c->n; i++) {
        const centry *e = by_off[i];
        if (e->nbytes == 0) continue;
        if (far && e->offset < far->offset + far->nbytes) {
            spqr_status st = spqr_fail(SPQR_ERR_FORMAT,
                                       "%s: tensors '%s' (offset %" PRIu64 " + %" PRIu64 ") and '%s' (offset %" PRIu64
                                       " + %" PRIu64 ") overlap",
                                       fn, far->name, far->offset, far->nbytes, e->name, e->offset, e->nbytes);
            free(by_off);
            return st;
        }
        if (!far || e->offset + e->nbytes > far->offset + far->nbytes) far = e;
    }
    free(by_off);
    for (size_t i = 1; i < c->n; i++)
        if (strcmp(c->by_name[i - 1]->name, c->by_name[i]->name) == 0)
            return spqr_fail(SPQR_ERR_FORMAT, "%s: duplicate tensor name '%s'", fn, c->by_name[i]->name);
    return SPQR_OK;
}

static spqr_status validate(spqr_container *c, unsigned flags) {
    const char *fn = c->name;
    const uint8_t *b = c->base;
    size_t size = c->size;

    if (size == 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: empty file (not a .spqr file)", fn);
    size_t m = size < 8 ? size : 8;
    if (memcmp(b, k_magic, m) != 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: not a .spqr file (bad magic)", fn);
    if (size >= 12) {
        unsigned maj = rd16(b + H_VMAJOR), min = rd16(b + H_VMINOR);
        c->vmajor = (int)maj;
        c->vminor = (int)min;
        if (maj > SPQR_CONTAINER_VERSION_MAJOR)
            return spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: written by a newer spqr (format v%u); this build reads up to v%d", fn,
                             maj, SPQR_CONTAINER_VERSION_MAJOR);
        if (maj == 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: invalid format version %u.%u", fn, maj, min);
    }
    if (size < SPQR_CONTAINER_HEADER_SIZE)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: truncated: %zu bytes, the header alone is %d", fn, size,
                         SPQR_CONTAINER_HEADER_SIZE);
    uint32_t hsize = rd32(b + H_HSIZE);
    if (hsize != SPQR_CONTAINER_HEADER_SIZE)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: header size %" PRIu32 " (format v1 uses %d)", fn, hsize,
                         SPQR_CONTAINER_HEADER_SIZE);
    uint64_t fsize = rd64(b + H_FILESIZE);
    if (fsize > size)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: truncated: file has %zu bytes, header says %" PRIu64, fn, size, fsize);
    if (fsize < size)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: file has %zu bytes but header says %" PRIu64 " (trailing data)", fn, size,
                         fsize);

    uint64_t data_off = rd64(b + H_DATAOFF), data_size = rd64(b + H_DATASIZE);
    uint64_t dir_off = rd64(b + H_DIROFF), dir_size = rd64(b + H_DIRSIZE);
    uint64_t count = rd64(b + H_COUNT);
    uint64_t meta_off = rd64(b + H_METAOFF), meta_size = rd64(b + H_METASIZE);

    if (data_off < SPQR_CONTAINER_HEADER_SIZE || data_off % SPQR_CONTAINER_ALIGN != 0)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: data section offset %" PRIu64 " is invalid (must be >= %d and %d-byte aligned)",
                         fn, data_off, SPQR_CONTAINER_HEADER_SIZE, SPQR_CONTAINER_ALIGN);
    static const char *const sec_name[3] = {"data section", "directory", "metadata"};
    const uint64_t sec_off[3] = {data_off, dir_off, meta_off}, sec_len[3] = {data_size, dir_size, meta_size};
    for (int s = 0; s < 3; s++) {
        if (!in_range(sec_off[s], sec_len[s], size))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: %s extends past the end of the file (offset %" PRIu64 " + %" PRIu64 " > %zu)",
                             fn, sec_name[s], sec_off[s], sec_len[s], size);
        if (overlaps(sec_off[s], sec_len[s], 0, SPQR_CONTAINER_HEADER_SIZE))
            return spqr_fail(SPQR_ERR_FORMAT, "%s: %s (offset %" PRIu64 ") overlaps the header", fn, sec_name[s], sec_off[s]);
        for (int t = 0; t < s; t++)
            if (overlaps(sec_off[s], sec_len[s], sec_off[t], sec_len[t]))
                return spqr_fail(SPQR_ERR_FORMAT, "%s: %s (offset %" PRIu64 " + %" PRIu64 ") overlaps the %s", fn, sec_name[s],
                                 sec_off[s], sec_len[s], sec_name[t]);
    }
    if (count > dir_size / MIN_RECORD_SIZE)
        return spqr_fail(SPQR_ERR_FORMAT, "%s: a directory of %" PRIu64 " bytes cannot hold %" PRIu64 " tensors", fn, dir_size,
                         count);

    spqr_status st = parse_directory(c, dir_off, dir_size, count, data_off, data_size);
    if (st != SPQR_OK) return st;

    c->meta_len = (size_t)meta_size;
    c->meta = malloc(c->meta_len + 1);
    if (!c->meta) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory reading the metadata", fn);
    memcpy(c->meta, b + meta_off, c->meta_len);
    c->meta[c->meta_len] = 0;
    char why[160];
    if (!metadata_check(c->meta, c->meta_len, why, sizeof why)) return spqr_fail(SPQR_ERR_FORMAT, "%s: %s", fn, why);

    if (!(flags & SPQR_CONTAINER_NO_HEADER_CHECKSUM)) {
        XXH3_state_t *hs = XXH3_createState();
        if (!hs) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", fn);
        XXH3_64bits_reset(hs);
        XXH3_64bits_update(hs, b, H_CHECKSUM);
        XXH3_64bits_update(hs, b + dir_off, (size_t)dir_size);
        XXH3_64bits_update(hs, b + meta_off, (size_t)meta_size);
        uint64_t got = XXH3_64bits_digest(hs), want = rd64(b + H_CHECKSUM);
        XXH3_freeState(hs);
        if (got != want)
            return spqr_fail(SPQR_ERR_CHECKSUM,
                             "%s: header checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                             "): the header, directory or metadata is corrupt",
                             fn, want, got);
    }
    return SPQR_OK;
}

spqr_status spqr_container_open_mem(const void *data, size_t size, const char *name, unsigned flags,
                                    spqr_container **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_container_open_mem: out is NULL");
    *out = NULL;
    if (!name) name = "<memory>";
    if (!data && size) return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: data is NULL", name);
    spqr_container *c = calloc(1, sizeof *c);
    if (!c) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", name);
    c->name = strdup(name);
    if (!c->name) {
        free(c);
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", name);
    }
    c->base = data;
    c->size = size;
    spqr_status st = validate(c, flags);
    if (st != SPQR_OK) {
        spqr_container_close(c);
        return st;
    }
    *out = c;
    return SPQR_OK;
}

spqr_status spqr_container_open(const char *path, spqr_container **out) {
    if (!out || !path) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_container_open: NULL argument");
    *out = NULL;
    spqr_mmap m;
    spqr_status st = spqr_mmap_open(path, &m);
    if (st != SPQR_OK) return st;
    spqr_container *c = NULL;
    st = spqr_container_open_mem(m.data, m.size, path, 0, &c);
    if (st != SPQR_OK) {
        spqr_mmap_close(&m);
        return st;
    }
    c->map = m;
    c->mapped = true;
    *out = c;
    return SPQR_OK;
}

spqr_status spqr_container_verify(const spqr_container *c, char *bad_name, size_t n) {
    if (!c) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_container_verify: NULL container");
    if (bad_name && n) bad_name[0] = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < c->n; i++) total += c->ents[i].nbytes; /* <= file size */
    size_t first_bad = c->n;
    long nn = (long)c->n;
#pragma omp parallel for schedule(dynamic, 1) reduction(min : first_bad) if (total > ((uint64_t)64 << 20))
    for (long i = 0; i < nn; i++) {
        const centry *e = &c->ents[i];
        if (hash_bytes(c->base + e->offset, (size_t)e->nbytes) != e->checksum && (size_t)i < first_bad)
            first_bad = (size_t)i;
    }
    if (first_bad == c->n) return SPQR_OK;
    const centry *e = &c->ents[first_bad];
    if (bad_name && n) {
        size_t k = e->name_len < n - 1 ? e->name_len : n - 1;
        memcpy(bad_name, e->name, k);
        bad_name[k] = 0;
    }
    return spqr_fail(SPQR_ERR_CHECKSUM,
                     "%s: tensor '%s' data checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64 "): data is corrupt",
                     c->name, e->name, e->checksum, hash_bytes(c->base + e->offset, (size_t)e->nbytes));
}

const char *spqr_container_metadata(const spqr_container *c) { return c->meta; }
size_t spqr_container_count(const spqr_container *c) { return c->n; }
uint64_t spqr_container_file_size(const spqr_container *c) { return c->size; }
const char *spqr_container_path(const spqr_container *c) { return c->name; }

void spqr_container_version(const spqr_container *c, int *major, int *minor) {
    if (major) *major = c->vmajor;
    if (minor) *minor = c->vminor;
}

static void fill_tensor(const spqr_container *c, const centry *e, spqr_ctensor *out) {
    memset(out, 0, sizeof *out);
    out->name = e->name;
    out->dtype = e->dtype;
    out->ndim = e->ndim;
    memcpy(out->dims, e->dims, sizeof out->dims);
    out->data = c->base ? c->base + e->offset : NULL;
    out->nbytes = (size_t)e->nbytes;
    out->checksum = e->checksum;
}

spqr_status spqr_container_tensor(const spqr_container *c, size_t i, spqr_ctensor *out) {
    if (!c || !out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_container_tensor: NULL argument");
    if (i >= c->n)
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor index %zu out of range (%zu tensors)", c->name, i, c->n);
    fill_tensor(c, &c->ents[i], out);
    return SPQR_OK;
}

long spqr_container_index(const spqr_container *c, const char *name) {
    if (!c || !name) return -1;
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(c->by_name[mid]->name, name);
        if (r == 0) return (long)(c->by_name[mid] - c->ents);
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

spqr_status spqr_container_find(const spqr_container *c, const char *name, spqr_ctensor *out) {
    if (!c || !name || !out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_container_find: NULL argument");
    long i = spqr_container_index(c, name);
    if (i < 0) return spqr_fail(SPQR_ERR_FORMAT, "%s: no tensor named '%s'", c->name, name);
    fill_tensor(c, &c->ents[i], out);
    return SPQR_OK;
}

/* ---- writer ----------------------------------------------------------------- */

typedef struct wentry {
    char *name;
    uint32_t name_len;
    spqr_dtype dtype;
    int ndim;
    uint64_t dims[SPQR_CONTAINER_MAX_NDIM];
    uint64_t offset, nbytes, checksum;
} wentry;

struct spqr_cwriter {
    char *final_path;
    char *tmp_path;
    int fd;           /* -1 once closed */
    bool tmp_exists;
    uint64_t pos;     /* current end of file */
    wentry *ents;
    size_t n, cap;
    uint32_t *slots;  /* open-addressing name set: entry index + 1, 0 = empty */
    size_t nslots;    /* power of two */
    char *meta;
    spqr_status failed; /* sticky */
    char failmsg[512];
};

const char *spqr_cwriter_temp_path(const spqr_cwriter *w) { return w ? w->tmp_path : NULL; }

static void writer_discard(spqr_cwriter *w) {
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->tmp_exists) {
        unlink(w->tmp_path);
        w->tmp_exists = false;
    }
}

static void writer_free(spqr_cwriter *w) {
    for (size_t i = 0; i < w->n; i++) free(w->ents[i].name);
    free(w->ents);
    free(w->slots);
    free(w->meta);
    free(w->tmp_path);
    free(w->final_path);
    free(w);
}

/* Record a sticky failure (the message is already in spqr_last_error()),
 * remove the temporary file, and return st. */
static spqr_status writer_fail(spqr_cwriter *w, spqr_status st) {
    w->failed = st;
    snprintf(w->failmsg, sizeof w->failmsg, "%s", spqr_last_error());
    writer_discard(w);
    return st;
}

static bool write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t k = write(fd, p, chunk);
        if (k < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (k == 0) {
            errno = EIO;
            return false;
        }
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static spqr_status writer_write(spqr_cwriter *w, const void *buf, size_t n, const char *what) {
    if (!write_all(w->fd, buf, n))
        return writer_fail(w, spqr_fail(SPQR_ERR_IO, "%s: writing %s to %s failed: %s", w->final_path, what, w->tmp_path,
                                        strerror(errno)));
    w->pos += n;
    return SPQR_OK;
}

static spqr_status writer_pad(spqr_cwriter *w) {
    static const uint8_t zeros[SPQR_CONTAINER_ALIGN];
    size_t pad = (size_t)((SPQR_CONTAINER_ALIGN - w->pos % SPQR_CONTAINER_ALIGN) % SPQR_CONTAINER_ALIGN);
    return pad ? writer_write(w, zeros, pad, "padding") : SPQR_OK;
}

spqr_status spqr_cwriter_open(const char *final_path, spqr_cwriter **out) {
    if (!out) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cwriter_open: out is NULL");
    *out = NULL;
    if (!final_path || !*final_path) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cwriter_open: empty output path");
    spqr_cwriter *w = calloc(1, sizeof *w);
    if (!w) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", final_path);
    w->fd = -1;
    size_t len = strlen(final_path);
    w->final_path = strdup(final_path);
    w->tmp_path = malloc(len + sizeof ".tmp.XXXXXX");
    if (!w->final_path || !w->tmp_path) {
        writer_free(w);
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", final_path);
    }
    memcpy(w->tmp_path, final_path, len);
    memcpy(w->tmp_path + len, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    w->fd = mkstemp(w->tmp_path);
    if (w->fd < 0) {
        spqr_status st = spqr_fail(SPQR_ERR_IO, "%s: cannot create temporary file %s: %s", final_path, w->tmp_path,
                                   strerror(errno));
        writer_free(w);
        return st;
    }
    w->tmp_exists = true;
    /* placeholder header (zero magic: never a valid file until finish) */
    uint8_t zeros[SPQR_CONTAINER_HEADER_SIZE] = {0};
    spqr_status st = writer_write(w, zeros, sizeof zeros, "the header");
    if (st != SPQR_OK) {
        writer_free(w);
        return st;
    }
    *out = w;
    return SPQR_OK;
}

static uint64_t name_hash(const char *s, size_t n) { return XXH3_64bits(s, n); }

/* true if name is already in the set */
static bool writer_has_name(const spqr_cwriter *w, const char *name, size_t len) {
    if (!w->nslots) return false;
    size_t mask = w->nslots - 1;
    for (size_t h = (size_t)name_hash(name, len) & mask;; h = (h + 1) & mask) {
        uint32_t s = w->slots[h];
        if (!s) return false;
        const wentry *e = &w->ents[s - 1];
        if (e->name_len == len && memcmp(e->name, name, len) == 0) return true;
    }
}

static void slots_insert(uint32_t *slots, size_t nslots, const wentry *e, uint32_t val) {
    size_t mask = nslots - 1;
    size_t h = (size_t)name_hash(e->name, e->name_len) & mask;
    while (slots[h]) h = (h + 1) & mask;
    slots[h] = val;
}

/* make room for one more entry and its slot */
static bool writer_grow(spqr_cwriter *w) {
    if (w->n == w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 64;
        if (nc > UINT32_MAX - 1) return false;
        wentry *ne = spqr_malloc_array(nc, sizeof *ne);
        if (!ne) return false;
        if (w->n) memcpy(ne, w->ents, w->n * sizeof *ne);
        free(w->ents);
        w->ents = ne;
        w->cap = nc;
    }
    if ((w->n + 1) * 2 > w->nslots) {
        size_t ns = w->nslots ? w->nslots * 2 : 128;
        uint32_t *sl = spqr_calloc_array(ns, sizeof *sl);
        if (!sl) return false;
        for (size_t i = 0; i < w->n; i++) slots_insert(sl, ns, &w->ents[i], (uint32_t)(i + 1));
        free(w->slots);
        w->slots = sl;
        w->nslots = ns;
    }
    return true;
}

static spqr_status writer_sticky(const spqr_cwriter *w) {
    return spqr_fail(w->failed, "%s: not written because of an earlier error: %s", w->final_path, w->failmsg);
}

spqr_status spqr_cwriter_add(spqr_cwriter *w, const char *name, spqr_dtype dt, int ndim, const uint64_t *dims,
                             const void *data, size_t nbytes) {
    if (!w) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cwriter_add: NULL writer");
    if (w->failed) return writer_sticky(w);
    const char *fp = w->final_path;
    if (!name) return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor name is NULL", fp));
    size_t len = strlen(name);
    if (len == 0 || len > SPQR_CONTAINER_MAX_NAME)
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor name of %zu bytes (must be 1..%d)", fp, len,
                                        SPQR_CONTAINER_MAX_NAME));
    if (utf8_check((const uint8_t *)name, len) != len)
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor name '%s' is not valid UTF-8", fp, name));
    if ((int)dt < 0 || dt >= SPQR_DT_COUNT)
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor '%s': invalid dtype %d", fp, name, (int)dt));
    if (ndim < 0 || ndim > SPQR_CONTAINER_MAX_NDIM || (ndim > 0 && !dims))
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor '%s': invalid ndim %d (0..%d, dims required)", fp,
                                        name, ndim, SPQR_CONTAINER_MAX_NDIM));
    char shape[256];
    format_shape(shape, sizeof shape, ndim, dims);
    uint64_t want;
    if (!shape_bytes(ndim, dims, spqr_dtype_size(dt), &want))
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor '%s': shape %s overflows", fp, name, shape));
    if (want != (uint64_t)nbytes)
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG,
                                        "%s: tensor '%s': %zu bytes given but shape %s of %s needs %" PRIu64, fp, name,
                                        nbytes, shape, spqr_dtype_name(dt), want));
    if (nbytes && !data)
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: tensor '%s': data is NULL", fp, name));
    if (writer_has_name(w, name, len))
        return writer_fail(w, spqr_fail(SPQR_ERR_INVALID_ARG, "%s: duplicate tensor name '%s'", fp, name));
    if (!writer_grow(w)) return writer_fail(w, spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", fp));
    char *nm = strdup(name);
    if (!nm) return writer_fail(w, spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", fp));

    spqr_status st = writer_pad(w);
    if (st != SPQR_OK) {
        free(nm);
        return st;
    }
    wentry e;
    memset(&e, 0, sizeof e);
    e.name = nm;
    e.name_len = (uint32_t)len;
    e.dtype = dt;
    e.ndim = ndim;
    for (int i = 0; i < ndim; i++) e.dims[i] = dims[i];
    e.offset = w->pos;
    e.nbytes = nbytes;
    e.checksum = hash_bytes(data, nbytes);
    if (nbytes) {
        char what[SPQR_CONTAINER_MAX_NAME + 16];
        snprintf(what, sizeof what, "tensor '%s'", name);
        st = writer_write(w, data, nbytes, what);
        if (st != SPQR_OK) {
            free(nm);
            return st;
        }
    }
    w->ents[w->n] = e;
    slots_insert(w->slots, w->nslots, &w->ents[w->n], (uint32_t)(w->n + 1));
    w->n++;
    return SPQR_OK;
}

spqr_status spqr_cwriter_set_metadata(spqr_cwriter *w, const char *json) {
    if (!w || !json) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cwriter_set_metadata: NULL argument");
    char why[160];
    if (!metadata_check(json, strlen(json), why, sizeof why))
        return spqr_fail(SPQR_ERR_INVALID_ARG, "%s: %s", w->final_path, why);
    char *copy = strdup(json);
    if (!copy) return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", w->final_path);
    free(w->meta);
    w->meta = copy;
    return SPQR_OK;
}

void spqr_cwriter_abort(spqr_cwriter *w) {
    if (!w) return;
    writer_discard(w);
    writer_free(w);
}

/* Best effort: make the rename durable. Errors are ignored (some file
 * systems do not support fsync on directories). */
static void fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

static spqr_status writer_finish(spqr_cwriter *w) {
    const char *fp = w->final_path;
    spqr_status st = writer_pad(w);
    if (st != SPQR_OK) return st;
    const uint64_t data_off = SPQR_CONTAINER_HEADER_SIZE, data_size = w->pos - data_off;

    /* directory */
    size_t dir_size = 0;
    for (size_t i = 0; i < w->n; i++)
        dir_size += 4 + (size_t)w->ents[i].name_len + 8 + 8 * (size_t)w->ents[i].ndim + 24;
    uint8_t *dir = malloc(dir_size ? dir_size : 1);
    if (!dir) return writer_fail(w, spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", fp));
    uint8_t *p = dir;
    for (size_t i = 0; i < w->n; i++) {
        const wentry *e = &w->ents[i];
        wr32(p, e->name_len);
        memcpy(p + 4, e->name, e->name_len);
        p += 4 + e->name_len;
        wr32(p, (uint32_t)e->dtype);
        wr32(p + 4, (uint32_t)e->ndim);
        p += 8;
        for (int k = 0; k < e->ndim; k++, p += 8) wr64(p, e->dims[k]);
        wr64(p, e->offset);
        wr64(p + 8, e->nbytes);
        wr64(p + 16, e->checksum);
        p += 24;
    }
    const uint64_t dir_off = w->pos;
    st = writer_write(w, dir, dir_size, "the directory");
    if (st != SPQR_OK) {
        free(dir);
        return st;
    }

    /* metadata */
    const char *meta = w->meta ? w->meta : "{}";
    const size_t meta_size = strlen(meta);
    const uint64_t meta_off = w->pos;
    st = writer_write(w, meta, meta_size, "the metadata");
    if (st != SPQR_OK) {
        free(dir);
        return st;
    }

    /* header */
    uint8_t h[SPQR_CONTAINER_HEADER_SIZE];
    memset(h, 0, sizeof h);
    memcpy(h + H_MAGIC, k_magic, 8);
    wr16(h + H_VMAJOR, SPQR_CONTAINER_VERSION_MAJOR);
    wr16(h + H_VMINOR, SPQR_CONTAINER_VERSION_MINOR);
    wr32(h + H_HSIZE, SPQR_CONTAINER_HEADER_SIZE);
    wr64(h + H_FILESIZE, w->pos);
    wr64(h + H_DATAOFF, data_off);
    wr64(h + H_DATASIZE, data_size);
    wr64(h + H_DIROFF, dir_off);
    wr64(h + H_DIRSIZE, dir_size);
    wr64(h + H_COUNT, w->n);
    wr64(h + H_METAOFF, meta_off);
    wr64(h + H_METASIZE, meta_size);
    XXH3_state_t *hs = XXH3_createState();
    if (!hs) {
        free(dir);
        return writer_fail(w, spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", fp));
    }
    XXH3_64bits_reset(hs);
    XXH3_64bits_update(hs, h, H_CHECKSUM);
    XXH3_64bits_update(hs, dir_size ? dir : (const uint8_t *)"", dir_size);
    XXH3_64bits_update(hs, meta, meta_size);
    wr64(h + H_CHECKSUM, XXH3_64bits_digest(hs));
    XXH3_freeState(hs);
    free(dir);

    ssize_t k;
    do {
        k = pwrite(w->fd, h, sizeof h, 0);
    } while (k < 0 && errno == EINTR);
    if (k != (ssize_t)sizeof h)
        return writer_fail(w, spqr_fail(SPQR_ERR_IO, "%s: writing the header to %s failed: %s", fp, w->tmp_path,
                                        k < 0 ? strerror(errno) : "short write"));
    (void)fchmod(w->fd, 0644); /* mkstemp creates 0600 */
    if (fsync(w->fd) != 0)
        return writer_fail(w, spqr_fail(SPQR_ERR_IO, "%s: fsync of %s failed: %s", fp, w->tmp_path, strerror(errno)));
    int rc = close(w->fd);
    w->fd = -1;
    if (rc != 0)
        return writer_fail(w, spqr_fail(SPQR_ERR_IO, "%s: closing %s failed: %s", fp, w->tmp_path, strerror(errno)));
    if (rename(w->tmp_path, fp) != 0)
        return writer_fail(w, spqr_fail(SPQR_ERR_IO, "%s: cannot rename %s into place: %s", fp, w->tmp_path,
                                        strerror(errno)));
    w->tmp_exists = false;
    fsync_parent_dir(fp);
    return SPQR_OK;
}

spqr_status spqr_cwriter_finish(spqr_cwriter *w) {
    if (!w) return spqr_fail(SPQR_ERR_INVALID_ARG, "spqr_cwriter_finish: NULL writer");
    spqr_status st = w->failed ? writer_sticky(w) : writer_finish(w);
    writer_discard(w);
    writer_free(w);
    return st;
}
