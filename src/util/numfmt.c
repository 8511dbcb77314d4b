/* numfmt.c - half precision conversion and dtype helpers. */
#include "common.h"

float spqr_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalize */
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400u) == 0);
            man &= 0x3ffu;
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t spqr_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (absu < 0x38800000u) { /* subnormal or zero in half */
        if (absu < 0x33000000u) return (uint16_t)sign; /* < half of min subnormal */
        uint32_t e = absu >> 23;
        uint32_t man = (absu & 0x7fffffu) | 0x800000u;
        /* value = man * 2^(e-150); in half subnormal units (2^-24): man >> (126-e) */
        uint32_t shift = 126 - e;
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u); /* round to nearest even */
    r -= 0x38000000u; /* rebias 127 -> 15 */
    return (uint16_t)(sign | (r >> 13));
}

size_t spqr_dtype_size(spqr_dtype dt) {
    switch (dt) {
    case SPQR_DT_F32: return 4;
    case SPQR_DT_F16: return 2;
    case SPQR_DT_BF16: return 2;
    case SPQR_DT_U8: return 1;
    case SPQR_DT_I32: return 4;
    case SPQR_DT_U16: return 2;
    case SPQR_DT_U32: return 4;
    default: return 0;
    }
}

const char *spqr_dtype_name(spqr_dtype dt) {
    switch (dt) {
    case SPQR_DT_F32: return "F32";
    case SPQR_DT_F16: return "F16";
    case SPQR_DT_BF16: return "BF16";
    case SPQR_DT_U8: return "U8";
    case SPQR_DT_I32: return "I32";
    case SPQR_DT_U16: return "U16";
    case SPQR_DT_U32: return "U32";
    default: return "?";
    }
}

void spqr_to_f32(const void *src, spqr_dtype dt, size_t n, float *dst) {
    if (dt == SPQR_DT_F32) {
        memmove(dst, src, n * 4);
    } else if (dt == SPQR_DT_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = spqr_bf16_to_f32(s[i]);
    } else if (dt == SPQR_DT_F16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = spqr_f16_to_f32(s[i]);
    }
}
