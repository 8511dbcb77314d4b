/*
 * spqr.h - the one public header of libspqr.
 *
 * libspqr loads LLaMA-family language models (Hugging Face folders, llama2.c
 * checkpoints, .spqr compressed files), runs them on the CPU or an NVIDIA
 * GPU, measures perplexity, and compresses their linear layers with the
 * registered quantization methods (RTN, GPTQ, SpQR) into the registered
 * layer formats.
 *
 * Conventions
 *  - Every fallible function returns an spqr_status. On failure a one-line,
 *    human-readable description (naming the file and the problem) is kept per
 *    thread and returned by spqr_last_error().
 *  - Handles are opaque. Every *_load / *_new has a matching *_free, which
 *    accepts NULL.
 *  - Ownership: a pointer returned through an out-parameter documented as
 *    "owned by caller" must be released with spqr_free(). Pointers documented
 *    as "borrowed" stay valid until the handle they came from is freed.
 *  - The library never calls exit() and never prints. Diagnostics and
 *    progress go to the callback installed with spqr_set_log(), if any.
 */
#ifndef SPQR_H
#define SPQR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPQR_VERSION_MAJOR 0
#define SPQR_VERSION_MINOR 1
#define SPQR_VERSION_PATCH 0
#define SPQR_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */

typedef enum spqr_status {
    SPQR_OK = 0,
    SPQR_ERR_INVALID_ARG,  /* a caller-supplied argument is out of range      */
    SPQR_ERR_IO,           /* open/read/write/mmap/rename failed              */
    SPQR_ERR_FORMAT,       /* a file is malformed, truncated or inconsistent  */
    SPQR_ERR_UNSUPPORTED,  /* valid input we do not handle (architecture ...) */
    SPQR_ERR_MISMATCH,     /* two inputs disagree (dtype/shape vs config ...) */
    SPQR_ERR_NUMERIC,      /* NaN/Inf or a failed factorization               */
    SPQR_ERR_NOMEM,        /* allocation failed or size overflowed            */
    SPQR_ERR_CHECKSUM,     /* stored checksum does not match the data         */
    SPQR_ERR_NO_DEVICE,    /* no usable GPU, or too little GPU memory         */
    SPQR_ERR_INTERNAL      /* a bug: an invariant did not hold                */
} spqr_status;

/* Static string naming the status ("ok", "invalid argument", ...). */
const char *spqr_status_string(spqr_status s);

/* Detailed message of the last failure on this thread (static per thread,
 * borrowed; overwritten by the next failure). Never NULL. */
const char *spqr_last_error(void);

/* Release memory that the library documented as "owned by caller". */
void spqr_free(void *p);

/* ------------------------------------------------------------------------ */
/* Logging and progress (optional)                                           */

typedef enum spqr_log_level {
    SPQR_LOG_ERROR = 0,
    SPQR_LOG_WARN = 1,
    SPQR_LOG_INFO = 2,
    SPQR_LOG_DEBUG = 3
} spqr_log_level;

/* Install a process-wide callback for diagnostics at or below max_level.
 * cb == NULL (the default) silences the library. */
typedef void (*spqr_log_fn)(void *user, spqr_log_level level, const char *msg);
void spqr_set_log(spqr_log_fn cb, void *user, spqr_log_level max_level);

/* Build features, e.g. "blas=openblas simd=avx2,avx512 cuda=no". Static. */
const char *spqr_build_features(void);
/* The BLAS kernel set this process runs (OpenBLAS core name, e.g. "Haswell";
 * OPENBLAS_CORETYPE in the environment chooses it). */
const char *spqr_blas_core(void);

/* Number of worker threads used by multi-threaded kernels (0 = all cores). */
void spqr_set_num_threads(int n);

/* ------------------------------------------------------------------------ */
/* Models                                                                    */

typedef struct spqr_model spqr_model;
typedef struct spqr_tokenizer spqr_tokenizer;

typedef struct spqr_config {
    int dim;            /* hidden size                                       */
    int hidden_dim;     /* MLP intermediate size                             */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int vocab_size;
    int max_seq_len;    /* context length                                    */
    float norm_eps;
    float rope_theta;
    int rope_interleaved; /* 1: llama2.c pairs (2i,2i+1); 0: HF rotate-half  */
    int tied_embeddings;
    int bos_id, eos_id;
} spqr_config;

/* Load a model from a Hugging Face folder, a llama2.c .bin checkpoint or a
 * .spqr file (detected from the path and file contents). tokenizer_path may
 * be NULL: HF folders and .spqr files carry their own tokenizer; llama2.c
 * checkpoints need one (tokenizer.bin). On success *out is owned by caller. */
spqr_status spqr_model_load(const char *path, const char *tokenizer_path,
                            spqr_model **out);
void spqr_model_free(spqr_model *m);

/* Borrowed; valid while m lives. */
const spqr_config *spqr_model_config(const spqr_model *m);
/* Borrowed tokenizer of the model (NULL if the model has none). */
spqr_tokenizer *spqr_model_tokenizer(spqr_model *m);
/* Number of NaN/Inf values seen in the weights at load time (warned). */
int64_t spqr_model_nonfinite_count(const spqr_model *m);

/* Where the forward pass, sessions and evaluations of m run. SPQR_DEVICE_GPU
 * uploads the model to the CUDA device (layers of formats without GPU
 * kernels run dequantized); it fails with SPQR_ERR_NO_DEVICE when the build
 * has no CUDA, no device is usable or the model does not fit into free GPU
 * memory (SPQR_GPU_MEMORY_MIB caps what spqr may use); m then stays on its
 * previous device. SPQR_DEVICE_AUTO tries the GPU and falls back to the CPU,
 * logging the reason as a warning. Sessions created before a change keep
 * their device. */
typedef enum spqr_device { SPQR_DEVICE_CPU = 0, SPQR_DEVICE_GPU = 1, SPQR_DEVICE_AUTO = 2 } spqr_device;
spqr_status spqr_model_set_device(spqr_model *m, spqr_device dev);
/* SPQR_DEVICE_CPU or SPQR_DEVICE_GPU. */
spqr_device spqr_model_device(const spqr_model *m);

/* ------------------------------------------------------------------------ */
/* Tokenizers                                                                */

/* Load tokenizer.json, tokenizer.model (SentencePiece protobuf) or a llama2.c
 * tokenizer.bin (detected from contents). *out owned by caller. */
spqr_status spqr_tokenizer_load(const char *path, spqr_tokenizer **out);
void spqr_tokenizer_free(spqr_tokenizer *t);

int spqr_tokenizer_vocab_size(const spqr_tokenizer *t);

/* Encode text (len bytes, UTF-8) the way SentencePiece does: dummy prefix,
 * BPE merges, byte fallback; special-token strings in the text are treated
 * as plain text. If add_bos, ids[0] is BOS. *ids is owned by caller. */
spqr_status spqr_tokenizer_encode(const spqr_tokenizer *t, const char *text,
                                  size_t len, int add_bos, int32_t **ids,
                                  size_t *n_ids);

/* The bytes a token prints as when it follows prev_id (llama2.c/SentencePiece
 * decoding: a leading space is dropped after BOS, byte tokens give their
 * byte). Borrowed; *len receives the byte count. */
const char *spqr_tokenizer_decode(const spqr_tokenizer *t, int32_t prev_id,
                                  int32_t id, size_t *len);

/* ------------------------------------------------------------------------ */
/* Inference                                                                 */

/* Full-sequence forward (prefill): logits[n_tokens][vocab] for tokens at
 * positions 0..n-1. logits is caller-allocated. */
spqr_status spqr_forward(spqr_model *m, const int32_t *tokens, int n_tokens,
                         float *logits);

/* KV-cached incremental decoding. */
typedef struct spqr_session spqr_session;
spqr_status spqr_session_new(spqr_model *m, spqr_session **out);
void spqr_session_free(spqr_session *s);
/* Feed one token at the next position; *logits (borrowed, vocab floats)
 * stays valid until the next call. */
spqr_status spqr_session_step(spqr_session *s, int32_t token,
                              const float **logits);
int spqr_session_pos(const spqr_session *s);

/* ------------------------------------------------------------------------ */
/* Evaluation                                                                */

typedef struct spqr_ppl_result {
    double nll;            /* mean negative log-likelihood, nats/token */
    double ppl;            /* exp(nll)                                 */
    int64_t tokens_scored;
    int64_t tokens_total;  /* BOS + text tokens                        */
    int64_t windows;
    double seconds;
} spqr_ppl_result;

/* Perplexity by the usual non-overlapping-window protocol: CRLF->LF, one BOS, the ids of
 * the whole text, non-overlapping windows of seqlen tokens from the start,
 * every next-token target in a window scored, the remainder dropped. */
spqr_status spqr_eval_perplexity(spqr_model *m, const char *text, size_t len,
                                 int seqlen, spqr_ppl_result *res);

/* Perplexity over already-tokenized ids (ids[0] = BOS) with the protocol of
 * spqr_eval_perplexity: windows of seqlen tokens from the start, remainder
 * dropped. max_windows > 0 scores only the first max_windows windows.
 * progress (optional) is called with (done, total) windows. res->tokens_total
 * is n_ids. */
typedef void (*spqr_progress_fn)(void *user, int64_t done, int64_t total);
spqr_status spqr_eval_perplexity_ids(spqr_model *m, const int32_t *ids, size_t n_ids, int seqlen,
                                     int64_t max_windows, spqr_ppl_result *res, spqr_progress_fn progress,
                                     void *user);

/* The ids that spqr_eval_perplexity scores: CRLF->LF, BOS, then the text's
 * ids. *ids owned by caller. */
spqr_status spqr_eval_tokenize(spqr_model *m, const char *text, size_t len, int32_t **ids, size_t *n_ids);

/* ------------------------------------------------------------------------ */
/* Quantization                                                              */

/* Registered methods ("rtn", "gptq", "spqr", ...) and their options. */
int spqr_quantizer_method_count(void);
const char *spqr_quantizer_method_name(int i);    /* NULL when out of range */
const char *spqr_quantizer_method_summary(int i);
int spqr_quantizer_method_option_count(int i);
/* Option j of method i: its name (without dashes), help line, and whether it
 * takes a value (flags do not). */
spqr_status spqr_quantizer_method_option(int i, int j, const char **name, const char **help, int *takes_value);

typedef struct spqr_quant_config spqr_quant_config;
/* A configuration for method `method` with its defaults and the calibration
 * defaults (128 windows, S = min(2048, context), seed 0, no calibration
 * file). *out owned by caller. */
spqr_status spqr_quant_config_new(const char *method, spqr_quant_config **out);
void spqr_quant_config_free(spqr_quant_config *c);
/* Set an option by name (without dashes) from text: the method's own options
 * or the calibration options "calib" (file), "nsamples", "seqlen", "seed".
 * value is ignored for flags. SPQR_ERR_INVALID_ARG names a bad option. */
spqr_status spqr_quant_config_set(spqr_quant_config *c, const char *name, const char *value);
/* 1: the option takes a value, 0: a flag, -1: no such option. */
int spqr_quant_config_takes_value(const spqr_quant_config *c, const char *name);
/* The effective parameters as a JSON object text ({"method": ..., the
 * method's parameters, the calibration options}). *json owned by caller. */
spqr_status spqr_quant_config_describe(const spqr_quant_config *c, char **json);

typedef struct spqr_quant_progress {
    int block, n_blocks;
    const char *stage;         /* non-NULL: a stage of the block began ("attention q/k/v", ...) */
    const char *layer;         /* non-NULL: this layer is done ("q_proj", ...)                  */
    int rows, cols;
    double weight_rel_err, hessian_rel_err, outlier_share;
    double formula_bits, real_bits;
    double seconds;            /* this layer's time                                             */
    double elapsed, eta;       /* whole run so far / estimated remaining                        */
    const char *note;          /* non-NULL: a message worth keeping on screen (e.g. block tuning
                                  put the untuned parameters back because the loss rose)         */
} spqr_quant_progress;
typedef void (*spqr_quant_progress_fn)(void *user, const spqr_quant_progress *p);
void spqr_quant_config_set_progress(spqr_quant_config *c, spqr_quant_progress_fn fn, void *user);

typedef struct spqr_quant_summary {
    int64_t quantized_params;
    int64_t quantized_bytes;   /* stored bytes of every quantized layer   */
    int64_t n_outliers;
    double avg_bits_formula;   /* the method's formula, parameter-weighted */
    double avg_bits_real;      /* 8 * quantized_bytes / quantized_params  */
    double outlier_share;
    double seconds;
    double calib_tokens;
    /* block tuning (--tune block): blocks tuned, blocks whose tuned values were
       kept (the others got their untuned values back), seconds spent, and the
       calibration MSE of the blocks' outputs summed over blocks before / after */
    int tuned_blocks, tuned_blocks_kept;
    double tune_seconds, tune_loss_before, tune_loss_after;
    double spilled_bytes;      /* calibration streams kept in a temporary file (over the
                                  memory cap $SPQR_STREAM_MIB, default half of RAM), else 0 */
} spqr_quant_summary;

/* Quantize every linear layer of m (a model loaded from a Hugging Face
 * folder or a llama2.c checkpoint) and write the .spqr file out_path
 * (through a temporary file renamed on success: nothing is left behind on
 * failure). m's weights are unchanged afterwards. */
spqr_status spqr_quantize(spqr_model *m, const spqr_quant_config *c, const char *out_path,
                          spqr_quant_summary *sum);

/* ------------------------------------------------------------------------ */
/* Inspecting .spqr files                                                    */

typedef struct spqr_layer_info {
    char name[64];             /* "blk.0.q_proj"                                  */
    char layout[32];           /* its format ("spqr", ...)                         */
    char params[96];           /* the format's short description                  */
    int rows, cols;
    int64_t n_outliers;
    int64_t bytes;
    double formula_bits, real_bits;
} spqr_layer_info;

typedef struct spqr_file_info {
    uint64_t file_bytes;
    int version_major, version_minor; /* container version                        */
    int model_layout;                 /* model layout version (1, 2, 3, ...)       */
    size_t n_tensors;
    int verified;                     /* every checksum was checked                */
    char *config_json, *provenance_json; /* JSON object texts ("{}" when absent)  */
    int n_layers;                     /* quantized layers                          */
    spqr_layer_info *layers;
    int64_t quantized_params, quantized_bytes, n_outliers;
    double avg_bits_formula, avg_bits_real;
    /* XXH3-64 over the file's content apart from wall-clock fields: the
     * metadata JSON with provenance "seconds" removed (printed canonically),
     * then every tensor's name, dtype, shape and data bytes in directory
     * order. Two runs that produced the same model give the same digest. */
    uint64_t content_digest;
} spqr_file_info;

/* Describe a .spqr file from the tensors actually stored (every layer is
 * opened and validated through its format); verify also checks every
 * tensor's checksum. *out owned by caller, release with spqr_file_info_free. */
spqr_status spqr_inspect_file(const char *path, int verify, spqr_file_info **out);
void spqr_file_info_free(spqr_file_info *info);

/* ------------------------------------------------------------------------ */
/* Zero-shot evaluation (LM Evaluation Harness loglikelihood scoring)        */

/* A task: documents of loglikelihood requests, read from a .jsonl file with
 * one JSON object per line (blank lines skipped):
 *   {"requests": [[context, continuation], ...], "gold": G, "choice_chars": [c0, ...]}
 * "requests" is a non-empty array of [string, string]; "gold" (the index of
 * the correct request) and "choice_chars" (each choice's length in Unicode
 * code points, >= 1, the divisor of acc_norm) are optional, but either every
 * document has "gold" (a multiple-choice task) or none has (a greedy task
 * like LAMBADA: exactly one request per document). */
typedef struct spqr_task spqr_task;

typedef enum spqr_task_kind {
    SPQR_TASK_CHOICE = 0, /* acc = argmax of loglikelihoods is gold; acc_norm too when
                             every document has choice_chars and one shared context */
    SPQR_TASK_GREEDY = 1  /* acc = every continuation token is the greedy choice; ppl */
} spqr_task_kind;

/* Load and validate a task file. Errors name the file, the line and the
 * problem (bad JSON, missing field, gold out of range, empty requests ...).
 * The task's name is the file name without directory and ".jsonl".
 * *out owned by caller. */
spqr_status spqr_task_load(const char *path, spqr_task **out);
void spqr_task_free(spqr_task *t);
const char *spqr_task_name(const spqr_task *t); /* borrowed */
spqr_task_kind spqr_task_get_kind(const spqr_task *t);
int spqr_task_has_acc_norm(const spqr_task *t);
int64_t spqr_task_num_docs(const spqr_task *t);
int64_t spqr_task_num_requests(const spqr_task *t);

typedef struct spqr_zeroshot_options {
    int64_t limit;   /* evaluate the first `limit` documents (0 = all)            */
    int add_bos;     /* 1 (default): both encodings start with BOS, as the LLaMA
                        tokenizer adds it (lm-eval >= 0.4.9.2); 0: no BOS (older
                        lm-eval)                                                   */
    int use_gpu;     /* 1: move the model to the CUDA device first
                        (spqr_model_set_device); SPQR_ERR_NO_DEVICE (before any
                        work) when none is usable, so callers can fall back. A
                        model already on the GPU is evaluated there anyway.      */
    int naive;       /* 1: the slow reference path: every request is its own full
                        forward pass (spqr_forward) with logits at every position */
    int keep_requests; /* 1: fill res->requests                                   */
    /* progress (optional): called after each batch with requests done/total   */
    void (*progress)(void *user, int64_t done, int64_t total);
    void *progress_user;
} spqr_zeroshot_options;

/* Defaults: everything 0 except add_bos = 1. */
void spqr_zeroshot_options_init(spqr_zeroshot_options *o);

typedef struct spqr_zeroshot_request {
    double loglik;     /* sum of log-softmax of the continuation tokens          */
    int greedy;        /* every continuation token was the argmax                */
    int ctx_tokens;    /* ids of the context encoding (with BOS)                 */
    int cont_tokens;   /* ids scored                                             */
    int prefix_ok;     /* the context's ids were a prefix of the joint encoding  */
} spqr_zeroshot_request;

typedef struct spqr_zeroshot_result {
    int64_t n;               /* documents evaluated                                 */
    int64_t n_requests;
    double acc, acc_stderr;  /* stderr = sqrt(acc (1 - acc) / (n - 1))              */
    int has_acc_norm;
    double acc_norm, acc_norm_stderr;
    int has_ppl;             /* greedy tasks: ppl = exp(-mean loglikelihood)        */
    double ppl;
    int64_t tokens_run;      /* tokens that went through the model                  */
    int64_t tokens_naive;    /* tokens a per-request evaluation would run           */
    int64_t nonprefix;       /* requests whose context ids were not a prefix of the
                                joint ids (the continuation is then joint[len(ctx):],
                                as lm-eval takes it)                                 */
    double seconds;
    spqr_zeroshot_request *requests; /* keep_requests: [n_requests] in file order,
                                        owned by caller (spqr_free), else NULL     */
} spqr_zeroshot_result;

/* Evaluate m on t with lm-eval's conventions: trailing whitespace of a
 * context moves to its continuation; continuation ids = encode(context +
 * continuation) without the first len(encode(context)) ids; the model reads
 * context ids + continuation ids, cut from the left to its context length;
 * loglikelihood = sum of log-softmax of the continuation tokens. acc and
 * acc_norm break ties toward the lowest index. Needs the model's tokenizer.
 * Requests of one document with the same context share its forward pass
 * and many documents go through the model together; opts->naive computes
 * each request separately instead. opts may be NULL (defaults). */
spqr_status spqr_zeroshot_eval(spqr_model *m, const spqr_task *t, const spqr_zeroshot_options *opts,
                               spqr_zeroshot_result *res);

/* Which metric of a task enters the paper mean (the five tasks of the SpQR
 * paper's zero-shot table): 1 = acc (winogrande, piqa, arc_easy),
 * 2 = acc_norm (arc_challenge, hellaswag), 0 = not one of them. */
int spqr_zeroshot_paper_metric(const char *task_name);

#ifdef __cplusplus
}
#endif
#endif /* SPQR_H */
