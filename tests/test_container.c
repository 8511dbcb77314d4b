/* test_container.c - the .spqr container: round trips, corrupted files,
 * writer failure paths. */
#include "testutil.h"

#include "io/container.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- helpers --------------------------------------------------------------- */

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* header field offsets, as docs/FORMAT.md specifies them */
enum { F_VMAJOR = 8, F_HSIZE = 12, F_FILESIZE = 16, F_DATAOFF = 24, F_DATASIZE = 32, F_DIROFF = 40, F_DIRSIZE = 48,
       F_COUNT = 56, F_METAOFF = 64, F_METASIZE = 72, F_CHECKSUM = 120 };

/* Recompute the header checksum from the spec (independent of the library).
 * Sections that do not fit in the n bytes leave the checksum alone. */
static void fix_checksum(uint8_t *b, size_t n) {
    uint64_t d = get64(b + F_DIROFF), ds = get64(b + F_DIRSIZE), m = get64(b + F_METAOFF), ms = get64(b + F_METASIZE);
    if (d > n || ds > n - d || m > n || ms > n - m) return;
    XXH3_state_t *s = XXH3_createState();
    XXH3_64bits_reset(s);
    XXH3_64bits_update(s, b, F_CHECKSUM);
    XXH3_64bits_update(s, b + get64(b + F_DIROFF), get64(b + F_DIRSIZE));
    XXH3_64bits_update(s, b + get64(b + F_METAOFF), get64(b + F_METASIZE));
    put64(b + F_CHECKSUM, XXH3_64bits_digest(s));
    XXH3_freeState(s);
}

/* Byte positions of the fields of directory record i. */
typedef struct recpos {
    size_t name_len, name, dtype, ndim, dims, offset, nbytes, checksum;
} recpos;

static recpos rec_at(const uint8_t *b, size_t idx) {
    size_t p = (size_t)get64(b + F_DIROFF);
    recpos r;
    for (size_t i = 0;; i++) {
        r.name_len = p;
        r.name = p + 4;
        r.dtype = r.name + get32(b + p);
        r.ndim = r.dtype + 4;
        r.dims = r.ndim + 4;
        r.offset = r.dims + 8 * (size_t)get32(b + r.ndim);
        r.nbytes = r.offset + 8;
        r.checksum = r.nbytes + 8;
        if (i == idx) return r;
        p = r.checksum + 8;
    }
}

static char *tpath(const char *sub, const char *name) {
    static char buf[8][1024];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 1024, "%s%s%s%s%s", tu_tmpdir(), *sub ? "/" : "", sub, *name ? "/" : "", name);
    return p;
}

static const char *mkdir_sub(const char *sub) {
    const char *d = tpath(sub, "");
    mkdir(d, 0755);
    return d;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void expect_error(spqr_status got, spqr_status want, const char *fname, const char *needle) {
    const char *msg = spqr_last_error();
    if (got != want || !strstr(msg, fname) || (needle && !strstr(msg, needle)))
        print_error("status %d (want %d), message: %s\n  (want the file name '%s' and '%s')\n", (int)got, (int)want, msg,
                    fname, needle ? needle : "");
    assert_int_equal(got, want);
    assert_non_null(strstr(msg, fname));
    if (needle) assert_non_null(strstr(msg, needle));
    assert_null(strchr(msg, '\n'));
}

/* ---- the sample file --------------------------------------------------------- */

typedef struct sample {
    const char *name;
    spqr_dtype dt;
    int ndim;
    uint64_t dims[8];
    size_t nbytes;
    uint8_t *data;
} sample;

static sample g_s[] = {
    {"tok_embeddings.weight", SPQR_DT_F16, 2, {7, 5}, 0, NULL},
    {"norm.weight", SPQR_DT_F32, 1, {13}, 0, NULL},
    {"blk.0.wq.codes", SPQR_DT_U8, 2, {3, 11}, 0, NULL},
    {"blk.0.wq.perm", SPQR_DT_I32, 1, {11}, 0, NULL},
    {"blk.0.wq.stats", SPQR_DT_U16, 3, {2, 3, 5}, 0, NULL},
    {"blk.0.wq.outliers", SPQR_DT_U32, 1, {0}, 0, NULL},
    {"bf", SPQR_DT_BF16, 4, {1, 1, 1, 3}, 0, NULL},
    {"scalar", SPQR_DT_F32, 0, {0}, 0, NULL},
    {"max.rank", SPQR_DT_U8, 8, {1, 2, 1, 3, 1, 1, 2, 1}, 0, NULL},
    {"blk.0.wq.big", SPQR_DT_U8, 1, {4099}, 0, NULL},
};
#define NS (sizeof g_s / sizeof g_s[0])
static const char *g_meta = "{\"model\":{\"dim\":5,\"n_layers\":1},\"name\":\"t\xc3\xabst\",\"tokenizer\":\"sentencepiece\"}";

static void sample_init(void) {
    if (g_s[0].data) return;
    tu_seed(42);
    for (size_t i = 0; i < NS; i++) {
        size_t n = spqr_dtype_size(g_s[i].dt);
        for (int k = 0; k < g_s[i].ndim; k++) n *= g_s[i].dims[k];
        g_s[i].nbytes = n;
        g_s[i].data = malloc(n ? n : 1);
        for (size_t k = 0; k < n; k++) g_s[i].data[k] = (uint8_t)tu_rand_u64();
    }
}

static void write_sample(const char *path) {
    sample_init();
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
    for (size_t i = 0; i < NS; i++) {
        if (i == 3) assert_int_equal(spqr_cwriter_set_metadata(w, "{\"early\":true}"), SPQR_OK);
        assert_int_equal(spqr_cwriter_add(w, g_s[i].name, g_s[i].dt, g_s[i].ndim, g_s[i].dims,
                                          g_s[i].nbytes ? g_s[i].data : NULL, g_s[i].nbytes),
                         SPQR_OK);
    }
    assert_int_equal(spqr_cwriter_set_metadata(w, g_meta), SPQR_OK); /* replaces */
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
}

static uint8_t *load(const char *path, size_t *n) {
    char *d = NULL;
    assert_int_equal(spqr_read_file(path, &d, n), SPQR_OK);
    return (uint8_t *)d;
}

/* Write buf (with one modification applied by the caller) to a file and
 * return its path. */
static const char *save(const char *name, const uint8_t *b, size_t n) {
    const char *p = tpath("corrupt", name);
    mkdir_sub("corrupt");
    assert_int_equal(tu_write_file(p, b, n), 0);
    return p;
}

static uint8_t *g_img;
static size_t g_img_n;

static const uint8_t *image(size_t *n) {
    if (!g_img) {
        const char *p = tpath("", "sample.spqr");
        write_sample(p);
        g_img = load(p, &g_img_n);
    }
    *n = g_img_n;
    return g_img;
}

static uint8_t *image_copy(size_t *n) {
    const uint8_t *b = image(n);
    uint8_t *c = malloc(*n);
    memcpy(c, b, *n);
    return c;
}

/* ---- tests ----------------------------------------------------------------- */

static void test_round_trip(void **state) {
    (void)state;
    const char *dir = mkdir_sub("rt");
    const char *path = tpath("rt", "model.spqr");
    write_sample(path);
    assert_int_equal(count_entries(dir), 1); /* no temporary left */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);

    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
    assert_int_equal(spqr_container_count(c), NS);
    assert_int_equal(spqr_container_file_size(c), (uint64_t)st.st_size);
    assert_string_equal(spqr_container_metadata(c), g_meta);
    int maj = 0, min = -1;
    spqr_container_version(c, &maj, &min);
    assert_int_equal(maj, 1);
    assert_int_equal(min, 0);
    for (size_t i = 0; i < NS; i++) {
        spqr_ctensor t, f;
        assert_int_equal(spqr_container_tensor(c, i, &t), SPQR_OK);
        assert_string_equal(t.name, g_s[i].name);
        assert_int_equal(t.dtype, g_s[i].dt);
        assert_int_equal(t.ndim, g_s[i].ndim);
        for (int k = 0; k < 8; k++) assert_int_equal(t.dims[k], k < t.ndim ? g_s[i].dims[k] : 0);
        assert_int_equal(t.nbytes, g_s[i].nbytes);
        assert_int_equal((uintptr_t)t.data % 64, 0);
        if (g_s[i].nbytes) assert_memory_equal(t.data, g_s[i].data, g_s[i].nbytes);
        assert_int_equal(t.checksum, XXH3_64bits(g_s[i].nbytes ? (const void *)g_s[i].data : "", g_s[i].nbytes));
        assert_int_equal(spqr_container_find(c, g_s[i].name, &f), SPQR_OK);
        assert_memory_equal(&t, &f, sizeof t);
        assert_int_equal(spqr_container_index(c, g_s[i].name), (long)i);
    }
    spqr_ctensor t;
    assert_int_equal(spqr_container_tensor(c, NS, &t), SPQR_ERR_INVALID_ARG);
    assert_int_equal(spqr_container_index(c, "nope"), -1);
    assert_int_equal(spqr_container_index(c, "blk.0.wq"), -1);
    expect_error(spqr_container_find(c, "nope", &t), SPQR_ERR_FORMAT, "model.spqr", "no tensor named 'nope'");
    char bad[64] = "x";
    assert_int_equal(spqr_container_verify(c, bad, sizeof bad), SPQR_OK);
    assert_string_equal(bad, "");
    spqr_container_close(c);
    spqr_container_close(NULL);
}

static void test_empty_container(void **state) {
    (void)state;
    const char *path = tpath("", "empty.spqr");
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
    assert_int_equal(spqr_container_count(c), 0);
    assert_string_equal(spqr_container_metadata(c), "{}");
    assert_int_equal(spqr_container_verify(c, NULL, 0), SPQR_OK);
    spqr_container_close(c);
}

/* Large enough to take the multi-threaded verify path; the corruption is in
 * the second of two large tensors and one later small tensor: the first bad
 * one in directory order must be reported. */
static void test_large_verify(void **state) {
    (void)state;
    const char *path = tpath("", "large.spqr");
    size_t n = (size_t)40 << 20;
    uint8_t *buf = malloc(n + 1);
    for (size_t i = 0; i < n + 1; i++) buf[i] = (uint8_t)(i * 2654435761u >> 13);
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(path, &w), SPQR_OK);
    uint64_t d1[1] = {n + 1}, d2[2] = {n / 4, 2}, d3[1] = {3};
    assert_int_equal(spqr_cwriter_add(w, "a", SPQR_DT_U8, 1, d1, buf, n + 1), SPQR_OK);
    assert_int_equal(spqr_cwriter_add(w, "b", SPQR_DT_F16, 2, d2, buf, n), SPQR_OK);
    assert_int_equal(spqr_cwriter_add(w, "c", SPQR_DT_U8, 1, d3, buf, 3), SPQR_OK);
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK);
    free(buf);

    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
    assert_int_equal(spqr_container_verify(c, NULL, 0), SPQR_OK);
    spqr_ctensor tb, tc;
    assert_int_equal(spqr_container_find(c, "b", &tb), SPQR_OK);
    assert_int_equal(spqr_container_find(c, "c", &tc), SPQR_OK);
    /* file offsets: the first tensor starts the data section, at byte 128 */
    spqr_ctensor ta;
    assert_int_equal(spqr_container_find(c, "a", &ta), SPQR_OK);
    uint64_t ob = (uint64_t)((const uint8_t *)tb.data - (const uint8_t *)ta.data) + 128;
    uint64_t oc = (uint64_t)((const uint8_t *)tc.data - (const uint8_t *)ta.data) + 128;
    spqr_container_close(c);

    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    const uint64_t at[2] = {ob + n - 7, oc + 1};
    for (int k = 0; k < 2; k++) {
        fseek(f, (long)at[k], SEEK_SET);
        int ch = fgetc(f);
        fseek(f, (long)at[k], SEEK_SET);
        fputc(ch ^ 0xff, f);
    }
    fclose(f);
    assert_int_equal(spqr_container_open(path, &c), SPQR_OK);
    char bad[8];
    expect_error(spqr_container_verify(c, bad, sizeof bad), SPQR_ERR_CHECKSUM, "large.spqr", "tensor 'b'");
    assert_string_equal(bad, "b");
    spqr_container_close(c);
}

static void test_truncated(void **state) {
    (void)state;
    size_t n;
    const uint8_t *b = image(&n);
    size_t dir_off = (size_t)get64(b + F_DIROFF), meta_off = (size_t)get64(b + F_METAOFF);
    const size_t cuts[] = {0, 1, 4, 7, 8, 11, 12, 100, 127, 128, 129, 200, dir_off, dir_off + 3, meta_off, meta_off + 1, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "trunc_%zu.spqr", cuts[i]);
        const char *p = save(name, b, cuts[i]);
        spqr_container *c = (spqr_container *)1;
        expect_error(spqr_container_open(p, &c), SPQR_ERR_FORMAT, name, cuts[i] == 0 ? "empty" : "truncated");
        assert_null(c);
    }
}

static void test_bad_magic_and_version(void **state) {
    (void)state;
    size_t n;
    uint8_t *b = image_copy(&n);
    spqr_container *c = NULL;
    b[1] = 'X';
    expect_error(spqr_container_open(save("magic.spqr", b, n), &c), SPQR_ERR_FORMAT, "magic.spqr", "not a .spqr file");
    const char *txt = "{\"not\": \"a container\"}";
    expect_error(spqr_container_open(save("text.spqr", (const uint8_t *)txt, strlen(txt)), &c), SPQR_ERR_FORMAT,
                 "text.spqr", "not a .spqr file");
    free(b);

    b = image_copy(&n);
    put16(b + F_VMAJOR, 2);
    expect_error(spqr_container_open(save("v2.spqr", b, n), &c), SPQR_ERR_UNSUPPORTED, "v2.spqr",
                 "written by a newer spqr (format v2); this build reads up to v1");
    put16(b + F_VMAJOR, 0);
    fix_checksum(b, n);
    expect_error(spqr_container_open(save("v0.spqr", b, n), &c), SPQR_ERR_FORMAT, "v0.spqr", "version 0");
    /* a newer minor version is readable */
    put16(b + F_VMAJOR, 1);
    put16(b + F_VMAJOR + 2, 7);
    fix_checksum(b, n);
    assert_int_equal(spqr_container_open(save("v1_7.spqr", b, n), &c), SPQR_OK);
    int maj, min;
    spqr_container_version(c, &maj, &min);
    assert_int_equal(min, 7);
    spqr_container_close(c);
    free(b);

    /* a file that does not exist */
    expect_error(spqr_container_open(tpath("", "missing.spqr"), &c), SPQR_ERR_IO, "missing.spqr", NULL);
}

static void test_checksums(void **state) {
    (void)state;
    size_t n;
    spqr_container *c = NULL;
    char bad[64];

    /* data byte: open succeeds (data not hashed at open), verify names the tensor */
    uint8_t *b = image_copy(&n);
    recpos r = rec_at(b, 4); /* blk.0.wq.stats */
    b[get64(b + r.offset) + 17] ^= 0x40;
    assert_int_equal(spqr_container_open(save("data_flip.spqr", b, n), &c), SPQR_OK);
    expect_error(spqr_container_verify(c, bad, sizeof bad), SPQR_ERR_CHECKSUM, "data_flip.spqr", "'blk.0.wq.stats'");
    assert_string_equal(bad, "blk.0.wq.stats");
    char small[5];
    assert_int_equal(spqr_container_verify(c, small, sizeof small), SPQR_ERR_CHECKSUM);
    assert_string_equal(small, "blk.");
    spqr_container_close(c);
    free(b);

    /* directory byte: a name character */
    b = image_copy(&n);
    r = rec_at(b, 2);
    b[r.name + 3] ^= 0x01;
    expect_error(spqr_container_open(save("dir_flip.spqr", b, n), &c), SPQR_ERR_CHECKSUM, "dir_flip.spqr",
                 "header checksum mismatch");
    free(b);
    /* directory byte: a stored data checksum */
    b = image_copy(&n);
    b[rec_at(b, 0).checksum] ^= 0x80;
    expect_error(spqr_container_open(save("dir_flip2.spqr", b, n), &c), SPQR_ERR_CHECKSUM, "dir_flip2.spqr",
                 "header checksum mismatch");
    free(b);
    /* metadata byte (still valid JSON) */
    b = image_copy(&n);
    b[get64(b + F_METAOFF) + 3] ^= 0x02;
    expect_error(spqr_container_open(save("meta_flip.spqr", b, n), &c), SPQR_ERR_CHECKSUM, "meta_flip.spqr",
                 "header checksum mismatch");
    free(b);
    /* the checksum field itself and a reserved header byte */
    b = image_copy(&n);
    b[F_CHECKSUM + 7] ^= 0x10;
    expect_error(spqr_container_open(save("sum_flip.spqr", b, n), &c), SPQR_ERR_CHECKSUM, "sum_flip.spqr", NULL);
    free(b);
    b = image_copy(&n);
    b[100] ^= 0x10;
    expect_error(spqr_container_open(save("rsv_flip.spqr", b, n), &c), SPQR_ERR_CHECKSUM, "rsv_flip.spqr", NULL);
    free(b);
}

/* Structural corruptions with a recomputed (valid) header checksum: what a
 * buggy or malicious writer could produce. */
typedef void (*mutator)(uint8_t *b);

static void m_offset_past_end(uint8_t *b) { put64(b + rec_at(b, 2).offset, (get64(b + F_FILESIZE) & ~(uint64_t)63) + 64 * 100); }
static void m_offset_near_max(uint8_t *b) { put64(b + rec_at(b, 2).offset, UINT64_MAX - 63); }
static void m_misaligned(uint8_t *b) { put64(b + rec_at(b, 1).offset, get64(b + rec_at(b, 1).offset) + 8); }
static void m_overlap(uint8_t *b) { put64(b + rec_at(b, 3).offset, get64(b + rec_at(b, 2).offset)); }
static void m_overlap_partial(uint8_t *b) { /* codes (33 bytes) straddles the end of big (4099 bytes) */
    put64(b + rec_at(b, 2).offset, get64(b + rec_at(b, NS - 1).offset) + 4096);
}
static void m_outside_data(uint8_t *b) { put64(b + rec_at(b, 2).offset, get64(b + F_DIROFF) & ~(uint64_t)63); }
static void m_in_header(uint8_t *b) { put64(b + rec_at(b, 2).offset, 64); }
static void m_nbytes(uint8_t *b) { put64(b + rec_at(b, 2).nbytes, get64(b + rec_at(b, 2).nbytes) + 1); }
static void m_dims_overflow(uint8_t *b) {
    recpos r = rec_at(b, 0);
    put64(b + r.dims, (uint64_t)1 << 40);
    put64(b + r.dims + 8, (uint64_t)1 << 40);
}
static void m_dims_overflow_dtype(uint8_t *b) { /* product fits, times 2 bytes does not */
    recpos r = rec_at(b, 0);
    put64(b + r.dims, (uint64_t)1 << 32);
    put64(b + r.dims + 8, (uint64_t)1 << 31);
}
static void m_dtype(uint8_t *b) { put32(b + rec_at(b, 1).dtype, 99); }
static void m_ndim(uint8_t *b) { put32(b + rec_at(b, NS - 1).ndim, 9); }
static void m_name_len0(uint8_t *b) { put32(b + rec_at(b, 1).name_len, 0); }
static void m_name_len_big(uint8_t *b) { put32(b + rec_at(b, 1).name_len, 0xffffffffu); }
static void m_name_nul(uint8_t *b) { b[rec_at(b, 1).name + 2] = 0; }
static void m_name_utf8(uint8_t *b) { b[rec_at(b, 1).name + 2] = 0xc0; }
static void m_dup_name(uint8_t *b) { /* "blk.0.wq.stats" -> "blk.0.wq.codes" */
    memcpy(b + rec_at(b, 4).name, b + rec_at(b, 2).name, 14);
}
static void m_count_more(uint8_t *b) { put64(b + F_COUNT, NS + 1); }
static void m_count_less(uint8_t *b) { put64(b + F_COUNT, NS - 1); }
static void m_count_huge(uint8_t *b) { put64(b + F_COUNT, UINT64_MAX); }
static void m_dir_past_end(uint8_t *b) { put64(b + F_DIRSIZE, get64(b + F_FILESIZE) - get64(b + F_DIROFF) + 1); }
static void m_dir_size_wrap(uint8_t *b) { put64(b + F_DIRSIZE, UINT64_MAX - 5); }
static void m_data_past_end(uint8_t *b) { put64(b + F_DATASIZE, UINT64_MAX); }
static void m_data_misaligned(uint8_t *b) { put64(b + F_DATAOFF, 130); }
static void m_dir_overlaps_data(uint8_t *b) { put64(b + F_DIROFF, get64(b + F_DIROFF) - 64); }
static void m_meta_in_header(uint8_t *b) { put64(b + F_METAOFF, 16); put64(b + F_METASIZE, 4); }
static void m_header_size(uint8_t *b) { put32(b + F_HSIZE, 256); }
static void m_file_size(uint8_t *b) { put64(b + F_FILESIZE, get64(b + F_FILESIZE) - 1); }
static void m_meta_json(uint8_t *b) { b[get64(b + F_METAOFF) + get64(b + F_METASIZE) - 1] = ' '; }
static void m_meta_array(uint8_t *b) {
    uint8_t *m = b + get64(b + F_METAOFF);
    memset(m, ' ', get64(b + F_METASIZE));
    m[0] = '[';
    m[get64(b + F_METASIZE) - 1] = ']';
}
static void m_meta_utf8(uint8_t *b) { /* the 2-byte e-umlaut becomes an overlong encoding */
    uint8_t *m = b + get64(b + F_METAOFF);
    uint8_t *u = memchr(m, 0xc3, get64(b + F_METASIZE));
    u[0] = 0xc1;
}
static void m_meta_nul(uint8_t *b) { b[get64(b + F_METAOFF) + 2] = 0; }
static void m_meta_empty(uint8_t *b) { put64(b + F_METASIZE, 0); }

static void test_structural(void **state) {
    (void)state;
    static const struct {
        const char *name;
        mutator fn;
        spqr_status st;
        const char *needle;
    } cases[] = {
        {"off_past_end", m_offset_past_end, SPQR_ERR_FORMAT, "tensor 'blk.0.wq.codes' extends past the end of the file (offset "},
        {"off_near_max", m_offset_near_max, SPQR_ERR_FORMAT, "extends past the end of the file"},
        {"misaligned", m_misaligned, SPQR_ERR_FORMAT, "not 64-byte aligned"},
        {"overlap", m_overlap, SPQR_ERR_FORMAT, "overlap"},
        {"overlap_partial", m_overlap_partial, SPQR_ERR_FORMAT, "overlap"},
        {"outside_data", m_outside_data, SPQR_ERR_FORMAT, "outside the data section"},
        {"in_header", m_in_header, SPQR_ERR_FORMAT, "outside the data section"},
        {"nbytes", m_nbytes, SPQR_ERR_FORMAT, "disagrees with shape [3, 11] of U8 (33 bytes)"},
        {"dims_overflow", m_dims_overflow, SPQR_ERR_FORMAT, "overflows"},
        {"dims_overflow_dtype", m_dims_overflow_dtype, SPQR_ERR_FORMAT, "overflows"},
        {"dtype", m_dtype, SPQR_ERR_FORMAT, "unknown dtype code 99"},
        {"ndim", m_ndim, SPQR_ERR_FORMAT, "ndim 9"},
        {"name_len0", m_name_len0, SPQR_ERR_FORMAT, "name length 0"},
        {"name_len_big", m_name_len_big, SPQR_ERR_FORMAT, "name length"},
        {"name_nul", m_name_nul, SPQR_ERR_FORMAT, "NUL"},
        {"name_utf8", m_name_utf8, SPQR_ERR_FORMAT, "UTF-8"},
        {"dup_name", m_dup_name, SPQR_ERR_FORMAT, "duplicate tensor name 'blk.0.wq.codes'"},
        {"count_more", m_count_more, SPQR_ERR_FORMAT, "truncated"},
        {"count_less", m_count_less, SPQR_ERR_FORMAT, "trailing bytes"},
        {"count_huge", m_count_huge, SPQR_ERR_FORMAT, "cannot hold"},
        {"dir_past_end", m_dir_past_end, SPQR_ERR_FORMAT, "directory extends past the end of the file"},
        {"dir_size_wrap", m_dir_size_wrap, SPQR_ERR_FORMAT, "extends past the end of the file"},
        {"data_past_end", m_data_past_end, SPQR_ERR_FORMAT, "data section extends past the end"},
        {"data_misaligned", m_data_misaligned, SPQR_ERR_FORMAT, "data section offset 130"},
        {"dir_overlaps_data", m_dir_overlaps_data, SPQR_ERR_FORMAT, "overlaps the data section"},
        {"meta_in_header", m_meta_in_header, SPQR_ERR_FORMAT, "overlaps the header"},
        {"header_size", m_header_size, SPQR_ERR_FORMAT, "header size 256"},
        {"file_size", m_file_size, SPQR_ERR_FORMAT, "trailing data"},
        {"meta_json", m_meta_json, SPQR_ERR_FORMAT, "not valid JSON"},
        {"meta_array", m_meta_array, SPQR_ERR_FORMAT, "not a JSON object"},
        {"meta_utf8", m_meta_utf8, SPQR_ERR_FORMAT, "not valid UTF-8"},
        {"meta_nul", m_meta_nul, SPQR_ERR_FORMAT, "NUL"},
        {"meta_empty", m_meta_empty, SPQR_ERR_FORMAT, "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        uint8_t *b = image_copy(&n);
        cases[i].fn(b);
        fix_checksum(b, n);
        char fname[64];
        snprintf(fname, sizeof fname, "%s.spqr", cases[i].name);
        spqr_container *c = (spqr_container *)1;
        print_message("  %-20s ", cases[i].name);
        spqr_status st = spqr_container_open(save(fname, b, n), &c);
        print_message("-> %s\n", spqr_last_error());
        expect_error(st, cases[i].st, fname, cases[i].needle);
        assert_null(c);
        free(b);
    }
}

/* Every single-byte change is caught by open() or verify(), except in the
 * padding between tensors (which nothing reads). Uses the in-memory entry. */
static void test_every_byte(void **state) {
    (void)state;
    size_t n;
    uint8_t *b = image_copy(&n);
    uint8_t *covered = calloc(n, 1); /* 1: part of a tensor, the header or a section */
    memset(covered, 1, 128);
    for (uint64_t k = get64(b + F_DIROFF); k < get64(b + F_DIROFF) + get64(b + F_DIRSIZE); k++) covered[k] = 1;
    for (uint64_t k = get64(b + F_METAOFF); k < get64(b + F_METAOFF) + get64(b + F_METASIZE); k++) covered[k] = 1;
    for (size_t i = 0; i < NS; i++) {
        recpos r = rec_at(b, i);
        for (uint64_t k = 0; k < get64(b + r.nbytes); k++) covered[get64(b + r.offset) + k] = 1;
    }
    size_t padding = 0;
    for (size_t pos = 0; pos < n; pos++) {
        for (int v = 0; v < 3; v++) {
            uint8_t old = b[pos];
            b[pos] = v == 0 ? (uint8_t)(old ^ 0x01) : v == 1 ? (uint8_t)(old ^ 0x80) : (uint8_t)~old;
            spqr_container *c = NULL;
            spqr_status st = spqr_container_open_mem(b, n, "mem.spqr", 0, &c);
            if (st == SPQR_OK) {
                st = spqr_container_verify(c, NULL, 0);
                spqr_container_close(c);
            }
            if (st == SPQR_OK) {
                if (covered[pos]) print_error("change at byte %zu went unnoticed\n", pos);
                assert_false(covered[pos]);
                padding++;
            } else {
                assert_non_null(strstr(spqr_last_error(), "mem.spqr"));
            }
            /* also without the header checksum (the fuzzer's mode): no crash */
            if (spqr_container_open_mem(b, n, "mem.spqr", SPQR_CONTAINER_NO_HEADER_CHECKSUM, &c) == SPQR_OK) {
                (void)spqr_container_verify(c, NULL, 0);
                spqr_container_close(c);
            }
            b[pos] = old;
        }
    }
    assert_true(padding > 0);
    free(covered);
    free(b);
}

/* ---- writer failure paths ------------------------------------------------------ */

static void test_writer_no_dir(void **state) {
    (void)state;
    spqr_cwriter *w = (spqr_cwriter *)1;
    const char *p = tpath("", "no/such/dir/out.spqr");
    expect_error(spqr_cwriter_open(p, &w), SPQR_ERR_IO, "no/such/dir/out.spqr", "No such file");
    assert_null(w);
    assert_false(spqr_file_exists(p));
}

static void test_writer_duplicate(void **state) {
    (void)state;
    const char *dir = mkdir_sub("dup");
    const char *p = tpath("dup", "out.spqr");
    uint8_t d[4] = {1, 2, 3, 4};
    uint64_t dims[1] = {4};
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(p, &w), SPQR_OK);
    assert_true(spqr_file_exists(spqr_cwriter_temp_path(w)));
    assert_int_equal(spqr_cwriter_add(w, "x", SPQR_DT_U8, 1, dims, d, 4), SPQR_OK);
    expect_error(spqr_cwriter_add(w, "x", SPQR_DT_U8, 1, dims, d, 4), SPQR_ERR_INVALID_ARG, "out.spqr",
                 "duplicate tensor name 'x'");
    /* the failure is sticky and the temporary is already gone */
    assert_int_equal(count_entries(dir), 0);
    expect_error(spqr_cwriter_add(w, "y", SPQR_DT_U8, 1, dims, d, 4), SPQR_ERR_INVALID_ARG, "out.spqr", "earlier error");
    expect_error(spqr_cwriter_finish(w), SPQR_ERR_INVALID_ARG, "out.spqr", "duplicate tensor name 'x'");
    assert_int_equal(count_entries(dir), 0);
}

static void test_writer_abort(void **state) {
    (void)state;
    const char *dir = mkdir_sub("abort");
    const char *p = tpath("abort", "out.spqr");
    uint16_t d[6] = {0};
    uint64_t dims[2] = {2, 3};
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(p, &w), SPQR_OK);
    assert_int_equal(spqr_cwriter_add(w, "x", SPQR_DT_F16, 2, dims, d, sizeof d), SPQR_OK);
    assert_int_equal(count_entries(dir), 1);
    spqr_cwriter_abort(w);
    assert_int_equal(count_entries(dir), 0);
    spqr_cwriter_abort(NULL);
}

static void test_writer_bad_args(void **state) {
    (void)state;
    const char *dir = mkdir_sub("args");
    const char *p = tpath("args", "out.spqr");
    /* an existing file at the final path survives a failed write */
    assert_int_equal(tu_write_file(p, "old", 3), 0);
    uint8_t d[64] = {0};
    uint64_t dims[9] = {2, 3, 1, 1, 1, 1, 1, 1, 1};
    uint64_t big[2] = {UINT64_MAX / 2, 3};
    char longname[SPQR_CONTAINER_MAX_NAME + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    static const struct {
        const char *name;
        int dt, ndim;
        int dims_kind; /* 0: dims, 1: big, 2: NULL */
        size_t nbytes;
        int null_data;
        const char *needle;
    } cases[] = {
        {"x", SPQR_DT_F32, 2, 0, 6 * 4 - 1, 0, "needs 24"},
        {"x", SPQR_DT_F32, 2, 0, 6 * 4 + 4, 0, "needs 24"},
        {"x", SPQR_DT_COUNT, 2, 0, 6, 0, "invalid dtype"},
        {"x", -1, 2, 0, 6, 0, "invalid dtype"},
        {"x", SPQR_DT_U8, 9, 0, 6, 0, "invalid ndim 9"},
        {"x", SPQR_DT_U8, -1, 0, 6, 0, "invalid ndim"},
        {"x", SPQR_DT_U8, 2, 2, 6, 0, "invalid ndim"},
        {"x", SPQR_DT_U16, 2, 1, 6, 0, "overflows"},
        {"x", SPQR_DT_U8, 2, 0, 6, 1, "data is NULL"},
        {"", SPQR_DT_U8, 2, 0, 6, 0, "name of 0 bytes"},
        {NULL, SPQR_DT_U8, 2, 0, 6, 0, "NULL"},
        {"bad\xff", SPQR_DT_U8, 2, 0, 6, 0, "UTF-8"},
        {"long", SPQR_DT_U8, 2, 0, 6, 0, "name of 1025 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        spqr_cwriter *w = NULL;
        assert_int_equal(spqr_cwriter_open(p, &w), SPQR_OK);
        const char *nm = cases[i].name && !strcmp(cases[i].name, "long") ? longname : cases[i].name;
        const uint64_t *dm = cases[i].dims_kind == 0 ? dims : cases[i].dims_kind == 1 ? big : NULL;
        expect_error(spqr_cwriter_add(w, nm, (spqr_dtype)cases[i].dt, cases[i].ndim, dm, cases[i].null_data ? NULL : d,
                                      cases[i].nbytes),
                     SPQR_ERR_INVALID_ARG, "out.spqr", cases[i].needle);
        assert_int_not_equal(spqr_cwriter_finish(w), SPQR_OK);
        assert_int_equal(count_entries(dir), 1);
        char *txt = NULL;
        size_t tn = 0;
        assert_int_equal(spqr_read_file(p, &txt, &tn), SPQR_OK);
        assert_string_equal(txt, "old");
        free(txt);
    }
    /* a name of exactly the maximum length, a zero-size tensor with NULL data */
    spqr_cwriter *w = NULL;
    longname[SPQR_CONTAINER_MAX_NAME] = 0;
    uint64_t zero[1] = {0};
    assert_int_equal(spqr_cwriter_open(p, &w), SPQR_OK);
    assert_int_equal(spqr_cwriter_add(w, longname, SPQR_DT_U8, 2, dims, d, 6), SPQR_OK);
    assert_int_equal(spqr_cwriter_add(w, "empty", SPQR_DT_F32, 1, zero, NULL, 0), SPQR_OK);
    /* invalid metadata is refused without spoiling the writer */
    expect_error(spqr_cwriter_set_metadata(w, "[1,2]"), SPQR_ERR_INVALID_ARG, "out.spqr", "not a JSON object");
    expect_error(spqr_cwriter_set_metadata(w, "{\"a\":"), SPQR_ERR_INVALID_ARG, "out.spqr", "not valid JSON");
    expect_error(spqr_cwriter_set_metadata(w, "{\"a\":\"\xed\xa0\x80\"}"), SPQR_ERR_INVALID_ARG, "out.spqr", "UTF-8");
    expect_error(spqr_cwriter_set_metadata(w, "{} x"), SPQR_ERR_INVALID_ARG, "out.spqr", "not valid JSON");
    assert_int_equal(spqr_cwriter_set_metadata(w, " {\"k\": [1, 2.5, null]} \n"), SPQR_OK);
    assert_int_equal(spqr_cwriter_finish(w), SPQR_OK); /* replaces "old" */
    assert_int_equal(count_entries(dir), 1);
    spqr_container *c = NULL;
    assert_int_equal(spqr_container_open(p, &c), SPQR_OK);
    spqr_ctensor t;
    assert_int_equal(spqr_container_find(c, longname, &t), SPQR_OK);
    assert_int_equal(spqr_container_find(c, "empty", &t), SPQR_OK);
    assert_int_equal(t.nbytes, 0);
    assert_string_equal(spqr_container_metadata(c), " {\"k\": [1, 2.5, null]} \n");
    assert_int_equal(spqr_container_verify(c, NULL, 0), SPQR_OK);
    spqr_container_close(c);
}

static void test_writer_rename_fails(void **state) {
    (void)state;
    const char *dir = mkdir_sub("ren");
    const char *p = tpath("ren", "out.spqr");
    mkdir(p, 0755); /* the final path is a non-empty directory: rename fails */
    assert_int_equal(tu_write_file(tpath("ren", "out.spqr/keep"), "k", 1), 0);
    spqr_cwriter *w = NULL;
    assert_int_equal(spqr_cwriter_open(p, &w), SPQR_OK);
    uint8_t d[3] = {1, 2, 3};
    uint64_t dims[1] = {3};
    assert_int_equal(spqr_cwriter_add(w, "x", SPQR_DT_U8, 1, dims, d, 3), SPQR_OK);
    expect_error(spqr_cwriter_finish(w), SPQR_ERR_IO, "out.spqr", "rename");
    assert_int_equal(count_entries(dir), 1); /* just the directory */
    assert_true(spqr_is_dir(p));
}

static int teardown_all(void **state) {
    (void)state;
    for (size_t i = 0; i < NS; i++) free(g_s[i].data);
    free(g_img);
    tu_cleanup();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),        cmocka_unit_test(test_empty_container),
        cmocka_unit_test(test_large_verify),      cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_bad_magic_and_version), cmocka_unit_test(test_checksums),
        cmocka_unit_test(test_structural),        cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_writer_no_dir),     cmocka_unit_test(test_writer_duplicate),
        cmocka_unit_test(test_writer_abort),      cmocka_unit_test(test_writer_bad_args),
        cmocka_unit_test(test_writer_rename_fails),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
