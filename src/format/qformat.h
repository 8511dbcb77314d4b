/* qformat.h - the interface every quantized-layer format implements.
 *
 * A linear layer of a model is {format, payload} (model/model.h): the
 * format is one of these tables, the payload its private in-memory form. A
 * format module lives in its own folder under src/formats/ and is listed in
 * src/formats/registry.c (or registered at run time with
 * spqr_qformat_register, as the tests do). Everything a caller needs goes
 * through the table: the .spqr reader and writer, `spqr inspect`, the CPU
 * forward pass, the GPU backend and the quantization pipeline never look
 * inside a payload.
 *
 * Storage. A payload is stored as named sections, each one flat
 * little-endian array written as the container tensor
 * "blk.<L>.<linear>.<section>", plus a JSON object in the file's "layers"
 * metadata ({"name", "layout": format name, geometry keys of the format}).
 * Readers look the format up by that "layout" name; open() must treat the
 * geometry and the sections as untrusted input (validate everything the
 * kernels rely on) and may borrow the section memory (it lives as long as
 * the model's mapped file).
 */
#ifndef SPQR_QFORMAT_H
#define SPQR_QFORMAT_H

#include <cjson/cJSON.h>

#include "../util/common.h"

#define SPQR_QFORMAT_MAX_SECTIONS 16

typedef struct spqr_qsection {
    const char *name;  /* static string, e.g. "codes"                      */
    spqr_dtype dtype;  /* element type recorded in the file               */
    const void *data;  /* may be NULL when bytes == 0                      */
    size_t bytes;
} spqr_qsection;

/* Looks up section `name` of the layer being opened (from the file). Fails
 * with SPQR_ERR_FORMAT (and a message) when the file has no such section. */
typedef spqr_status (*spqr_qsection_find_fn)(void *ctx, const char *name, spqr_qsection *out);

typedef struct spqr_qformat {
    const char *name;        /* layout name stored per layer, e.g. "spqr" */
    const char *summary;     /* one line for listings                      */
    int quantized;           /* 0 only for the dense (unquantized) format  */

    /* ---- file ---------------------------------------------------------- */
    /* The sections to store, in order (empty ones included). Returns their
     * number, or -1 if max is too small. */
    int (*sections)(const void *payload, spqr_qsection *out, int max);
    /* Add the geometry keys that open() needs to a layer's JSON object. */
    spqr_status (*write_geometry)(const void *payload, cJSON *layer);
    /* Build a payload of a rows x cols layer from its (untrusted) geometry
     * and sections; the payload may borrow the section memory. Errors are
     * SPQR_ERR_FORMAT with a message naming the problem (the caller prefixes
     * file and layer). */
    spqr_status (*open)(const cJSON *layer, int rows, int cols, spqr_qsection_find_fn find, void *ctx,
                        void **payload);
    void (*free)(void *payload); /* accepts NULL */

    /* ---- accounting ---------------------------------------------------- */
    size_t (*bytes)(const void *payload);        /* bytes of all sections       */
    double (*formula_bits)(const void *payload); /* bits per weight, the
                                                    method paper's formula     */
    int64_t (*n_outliers)(const void *payload);  /* NULL: the format has none   */
    /* Short human-readable parameters, e.g. "w4 b1=16 b2=16 s3/z3". */
    void (*describe)(const void *payload, char *buf, size_t n);

    /* ---- math ------------------------------------------------------------ */
    /* THE definition of the layer: W [rows][cols] float32, original column
     * order (what the quantizer committed to). */
    spqr_status (*dequantize)(const void *payload, float *W);
    /* Y[T][rows] = X[T][cols] W^T: the scalar reference and the fastest CPU
     * variant (ISA-dispatched through kernels/cpu/cpu.h). */
    spqr_status (*gemm_ref)(const void *payload, const float *X, int T, float *Y);
    spqr_status (*gemm)(const void *payload, const float *X, int T, float *Y);

    /* ---- CUDA (all NULL when the format has no GPU kernels: the GPU
     * backend then runs the dequantized weights densely) ----------------- */
    size_t (*cuda_estimate)(const void *payload); /* device bytes, upper bound */
    spqr_status (*cuda_upload)(const void *payload, void **dev, size_t *dev_bytes);
    /* device pointers: dY[T][rows] = dX[T][cols] W^T */
    spqr_status (*cuda_gemm)(const void *dev, const float *dX, int T, float *dY);
    void (*cuda_free)(void *dev);

    /* ---- training (all NULL when the format has no continuous parameters
     * to retrain; the block tuner, train/, then leaves such a layer as is) */
    /* Number of trainable parameters: the continuous values the format
     * stores next to its discrete codes (codebook entries, statistics,
     * outlier values), 0 for none. */
    size_t (*train_count)(const void *payload);
    /* theta[train_count] = the stored values, as float32. */
    void (*train_get)(const void *payload, float *theta);
    /* Store theta, rounded to the stored precision (e.g. fp16), so that
     * dequantize() then defines W from it. SPQR_ERR_NUMERIC (nothing changed)
     * for a value that is not finite or does not fit the stored type. */
    spqr_status (*train_set)(void *payload, const float *theta);
    /* g[train_count] += dL/dtheta at the stored values, given
     * G = dL/dW [rows][cols] (original column order, W as dequantize()
     * defines it). */
    void (*train_grad)(const void *payload, const float *G, float *g);
    /* Optional: s[train_count] = a typical magnitude of each value (e.g. the
     * RMS of its kind in this layer). The tuner then takes optimizer steps
     * relative to it, so one learning rate suits values of very different
     * sizes (SpQR's second-level scales ~1e-3 beside zero points ~4). NULL:
     * absolute steps (ClusComp's codebooks, as its authors train them). */
    void (*train_scale)(const void *payload, float *s);
} spqr_qformat;

/* ---- registry -------------------------------------------------------------
 * Built-in formats are listed in src/formats/registry.c. */

/* The format called name, or NULL. */
const spqr_qformat *spqr_qformat_find(const char *name);
/* Number of registered formats and the i-th one (0 <= i < count). */
int spqr_qformat_count(void);
const spqr_qformat *spqr_qformat_at(int i);
/* Add a format at run time (e.g. a plug-in or a test's). Fails with
 * SPQR_ERR_INVALID_ARG for a missing name or function, or a taken name. */
spqr_status spqr_qformat_register(const spqr_qformat *f);

/* The always-present dense format: payload = spqr_dense (below). */
typedef struct spqr_dense {
    const void *data; /* [rows][cols] row-major, usually in a mapped file */
    spqr_dtype dt;    /* f32, f16 or bf16                                  */
    int64_t rows, cols;
} spqr_dense;
extern const spqr_qformat spqr_qformat_dense;

#endif
