/* safetensors.c - validated, memory-mapped safetensors reading.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ...,
 *  "__metadata__": {...}}, then the data section; offsets are relative to
 * the data section. Every offset and size is checked before use. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

static int parse_dtype(const char *s, spqr_dtype *dt) {
    if (strcmp(s, "F32") == 0) *dt = SPQR_DT_F32;
    else if (strcmp(s, "F16") == 0) *dt = SPQR_DT_F16;
    else if (strcmp(s, "BF16") == 0) *dt = SPQR_DT_BF16;
    else if (strcmp(s, "U8") == 0) *dt = SPQR_DT_U8;
    else if (strcmp(s, "I32") == 0) *dt = SPQR_DT_I32;
    else return 0;
    return 1;
}

typedef struct { size_t b, e; size_t idx; } range_t;

static int cmp_range(const void *a, const void *b) {
    const range_t *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

static bool json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

spqr_status spqr_st_add_file(spqr_st_set *set, const char *path) {
    spqr_mmap m;
    spqr_status st = spqr_mmap_open(path, &m);
    if (st) return st;
    const uint8_t *p = m.data;
    if (m.size < 8) {
        spqr_mmap_close(&m);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: truncated safetensors file (%zu bytes, no header)", path, m.size);
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > m.size - 8 || hlen > ((uint64_t)100 << 20)) {
        spqr_mmap_close(&m);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: header length %llu is larger than the file (%zu bytes)", path,
                         (unsigned long long)hlen, m.size);
    }
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        spqr_mmap_close(&m);
        return spqr_fail(SPQR_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    const uint8_t *data = p + 8 + hlen;
    size_t dsize = m.size - 8 - (size_t)hlen;
    size_t n = 0;
    for (cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__") != 0) n++;

    int fidx = set->n_files;
    spqr_mmap *nf = realloc(set->files, sizeof(spqr_mmap) * (size_t)(set->n_files + 1));
    spqr_st_tensor *nt = realloc(set->tensors, sizeof(spqr_st_tensor) * (set->n_tensors + n + 1));
    range_t *ranges = malloc(sizeof(range_t) * (n + 1));
    if (nf) set->files = nf;
    if (nt) set->tensors = nt;
    if (!nf || !nt || !ranges) {
        free(ranges);
        cJSON_Delete(root);
        spqr_mmap_close(&m);
        return spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", path);
    }
    set->files[fidx] = m;
    set->n_files++;
    size_t k = 0;
    st = SPQR_OK;
    for (cJSON *it = root->child; it && st == SPQR_OK; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) continue;
        const char *name = it->string;
        cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        spqr_st_tensor t;
        memset(&t, 0, sizeof t);
        if (!cJSON_IsString(jd) || !parse_dtype(jd->valuestring, &t.dtype)) {
            st = spqr_fail(SPQR_ERR_UNSUPPORTED, "%s: tensor '%s' has unsupported dtype %s", path, name,
                           cJSON_IsString(jd) ? jd->valuestring : "(missing)");
            break;
        }
        if (!cJSON_IsArray(js) || cJSON_GetArraySize(js) > 4) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has a bad shape", path, name);
            break;
        }
        size_t numel = 1;
        t.ndim = cJSON_GetArraySize(js);
        for (int d = 0; d < t.ndim; d++) {
            uint64_t v;
            if (!json_u64(cJSON_GetArrayItem(js, d), &v) || v > ((uint64_t)1 << 40) ||
                !spqr_mul_size(numel, (size_t)v, &numel)) {
                st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has a bad shape", path, name);
                break;
            }
            t.shape[d] = (int64_t)v;
        }
        if (st) break;
        uint64_t b, e;
        if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_u64(cJSON_GetArrayItem(jo, 0), &b) ||
            !json_u64(cJSON_GetArrayItem(jo, 1), &e) || b > e) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' has bad data_offsets", path, name);
            break;
        }
        if (e > dsize) {
            st = spqr_fail(SPQR_ERR_FORMAT,
                           "%s: tensor '%s' data [%llu, %llu) lies past the end of the data section (%zu bytes); "
                           "file truncated?",
                           path, name, (unsigned long long)b, (unsigned long long)e, dsize);
            break;
        }
        size_t need;
        if (!spqr_mul_size(numel, spqr_dtype_size(t.dtype), &need) || need != e - b) {
            st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' holds %llu bytes but its shape and dtype need %zu",
                           path, name, (unsigned long long)(e - b), need);
            break;
        }
        if (((uintptr_t)(data + b) % spqr_dtype_size(t.dtype)) != 0) {
            st = spqr_fail(SPQR_ERR_UNSUPPORTED,
                           "%s: tensor '%s' is not aligned to its %zu-byte elements (header length %llu is not "
                           "padded to a multiple of 8; re-save the file with a current safetensors)",
                           path, name, spqr_dtype_size(t.dtype), (unsigned long long)hlen);
            break;
        }
        t.name = strdup(name);
        if (!t.name) {
            st = spqr_fail(SPQR_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        t.data = data + b;
        t.nbytes = (size_t)(e - b);
        t.file = fidx;
        bool dup = spqr_st_find(set, name) != NULL;
        for (size_t i = 0; i < k && !dup; i++) dup = strcmp(set->tensors[set->n_tensors + i].name, name) == 0;
        if (dup) {
            free(t.name);
            st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' appears twice", path, name);
            break;
        }
        set->tensors[set->n_tensors + k] = t;
        ranges[k].b = (size_t)b;
        ranges[k].e = (size_t)e;
        ranges[k].idx = k;
        k++;
    }
    if (st == SPQR_OK) {
        qsort(ranges, k, sizeof(range_t), cmp_range);
        for (size_t i = 1; i < k; i++) {
            if (ranges[i].b < ranges[i - 1].e) {
                st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path,
                               set->tensors[set->n_tensors + ranges[i - 1].idx].name,
                               set->tensors[set->n_tensors + ranges[i].idx].name);
                break;
            }
        }
    }
    if (st != SPQR_OK) {
        for (size_t i = 0; i < k; i++) free(set->tensors[set->n_tensors + i].name);
    } else {
        set->n_tensors += k;
    }
    free(ranges);
    cJSON_Delete(root);
    return st;
}

spqr_status spqr_st_open_dir(const char *dir, spqr_st_set *set) {
    memset(set, 0, sizeof *set);
    char *single = spqr_path_join(dir, "model.safetensors");
    char *index = spqr_path_join(dir, "model.safetensors.index.json");
    spqr_status st = SPQR_OK;
    if (!single || !index) {
        st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    } else if (spqr_file_exists(index)) {
        char *txt = NULL;
        size_t len = 0;
        st = spqr_read_file(index, &txt, &len);
        cJSON *root = st ? NULL : cJSON_ParseWithLength(txt, len);
        cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        if (!st && !cJSON_IsObject(wm)) st = spqr_fail(SPQR_ERR_FORMAT, "%s: no weight_map object", index);
        /* open each distinct shard once, in order of first appearance */
        char **seen = NULL;
        size_t nseen = 0;
        for (cJSON *it = wm ? wm->child : NULL; it && !st; it = it->next) {
            if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || strstr(it->valuestring, "..")) {
                st = spqr_fail(SPQR_ERR_FORMAT, "%s: bad shard name for '%s'", index, it->string);
                break;
            }
            bool dup = false;
            for (size_t i = 0; i < nseen; i++)
                if (strcmp(seen[i], it->valuestring) == 0) dup = true;
            if (dup) continue;
            char **ns = realloc(seen, sizeof(char *) * (nseen + 1));
            if (!ns) {
                st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
                break;
            }
            seen = ns;
            seen[nseen++] = it->valuestring;
            char *sp = spqr_path_join(dir, it->valuestring);
            if (!sp) {
                st = spqr_fail(SPQR_ERR_NOMEM, "out of memory");
                break;
            }
            if (!spqr_file_exists(sp))
                st = spqr_fail(SPQR_ERR_IO, "%s: missing shard %s named by %s", sp, it->valuestring, index);
            else
                st = spqr_st_add_file(set, sp);
            free(sp);
        }
        /* every tensor the index names must exist in its shard */
        for (cJSON *it = wm ? wm->child : NULL; it && !st; it = it->next) {
            const spqr_st_tensor *t = spqr_st_find(set, it->string);
            if (!t) st = spqr_fail(SPQR_ERR_FORMAT, "%s: tensor '%s' is not in shard %s", index, it->string,
                                   it->valuestring);
        }
        free(seen);
        cJSON_Delete(root);
        free(txt);
    } else if (spqr_file_exists(single)) {
        st = spqr_st_add_file(set, single);
    } else {
        st = spqr_fail(SPQR_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    free(single);
    free(index);
    if (st) spqr_st_close(set);
    return st;
}

void spqr_st_close(spqr_st_set *set) {
    for (size_t i = 0; i < set->n_tensors; i++) free(set->tensors[i].name);
    for (int i = 0; i < set->n_files; i++) spqr_mmap_close(&set->files[i]);
    free(set->tensors);
    free(set->files);
    memset(set, 0, sizeof *set);
}

const spqr_st_tensor *spqr_st_find(const spqr_st_set *set, const char *name) {
    for (size_t i = 0; i < set->n_tensors; i++)
        if (strcmp(set->tensors[i].name, name) == 0) return &set->tensors[i];
    return NULL;
}
