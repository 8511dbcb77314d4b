/* gguf.h - validated reading of GGUF files (v2 and v3, little-endian).
 *
 * Layout (docs/GGUF.md): "GGUF", u32 version, u64 tensor count, u64
 * key/value count, the key/values (string key, u32 value type, value), the
 * tensor infos (string name, u32 n_dims, u64 ne[n_dims] fastest dimension
 * first, u32 type, u64 offset), padding to the alignment (general.alignment,
 * default 32), then the tensor data; offsets are relative to that data
 * section. Every count, length and offset is checked against the end of the
 * input before it is used; nothing in the parsed structure points outside it. */
#ifndef SPQR_GGUF_H
#define SPQR_GGUF_H

#include "../util/common.h"

/* metadata value types */
enum {
    SPQR_GGUF_U8 = 0, SPQR_GGUF_I8 = 1, SPQR_GGUF_U16 = 2, SPQR_GGUF_I16 = 3, SPQR_GGUF_U32 = 4,
    SPQR_GGUF_I32 = 5, SPQR_GGUF_F32 = 6, SPQR_GGUF_BOOL = 7, SPQR_GGUF_STRING = 8, SPQR_GGUF_ARRAY = 9,
    SPQR_GGUF_U64 = 10, SPQR_GGUF_I64 = 11, SPQR_GGUF_F64 = 12, SPQR_GGUF_NTYPES
};

/* tensor types (ggml numbering) that the loader reads */
enum { SPQR_GGML_F32 = 0, SPQR_GGML_F16 = 1, SPQR_GGML_Q8_0 = 8, SPQR_GGML_BF16 = 30 };

#define SPQR_GGUF_MAX_DIMS 4

typedef struct spqr_gguf_str {
    const char *s; /* into the input; not NUL-terminated */
    size_t len;
} spqr_gguf_str;

typedef struct spqr_gguf_kv {
    spqr_gguf_str key;
    uint32_t type;        /* SPQR_GGUF_* */
    /* scalars: the value widened (integers and bools in i or u, floats in f) */
    int64_t i;
    uint64_t u;
    double f;
    spqr_gguf_str str;    /* STRING */
    uint32_t arr_type;    /* ARRAY: element type */
    uint64_t arr_n;       /* ARRAY: element count */
    const uint8_t *arr;   /* ARRAY: first element (validated to lie in the input) */
} spqr_gguf_kv;

typedef struct spqr_gguf_tensor {
    spqr_gguf_str name;
    uint32_t ndim;
    uint64_t ne[SPQR_GGUF_MAX_DIMS]; /* fastest first; unused dims are 1 */
    uint32_t type;
    uint64_t offset;      /* relative to the data section */
    const uint8_t *data;
    size_t nbytes;        /* 0 when the type's block size is not known */
} spqr_gguf_tensor;

typedef struct spqr_gguf {
    char *path;           /* for messages */
    spqr_mmap map;        /* when opened from a file */
    int mapped;
    const uint8_t *base;
    size_t size;
    uint32_t version;
    size_t alignment;
    spqr_gguf_kv *kv;
    size_t n_kv;
    spqr_gguf_tensor *tensors;
    size_t n_tensors;
    size_t *by_name;      /* tensor indices sorted by name */
    size_t data_offset;   /* of the data section in the file */
} spqr_gguf;

/* True if the first bytes of path are "GGUF". */
bool spqr_gguf_probe(const char *path);
/* Map and parse path. On failure g is left closed. */
spqr_status spqr_gguf_open(const char *path, spqr_gguf *g);
/* Parse bytes in memory (kept by the caller while g is used); name is used
 * in messages. */
spqr_status spqr_gguf_parse(const void *data, size_t size, const char *name, spqr_gguf *g);
void spqr_gguf_close(spqr_gguf *g);

const spqr_gguf_kv *spqr_gguf_kv_find(const spqr_gguf *g, const char *key);
const spqr_gguf_tensor *spqr_gguf_tensor_find(const spqr_gguf *g, const char *name);

/* An integer-typed (or bool) scalar value in [lo, hi]; false otherwise. */
bool spqr_gguf_kv_int(const spqr_gguf_kv *kv, int64_t lo, int64_t hi, int64_t *out);
/* A float or integer scalar value. */
bool spqr_gguf_kv_num(const spqr_gguf_kv *kv, double *out);
/* Element i of a validated numeric (non-string, non-array) array, widened. */
double spqr_gguf_arr_num(const spqr_gguf_kv *kv, uint64_t i);
/* Walk a validated string array: *cursor starts at 0; each call returns the
 * next element. */
spqr_gguf_str spqr_gguf_arr_next_str(const spqr_gguf_kv *kv, size_t *cursor);

/* "F32", "Q4_K", ... or NULL for a type number ggml does not define. */
const char *spqr_gguf_type_name(uint32_t type);
/* "u32", "string", ... for a metadata value type. */
const char *spqr_gguf_value_type_name(uint32_t t);
/* True when s equals the C string c. */
bool spqr_gguf_str_eq(spqr_gguf_str s, const char *c);

#endif
