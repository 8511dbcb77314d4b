/* tinyhf.h - a tiny synthetic Hugging Face LLaMA folder for tests:
 * dim 16, hidden 32, 1 layer, 2 heads, 1 kv head, vocab 512, no tokenizer,
 * weights 0.1 x N(0,1) (seeded), norms 1, optionally f16 storage and an
 * untied head (lm_head = 2 x embeddings), optionally with one defect. */
#ifndef SPQR_TINYHF_H
#define SPQR_TINYHF_H

#define TD 16
#define TF 32
#define TV 512
#define TKV 8

enum { OK_MODEL, TRUNCATED, HUGE_HEADER, OVERLAP, OUT_OF_RANGE, NAN_WEIGHT, WRONG_SHAPE, WRONG_DTYPE, MISALIGNED };

/* variants for the next tiny_model call: f16 storage, separate lm_head */
extern int g_f16, g_untied;

/* Write tu_tmpdir()/tag/{config.json, model.safetensors}; returns the folder
 * (static buffer). dtype is config.json's torch_dtype string. */
const char *make_model(const char *tag, int defect, const char *arch, const char *dtype);

#endif
