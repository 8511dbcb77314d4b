/* tinyhf.c - the tiny synthetic Hugging Face model of tinyhf.h. */
#include "tinyhf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"
#include "util/common.h"


typedef struct {
    char name[96];
    const char *dtype;
    int ndim;
    long shape[2];
} tdesc;

int g_f16, g_untied; /* variants: F16 storage, separate lm_head */

static int make_tensors(tdesc *t) {
    int n = 0;
    snprintf(t[n].name, 96, "model.embed_tokens.weight"); t[n].ndim = 2; t[n].shape[0] = TV; t[n].shape[1] = TD; n++;
    snprintf(t[n].name, 96, "model.norm.weight"); t[n].ndim = 1; t[n].shape[0] = TD; n++;
    snprintf(t[n].name, 96, "model.layers.0.input_layernorm.weight"); t[n].ndim = 1; t[n].shape[0] = TD; n++;
    snprintf(t[n].name, 96, "model.layers.0.post_attention_layernorm.weight"); t[n].ndim = 1; t[n].shape[0] = TD; n++;
    const char *lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    const long shp[7][2] = {{TD, TD}, {TKV, TD}, {TKV, TD}, {TD, TD}, {TF, TD}, {TF, TD}, {TD, TF}};
    for (int i = 0; i < 7; i++) {
        snprintf(t[n].name, 96, "model.layers.0.%s.weight", lin[i]);
        t[n].ndim = 2;
        t[n].shape[0] = shp[i][0];
        t[n].shape[1] = shp[i][1];
        n++;
    }
    if (g_untied) {
        snprintf(t[n].name, 96, "lm_head.weight");
        t[n].ndim = 2;
        t[n].shape[0] = TV;
        t[n].shape[1] = TD;
        n++;
    }
    for (int i = 0; i < n; i++) t[i].dtype = g_f16 ? "F16" : "F32";
    return n;
}


/* Write dir/model.safetensors for the tiny model with an optional defect. */
static void write_st(const char *path, int defect) {
    tdesc t[16];
    int n = make_tensors(t);
    if (defect == WRONG_SHAPE) t[4].shape[0] = TD + 1; /* q_proj rows */
    char hdr[8192];
    size_t off = 0, k = 0, es = g_f16 ? 2 : 4;
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{");
    size_t offs[16][2];
    for (int i = 0; i < n; i++) {
        long numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        offs[i][0] = off;
        offs[i][1] = off + (size_t)numel * es;
        if (defect == OVERLAP && i == 3) offs[i][0] -= 8, offs[i][1] -= 8;
        if (defect == OUT_OF_RANGE && i == n - 1) offs[i][1] += 4096, offs[i][0] += 4096;
        if (t[i].ndim == 2)
            k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%ld,%ld],\"data_offsets\":[%zu,%zu]}",
                                  i ? "," : "", t[i].name, t[i].dtype, t[i].shape[0], t[i].shape[1], offs[i][0], offs[i][1]);
        else
            k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%ld],\"data_offsets\":[%zu,%zu]}",
                                  i ? "," : "", t[i].name, t[i].dtype, t[i].shape[0], offs[i][0], offs[i][1]);
        off += (size_t)numel * es;
    }
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "}");
    while (k % 8) hdr[k++] = ' '; /* safetensors pads the header so data is aligned */
    if (defect == MISALIGNED) hdr[k++] = ' ';
    size_t total = 8 + k + off;
    unsigned char *buf = calloc(1, total);
    uint64_t hl = defect == HUGE_HEADER ? (uint64_t)1 << 40 : (uint64_t)k;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hl >> (8 * i));
    memcpy(buf + 8, hdr, k);
    size_t nel = off / es;
    float *w = malloc(nel * sizeof(float));
    tu_seed(7);
    for (size_t i = 0; i < nel; i++) w[i] = 0.1f * tu_rand_normal();
    for (int i = 1; i < 4; i++) /* norms = 1 */
        for (long j = 0; j < t[i].shape[0]; j++) w[offs[i][0] / es + (size_t)j] = 1.0f;
    if (g_untied) /* lm_head = 2 x embeddings: logits exactly double the tied model's */
        for (size_t j = 0; j < (size_t)TV * TD; j++) w[offs[n - 1][0] / es + j] = 2.0f * w[j];
    if (defect == NAN_WEIGHT) w[5] = NAN;
    if (g_f16) {
        uint16_t *h = (uint16_t *)(buf + 8 + k);
        for (size_t i = 0; i < nel; i++) h[i] = spqr_f32_to_f16(w[i]);
    } else {
        memcpy(buf + 8 + k, w, off);
    }
    free(w);
    size_t write_n = defect == TRUNCATED ? total - 100 : total;
    assert_int_equal(tu_write_file(path, buf, write_n), 0);
    free(buf);
}

static void write_config(const char *dir, const char *arch, const char *dtype) {
    char path[8400], txt[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(txt, sizeof txt,
             "{\"architectures\":[\"%s\"],\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":1,"
             "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"vocab_size\":%d,\"max_position_embeddings\":64,"
             "\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"tie_word_embeddings\":%s,\"torch_dtype\":\"%s\"}",
             arch, TD, TF, TV, g_untied ? "false" : "true", dtype);
    assert_int_equal(tu_write_file(path, txt, strlen(txt)), 0);
}

const char *make_model(const char *tag, int defect, const char *arch, const char *dtype) {
    static char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", tu_tmpdir(), tag);
    mkdir(dir, 0755);
    write_config(dir, arch, dtype);
    char st[4300];
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    write_st(st, defect);
    return dir;
}

