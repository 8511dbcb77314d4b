/* container.h - the generic .spqr container: a JSON metadata blob plus a
 * directory of named, typed, shaped binary tensors (docs/FORMAT.md).
 *
 * Writer: tensors are streamed to a temporary file beside the final path as
 * they are added (only the directory is kept in memory), and finish() writes
 * the directory, metadata and header, fsyncs and renames into place. On any
 * error the temporary file is removed and the final path is left untouched.
 *
 * Reader: open() maps the file and validates its whole structure (header,
 * section ranges, every directory record, tensor ranges, metadata JSON and
 * the header checksum) before returning. Per-tensor data checksums are only
 * checked by spqr_container_verify(), which reads every byte. An open
 * container is immutable: any number of threads may read it concurrently.
 * A writer must be used by one thread at a time.
 */
#ifndef SPQR_CONTAINER_H
#define SPQR_CONTAINER_H

#include "../util/common.h"

#define SPQR_CONTAINER_VERSION_MAJOR 1
#define SPQR_CONTAINER_VERSION_MINOR 0
#define SPQR_CONTAINER_MAX_NDIM 8
#define SPQR_CONTAINER_MAX_NAME 1024 /* bytes, excluding the terminating NUL */
#define SPQR_CONTAINER_ALIGN 64      /* every tensor's data offset         */
#define SPQR_CONTAINER_HEADER_SIZE 128

/* ---- writer ---------------------------------------------------------------- */

typedef struct spqr_cwriter spqr_cwriter;

/* Create final_path + ".tmp.XXXXXX" (mkstemp) in the directory of final_path
 * and write a placeholder header. On success *w is owned by the caller and
 * must be passed to spqr_cwriter_finish() or spqr_cwriter_abort(). */
spqr_status spqr_cwriter_open(const char *final_path, spqr_cwriter **w);

/* Append one tensor. name: non-empty UTF-8, at most SPQR_CONTAINER_MAX_NAME
 * bytes, unique within the file. 0 <= ndim <= SPQR_CONTAINER_MAX_NDIM (ndim 0
 * is a scalar); nbytes must equal prod(dims) * spqr_dtype_size(dt); data may
 * be NULL only when nbytes == 0. The bytes are written (and hashed) before
 * the call returns, so the caller may free them at once.
 * Any failure (bad argument, duplicate name, I/O error) is sticky: the writer
 * refuses further adds and finish() fails, so an incomplete file can never
 * be published. The caller still calls finish() or abort() to release it. */
spqr_status spqr_cwriter_add(spqr_cwriter *w, const char *name, spqr_dtype dt,
                             int ndim, const uint64_t *dims, const void *data,
                             size_t nbytes);

/* Set (or replace) the metadata: a UTF-8 JSON object. Copied. May be called
 * any time before finish(); without it the file gets "{}". An invalid
 * document is rejected with SPQR_ERR_INVALID_ARG (not sticky). */
spqr_status spqr_cwriter_set_metadata(spqr_cwriter *w, const char *json);

/* Write directory, metadata and header, fsync, rename onto final_path.
 * Always releases w (on success and on failure). On failure the temporary
 * file is removed and final_path is untouched. */
spqr_status spqr_cwriter_finish(spqr_cwriter *w);

/* Remove the temporary file and release w. Accepts NULL. */
void spqr_cwriter_abort(spqr_cwriter *w);

/* Path of the temporary file (borrowed; for tests and messages). */
const char *spqr_cwriter_temp_path(const spqr_cwriter *w);

/* ---- reader ---------------------------------------------------------------- */

typedef struct spqr_container spqr_container;

typedef struct spqr_ctensor {
    const char *name;      /* borrowed, NUL-terminated                       */
    spqr_dtype dtype;
    int ndim;              /* 0..SPQR_CONTAINER_MAX_NDIM                      */
    uint64_t dims[SPQR_CONTAINER_MAX_NDIM]; /* entries past ndim are 0        */
    const void *data;      /* borrowed pointer into the mapping (64-byte
                              aligned when the file is mapped)               */
    size_t nbytes;         /* == prod(dims) * spqr_dtype_size(dtype)          */
    uint64_t checksum;     /* stored XXH3-64 of the data                      */
} spqr_ctensor;

/* Map path and validate everything but the per-tensor data checksums.
 * On success *c is owned by the caller (spqr_container_close). Errors are
 * SPQR_ERR_IO (cannot open/map), SPQR_ERR_FORMAT (malformed, truncated,
 * inconsistent), SPQR_ERR_UNSUPPORTED (newer major format version),
 * SPQR_ERR_CHECKSUM (header checksum), SPQR_ERR_NOMEM. */
spqr_status spqr_container_open(const char *path, spqr_container **c);
void spqr_container_close(spqr_container *c); /* accepts NULL */

/* Check every tensor's data against its stored checksum. On a mismatch
 * returns SPQR_ERR_CHECKSUM naming the (first) bad tensor, and copies its
 * name into bad_name (truncated to n-1 bytes, NUL-terminated) if
 * bad_name != NULL and n > 0. */
spqr_status spqr_container_verify(const spqr_container *c, char *bad_name, size_t n);

/* Metadata JSON text (borrowed, NUL-terminated, a validated JSON object). */
const char *spqr_container_metadata(const spqr_container *c);
size_t spqr_container_count(const spqr_container *c);
/* Tensor i in file (directory) order; SPQR_ERR_INVALID_ARG if out of range. */
spqr_status spqr_container_tensor(const spqr_container *c, size_t i, spqr_ctensor *out);
/* Tensor by exact name; SPQR_ERR_FORMAT "<file>: no tensor named 'x'" if
 * absent. O(log n). */
spqr_status spqr_container_find(const spqr_container *c, const char *name, spqr_ctensor *out);
/* Index of the tensor called name, or -1 (sets no error). O(log n). */
long spqr_container_index(const spqr_container *c, const char *name);
uint64_t spqr_container_file_size(const spqr_container *c);
/* Format version the file was written with. */
void spqr_container_version(const spqr_container *c, int *major, int *minor);
/* File name used in messages (borrowed). */
const char *spqr_container_path(const spqr_container *c);

/* ---- internal -------------------------------------------------------------- */

/* Skip the header checksum (fuzzing only: lets mutated inputs reach the
 * deeper checks and verify()). */
#define SPQR_CONTAINER_NO_HEADER_CHECKSUM 1u

/* Validate an in-memory image of a .spqr file; open() uses this on the
 * mapping. data is borrowed and must outlive *c; name is used in messages
 * (copied). flags: 0 or SPQR_CONTAINER_NO_HEADER_CHECKSUM. */
spqr_status spqr_container_open_mem(const void *data, size_t size, const char *name,
                                    unsigned flags, spqr_container **c);

#endif
