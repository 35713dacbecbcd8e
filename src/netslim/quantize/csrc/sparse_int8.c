/* Sparse int8 x uint8 kernels with exact int32 accumulation for netslim.quantize.sparse_int8 (CPU).
 *
 * Weights: "quad BCSR". Each output row r of an int8 weight keeps only its *quads* - runs of
 * 4 consecutive input channels (at one kernel position for a convolution) with at least one
 * non-zero - as one int32 holding the 4 int8 weights (zeros included) and an int32 quad index:
 *
 *     rowptr[rows + 1]  quads of row r are rowptr[r] .. rowptr[r+1]-1
 *     qidx[nq]          linear: k4 (input columns 4 k4 .. 4 k4 + 3)
 *                       conv:   (c4 * kh + ky) * kw + kx
 *     qw[nq]            the 4 int8 weights of the quad, little-endian bytes
 *     rowsum[rows]      sum of row r's weights (the activation zero-point correction)
 *
 * Activations: uint8 codes, laid out so that the 4 input channels a quad reads are 4
 * contiguous bytes and consecutive output positions read consecutive 4-byte words
 * (the VNNI operand layout): one vpdpbusd multiplies 16 positions x 4 channels.
 *
 *   linear  X4[k4][b][t]                        = x[b][4 k4 + t]               (K4, B, 4)
 *   conv    X4[b][c4][py][px][i * Wph + j][t]   = xpad[b][4 c4 + t][i s + py][j s + px]
 *           (the padded input split into s x s phases, so a stride-s convolution reads each
 *           phase at unit stride; positions past a row wrap into the next: those outputs are
 *           computed and dropped. Every plane has `slack` spare words at its end.)
 *
 *   acc[p] = sum_quads dot4(X4[plane(q)][p + shift(q)], qw[q])         (exact int32)
 *   y      = (acc - z_in * rowsum[r]) * (s_in * s_w[r]) + bias[r]
 *   q_out  = clamp(rne(y / s_out) + z_out, relu ? z_out : 0, 255)
 *
 * Output modes: 0 int32 (acc - z_in * rowsum: the exact integer product), 1 uint8 q_out,
 * 2 float (q_out - z_out) * s_out - the dequantized value the dense int8 module returns.
 * Outputs are written (B, rows) for linear and (B, rows, Ho, Wo) for conv.
 *
 * Memory safety: the caller (netslim.quantize.sparse_int8) guarantees array lengths; each
 * entry point first checks the *values* it indexes with - rowptr from 0, non-decreasing,
 * rowptr[rows] <= nq, every qidx in [0, qmax) - and returns non-zero (nothing computed) on
 * a violation. Accumulation is exact while K * 255 * 128 < 2^31 (K < 65793 inputs).
 *
 * Built by netslim.core.native with -O3 -march=native -fopenmp; AVX512-VNNI when the CPU
 * has it, portable C otherwise.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define NETSLIM_VNNI 1
#endif

static int64_t quads_invalid(int64_t rows, int64_t nq, const int32_t *rowptr, const int32_t *qidx, int64_t qmax) {
    if (rowptr[0] != 0 || (int64_t)rowptr[rows] > nq) return 1;
    int32_t bad = 0;
    for (int64_t r = 0; r < rows; ++r) bad |= rowptr[r + 1] < rowptr[r];
    const int64_t n = rowptr[rows];
    for (int64_t j = 0; j < n; ++j) bad |= (qidx[j] < 0) | ((int64_t)qidx[j] >= qmax);
    return bad != 0;
}

static inline float rne(float v) { return (v + 12582912.0f) - 12582912.0f; }  /* |v| < 2^22 */

static inline __attribute__((unused)) int32_t dot4(uint32_t x, int32_t w) {
    return (int32_t)(x & 0xff) * (int8_t)(w & 0xff) + (int32_t)((x >> 8) & 0xff) * (int8_t)((w >> 8) & 0xff)
         + (int32_t)((x >> 16) & 0xff) * (int8_t)((w >> 16) & 0xff) + (int32_t)(x >> 24) * (int8_t)(w >> 24);
}

/* acc[p] = sum_j dot4(base[off[j] + p], w[j]) for p < P (acc overwritten). */
static void accumulate(int32_t *acc, int64_t P, const uint32_t *base, const int64_t *off, const int32_t *w,
                       int32_t n) {
    int64_t p = 0;
#ifdef NETSLIM_VNNI
    for (; p + 64 <= P; p += 64) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (int32_t j = 0; j < n; ++j) {
            const uint32_t *x = base + off[j] + p;
            const __m512i wj = _mm512_set1_epi32(w[j]);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(x), wj);
            a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(x + 16), wj);
            a2 = _mm512_dpbusd_epi32(a2, _mm512_loadu_si512(x + 32), wj);
            a3 = _mm512_dpbusd_epi32(a3, _mm512_loadu_si512(x + 48), wj);
        }
        _mm512_storeu_si512(acc + p, a0);
        _mm512_storeu_si512(acc + p + 16, a1);
        _mm512_storeu_si512(acc + p + 32, a2);
        _mm512_storeu_si512(acc + p + 48, a3);
    }
    for (; p < P; p += 16) {
        const __mmask16 k = P - p >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (P - p)) - 1u);
        __m512i a = _mm512_setzero_si512();
        for (int32_t j = 0; j < n; ++j)  /* masked lanes are never read: no fault past the end */
            a = _mm512_dpbusd_epi32(a, _mm512_maskz_loadu_epi32(k, base + off[j] + p), _mm512_set1_epi32(w[j]));
        _mm512_mask_storeu_epi32(acc + p, k, a);
    }
#else
    for (; p < P; ++p) acc[p] = 0;
    for (int32_t j = 0; j < n; ++j) {
        const uint32_t *x = base + off[j];
        const int32_t wj = w[j];
        for (int64_t q = 0; q < P; ++q) acc[q] += dot4(x[q], wj);
    }
#endif
}

/* sum_j dot4(x[idx[j]], w[j]): batch 1, the quads' words gathered 16 at a time. */
static int32_t dot_row(const uint32_t *x, const int32_t *idx, const int32_t *w, int32_t n) {
    int32_t j = 0, total = 0;
#ifdef NETSLIM_VNNI
    __m512i a = _mm512_setzero_si512();
    for (; j + 16 <= n; j += 16) {
        const __m512i xv = _mm512_i32gather_epi32(_mm512_loadu_si512(idx + j), (const void *)x, 4);
        a = _mm512_dpbusd_epi32(a, xv, _mm512_loadu_si512(w + j));
    }
    total = _mm512_reduce_add_epi32(a);
#endif
    for (; j < n; ++j) total += dot4(x[idx[j]], w[j]);
    return total;
}

/* The affine parameters around the integer product (see the header). */
typedef struct {
    int mode, relu, zin, zout;
    float sin, sout;
    const float *wscale, *bias;
    const int32_t *rowsum;
} Requant;

/* n results of row r: acc[i] -> out[o0 + i * ostride] (tight loops: they vectorize at -O3).
 * q = rne(acc' * (s_in s_w / s_out) + bias / s_out) + z_out, acc' = acc - z_in * rowsum. */
static void requant_span(const Requant *rq, int64_t r, const int32_t *acc, int64_t n, void *out, int64_t o0,
                         int64_t ostride) {
    const int32_t corr = rq->zin * rq->rowsum[r];
    if (rq->mode == 0) {
        int32_t *o = (int32_t *)out + o0;
        for (int64_t i = 0; i < n; ++i) o[i * ostride] = acc[i] - corr;
        return;
    }
    const float inv = 1.f / rq->sout, m = rq->sin * rq->wscale[r] * inv;
    const float c = (rq->bias ? rq->bias[r] : 0.f) * inv - (float)corr * m;
    const float zo = (float)rq->zout, lo = rq->relu ? zo : 0.f;
    if (rq->mode == 1) {
        uint8_t *o = (uint8_t *)out + o0;
        for (int64_t i = 0; i < n; ++i) {
            float q = rne((float)acc[i] * m + c) + zo;
            q = q < lo ? lo : (q > 255.f ? 255.f : q);
            o[i * ostride] = (uint8_t)q;
        }
    } else {
        float *o = (float *)out + o0;
        const float s = rq->sout;
        for (int64_t i = 0; i < n; ++i) {
            float q = rne((float)acc[i] * m + c) + zo;
            q = q < lo ? lo : (q > 255.f ? 255.f : q);
            o[i * ostride] = (q - zo) * s;
        }
    }
}

/* ------------------------------------------------------------------ activation layouts */
/* Linear: x (B, K) uint8 with row stride ldx -> X4 (K4, B, 4); columns past K get z. */
void netslim_sq8_pack_linear_u8(int64_t B, int64_t K, const uint8_t *x, int64_t ldx, int zfill, uint8_t *x4,
                                int nthreads) {
    const int64_t K4 = (K + 3) / 4;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t k4 = 0; k4 < K4; ++k4)
        for (int64_t b = 0; b < B; ++b)
            for (int t = 0; t < 4; ++t) {
                const int64_t k = 4 * k4 + t;
                x4[(k4 * B + b) * 4 + t] = k < K ? x[b * ldx + k] : (uint8_t)zfill;
            }
}

/* Linear from float: quantize and lay out in one pass. q = rne(x * inv_s + z) saturated to [0, 255]: the
 * zero point is added before rounding, as torch.quantize_per_tensor does (the two differ at ties). */
void netslim_sq8_pack_linear_f32(int64_t B, int64_t K, const float *x, int64_t ldx, float inv_s, int z, uint8_t *x4,
                                 int nthreads) {
    const int64_t K4 = (K + 3) / 4;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t k4 = 0; k4 < K4; ++k4)
        for (int64_t b = 0; b < B; ++b)
            for (int t = 0; t < 4; ++t) {
                const int64_t k = 4 * k4 + t;
                float v = k < K ? rne(x[b * ldx + k] * inv_s + (float)z) : (float)z;
                v = v < 0.f ? 0.f : (v > 255.f ? 255.f : v);
                x4[(k4 * B + b) * 4 + t] = (uint8_t)v;
            }
}

/* Conv: x (B, C, H, W) with element strides (sb, sc, sh, sw) -> X4 (B, C4, s, s, L, 4), L >= Hph * Wph.
 * Padded positions and channels past C hold z (the code of 0.0: padding adds nothing). */
#define PACK_CONV(NAME, T, LOAD)                                                                          \
    void NAME(int64_t B, int64_t C, int64_t H, int64_t W, const T *x, int64_t sb, int64_t sc, int64_t sh,    \
              int64_t sw, int64_t pad_h, int64_t pad_w, int64_t s, int64_t Hph, int64_t Wph, int64_t L,      \
              float inv_s, int z, uint8_t *x4, int nthreads) {                                              \
        const int64_t C4 = (C + 3) / 4;                                                                   \
        _Pragma("omp parallel for collapse(2) num_threads(nthreads) schedule(static)")                    \
        for (int64_t b = 0; b < B; ++b)                                                                   \
            for (int64_t c4 = 0; c4 < C4; ++c4)                                                           \
                for (int64_t py = 0; py < s; ++py)                                                        \
                    for (int64_t px = 0; px < s; ++px) {                                                  \
                        uint8_t *plane = x4 + ((((b * C4 + c4) * s + py) * s + px) * L) * 4;              \
                        memset(plane, z, (size_t)(L * 4));                                                \
                        /* phase columns j whose input column j s + px - pad_w lies in [0, W) */           \
                        const int64_t last = W - 1 + pad_w - px; /* < 0: no column of this phase */       \
                        int64_t j0 = (pad_w - px + s - 1) / s, j1 = last < 0 ? 0 : last / s + 1;          \
                        j1 = j1 > Wph ? Wph : j1;                                                         \
                        const int64_t nc = C - 4 * c4 < 4 ? C - 4 * c4 : 4;                               \
                        for (int64_t i = 0; i < Hph; ++i) {                                               \
                            const int64_t yy = i * s + py - pad_h;                                        \
                            if (yy < 0 || yy >= H) continue;                                              \
                            const T *src = x + b * sb + 4 * c4 * sc + yy * sh + (j0 * s + px - pad_w) * sw; \
                            uint8_t *dst = plane + (i * Wph + j0) * 4;                                    \
                            if (sizeof(T) == 1 && sc == 1 && nc == 4) /* channels-last codes: 4-byte words */ \
                                for (int64_t j = j0; j < j1; ++j, src += s * sw, dst += 4) memcpy(dst, src, 4); \
                            else                                                                          \
                                for (int64_t j = j0; j < j1; ++j, src += s * sw, dst += 4)                \
                                    for (int64_t t = 0; t < nc; ++t) dst[t] = LOAD(src[t * sc]);          \
                        }                                                                                 \
                    }                                                                                     \
    }

#define LOAD_U8(v) (v)
static inline uint8_t quant_f32(float v, float inv_s, int z) {
    float q = rne(v * inv_s + (float)z);
    return (uint8_t)(q < 0.f ? 0.f : (q > 255.f ? 255.f : q));
}
#define LOAD_F32(v) quant_f32((v), inv_s, z)

PACK_CONV(netslim_sq8_pack_conv_u8, uint8_t, LOAD_U8)
PACK_CONV(netslim_sq8_pack_conv_f32, float, LOAD_F32)

/* -------------------------------------------------------------------------- products */
/* Linear: X4 (K4, B, 4) -> out (B, rows). Parallel over rows (each reads all of X4). */
int64_t netslim_sq8_linear(int64_t rows, int64_t K4, int64_t nq, int64_t B, const int32_t *rowptr,
                           const int32_t *qidx, const int32_t *qw, const int32_t *rowsum, const uint8_t *x4,
                           int zin, float sin, const float *wscale, const float *bias, float sout, int zout,
                           int relu, int mode, void *out, int nthreads) {
    if (quads_invalid(rows, nq, rowptr, qidx, K4)) return 1;
    const Requant rq = {mode, relu, zin, zout, sin, sout, wscale, bias, rowsum};
    int64_t maxq = 0;
    for (int64_t r = 0; r < rows; ++r) maxq = rowptr[r + 1] - rowptr[r] > maxq ? rowptr[r + 1] - rowptr[r] : maxq;
    int failed = 0;
    _Pragma("omp parallel num_threads(nthreads)")
    {
        int32_t *acc = malloc(sizeof(int32_t) * (size_t)(B > 0 ? B : 1));
        int64_t *off = malloc(sizeof(int64_t) * (size_t)(maxq > 0 ? maxq : 1));
        if (!acc || !off) {
            _Pragma("omp atomic write")
            failed = 1;
        } else {
            _Pragma("omp for schedule(static)")
            for (int64_t r = 0; r < rows; ++r) {
                const int32_t s0 = rowptr[r], n = rowptr[r + 1] - s0;
                if (B == 1) {  /* one position: a sparse dot product over the row's quads */
                    acc[0] = dot_row((const uint32_t *)x4, qidx + s0, qw + s0, n);
                } else {
                    for (int32_t j = 0; j < n; ++j) off[j] = (int64_t)qidx[s0 + j] * B;
                    accumulate(acc, B, (const uint32_t *)x4, off, qw + s0, n);
                }
                requant_span(&rq, r, acc, B, out, r, rows);
            }
        }
        free(acc);
        free(off);
    }
    return failed ? 2 : 0;
}

/* Conv (groups 1): X4 (B, C4, s, s, L, 4) -> out (B, rows, Ho, Wo). Parallel over (b, r). */
int64_t netslim_sq8_conv(int64_t rows, int64_t C4, int64_t kh, int64_t kw, int64_t nq, int64_t B, int64_t s,
                         int64_t d, int64_t Wph, int64_t L, int64_t Ho, int64_t Wo, const int32_t *rowptr,
                         const int32_t *qidx, const int32_t *qw, const int32_t *rowsum, const uint8_t *x4, int zin,
                         float sin, const float *wscale, const float *bias, float sout, int zout, int relu, int mode,
                         void *out, int nthreads) {
    if (quads_invalid(rows, nq, rowptr, qidx, C4 * kh * kw)) return 1;
    /* the farthest word read, (Ho - 1 + ((kh-1)d)/s) * Wph + Wph - 1 + ((kw-1)d)/s, must lie in a plane */
    if ((Ho - 1 + ((kh - 1) * d) / s) * Wph + Wph - 1 + ((kw - 1) * d) / s >= L || Wo > Wph) return 1;
    const Requant rq = {mode, relu, zin, zout, sin, sout, wscale, bias, rowsum};
    const int64_t P = Ho * Wph, plane = s * s * L;  /* positions computed per (b, r); words per c4 */
    int64_t maxq = 0;
    for (int64_t r = 0; r < rows; ++r) maxq = rowptr[r + 1] - rowptr[r] > maxq ? rowptr[r + 1] - rowptr[r] : maxq;
    int failed = 0;
    _Pragma("omp parallel num_threads(nthreads)")
    {
        int32_t *acc = malloc(sizeof(int32_t) * (size_t)(P > 0 ? P : 1));
        int64_t *off = malloc(sizeof(int64_t) * (size_t)(maxq > 0 ? maxq : 1));
        if (!acc || !off) {
            _Pragma("omp atomic write")
            failed = 1;
        } else {
            _Pragma("omp for collapse(2) schedule(static)")
            for (int64_t b = 0; b < B; ++b)
                for (int64_t r = 0; r < rows; ++r) {
                    const int32_t s0 = rowptr[r], n = rowptr[r + 1] - s0;
                    for (int32_t j = 0; j < n; ++j) {
                        const int64_t q = qidx[s0 + j], kx = q % kw, ky = (q / kw) % kh, c4 = q / (kw * kh);
                        const int64_t py = (ky * d) % s, px = (kx * d) % s;
                        off[j] = (b * C4 + c4) * plane + (py * s + px) * L + ((ky * d) / s) * Wph + (kx * d) / s;
                    }
                    accumulate(acc, P, (const uint32_t *)x4, off, qw + s0, n);
                    const int64_t o = (b * rows + r) * Ho * Wo;
                    for (int64_t i = 0; i < Ho; ++i) requant_span(&rq, r, acc + i * Wph, Wo, out, o + i * Wo, 1);
                }
        }
        free(acc);
        free(off);
    }
    return failed ? 2 : 0;
}

int netslim_sq8_version(void) { return 1; }
