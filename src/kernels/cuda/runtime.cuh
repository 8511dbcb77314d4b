/* runtime.cuh - device state and error mapping shared by the SpQR CUDA
 * host code (runtime.cu, spqr_cuda.cu). */
#ifndef SPQR_CUDA_RUNTIME_CUH
#define SPQR_CUDA_RUNTIME_CUH

#include <cuda_runtime.h>

#include <mutex>

extern "C" {
#include "util/common.h"
}

/* guards the device state below, the qgemm scratch buffers and cuBLAS */
extern std::mutex g_mu;
extern cudaDeviceProp g_prop; /* of the current device, once dev_init succeeded */

/* SPQR_OK once a usable device (sm_80 or newer) was found; call with g_mu held */
spqr_status dev_init(void);

/* SPQR_ERR_NO_DEVICE naming the failed call (clears a non-sticky error) */
spqr_status cuda_fail(cudaError_t e, const char *what);
#define CK(call, what)                                     \
    do {                                                   \
        cudaError_t e_ = (call);                           \
        if (e_ != cudaSuccess) return cuda_fail(e_, what); \
    } while (0)

#endif /* SPQR_CUDA_RUNTIME_CUH */
