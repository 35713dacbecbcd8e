/* CSR sparse x dense kernels for netslim.prune.sparse (CPU only).
 *
 * W is (rows, cols) in CSR: crow[rows + 1] (int32), col[nnz] (uint16 or int32), val[nnz] (fp32).
 * Narrow column indices matter: at batch 1 the kernel is memory-bound, and 4 B value +
 * 2 B index per non-zero is what makes 90 %-sparse weights ~6x less traffic than dense.
 *
 *   spmv: y[r]       = bias[r] + sum_j val[j] * x[col[j]]                  (batch 1)
 *   spmm: y[b, r]    = bias[r] + sum_j val[j] * xt[col[j], b]  b < B        (xt: (cols, B))
 *
 * Memory safety. The caller (netslim.prune.kernels) guarantees the array lengths: crow has
 * rows + 1 entries, col and val nnz, x cols (xt cols x B), y B x rows. Whatever the index
 * *values* are, no kernel reads outside those arrays: before computing, each one checks the
 * CSR structure - crow[0] == 0, crow non-decreasing, crow[rows] <= nnz, every column index
 * used in [0, cols) - and on a violation returns non-zero without computing (y untouched).
 * The check is two vectorised passes (rows int32, then nnz indices, a max-reduction) that
 * bring the indices into cache for the product: ~0.5 us (~6 %) per batch-1 call on a
 * LeNet-300 layer, nothing measurable batched. Loaded layers are validated in Python as well
 * (netslim.prune.sparse), with messages naming the layer; this is the last line.
 *
 * Built by netslim.prune.kernels with -O3 -march=native -fopenmp; loaded through ctypes.
 */
#include <stdint.h>

/* Non-zero when (crow, col) is not a CSR structure of a (rows, cols) matrix with <= nnz entries. */
#define CSR_INVALID(KIND, IDX_T, UIDX_T)                                                   \
    static int64_t csr_invalid_##KIND(int64_t rows, int64_t cols, int64_t nnz,             \
                                      const int32_t *crow, const IDX_T *col) {             \
        if (crow[0] != 0 || (int64_t)crow[rows] > nnz) return 1;                           \
        int32_t decreasing = 0;                                                            \
        for (int64_t r = 0; r < rows; ++r) decreasing |= crow[r + 1] < crow[r];            \
        if (decreasing) return 1;                                                          \
        /* unsigned: a negative int32 index becomes >= 2^31 > cols */                      \
        UIDX_T m = 0;                                                                      \
        const int64_t n = crow[rows];                                                      \
        for (int64_t j = 0; j < n; ++j) m = (UIDX_T)col[j] > m ? (UIDX_T)col[j] : m;       \
        return n > 0 && (int64_t)m >= cols;                                                \
    }

CSR_INVALID(u16, uint16_t, uint16_t)
CSR_INVALID(i32, int32_t, uint32_t)

#define SPMV_BODY(IDX_T)                                                                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                     \
    for (int64_t r = 0; r < rows; ++r) {                                                   \
        const int32_t s = crow[r], e = crow[r + 1];                                        \
        const IDX_T *c = col + s;                                                          \
        const float *v = val + s;                                                          \
        const int32_t n = e - s;                                                           \
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;                                      \
        int32_t j = 0;                                                                     \
        /* four independent sums hide the FMA latency of the gather chain */               \
        for (; j + 4 <= n; j += 4) {                                                       \
            a0 += v[j] * x[c[j]];                                                          \
            a1 += v[j + 1] * x[c[j + 1]];                                                  \
            a2 += v[j + 2] * x[c[j + 2]];                                                  \
            a3 += v[j + 3] * x[c[j + 3]];                                                  \
        }                                                                                  \
        for (; j < n; ++j) a0 += v[j] * x[c[j]];                                           \
        y[r] = (bias ? bias[r] : 0.f) + ((a0 + a1) + (a2 + a3));                           \
    }

#define SPMV_FN(KIND, IDX_T)                                                              \
    int64_t netslim_spmv_##KIND(int64_t rows, int64_t cols, int64_t nnz, const int32_t *crow,  \
                                const IDX_T *col, const float *val, const float *x,            \
                                const float *bias, float *y, int nthreads) {                   \
        if (csr_invalid_##KIND(rows, cols, nnz, crow, col)) return 1;                          \
        SPMV_BODY(IDX_T)                                                                       \
        return 0;                                                                              \
    }

SPMV_FN(u16, uint16_t)
SPMV_FN(i32, int32_t)

/* Batched: each row accumulates 64 (then 16, then 1) batch columns in vector registers
 * (GCC/Clang vector extensions: AVX-512 with -march=native, split on narrower ISAs); the
 * loads of xt[col[j], b..b+63] are contiguous. Outputs are stored straight into (B, rows). */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads */

#define SPMM_BODY                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                     \
    for (int64_t r = 0; r < rows; ++r) {                                                   \
        const int32_t s = crow[r], e = crow[r + 1];                                        \
        const float b0 = bias ? bias[r] : 0.f;                                             \
        int64_t bb = 0;                                                                    \
        for (; bb + 64 <= B; bb += 64) {                                                   \
            v16 a[4] = {{0}, {0}, {0}, {0}};                                               \
            for (int32_t j = s; j < e; ++j) {                                              \
                const float *xr = xt + (int64_t)col[j] * B + bb;                           \
                const float v = val[j];                                                    \
                a[0] += v * *(const v16u *)(xr);                                           \
                a[1] += v * *(const v16u *)(xr + 16);                                      \
                a[2] += v * *(const v16u *)(xr + 32);                                      \
                a[3] += v * *(const v16u *)(xr + 48);                                      \
            }                                                                              \
            for (int k = 0; k < 64; ++k) y[(bb + k) * rows + r] = b0 + a[k / 16][k % 16];  \
        }                                                                                  \
        for (; bb + 16 <= B; bb += 16) {                                                   \
            v16 a = {0};                                                                   \
            for (int32_t j = s; j < e; ++j)                                                \
                a += val[j] * *(const v16u *)(xt + (int64_t)col[j] * B + bb);              \
            for (int k = 0; k < 16; ++k) y[(bb + k) * rows + r] = b0 + a[k];               \
        }                                                                                  \
        for (; bb < B; ++bb) {                                                             \
            float a = 0.f;                                                                 \
            for (int32_t j = s; j < e; ++j) a += val[j] * xt[(int64_t)col[j] * B + bb];    \
            y[bb * rows + r] = b0 + a;                                                     \
        }                                                                                  \
    }

#define SPMM_FN(KIND, IDX_T)                                                              \
    int64_t netslim_spmm_##KIND(int64_t rows, int64_t cols, int64_t nnz, int64_t B,            \
                                const int32_t *crow, const IDX_T *col, const float *val,       \
                                const float *xt, const float *bias, float *y, int nthreads) {  \
        if (csr_invalid_##KIND(rows, cols, nnz, crow, col)) return 1;                          \
        SPMM_BODY                                                                              \
        return 0;                                                                              \
    }

SPMM_FN(u16, uint16_t)
SPMM_FN(i32, int32_t)

int netslim_kernel_version(void) { return 2; }
