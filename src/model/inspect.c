/* inspect.c - spqr_inspect_file: what a .spqr file holds, recomputed from the
 * tensors actually stored (every linear is opened through its format), not
 * from the writer's summary. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#include "../io/container.h"
#include "model.h"

void spqr_file_info_free(spqr_file_info *info) {
    if (!info) return;
    free(info->config_json);
    free(info->provenance_json);
    free(info->layers);
    free(info);
}

static char *json_or_empty(const cJSON *j) {
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    return t ? t : strdup("{}");
}

/* The wall-clock fields of the metadata, left out of the content digest. */
static const char *const wall_clock_keys[] = {"seconds"};

/* content_digest (see spqr.h): metadata without wall-clock fields, then every
 * tensor's name, dtype, shape and bytes. */
static spqr_status content_digest(const spqr_container *c, uint64_t *out) {
    cJSON *root = cJSON_Parse(spqr_container_metadata(c));
    if (!root) return spqr_fail(SPQR_ERR_FORMAT, "%s: metadata is not JSON", spqr_container_path(c));
    cJSON *prov = cJSON_GetObjectItemCaseSensitive(root, "provenance");
    for (size_t k = 0; k < sizeof wall_clock_keys / sizeof *wall_clock_keys; k++)
        cJSON_DeleteItemFromObjectCaseSensitive(prov, wall_clock_keys[k]);
    char *meta = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    XXH3_state_t *hs = XXH3_createState();
    if (!meta || !hs) {
        free(meta);
        XXH3_freeState(hs);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    XXH3_64bits_reset(hs);
    XXH3_64bits_update(hs, meta, strlen(meta) + 1);
    free(meta);
    spqr_status st = SPQR_OK;
    for (size_t i = 0; !st && i < spqr_container_count(c); i++) {
        spqr_ctensor t;
        st = spqr_container_tensor(c, i, &t);
        if (st) break;
        uint64_t head[2 + SPQR_CONTAINER_MAX_NDIM] = {(uint64_t)t.dtype, (uint64_t)t.ndim};
        for (int d = 0; d < t.ndim; d++) head[2 + d] = t.dims[d];
        XXH3_64bits_update(hs, t.name, strlen(t.name) + 1);
        XXH3_64bits_update(hs, head, sizeof head);
        XXH3_64bits_update(hs, t.nbytes ? t.data : "", t.nbytes);
    }
    *out = XXH3_64bits_digest(hs);
    XXH3_freeState(hs);
    return st;
}

spqr_status spqr_inspect_file(const char *path, int verify, spqr_file_info **out) {
    *out = NULL;
    spqr_container *c = NULL;
    spqr_status st = spqr_container_open(path, &c);
    if (st) return st;
    spqr_file_info *info = calloc(1, sizeof *info);
    if (!info) {
        spqr_container_close(c);
        return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    if (verify) {
        char bad[256];
        st = spqr_container_verify(c, bad, sizeof bad);
        info->verified = st == SPQR_OK;
    }
    if (!st) st = content_digest(c, &info->content_digest);
    info->file_bytes = spqr_container_file_size(c);
    info->n_tensors = spqr_container_count(c);
    spqr_container_version(c, &info->version_major, &info->version_minor);
    cJSON *root = cJSON_Parse(spqr_container_metadata(c));
    const cJSON *mv = cJSON_GetObjectItemCaseSensitive(root, "model_format_version");
    info->model_layout = cJSON_IsNumber(mv) ? (int)mv->valuedouble : 1;
    info->config_json = json_or_empty(cJSON_GetObjectItemCaseSensitive(root, "config"));
    info->provenance_json = json_or_empty(cJSON_GetObjectItemCaseSensitive(root, "provenance"));
    cJSON_Delete(root);
    spqr_container_close(c);
    if (!st && (!info->config_json || !info->provenance_json)) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    spqr_model *m = NULL;
    if (!st) st = spqr_model_load(path, NULL, &m);
    if (!st) {
        info->layers = calloc((size_t)m->cfg.n_layers * SPQR_LIN_PER_BLOCK, sizeof *info->layers);
        if (!info->layers) st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    }
    double fbits = 0;
    for (int l = 0; !st && l < m->cfg.n_layers; l++)
        for (int k = 0; k < SPQR_LIN_PER_BLOCK; k++) {
            const spqr_linear *li = &m->blocks[l].lin[k];
            if (!li->fmt->quantized) continue;
            spqr_layer_info *L = &info->layers[info->n_layers++];
            snprintf(L->name, sizeof L->name, "blk.%d.%s", l, spqr_linear_names[k]);
            snprintf(L->layout, sizeof L->layout, "%s", li->fmt->name);
            if (li->fmt->describe) li->fmt->describe(li->payload, L->params, sizeof L->params);
            L->rows = li->rows;
            L->cols = li->cols;
            L->n_outliers = li->fmt->n_outliers ? li->fmt->n_outliers(li->payload) : 0;
            L->bytes = (int64_t)li->fmt->bytes(li->payload);
            L->formula_bits = li->fmt->formula_bits(li->payload);
            double params = (double)li->rows * (double)li->cols;
            L->real_bits = 8.0 * (double)L->bytes / params;
            info->quantized_params += (int64_t)params;
            info->quantized_bytes += L->bytes;
            info->n_outliers += L->n_outliers;
            fbits += L->formula_bits * params;
        }
    spqr_model_free(m);
    if (st) {
        spqr_file_info_free(info);
        return st;
    }
    if (info->quantized_params) {
        info->avg_bits_formula = fbits / (double)info->quantized_params;
        info->avg_bits_real = 8.0 * (double)info->quantized_bytes / (double)info->quantized_params;
    }
    *out = info;
    return SPQR_OK;
}
