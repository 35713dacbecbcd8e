/* Dynamic activation quantization for netslim.quantize.dynamic (CPU only).
 *
 * torch.quantize_per_tensor takes fp32 only and returns a quantized tensor whose codes need
 * one more copy (int_repr): three passes over the activations per int8 Linear, four for a
 * bf16 input (cast first). At MiniLM's shapes those passes cost about as much as the int8
 * GEMM itself. These kernels read fp32 or bf16 as stored and write the uint8 codes oneDNN's
 * qlinear takes directly:
 *
 *   dynq_u8:    per tensor, one call: lo = min(x, 0), hi = max(x, 0); (scale, zero) as
 *               act_quant.u8_qparams; q = clamp(rne(x * (float)(1 / scale)) + zero, 0, 255)
 *   rows_u8:    per row r of (m, k): s_r = max|x_r| / 127 (floored at 1e-12),
 *               q = rne(x / s_r) + 128 in [1, 255] - one pass, the row stays in L1
 *
 * Inputs under 2 x GRAIN elements run on the calling thread (no parallel region).
 * rne() is round half to even, the rounding of torch's quantize kernels; the product
 * x * inv_scale (FMA-contracted at -O3) can still put a code one step from torch's near a
 * tie (about 5 in a million on random data). Built by
 * netslim.core.native with -O3 -march=native -fopenmp; called through ctypes.
 */
#include <math.h>
#include <omp.h>
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

/* Per tensor, one call per activation (what netslim_dynq_u8_* do): min/max, the (scale, zero)
 * of act_quant.u8_qparams, then the codes. Each thread quantizes the chunk it scanned, while it
 * is still in cache; inputs under 2 x GRAIN elements (a batch-1 activation of a small
 * transformer: 22 tokens x 384 = 8,448) run on the calling thread with no parallel region at
 * all: its wake-up and barrier cost more than the scan (ATen's at::parallel_for uses the same
 * grain). */
#define GRAIN 32768
#define MAX_THREADS 256

/* scale = max((hi - lo) / 255, 1e-8), zero = round-half-even(-lo / scale) in [0, 255], in
 * double as Python computes them (lo <= 0 <= hi); the quantize loop multiplies by the float32
 * reciprocal, as torch's quantize kernel does */
static void u8_qparams(float lo, float hi, double *scale, int *zero, float *inv) {
    double s = ((double)hi - (double)lo) / 255.0;
    s = s > 1e-8 ? s : 1e-8;
    double z = nearbyint(-(double)lo / s);
    *scale = s;
    *zero = (int)(z < 0.0 ? 0.0 : (z > 255.0 ? 255.0 : z));
    *inv = (float)(1.0 / s);
}

/* serial scans with 16 independent lanes, so that -O3 vectorises them (a single running
 * min / max is a loop-carried dependency it keeps scalar) */
#define RANGE_FN(NAME, T, LOAD)                                                              \
    static void NAME(const T *x, int64_t b, int64_t e, float *lo_out, float *hi_out) {       \
        float lo[16] = {0}, hi[16] = {0};                                                    \
        int64_t i = b;                                                                       \
        for (; i + 16 <= e; i += 16)                                                         \
            for (int j = 0; j < 16; ++j) {                                                   \
                const float v = LOAD(i + j);                                                 \
                lo[j] = v < lo[j] ? v : lo[j];                                               \
                hi[j] = v > hi[j] ? v : hi[j];                                               \
            }                                                                                \
        float l = 0.f, h = 0.f;                                                              \
        for (int j = 0; j < 16; ++j) {                                                       \
            l = lo[j] < l ? lo[j] : l;                                                       \
            h = hi[j] > h ? hi[j] : h;                                                       \
        }                                                                                    \
        for (; i < e; ++i) {                                                                 \
            const float v = LOAD(i);                                                         \
            l = v < l ? v : l;                                                               \
            h = v > h ? v : h;                                                               \
        }                                                                                    \
        *lo_out = l;                                                                         \
        *hi_out = h;                                                                         \
    }

#define QUANT_FN(NAME, T, LOAD)                                                              \
    static void NAME(const T *x, int64_t b, int64_t e, float inv_scale, int zero, uint8_t *q) { \
        const float zf = (float)zero;                                                        \
        for (int64_t i = b; i < e; ++i) {                                                    \
            float v = rne(LOAD(i) * inv_scale) + zf;                                         \
            v = v < 0.f ? 0.f : (v > 255.f ? 255.f : v);                                     \
            q[i] = (uint8_t)v;                                                               \
        }                                                                                    \
    }

/* netslim_dynq_u8_*(n, x, q, qparams, nthreads): codes of x's n elements into q and
 * qparams[0] = scale, qparams[1] = zero point */
#define DYNQ_FN(NAME, T, RANGE, QUANT)                                                       \
    void NAME(int64_t n, const T *x, uint8_t *q, double *qparams, int nthreads) {            \
        int64_t nt = n / GRAIN;                                                              \
        nt = nt < nthreads ? nt : nthreads;                                                  \
        nt = nt < MAX_THREADS ? nt : MAX_THREADS;                                            \
        double scale;                                                                        \
        int zero;                                                                            \
        float inv, lo, hi;                                                                   \
        if (nt < 2) {                                                                        \
            RANGE(x, 0, n, &lo, &hi);                                                        \
            u8_qparams(lo, hi, &scale, &zero, &inv);                                         \
            QUANT(x, 0, n, inv, zero, q);                                                    \
        } else {                                                                             \
            float los[MAX_THREADS], his[MAX_THREADS];                                        \
            _Pragma("omp parallel num_threads(nt)")                                          \
            {                                                                                \
                const int t = omp_get_thread_num(), T_ = omp_get_num_threads();              \
                const int64_t b = n * t / T_, e = n * (t + 1) / T_;                          \
                RANGE(x, b, e, &los[t], &his[t]);                                            \
                _Pragma("omp barrier")                                                       \
                _Pragma("omp single")                                                        \
                {                                                                            \
                    lo = 0.f, hi = 0.f;                                                      \
                    for (int j = 0; j < T_; ++j) {                                           \
                        lo = los[j] < lo ? los[j] : lo;                                      \
                        hi = his[j] > hi ? his[j] : hi;                                      \
                    }                                                                        \
                    u8_qparams(lo, hi, &scale, &zero, &inv);                                 \
                } /* the single's implicit barrier publishes scale, zero, inv */             \
                QUANT(x, b, e, inv, zero, q);                                                \
            }                                                                                \
        }                                                                                    \
        qparams[0] = scale;                                                                  \
        qparams[1] = (double)zero;                                                           \
    }

#define ROWS_BODY(LOAD)                                                                      \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if(m * k >= 2 * GRAIN)") \
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

RANGE_FN(range_f32, float, LOAD_F32)
RANGE_FN(range_bf16, uint16_t, LOAD_BF16)
QUANT_FN(quant_f32, float, LOAD_F32)
QUANT_FN(quant_bf16, uint16_t, LOAD_BF16)
DYNQ_FN(netslim_dynq_u8_f32, float, range_f32, quant_f32)
DYNQ_FN(netslim_dynq_u8_bf16, uint16_t, range_bf16, quant_bf16)

void netslim_rows_u8_f32(int64_t m, int64_t k, const float *x, uint8_t *q, float *scales, int nthreads) {
    ROWS_BODY(LOAD_F32)
}
void netslim_rows_u8_bf16(int64_t m, int64_t k, const uint16_t *x, uint8_t *q, float *scales, int nthreads) {
    ROWS_BODY(LOAD_BF16)
}
