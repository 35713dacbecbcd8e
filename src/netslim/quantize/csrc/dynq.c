/* Dynamic activation quantization for netslim.quantize.dynamic (CPU only).
 *
 * torch.quantize_per_tensor takes fp32 only and returns a quantized tensor whose codes need
 * one more copy (int_repr): three passes over the activations per int8 Linear, four for a
 * bf16 input (cast first). At MiniLM's shapes those passes cost about as much as the int8
 * GEMM itself. These kernels read fp32 or bf16 as stored and write the uint8 codes oneDNN's
 * qlinear takes directly:
 *
 *   minmax:     lo = min(x, 0), hi = max(x, 0) over n elements (one pass, a reduction)
 *   quant_u8:   q = clamp(rne(x * inv_scale) + zero, 0, 255)        (one pass)
 *   rows_u8:    per row r of (m, k): s_r = max|x_r| / 127 (floored at 1e-12),
 *               q = rne(x / s_r) + 128 in [1, 255] - one pass, the row stays in L1
 *
 * rne() is round half to even, the rounding of torch's quantize kernels; the product
 * x * inv_scale (FMA-contracted at -O3) can still put a code one step from torch's near a
 * tie (about 5 in a million on random data). Built by
 * netslim.core.native with -O3 -march=native -fopenmp; called through ctypes.
 */
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;  /* bf16 is the top half of an fp32 */
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* round half to even for |v| < 2^22: adding 1.5 * 2^23 leaves no fraction bits, so the FPU
 * rounds in its default mode (nearest even); exact for the |v| <= 255 + 255 used here */
static inline float rne(float v) { return (v + 12582912.0f) - 12582912.0f; }

#define MINMAX_BODY(LOAD)                                                                    \
    float lo = 0.f, hi = 0.f;                                                                \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) reduction(min:lo) reduction(max:hi)") \
    for (int64_t i = 0; i < n; ++i) {                                                        \
        const float v = LOAD;                                                                \
        lo = v < lo ? v : lo;                                                                \
        hi = v > hi ? v : hi;                                                                \
    }                                                                                        \
    lohi[0] = lo;                                                                            \
    lohi[1] = hi;

void netslim_minmax_f32(int64_t n, const float *x, float *lohi, int nthreads) { MINMAX_BODY(x[i]) }
void netslim_minmax_bf16(int64_t n, const uint16_t *x, float *lohi, int nthreads) {
    MINMAX_BODY(bf16_to_f32(x[i]))
}

#define QUANT_BODY(LOAD)                                                                     \
    const float zf = (float)zero;                                                            \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                       \
    for (int64_t i = 0; i < n; ++i) {                                                        \
        float v = rne(LOAD * inv_scale) + zf;                                                \
        v = v < 0.f ? 0.f : (v > 255.f ? 255.f : v);                                         \
        q[i] = (uint8_t)v;                                                                   \
    }

void netslim_quant_u8_f32(int64_t n, const float *x, float inv_scale, int zero, uint8_t *q, int nthreads) {
    QUANT_BODY(x[i])
}
void netslim_quant_u8_bf16(int64_t n, const uint16_t *x, float inv_scale, int zero, uint8_t *q, int nthreads) {
    QUANT_BODY(bf16_to_f32(x[i]))
}

#define ROWS_BODY(LOAD)                                                                      \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                       \
    for (int64_t r = 0; r < m; ++r) {                                                        \
        const int64_t o = r * k;                                                             \
        float amax = 0.f;                                                                    \
        for (int64_t j = 0; j < k; ++j) {                                                    \
            const float v = LOAD(o + j);                                                     \
            const float a = v < 0.f ? -v : v;                                                \
            amax = a > amax ? a : amax;                                                      \
        }                                                                                    \
        const float s = (amax > 1e-12f ? amax : 1e-12f) / 127.f;                             \
        const float inv = 1.f / s;                                                           \
        scales[r] = s;                                                                       \
        for (int64_t j = 0; j < k; ++j) {                                                    \
            float v = rne(LOAD(o + j) * inv);                                                \
            v = v < -127.f ? -127.f : (v > 127.f ? 127.f : v);                               \
            q[o + j] = (uint8_t)(v + 128.f);                                                 \
        }                                                                                    \
    }

#define LOAD_F32(i) x[i]
#define LOAD_BF16(i) bf16_to_f32(x[i])

void netslim_rows_u8_f32(int64_t m, int64_t k, const float *x, uint8_t *q, float *scales, int nthreads) {
    ROWS_BODY(LOAD_F32)
}
void netslim_rows_u8_bf16(int64_t m, int64_t k, const uint16_t *x, uint8_t *q, float *scales, int nthreads) {
    ROWS_BODY(LOAD_BF16)
}
