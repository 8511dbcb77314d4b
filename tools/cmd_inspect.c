/* cmd_inspect.c - spqr inspect FILE [--verify] [--json]: config, provenance,
 * per-layer format, bits and outliers of a .spqr file (spqr_inspect_file). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(void) {
    printf("usage: spqr inspect FILE.spqr [--verify] [--json]\n"
           "Prints the model config, how the file was made, and per-layer bits and outliers.\n"
           "--verify checks every tensor's checksum. With --json the last stdout line is JSON.\n"
           "content_digest: a hash of everything in the file except wall-clock fields (reproducibility checks).\n");
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    bool verify = false, json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help();
            return 0;
        } else if (!strcmp(argv[i], "--verify")) verify = true;
        else if (!strcmp(argv[i], "--json")) json = true;
        else if (argv[i][0] == '-' && argv[i][1]) return cli_usage("inspect", "unknown option %s", argv[i]);
        else if (!path) path = argv[i];
        else return cli_usage("inspect", "unexpected argument '%s'", argv[i]);
    }
    if (!path) return cli_usage("inspect", "no FILE given");
    spqr_file_info *fi = NULL;
    spqr_status st = spqr_inspect_file(path, verify, &fi);
    if (st) return cli_fail(st);
    printf("file        %s (%llu bytes, format v%d.%d, model layout %d, %zu tensors)%s\n", path,
           (unsigned long long)fi->file_bytes, fi->version_major, fi->version_minor, fi->model_layout, fi->n_tensors,
           verify ? ", checksums OK" : "");
    char digest[17];
    snprintf(digest, sizeof digest, "%016llx", (unsigned long long)fi->content_digest);
    printf("digest      %s (content without wall-clock fields)\n", digest);
    printf("config      %s\n", fi->config_json);
    printf("provenance  %s\n", fi->provenance_json);
    printf("%-22s %11s %-8s %-22s %9s %9s %9s\n", "layer", "shape", "layout", "parameters", "outliers", "formula",
           "real");
    cJSON *jl = cJSON_CreateArray();
    for (int i = 0; i < fi->n_layers; i++) {
        const spqr_layer_info *L = &fi->layers[i];
        double params = (double)L->rows * (double)L->cols;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d", L->rows, L->cols);
        printf("%-22s %11s %-8s %-22s %8.3f%% %9.4f %9.4f\n", L->name, shape, L->layout, L->params,
               params > 0 ? 100.0 * (double)L->n_outliers / params : 0, L->formula_bits, L->real_bits);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", L->name);
        cJSON_AddStringToObject(o, "layout", L->layout);
        cJSON_AddStringToObject(o, "params", L->params);
        cJSON_AddNumberToObject(o, "rows", L->rows);
        cJSON_AddNumberToObject(o, "cols", L->cols);
        cJSON_AddNumberToObject(o, "n_outliers", (double)L->n_outliers);
        cJSON_AddNumberToObject(o, "bytes", (double)L->bytes);
        cJSON_AddNumberToObject(o, "formula_bits", L->formula_bits);
        cJSON_AddNumberToObject(o, "real_bits", L->real_bits);
        cJSON_AddItemToArray(jl, o);
    }
    int64_t qp = fi->quantized_params;
    printf("total       %lld quantized params, %lld bytes, %lld outliers (%.4f%%), avg bits %.4f formula / %.4f "
           "real\n",
           (long long)qp, (long long)fi->quantized_bytes, (long long)fi->n_outliers,
           qp ? 100.0 * (double)fi->n_outliers / (double)qp : 0, fi->avg_bits_formula, fi->avg_bits_real);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "file", path);
        cJSON_AddNumberToObject(o, "file_bytes", (double)fi->file_bytes);
        cJSON_AddBoolToObject(o, "verified", fi->verified);
        cJSON_AddStringToObject(o, "content_digest", digest);
        cJSON_AddNumberToObject(o, "model_layout", fi->model_layout);
        cJSON_AddNumberToObject(o, "quantized_params", (double)qp);
        cJSON_AddNumberToObject(o, "quantized_bytes", (double)fi->quantized_bytes);
        cJSON_AddNumberToObject(o, "n_outliers", (double)fi->n_outliers);
        cJSON_AddNumberToObject(o, "outlier_share", qp ? (double)fi->n_outliers / (double)qp : 0);
        cJSON_AddNumberToObject(o, "avg_bits_formula", fi->avg_bits_formula);
        cJSON_AddNumberToObject(o, "avg_bits_real", fi->avg_bits_real);
        cJSON *cfg = cJSON_Parse(fi->config_json), *prov = cJSON_Parse(fi->provenance_json);
        if (cfg) cJSON_AddItemToObject(o, "config", cfg);
        if (prov) cJSON_AddItemToObject(o, "provenance", prov);
        cJSON_AddItemToObject(o, "layers", jl);
        jl = NULL;
        char *txt = cJSON_PrintUnformatted(o);
        printf("%s\n", txt);
        free(txt);
        cJSON_Delete(o);
    }
    cJSON_Delete(jl);
    spqr_file_info_free(fi);
    return 0;
}
