/* spill.c - large scratch arrays backed by a temporary file (common.h):
 * an unlinked file in $TMPDIR (or /tmp), sized with ftruncate and mapped
 * shared, so the kernel writes cold pages to the file instead of keeping
 * them in RAM. Used for the calibration activation streams when they do not
 * fit the memory cap (quant/calibrate.c). */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

spqr_status spqr_spill_alloc(size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) return spqr_fail(SPQR_ERR_INVALID_ARG, "spill: empty array");
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    char *path = spqr_path_join(dir, "spqr-spill-XXXXXX");
    if (!path) return spqr_fail(SPQR_ERR_NOMEM, "out of memory");
    int fd = mkstemp(path);
    if (fd < 0) {
        spqr_status st = spqr_fail(SPQR_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
        free(path);
        return st;
    }
    unlink(path); /* gone when unmapped, even after a crash */
    spqr_status st = SPQR_OK;
    if ((off_t)bytes < 0 || (size_t)(off_t)bytes != bytes || ftruncate(fd, (off_t)bytes) != 0)
        st = spqr_fail(SPQR_ERR_IO, "%s: cannot make a %zu-byte temporary file: %s", path, bytes, strerror(errno));
    void *p = st ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (!st && p == MAP_FAILED) st = spqr_fail(SPQR_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, bytes, strerror(errno));
    close(fd);
    free(path);
    if (!st) *out = p;
    return st;
}

void spqr_spill_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes);
}

size_t spqr_stream_cap_bytes(void) {
    const char *e = getenv("SPQR_STREAM_MIB");
    if (e && *e) {
        char *end = NULL;
        unsigned long long v = strtoull(e, &end, 10);
        if (end && *end == '\0') return v > (SIZE_MAX >> 20) ? SIZE_MAX : (size_t)v << 20;
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return SIZE_MAX;
    return (size_t)pages / 2 * (size_t)page; /* half the machine's memory */
}
