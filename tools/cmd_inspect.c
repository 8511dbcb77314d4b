/* cmd_inspect.c - spqr inspect FILE [--verify] [--json]: config, provenance,
 * per-layer bits and outliers of a .spqr file, recomputed from the tensors
 * actually stored (not from the writer's summary). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "format/container.h"
#include "format/model_file.h"
#include "format/packed.h"
#include "util/common.h"

static void help(void) {
    printf("usage: spqr inspect FILE.spqr [--verify] [--json]\n"
           "Prints the model config, how the file was made, and per-layer bits and outliers.\n"
           "--verify checks every tensor's checksum. With --json the last stdout line is JSON.\n");
}

static const char *const k_sections[] = {"codes", "stat_codes", "stats2", "stats", "perm", "ol_count", "ol_col",
                                         "ol_val"};

static int num(const cJSON *o, const char *k) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(j) ? (int)j->valuedouble : 0;
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
    spqr_container *c = NULL;
    spqr_status st = spqr_container_open(path, &c);
    if (st) return cli_fail(st);
    if (verify) {
        char bad[256];
        st = spqr_container_verify(c, bad, sizeof bad);
        if (st) {
            spqr_container_close(c);
            return cli_fail(st);
        }
    }
    cJSON *root = cJSON_Parse(spqr_container_metadata(c));
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(root, "config");
    const cJSON *prov = cJSON_GetObjectItemCaseSensitive(root, "provenance");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    int major = 0, minor = 0;
    spqr_container_version(c, &major, &minor);
    char *cfg_txt = cfg ? cJSON_PrintUnformatted(cfg) : strdup("{}");
    char *prov_txt = prov ? cJSON_PrintUnformatted(prov) : strdup("{}");
    printf("file        %s (%llu bytes, format v%d.%d, %zu tensors)%s\n", path,
           (unsigned long long)spqr_container_file_size(c), major, minor, spqr_container_count(c),
           verify ? ", checksums OK" : "");
    printf("config      %s\n", cfg_txt);
    printf("provenance  %s\n", prov_txt);
    printf("%-22s %11s %7s %5s %5s %9s %9s %9s\n", "layer", "shape", "wbits", "b1", "b2", "outliers", "formula",
           "real");
    int64_t qparams = 0, qbytes = 0, nout = 0;
    double fbits = 0;
    cJSON *jl = cJSON_CreateArray();
    const cJSON *it;
    cJSON_ArrayForEach(it, layers) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (!cJSON_IsString(nm)) continue;
        spqr_packed_geom g = {num(it, "rows"), num(it, "cols"), num(it, "wbits"), num(it, "beta1"),
                              num(it, "beta2"), num(it, "sbits"), num(it, "zbits"), num(it, "ocw")};
        size_t bytes = 0;
        int64_t n_ol = 0;
        for (size_t k = 0; k < sizeof k_sections / sizeof *k_sections; k++) {
            char name[300];
            snprintf(name, sizeof name, "%s.%s", nm->valuestring, k_sections[k]);
            spqr_ctensor t;
            if (spqr_container_index(c, name) < 0 || spqr_container_find(c, name, &t)) continue;
            bytes += t.nbytes;
            if (!strcmp(k_sections[k], "ol_val")) n_ol = (int64_t)(t.nbytes / 2);
        }
        double params = (double)g.rows * (double)g.cols;
        double fb = spqr_geom_formula_bits(&g, n_ol), rb = params > 0 ? 8.0 * (double)bytes / params : 0;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d", g.rows, g.cols);
        printf("%-22s %11s %7d %5d %5d %8.3f%% %9.4f %9.4f\n", nm->valuestring, shape, g.wbits, g.beta1, g.beta2,
               params > 0 ? 100.0 * (double)n_ol / params : 0, fb, rb);
        qparams += (int64_t)params;
        qbytes += (int64_t)bytes;
        nout += n_ol;
        fbits += fb * params;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", nm->valuestring);
        cJSON_AddNumberToObject(o, "rows", g.rows);
        cJSON_AddNumberToObject(o, "cols", g.cols);
        cJSON_AddNumberToObject(o, "n_outliers", (double)n_ol);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
        cJSON_AddNumberToObject(o, "formula_bits", fb);
        cJSON_AddNumberToObject(o, "real_bits", rb);
        cJSON_AddItemToArray(jl, o);
    }
    double avg_f = qparams ? fbits / (double)qparams : 0, avg_r = qparams ? 8.0 * (double)qbytes / (double)qparams : 0;
    printf("total       %lld quantized params, %lld bytes, %lld outliers (%.4f%%), avg bits %.4f formula / %.4f "
           "real\n",
           (long long)qparams, (long long)qbytes, (long long)nout, qparams ? 100.0 * (double)nout / (double)qparams : 0,
           avg_f, avg_r);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "file", path);
        cJSON_AddNumberToObject(o, "file_bytes", (double)spqr_container_file_size(c));
        cJSON_AddBoolToObject(o, "verified", verify);
        cJSON_AddNumberToObject(o, "quantized_params", (double)qparams);
        cJSON_AddNumberToObject(o, "quantized_bytes", (double)qbytes);
        cJSON_AddNumberToObject(o, "n_outliers", (double)nout);
        cJSON_AddNumberToObject(o, "outlier_share", qparams ? (double)nout / (double)qparams : 0);
        cJSON_AddNumberToObject(o, "avg_bits_formula", avg_f);
        cJSON_AddNumberToObject(o, "avg_bits_real", avg_r);
        if (cfg) cJSON_AddItemToObject(o, "config", cJSON_Duplicate(cfg, 1));
        if (prov) cJSON_AddItemToObject(o, "provenance", cJSON_Duplicate(prov, 1));
        cJSON_AddItemToObject(o, "layers", jl);
        jl = NULL;
        char *txt = cJSON_PrintUnformatted(o);
        printf("%s\n", txt);
        free(txt);
        cJSON_Delete(o);
    }
    cJSON_Delete(jl);
    free(cfg_txt);
    free(prov_txt);
    cJSON_Delete(root);
    spqr_container_close(c);
    return 0;
}
