/* safetensors.h - reader for (sharded) safetensors checkpoints. */
#ifndef SPQR_SAFETENSORS_H
#define SPQR_SAFETENSORS_H

#include "../util/common.h"

typedef struct spqr_st_tensor {
    char *name;
    spqr_dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data; /* points into the mapped file */
    size_t nbytes;
    int file;         /* index into the set's files */
} spqr_st_tensor;

typedef struct spqr_st_set {
    spqr_mmap *files;
    int n_files;
    spqr_st_tensor *tensors;
    size_t n_tensors;
} spqr_st_set;

/* Open a folder's model.safetensors, or model.safetensors.index.json and
 * every shard it names. Validates headers, offsets and sizes. */
spqr_status spqr_st_open_dir(const char *dir, spqr_st_set *set);
/* Open one .safetensors file and append its tensors to set. */
spqr_status spqr_st_add_file(spqr_st_set *set, const char *path);
void spqr_st_close(spqr_st_set *set);
const spqr_st_tensor *spqr_st_find(const spqr_st_set *set, const char *name);

#endif
