/* fuzz_gguf.c - libFuzzer target for the GGUF reader (io/gguf.c) and the
 * GGUF model loader behind it (model/load_gguf.c: config keys, tensor
 * shapes and types, Q8_0 dequantization, the SentencePiece vocabulary).
 *
 * Build with -DSPQR_FUZZ=ON (see CMakeLists.txt). Seed corpus:
 *   SPQR_FUZZ_SEED_DIR=corpus ./fuzz_gguf -runs=0
 * writes a small valid llama GGUF (F32, F16 and Q8_0 tensors, a 6-token
 * vocabulary) into corpus/ (which must exist), then
 *   ./fuzz_gguf -max_total_time=30 corpus
 *
 * Each input is parsed in memory; when it parses, every key/value and array
 * element is read through the accessors and the model loader runs on it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/gguf.h"
#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

typedef struct {
    uint8_t b[65536];
    size_t n;
} wbuf;
static void put(wbuf *w, const void *p, size_t n) {
    if (w->n + n > sizeof w->b) return;
    memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void u32(wbuf *w, uint32_t v) { put(w, &v, 4); } /* little-endian hosts only (as the reader) */
static void u64(wbuf *w, uint64_t v) { put(w, &v, 8); }
static void str(wbuf *w, const char *s) {
    u64(w, strlen(s));
    put(w, s, strlen(s));
}
static void kv_u32(wbuf *w, const char *k, uint32_t v) {
    str(w, k);
    u32(w, SPQR_GGUF_U32);
    u32(w, v);
}

static void write_seed(const char *dir) {
    enum { DIM = 32, FF = 32, NV = 6 };
    static wbuf w;
    w.n = 0;
    put(&w, "GGUF", 4);
    u32(&w, 3);
    u64(&w, 12); /* tensors */
    u64(&w, 14); /* key/values */
    str(&w, "general.architecture");
    u32(&w, SPQR_GGUF_STRING);
    str(&w, "llama");
    kv_u32(&w, "llama.embedding_length", DIM);
    kv_u32(&w, "llama.feed_forward_length", FF);
    kv_u32(&w, "llama.block_count", 1);
    kv_u32(&w, "llama.attention.head_count", 2);
    kv_u32(&w, "llama.attention.head_count_kv", 1);
    kv_u32(&w, "llama.context_length", 64);
    str(&w, "llama.rope.freq_base");
    u32(&w, SPQR_GGUF_F32);
    float th = 10000.0f;
    put(&w, &th, 4);
    str(&w, "tokenizer.ggml.model");
    u32(&w, SPQR_GGUF_STRING);
    str(&w, "llama");
    static const char *const toks[NV] = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "\xE2\x96\x81" "a"};
    str(&w, "tokenizer.ggml.tokens");
    u32(&w, SPQR_GGUF_ARRAY);
    u32(&w, SPQR_GGUF_STRING);
    u64(&w, NV);
    for (int i = 0; i < NV; i++) str(&w, toks[i]);
    str(&w, "tokenizer.ggml.scores");
    u32(&w, SPQR_GGUF_ARRAY);
    u32(&w, SPQR_GGUF_F32);
    u64(&w, NV);
    for (int i = 0; i < NV; i++) {
        float s = -(float)i;
        put(&w, &s, 4);
    }
    str(&w, "tokenizer.ggml.token_type");
    u32(&w, SPQR_GGUF_ARRAY);
    u32(&w, SPQR_GGUF_I32);
    u64(&w, NV);
    for (int i = 0; i < NV; i++) u32(&w, i == 0 ? 2 : i < 3 ? 3 : 1);
    kv_u32(&w, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&w, "tokenizer.ggml.eos_token_id", 2);
    /* tensors: name, dims, type, offset */
    static const struct {
        const char *name;
        uint32_t type;
        uint64_t ne0, ne1;
    } t[12] = {{"token_embd.weight", SPQR_GGML_Q8_0, DIM, NV}, {"output_norm.weight", SPQR_GGML_F32, DIM, 0},
               {"blk.0.attn_norm.weight", SPQR_GGML_F32, DIM, 0}, {"blk.0.ffn_norm.weight", SPQR_GGML_F32, DIM, 0},
               {"blk.0.attn_q.weight", SPQR_GGML_F16, DIM, DIM},  {"blk.0.attn_k.weight", SPQR_GGML_F32, DIM, 16},
               {"blk.0.attn_v.weight", SPQR_GGML_Q8_0, DIM, 16},  {"blk.0.attn_output.weight", SPQR_GGML_BF16, DIM, DIM},
               {"blk.0.ffn_gate.weight", SPQR_GGML_F16, DIM, FF}, {"blk.0.ffn_up.weight", SPQR_GGML_F32, DIM, FF},
               {"blk.0.ffn_down.weight", SPQR_GGML_Q8_0, FF, DIM}, {"output.weight", SPQR_GGML_F16, DIM, NV}};
    uint64_t off = 0, sizes[12];
    for (int i = 0; i < 12; i++) {
        uint64_t rows = t[i].ne1 ? t[i].ne1 : 1;
        sizes[i] = t[i].type == SPQR_GGML_Q8_0 ? t[i].ne0 / 32 * 34 * rows
                   : t[i].type == SPQR_GGML_F32 ? 4 * t[i].ne0 * rows
                                                : 2 * t[i].ne0 * rows;
        str(&w, t[i].name);
        u32(&w, t[i].ne1 ? 2 : 1);
        u64(&w, t[i].ne0);
        if (t[i].ne1) u64(&w, t[i].ne1);
        u32(&w, t[i].type);
        u64(&w, off);
        off += (sizes[i] + 31) / 32 * 32;
    }
    static const uint8_t zero[32];
    put(&w, zero, (32 - w.n % 32) % 32);
    for (int i = 0; i < 12; i++) {
        for (uint64_t k = 0; k < sizes[i]; k++) {
            /* small finite values in every type: f16 0x2c00 ~ 0.0625, bf16 0x3d80, f32 0x3d800000 */
            uint8_t v = t[i].type == SPQR_GGML_F32 ? (uint8_t[]){0, 0, 0x80, 0x3d}[k % 4]
                        : t[i].type == SPQR_GGML_Q8_0 ? (k % 34 == 1 ? 0x2c : k % 34 == 0 ? 0 : (uint8_t)(k * 7))
                        : t[i].type == SPQR_GGML_BF16 ? (uint8_t[]){0x80, 0x3d}[k % 2]
                                                      : (uint8_t[]){0x00, 0x2c}[k % 2];
            put(&w, &v, 1);
        }
        put(&w, zero, (32 - sizes[i] % 32) % 32);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/seed.gguf", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(w.b, 1, w.n, f);
    fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("SPQR_FUZZ_SEED_DIR");
    if (dir && *dir) write_seed(dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    spqr_gguf *g = calloc(1, sizeof *g);
    if (!g) return 0;
    if (spqr_gguf_parse(data, size, "fuzz.gguf", g) != SPQR_OK) {
        free(g);
        return 0;
    }
    volatile double sink = 0;
    for (size_t k = 0; k < g->n_kv; k++) {
        const spqr_gguf_kv *kv = &g->kv[k];
        int64_t i;
        double f;
        if (spqr_gguf_kv_int(kv, INT64_MIN, INT64_MAX, &i)) sink += (double)i;
        if (spqr_gguf_kv_num(kv, &f)) sink += f;
        if (kv->type != SPQR_GGUF_ARRAY) continue;
        if (kv->arr_type == SPQR_GGUF_STRING) {
            size_t cur = 0;
            for (uint64_t e = 0; e < kv->arr_n; e++) {
                spqr_gguf_str s = spqr_gguf_arr_next_str(kv, &cur);
                if (s.len) sink += (unsigned char)s.s[s.len - 1];
            }
        } else if (kv->arr_type != SPQR_GGUF_ARRAY) {
            for (uint64_t e = 0; e < kv->arr_n; e++) sink += spqr_gguf_arr_num(kv, e);
        }
    }
    for (size_t k = 0; k < g->n_tensors; k++) {
        const spqr_gguf_tensor *t = &g->tensors[k];
        if (t->nbytes) sink += t->data[0] + t->data[t->nbytes - 1];
        if (spqr_gguf_tensor_find(g, "token_embd.weight")) sink += 1;
    }
    (void)sink;
    spqr_model *m = NULL;
    if (spqr_model_alloc(&m) != SPQR_OK) {
        spqr_gguf_close(g);
        free(g);
        return 0;
    }
    m->storage = g;
    m->storage_free = spqr_gguf_storage_free;
    (void)spqr_model_from_gguf(g, m);
    spqr_model_free(m);
    return 0;
}
