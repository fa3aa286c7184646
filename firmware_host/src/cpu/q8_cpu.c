/* int8 kernels for application CPUs (see q8_cpu.h); the arithmetic is lcs/int8/graph.py's.

   Dense conv = GEMM: for a tile of MR output pixels the windows are gathered once (im2col, in the element type the
   inner loop reads: offset u8 for VNNI, int16 for AVX2, int8 otherwise; padding is the zero point), then every
   block of 16 output channels runs the micro-kernel over the whole window (accumulators in registers, initialised
   with the bias) and the epilogue requantizes the MR x 16 results (residual add and ReLU fused). The epilogue and
   the depthwise loops are plain C written so the compiler vectorizes them (per-channel parameters as arrays). */
#include "q8_cpu.h"
#include "q8_pool.h"

#include <math.h>
#include <string.h>

#if Q8C_ISA == 1 || Q8C_ISA == 2
#include <immintrin.h>
#elif Q8C_ISA == 3
#include <arm_neon.h>
#endif

/* Tests build with Q8C_FALLBACK=1 and 2 so that the general forms the models here never reach still run: 1, the
   requantization and the GroupNorm without merged roundings; 2, the GroupNorm apply in int64 lanes (gn16m). */
#ifndef Q8C_FALLBACK
#define Q8C_FALLBACK 0
#endif

#if Q8C_ISA == 1
#define MR 16 /* the most rows a tile has (tile_gemm: 12 rows x 2 blocks, or 16 x 1) */
typedef int8_t a_t; /* bits of x + 128 as u8 */
#define A_OF(x) ((int8_t)((x) ^ (int8_t)0x80))
#define A_PAD ((int8_t)0x80)
#elif Q8C_ISA == 2
#define MR 4
typedef int8_t a_t;
#define A_OF(x) (x)
#define A_PAD 0
#else
#define MR 2
typedef int8_t a_t;
#define A_OF(x) (x)
#define A_PAD 0
#endif

const char *q8c_isa(void) { return Q8C_ISA_NAME; }

/* One float, as firmware_c.device_input quantizes it: x * inv (float32), round half to even (rintf in the default
   rounding mode), clamp to int8. NaN: neither comparison holds and (int)NaN on x86 is INT_MIN, whose low byte the
   cast keeps (0); the vector loop below gives the same. */
static inline int8_t q8c_in1(float x, float inv) {
    const float q = rintf(x * inv);
    return (int8_t)(q > 127.0f ? 127 : q < -128.0f ? -128 : (int)q);
}

void q8c_input(const float *restrict in, int32_t hw, int32_t c_in, int32_t c_store, float inv, int8_t *restrict out) {
    int32_t i = 0;
#if Q8C_ISA == 1
    if (c_store == 4) { /* 16 pixels a step: each channel's 16 floats -> int32 -> one byte of every pixel's word */
        const __m512 vinv = _mm512_set1_ps(inv), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-128.0f);
        for (; i + 16 <= hw; i += 16) {
            __m512i word = _mm512_setzero_si512();
            for (int32_t c = 0; c < c_in; c++) {
                const __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(in + c * hw + i), vinv),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                __m512i v = _mm512_cvtps_epi32(q); /* NaN and out of range: INT_MIN, as (int) on x86 */
                v = _mm512_mask_mov_epi32(v, _mm512_cmp_ps_mask(q, hi, _CMP_GT_OQ), _mm512_set1_epi32(127));
                v = _mm512_mask_mov_epi32(v, _mm512_cmp_ps_mask(q, lo, _CMP_LT_OQ), _mm512_set1_epi32(-128));
                word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0xFF)), 8 * c));
            }
            _mm512_storeu_si512(out + 4 * i, word);
        }
    }
#endif
    for (; i < hw; i++) {
        for (int32_t c = 0; c < c_in; c++) out[i * c_store + c] = q8c_in1(in[c * hw + i], inv);
        for (int32_t c = c_in; c < c_store; c++) out[i * c_store + c] = 0;
    }
}

static inline uint32_t ld32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int32_t rq1(int32_t x, int32_t m, int32_t l, int32_t n) {
    const int32_t s = (int32_t)((uint32_t)x << l);
    const int32_t t = (int32_t)(((int64_t)s * m + 0x80000000LL) >> 32);
    return (t + (int32_t)((1u << n) >> 1)) >> n;
}

/* Requantize nc accumulators of one pixel to int8 (+ residual, ReLU); always inlined so a call with nc = 16 is
   one straight vector sequence (no loop tails). */
static inline __attribute__((always_inline)) void epilogue(const int32_t *restrict acc, int32_t nc, const int32_t *restrict m, const int32_t *restrict l,
                     const int32_t *restrict n, const int8_t *restrict skip, q8_rq_t add, int32_t relu,
                     int8_t *restrict out) {
    const int32_t lo = relu ? 0 : -128;
    if (skip) {
        const int32_t am = add.m, al = add.l, an = add.n;
        for (int32_t c = 0; c < nc; c++) {
            int32_t y = rq1(acc[c], m[c], l[c], n[c]) + rq1(skip[c], am, al, an);
            y = y < lo ? lo : y > 127 ? 127 : y;
            out[c] = (int8_t)y;
        }
    } else {
        for (int32_t c = 0; c < nc; c++) {
            int32_t y = rq1(acc[c], m[c], l[c], n[c]);
            y = y < lo ? lo : y > 127 ? 127 : y;
            out[c] = (int8_t)y;
        }
    }
}

#if Q8C_ISA == 1
/* rq1 on 16 lanes: 64-bit products of the even and the odd lanes (vpmuldq), their high halves merged. */
static inline __m512i rq16(__m512i x, __m512i m, __m512i l, __m512i n) {
    const __m512i s = _mm512_sllv_epi32(x, l), round = _mm512_set1_epi64(0x80000000LL);
    const __m512i even = _mm512_add_epi64(_mm512_mul_epi32(s, m), round);
    const __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(s, 32), _mm512_srli_epi64(m, 32)), round);
    const __m512i t = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    const __m512i half = _mm512_srli_epi32(_mm512_sllv_epi32(_mm512_set1_epi32(1), n), 1);
    return _mm512_srav_epi32(_mm512_add_epi32(t, half), n);
}

/* rq16 with a block's constants computed once (a loop over pixels), the two roundings merged where every n <= 30:
   ((s m + 2^31) >> 32 + 2^(n-1)) >> n == (s m + 2^31 + 2^(n-1) 2^32) >> (32 + n) (nested floors of integers; the sum
   stays below 2^63), so a lane takes one add and one shift after its product; the odd lanes are moved down by a
   shuffle and the two results' low words merged by one permute, and x << l is skipped where every l is 0. */
typedef struct {
    __m512i m, m_odd, l, n, half, e_even, e_odd, r_even, r_odd;
    int32_t merged, shift;
} rq16c_t;
static inline rq16c_t rq16_consts(__m512i m, __m512i l, __m512i n) {
    const __m512i half = _mm512_srli_epi32(_mm512_sllv_epi32(_mm512_set1_epi32(1), n), 1);
    const __m512i low = _mm512_set1_epi64(0xFFFFFFFFLL), r = _mm512_set1_epi64(0x80000000LL), e = _mm512_set1_epi64(32);
    return (rq16c_t){m, _mm512_shuffle_epi32(m, _MM_PERM_DDBB), l, n, half,
                     _mm512_add_epi64(_mm512_and_si512(n, low), e), _mm512_add_epi64(_mm512_srli_epi64(n, 32), e),
                     _mm512_add_epi64(_mm512_slli_epi64(half, 32), r), _mm512_add_epi64(_mm512_andnot_si512(low, half), r),
                     Q8C_FALLBACK != 1 && _mm512_cmpgt_epi32_mask(n, _mm512_set1_epi32(30)) == 0,
                     _mm512_test_epi32_mask(l, l) != 0};
}
static inline __attribute__((always_inline)) __m512i rq16x(__m512i x, const rq16c_t *k, const int merged) {
    const __m512i s = k->shift ? _mm512_sllv_epi32(x, k->l) : x;
    if (merged) {
        const __m512i te = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(s, k->m), k->r_even), k->e_even);
        const __m512i to = _mm512_srav_epi64(
            _mm512_add_epi64(_mm512_mul_epi32(_mm512_shuffle_epi32(s, _MM_PERM_DDBB), k->m_odd), k->r_odd), k->e_odd);
        return _mm512_permutex2var_epi32(te, _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30), to);
    }
    const __m512i round = _mm512_set1_epi64(0x80000000LL);
    const __m512i even = _mm512_add_epi64(_mm512_mul_epi32(s, k->m), round);
    const __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(s, 32), k->m_odd), round);
    const __m512i t = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    return _mm512_srav_epi32(_mm512_add_epi32(t, k->half), k->n);
}
/* callers whose loops are hot pass `merged` as a constant (one loop per form: the other form's constants are dead) */
#define rq16k(x, k) rq16x(x, k, (k)->merged)

/* epilogue() for exactly 16 channels */
static inline void epilogue16(const int32_t *acc, const int32_t *m, const int32_t *l, const int32_t *n,
                              const int8_t *skip, q8_rq_t add, int32_t relu, int8_t *out) {
    __m512i y = rq16(_mm512_loadu_si512(acc), _mm512_loadu_si512(m), _mm512_loadu_si512(l), _mm512_loadu_si512(n));
    if (skip)
        y = _mm512_add_epi32(y, rq16(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)skip)),
                                     _mm512_set1_epi32(add.m), _mm512_set1_epi32(add.l), _mm512_set1_epi32(add.n)));
    y = _mm512_min_epi32(_mm512_max_epi32(y, _mm512_set1_epi32(relu ? 0 : -128)), _mm512_set1_epi32(127));
    _mm_storeu_si128((__m128i *)(void *)out, _mm512_cvtepi32_epi8(y));
}
#define EPILOGUE16 epilogue16
#elif Q8C_ISA == 2
/* rq1 on 8 lanes (as rq16) */
static inline __m256i rq8(__m256i x, __m256i m, __m256i l, __m256i n) {
    const __m256i s = _mm256_sllv_epi32(x, l), round = _mm256_set1_epi64x(0x80000000LL);
    const __m256i even = _mm256_add_epi64(_mm256_mul_epi32(s, m), round);
    const __m256i odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(s, 32), _mm256_srli_epi64(m, 32)), round);
    const __m256i t = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    const __m256i half = _mm256_srli_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(1), n), 1);
    return _mm256_srav_epi32(_mm256_add_epi32(t, half), n);
}

/* 16 int32 (two registers, channels 0-7 and 8-15) -> 16 int8 in order; the packs saturate to [-128, 127] */
static inline void store16(int8_t *out, __m256i y0, __m256i y1) {
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(y0, y1), 0xD8);
    _mm_storeu_si128((__m128i *)(void *)out, _mm_packs_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
}
#define EPILOGUE16(acc, m, l, n, skip, add, relu, out) epilogue(acc, 16, m, l, n, skip, add, relu, out)
#else
#define EPILOGUE16(acc, m, l, n, skip, add, relu, out) epilogue(acc, 16, m, l, n, skip, add, relu, out)
#endif

static int32_t a_row(const q8c_conv_t *p) { return (p->kp * (int32_t)sizeof(a_t) + 63) / 64 * 64 / (int32_t)sizeof(a_t); }


static inline void copy_a(a_t *restrict d, const int8_t *restrict s, int32_t n) {
#if Q8C_ISA == 1
    const __m512i bit = _mm512_set1_epi8((char)0x80);
    int32_t i = 0;
    for (; i + 64 <= n; i += 64)
        _mm512_storeu_si512(d + i, _mm512_xor_si512(_mm512_loadu_si512(s + i), bit));
    if (i < n) { /* the tail, masked */
        const __mmask64 m = (1ull << (n - i)) - 1; /* n - i < 64 */
        _mm512_mask_storeu_epi8(d + i, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, s + i), bit));
    }
#else
    memcpy(d, s, (size_t)n);
#endif
}

static inline void pad_a(a_t *d, int32_t n) {
    if (n <= 0) return; /* most windows: no padding, no call */
    if (sizeof(a_t) == 1) memset(d, (uint8_t)A_PAD, (size_t)n);
    else memset(d, 0, (size_t)n * sizeof(a_t)); /* int16: the pad is 0 */
}

/* The window of output pixel `pix`: (ky, kx, c) order, then padding up to kp. A window row's columns inside the
   input are consecutive in HWC memory: one copy per row. */
static void window(const q8c_conv_t *p, const int8_t *in, int32_t pix, a_t *restrict dst) {
    const int32_t ic = p->in_c, kw = p->kw, oy = pix / p->out_w, ox = pix % p->out_w;
    const int32_t y0 = oy * p->stride - p->pad_t, x0 = ox * p->stride - p->pad_l;
    const int32_t t0 = q8_tap_lo(x0), t1 = q8_tap_hi(x0, p->in_w, kw);
    for (int32_t ky = 0; ky < p->kh; ky++, dst += kw * ic) {
        const int32_t iy = y0 + ky;
        if (iy < 0 || iy >= p->in_h || t1 <= t0) {
            pad_a(dst, kw * ic);
            continue;
        }
        pad_a(dst, t0 * ic);
        copy_a(dst + t0 * ic, in + (iy * p->in_w + x0 + t0) * ic, (t1 - t0) * ic);
        pad_a(dst + t1 * ic, (kw - t1) * ic);
    }
    pad_a(dst, p->kp - p->k);
}

/* Where a micro-kernel reads its MR rows: row i of tap (ky, kx) starts at A + i * as + ky * rs + kx * cs and holds
   ic values (a multiple of 4); the weights follow in the same (ky, kx, c) order. A gathered window is one tap of kp
   values. */
typedef struct {
    int32_t as, kh, kw, rs, cs, ic;
} taps_t;

/* acc[i][0..16) = bias + row i . weight block, for the MR rows. */
#if Q8C_ISA == 1
/* vpdpbusd through asm: with the intrinsic, GCC 12 copies and spills the accumulators of a blocking this size (each
   step moved through the stack, ~60 % of the peak measured here); the asm operand pins each in a register. */
#define DPB(c, x, w) __asm__("vpdpbusd %[w_], %[x_], %[c_]" : [c_] "+v"(c) : [w_] "v"(w), [x_] "v"(x))
/* R rows x NB blocks of 16 channels (R <= 16 with NB = 1, R <= 12 with NB = 2: the accumulators, the weights and
   the broadcast in the 32 registers): each weight register serves R rows, each broadcast NB blocks. Block j's
   weights are at W + j * ws, its results at acc + j * 256 (16 rows a block). */
static inline __attribute__((always_inline)) void micro_v(const a_t *A, taps_t g, const int8_t *W, int32_t ws,
                                                          const int32_t *bias, int32_t *acc, const int32_t R,
                                                          const int32_t NB) {
    const __m512i b0 = _mm512_loadu_si512(bias), b1 = NB > 1 ? _mm512_loadu_si512(bias + 16) : b0;
#define Q8C_DECL(i) __m512i c##i##_0 = b0, c##i##_1 = b1;
    Q8C_DECL(0) Q8C_DECL(1) Q8C_DECL(2) Q8C_DECL(3) Q8C_DECL(4) Q8C_DECL(5) Q8C_DECL(6) Q8C_DECL(7)
    Q8C_DECL(8) Q8C_DECL(9) Q8C_DECL(10) Q8C_DECL(11) Q8C_DECL(12) Q8C_DECL(13) Q8C_DECL(14) Q8C_DECL(15)
#undef Q8C_DECL
    const int32_t as = g.as;
    for (int32_t ky = 0; ky < g.kh; ky++)
        for (int32_t kx = 0; kx < g.kw; kx++) {
            const int8_t *a = A + ky * g.rs + kx * g.cs;
            for (int32_t k = 0; k < g.ic; k += 4, W += 64, a += 4) {
                const __m512i w0 = _mm512_loadu_si512(W), w1 = NB > 1 ? _mm512_loadu_si512(W + ws) : w0;
                /* weights ~1000 cycles ahead: a deep layer's weights (2.4 MB a conv in resnet18) stream from L3
                   or memory at twice the rate the hardware prefetcher alone reached here */
                _mm_prefetch((const char *)W + (NB > 1 ? 4096 : 8192), _MM_HINT_T0);
                if (NB > 1) _mm_prefetch((const char *)W + ws + 4096, _MM_HINT_T0);
#define Q8C_ROW(i)                                                              \
    if (R > i) {                                                                \
        const __m512i x = _mm512_set1_epi32((int32_t)ld32(a + (i) * as));      \
        DPB(c##i##_0, x, w0);                                                   \
        if (NB > 1) DPB(c##i##_1, x, w1);                                       \
    }
                Q8C_ROW(0) Q8C_ROW(1) Q8C_ROW(2) Q8C_ROW(3) Q8C_ROW(4) Q8C_ROW(5) Q8C_ROW(6) Q8C_ROW(7)
                Q8C_ROW(8) Q8C_ROW(9) Q8C_ROW(10) Q8C_ROW(11) Q8C_ROW(12) Q8C_ROW(13) Q8C_ROW(14) Q8C_ROW(15)
#undef Q8C_ROW
            }
        }
#define Q8C_ST(i)                                                               \
    if (R > i) {                                                                \
        _mm512_storeu_si512(acc + (i) * 16, c##i##_0);                          \
        if (NB > 1) _mm512_storeu_si512(acc + 256 + (i) * 16, c##i##_1);        \
    }
    Q8C_ST(0) Q8C_ST(1) Q8C_ST(2) Q8C_ST(3) Q8C_ST(4) Q8C_ST(5) Q8C_ST(6) Q8C_ST(7)
    Q8C_ST(8) Q8C_ST(9) Q8C_ST(10) Q8C_ST(11) Q8C_ST(12) Q8C_ST(13) Q8C_ST(14) Q8C_ST(15)
#undef Q8C_ST
}
#define Q8C_MICRO_V(R, NB)                                                                                          \
    static void micro_##R##x##NB(const a_t *A, taps_t g, const int8_t *W, int32_t ws, const int32_t *bias,          \
                                 int32_t *acc) {                                                                   \
        micro_v(A, g, W, ws, bias, acc, R, NB);                                                                     \
    }
Q8C_MICRO_V(16, 1)
Q8C_MICRO_V(8, 1)
Q8C_MICRO_V(4, 1)
Q8C_MICRO_V(12, 2)
Q8C_MICRO_V(8, 2)
Q8C_MICRO_V(4, 2)
#undef Q8C_MICRO_V
/* r (<= the tile's rows) rows x nb blocks: the smallest kernel that covers them (it may read rows past r: the
   buffers have the room, and their results are dropped) */
static void tile_gemm(const a_t *A, taps_t g, const int8_t *W, int32_t ws, const int32_t *bias, int32_t *acc,
                      int32_t r, int32_t nb) {
    if (nb == 2)
        (r > 8 ? micro_12x2 : r > 4 ? micro_8x2 : micro_4x2)(A, g, W, ws, bias, acc);
    else
        (r > 8 ? micro_16x1 : r > 4 ? micro_8x1 : micro_4x1)(A, g, W, ws, bias, acc);
}
#elif Q8C_ISA == 2
/* vpmaddubsw wants u8 x s8: |a| x (w with a's sign) is a x w exactly, and a pair of them stays within int16
   (2 x 128 x 127 < 2^15: the weights are in [-127, 127]); vpmaddwd by ones sums the pairs into int32. A weight
   register holds 8 channels x 4 values. */
static void micro(const a_t *A, taps_t g, const int8_t *W, const int32_t *bias, int32_t *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    for (int32_t ky = 0; ky < g.kh; ky++)
        for (int32_t kx = 0; kx < g.kw; kx++) {
            const int8_t *a = A + ky * g.rs + kx * g.cs;
            for (int32_t k = 0; k < g.ic; k += 4, W += 64, a += 4) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)W);
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(W + 32));
#define Q8C_STEP(i, c0, c1)                                                                              \
    do {                                                                                                 \
        const __m256i x = _mm256_set1_epi32((int32_t)ld32(a + (i) * g.as)), ax = _mm256_abs_epi8(x);   \
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, x)), ones)); \
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, x)), ones)); \
    } while (0)
                Q8C_STEP(0, c00, c01);
                Q8C_STEP(1, c10, c11);
                Q8C_STEP(2, c20, c21);
                Q8C_STEP(3, c30, c31);
#undef Q8C_STEP
            }
        }
    const __m256i b0 = _mm256_loadu_si256((const __m256i *)(const void *)bias);
    const __m256i b1 = _mm256_loadu_si256((const __m256i *)(const void *)(bias + 8));
    _mm256_storeu_si256((__m256i *)(void *)acc, _mm256_add_epi32(c00, b0));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 8), _mm256_add_epi32(c01, b1));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 16), _mm256_add_epi32(c10, b0));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 24), _mm256_add_epi32(c11, b1));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 32), _mm256_add_epi32(c20, b0));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 40), _mm256_add_epi32(c21, b1));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 48), _mm256_add_epi32(c30, b0));
    _mm256_storeu_si256((__m256i *)(void *)(acc + 56), _mm256_add_epi32(c31, b1));
}
#elif Q8C_ISA == 3
/* A weight register holds 4 channels x 4 values; smull/smull2 against the 4 activations (dup'd) make int16
   products, sadalp adds pairs into int32: per channel two partial sums (values 0+1, 2+3), added at the end. Two
   steps share one sadalp (smlal): |weight| <= 127, so two products stay within int16. */
static void micro(const a_t *A, taps_t g, const int8_t *W, const int32_t *bias, int32_t *acc) {
    int32x4_t c[2][8];
    for (int32_t i = 0; i < 2; i++)
        for (int32_t j = 0; j < 8; j++) c[i][j] = vdupq_n_s32(0);
    for (int32_t ky = 0; ky < g.kh; ky++)
        for (int32_t kx = 0; kx < g.kw; kx++) {
            const int8_t *a0 = A + ky * g.rs + kx * g.cs, *a1 = a0 + g.as;
            int32_t k = 0;
            for (; k + 8 <= g.ic; k += 8, W += 128) {
                const int8x16_t x0 = vreinterpretq_s8_u32(vdupq_n_u32(ld32(a0 + k)));
                const int8x16_t x1 = vreinterpretq_s8_u32(vdupq_n_u32(ld32(a1 + k)));
                const int8x16_t y0 = vreinterpretq_s8_u32(vdupq_n_u32(ld32(a0 + k + 4)));
                const int8x16_t y1 = vreinterpretq_s8_u32(vdupq_n_u32(ld32(a1 + k + 4)));
                for (int32_t j = 0; j < 4; j++) {
                    const int8x16_t w = vld1q_s8(W + 16 * j), v = vld1q_s8(W + 64 + 16 * j);
                    c[0][2 * j] = vpadalq_s16(c[0][2 * j], vmlal_s8(vmull_s8(vget_low_s8(x0), vget_low_s8(w)),
                                                                    vget_low_s8(y0), vget_low_s8(v)));
                    c[0][2 * j + 1] = vpadalq_s16(c[0][2 * j + 1], vmlal_high_s8(vmull_high_s8(x0, w), y0, v));
                    c[1][2 * j] = vpadalq_s16(c[1][2 * j], vmlal_s8(vmull_s8(vget_low_s8(x1), vget_low_s8(w)),
                                                                    vget_low_s8(y1), vget_low_s8(v)));
                    c[1][2 * j + 1] = vpadalq_s16(c[1][2 * j + 1], vmlal_high_s8(vmull_high_s8(x1, w), y1, v));
                }
            }
            for (; k < g.ic; k += 4, W += 64) {
                const int8x16_t x0 = vreinterpretq_s8_u32(vdupq_n_u32(ld32(a0 + k)));
                const int8x16_t x1 = vreinterpretq_s8_u32(vdupq_n_u32(ld32(a1 + k)));
                for (int32_t j = 0; j < 4; j++) {
                    const int8x16_t w = vld1q_s8(W + 16 * j);
                    c[0][2 * j] = vpadalq_s16(c[0][2 * j], vmull_s8(vget_low_s8(x0), vget_low_s8(w)));
                    c[0][2 * j + 1] = vpadalq_s16(c[0][2 * j + 1], vmull_high_s8(x0, w));
                    c[1][2 * j] = vpadalq_s16(c[1][2 * j], vmull_s8(vget_low_s8(x1), vget_low_s8(w)));
                    c[1][2 * j + 1] = vpadalq_s16(c[1][2 * j + 1], vmull_high_s8(x1, w));
                }
            }
        }
    for (int32_t i = 0; i < 2; i++)
        for (int32_t j = 0; j < 8; j += 2) /* lanes (o: 0+1, o: 2+3, o+1: 0+1, o+1: 2+3) -> pairwise sums */
            vst1q_s32(acc + i * 16 + 2 * j, vaddq_s32(vpaddq_s32(c[i][j], c[i][j + 1]), vld1q_s32(bias + 2 * j)));
}
#else
static void micro(const a_t *A, taps_t g, const int8_t *W, const int32_t *bias, int32_t *acc) {
    for (int32_t i = 0; i < MR; i++) {
        int32_t s[16];
        for (int32_t o = 0; o < 16; o++) s[o] = bias[o];
        const int8_t *w = W;
        for (int32_t ky = 0; ky < g.kh; ky++)
            for (int32_t kx = 0; kx < g.kw; kx++) {
                const a_t *a = A + i * g.as + ky * g.rs + kx * g.cs;
                for (int32_t k = 0; k < g.ic; k += 4, w += 64)
                    for (int32_t o = 0; o < 16; o++)
                        for (int32_t t = 0; t < 4; t++) s[o] += a[k + t] * w[o * 4 + t];
            }
        for (int32_t o = 0; o < 16; o++) acc[i * 16 + o] = s[o];
    }
}
#endif

#if Q8C_ISA != 1
static void tile_gemm(const a_t *A, taps_t g, const int8_t *W, int32_t ws, const int32_t *bias, int32_t *acc,
                      int32_t r, int32_t nb) {
    (void)ws, (void)r, (void)nb; /* one block of MR rows */
    micro(A, g, W, bias, acc);
}
#endif

/* Padded copy for the taps path: rows of pw columns, enough that every tap of every tile (MR pixels, the last ones
   past the row's end) reads inside it. */
static int32_t padded_h(const q8c_conv_t *p) { return (p->out_h - 1) * p->stride + p->kh; }
/* stride 1: tiles run over the padded rows end to end (a tile may wrap into the next row; the kw - 1 columns
   between rows are computed and dropped), so a 4-pixel-wide output fills 8-pixel tiles; otherwise tiles stay in
   their row and the copy is wide enough for the last one */
static int32_t padded_w(const q8c_conv_t *p) {
    return p->stride == 1 ? p->out_w + p->kw - 1 : (p->out_w + MR - 2) * p->stride + p->kw;
}
static int taps_path(const q8c_conv_t *p) { return (p->in_c & 3) == 0 && p->k == p->kp; }
static int one_by_one(const q8c_conv_t *p) { return p->kh == 1 && p->kw == 1 && p->stride == 1; }
/* Whether a conv gathers windows: where the taps path cannot read the input, and on VNNI (16-row tiles) for rows up
   to 16 pixels wide and strided convs (no padded columns computed, no row tails); a 1x1 stride-1 conv has no padded
   columns, its tiles run end to end. */
static int gathers(const q8c_conv_t *p) {
    if (!taps_path(p)) return 1;
    return Q8C_ISA == 1 && !one_by_one(p) && (p->out_w <= 16 || p->stride > 1);
}

#define ACC_BYTES (2 * 16 * Q8C_NR * 4 + 64) /* a tile's accumulators: up to 2 blocks of 16 rows (tile_gemm) */

/* Scratch: shared (the taps path's padded input copy) and per participant (accumulators, gathered windows). */
int32_t q8c_conv_scratch(const q8c_conv_t *p) {
    return gathers(p) ? 64 : (padded_h(p) * padded_w(p) + MR) * p->in_c * (int32_t)sizeof(a_t) + 64;
}
int32_t q8c_conv_local(const q8c_conv_t *p) {
    return ACC_BYTES + (gathers(p) ? MR * a_row(p) * (int32_t)sizeof(a_t) : 0);
}

static void pad_input(const q8c_conv_t *p, const int8_t *in, a_t *dst) {
    const int32_t ic = p->in_c, ph = padded_h(p), pw = padded_w(p);
    const int32_t x0 = p->pad_l, x1 = p->pad_l + p->in_w < pw ? p->pad_l + p->in_w : pw;
    for (int32_t y = 0; y < ph; y++, dst += pw * ic) {
        const int32_t iy = y - p->pad_t;
        if (iy < 0 || iy >= p->in_h || x1 <= x0) {
            pad_a(dst, pw * ic);
            continue;
        }
        pad_a(dst, x0 * ic);
        copy_a(dst + x0 * ic, in + iy * p->in_w * ic, (x1 - x0) * ic);
        pad_a(dst + x1 * ic, (pw - x1) * ic);
    }
}

static inline void store_tile(const q8c_conv_t *p, const int32_t *acc, int32_t pix0, int32_t r, int32_t c0,
                              int8_t *out) {
    const int32_t oc = p->out_c, nc = oc - c0 < Q8C_NR ? oc - c0 : Q8C_NR;
#if Q8C_ISA == 1
    { /* the block's parameters loaded once for the tile (int8 stores may alias them); a channel tail masked (the
         parameter arrays run to whole blocks) */
        const __mmask16 cm = nc == Q8C_NR ? 0xFFFF : (__mmask16)((1u << nc) - 1);
        const rq16c_t k = rq16_consts(_mm512_loadu_si512(p->rq.m + c0), _mm512_loadu_si512(p->rq.l + c0),
                                      _mm512_loadu_si512(p->rq.n + c0));
        const rq16c_t ka = p->skip ? rq16_consts(_mm512_set1_epi32(p->rq_add.m), _mm512_set1_epi32(p->rq_add.l),
                                                 _mm512_set1_epi32(p->rq_add.n)) : k;
        const __m512i lo = _mm512_set1_epi32(p->relu ? 0 : -128);
        /* the ReLU's floor, then the saturating narrowing clamps to [-128, 127] */
#define Q8C_ROWS(merged)                                                                                             \
    for (int32_t i = 0; i < r; i++) {                                                                                \
        const int32_t at = (pix0 + i) * oc + c0;                                                                     \
        __m512i y = rq16x(_mm512_loadu_si512(acc + i * Q8C_NR), &k, merged);                                         \
        if (p->skip)                                                                                                 \
            y = _mm512_add_epi32(y, rq16x(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(cm, p->skip + at)), &ka, merged)); \
        _mm_mask_storeu_epi8(out + at, cm, _mm512_cvtsepi32_epi8(_mm512_max_epi32(y, lo)));                        \
    }
        if (k.merged && ka.merged) {
            Q8C_ROWS(1)
        } else {
            Q8C_ROWS(0)
        }
#undef Q8C_ROWS
        return;
    }
#elif Q8C_ISA == 2
    if (nc == Q8C_NR) { /* as the AVX-512 tile, in two halves */
#define LD8(ptr) _mm256_loadu_si256((const __m256i *)(const void *)(ptr))
        const __m256i m0 = LD8(p->rq.m + c0), m1 = LD8(p->rq.m + c0 + 8), l0 = LD8(p->rq.l + c0);
        const __m256i l1 = LD8(p->rq.l + c0 + 8), n0 = LD8(p->rq.n + c0), n1 = LD8(p->rq.n + c0 + 8);
        const __m256i lo = _mm256_set1_epi32(p->relu ? 0 : -128);
        const __m256i am = _mm256_set1_epi32(p->rq_add.m), al = _mm256_set1_epi32(p->rq_add.l);
        const __m256i an = _mm256_set1_epi32(p->rq_add.n);
        for (int32_t i = 0; i < r; i++) {
            const int32_t at = (pix0 + i) * oc + c0;
            __m256i y0 = rq8(LD8(acc + i * Q8C_NR), m0, l0, n0), y1 = rq8(LD8(acc + i * Q8C_NR + 8), m1, l1, n1);
            if (p->skip) {
                const __m128i sk = _mm_loadu_si128((const __m128i *)(const void *)(p->skip + at));
                y0 = _mm256_add_epi32(y0, rq8(_mm256_cvtepi8_epi32(sk), am, al, an));
                y1 = _mm256_add_epi32(y1, rq8(_mm256_cvtepi8_epi32(_mm_srli_si128(sk, 8)), am, al, an));
            }
            store16(out + at, _mm256_max_epi32(y0, lo), _mm256_max_epi32(y1, lo));
        }
#undef LD8
        return;
    }
#endif
    for (int32_t i = 0; i < r; i++) {
        const int32_t at = (pix0 + i) * oc + c0;
        const int8_t *skip = p->skip ? p->skip + at : 0;
        if (nc == Q8C_NR)
            EPILOGUE16(acc + i * Q8C_NR, p->rq.m + c0, p->rq.l + c0, p->rq.n + c0, skip, p->rq_add, p->relu, out + at);
        else
            epilogue(acc + i * Q8C_NR, nc, p->rq.m + c0, p->rq.l + c0, p->rq.n + c0, skip, p->rq_add, p->relu,
                     out + at);
    }
}

/* One conv's work for the pool: items are (tile, group of nbk blocks of 16 output channels) pairs, tile-major, so a
   participant's chunk reuses its tile's rows across the groups. */
typedef struct {
    const q8c_conv_t *p;
    const int8_t *in;
    int8_t *out;
    const a_t *A;        /* the padded input (taps path) */
    taps_t g;
    int32_t nb, tiles_w; /* blocks; tiles per output row (strided taps path) */
    int32_t rows, nbk, groups; /* a tile's rows; blocks per item; groups of them */
} conv_job_t;

/* rows of acc (16 rows a block, tile_gemm) -> out, pixels pix0.. (runs of one output row: `row_w` positions a row,
   the first out_w of them real) */
static void store_blocks(const conv_job_t *j, const int32_t *acc, int32_t q0, int32_t r, int32_t row_w, int32_t b0,
                         int32_t nbk) {
    const q8c_conv_t *p = j->p;
    for (int32_t jb = 0; jb < nbk; jb++)
        for (int32_t i = 0; i < r; i++) {
            const int32_t oy = (q0 + i) / row_w, ox = (q0 + i) % row_w;
            if (ox >= p->out_w) continue;
            const int32_t n = r - i < p->out_w - ox ? r - i : p->out_w - ox;
            store_tile(p, acc + jb * 256 + i * Q8C_NR, oy * p->out_w + ox, n, (b0 + jb) * Q8C_NR, j->out);
            i += n - 1;
        }
}

static void conv_taps_s1(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const conv_job_t *j = ctx;
    const q8c_conv_t *p = j->p;
    const int32_t ic = p->in_c, pw = padded_w(p), kp = p->kp, R = j->rows;
    const int32_t *bias = Q8C_ISA == 1 ? p->bias_u8 : p->bias;
    int32_t *acc = local;
    const int32_t nq = (p->out_h - 1) * pw + p->out_w; /* padded positions up to the last output */
    for (int32_t it = lo; it < hi; it++) {
        const int32_t q0 = it / j->groups * R, b0 = it % j->groups * j->nbk, r = nq - q0 < R ? nq - q0 : R;
        const int32_t nbk = j->nb - b0 < j->nbk ? j->nb - b0 : j->nbk;
        tile_gemm(j->A + q0 * ic, j->g, p->w + b0 * kp * Q8C_NR, kp * Q8C_NR, bias + b0 * Q8C_NR, acc, r, nbk);
        store_blocks(j, acc, q0, r, pw, b0, nbk);
    }
}

static void conv_taps_strided(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const conv_job_t *j = ctx;
    const q8c_conv_t *p = j->p;
    const int32_t ic = p->in_c, pw = padded_w(p), kp = p->kp, R = j->rows;
    const int32_t *bias = Q8C_ISA == 1 ? p->bias_u8 : p->bias;
    int32_t *acc = local;
    for (int32_t it = lo; it < hi; it++) {
        const int32_t t = it / j->groups, b0 = it % j->groups * j->nbk, oy = t / j->tiles_w, ox = t % j->tiles_w * R;
        const int32_t r = p->out_w - ox < R ? p->out_w - ox : R, nbk = j->nb - b0 < j->nbk ? j->nb - b0 : j->nbk;
        tile_gemm(j->A + (oy * p->stride * pw + ox * p->stride) * ic, j->g, p->w + b0 * kp * Q8C_NR, kp * Q8C_NR,
                  bias + b0 * Q8C_NR, acc, r, nbk);
        store_blocks(j, acc, oy * p->out_w + ox, r, p->out_w, b0, nbk);
    }
}

static void conv_windows(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const conv_job_t *j = ctx;
    const q8c_conv_t *p = j->p;
    const int32_t npix = p->out_h * p->out_w, kp = p->kp, as = a_row(p), R = j->rows;
    const int32_t *bias = Q8C_ISA == 1 ? p->bias_u8 : p->bias;
    int32_t *acc = local;
    a_t *A = (a_t *)(void *)((char *)local + ACC_BYTES);
    const taps_t g = {as, 1, 1, 0, 0, kp};
    int32_t have = -1; /* the tile whose windows A holds */
    for (int32_t it = lo; it < hi; it++) {
        const int32_t pix0 = it / j->groups * R, b0 = it % j->groups * j->nbk, r = npix - pix0 < R ? npix - pix0 : R;
        const int32_t nbk = j->nb - b0 < j->nbk ? j->nb - b0 : j->nbk;
        if (pix0 != have) {
            for (int32_t i = 0; i < r; i++) window(p, j->in, pix0 + i, A + i * as);
            have = pix0;
        }
        tile_gemm(A, g, p->w + b0 * kp * Q8C_NR, kp * Q8C_NR, bias + b0 * Q8C_NR, acc, r, nbk);
        store_blocks(j, acc, pix0, r, p->out_w, b0, nbk);
    }
}

void q8c_conv(const q8c_conv_t *p, const int8_t *in, int8_t *out, void *scratch) {
    const int32_t npix = p->out_h * p->out_w, nb = (p->out_c + Q8C_NR - 1) / Q8C_NR;
    /* ~0.006 ns a multiply-add (one thread, measured here): enough to decide whether a split pays */
    const int64_t work = (int64_t)npix * nb * Q8C_NR * p->kp / 160 + npix * 2;
    conv_job_t j = {p, in, out, 0, {0}, nb, 0, MR, 1, nb};
#if Q8C_ISA == 1
    /* tiles of 12 pixels x 32 channels where there are more than 16 pixels (each weight load serves 12 pixels, each
       broadcast 2 blocks), else one tile of 16 pixels (a deep layer's weights stream once) */
    if (nb >= 2 && npix > 16) j.rows = 12, j.nbk = 2, j.groups = (nb + 1) / 2;
#endif
    const int32_t R = j.rows;
    if (!gathers(p)) { /* implicit GEMM: the taps read one padded copy of the input (no per-pixel windows) */
        const int32_t ic = p->in_c, pw = padded_w(p);
        j.g = (taps_t){p->stride * ic, p->kh, p->kw, pw * ic, ic, ic};
        a_t *A = (a_t *)scratch;
        pad_input(p, in, A);
        j.A = A;
        /* tiles over the padded rows end to end (MR <= 8: the few padded columns are computed and dropped); VNNI's
           16-row tiles stay in their row, but where a 1x1 conv has no padded columns */
        if (p->stride == 1 && (Q8C_ISA != 1 || one_by_one(p))) {
            const int32_t nq = (p->out_h - 1) * pw + p->out_w;
            q8p_for((nq + R - 1) / R * j.groups, work, conv_taps_s1, &j);
        } else {
            j.tiles_w = (p->out_w + R - 1) / R;
            q8p_for(p->out_h * j.tiles_w * j.groups, work, conv_taps_strided, &j);
        }
        return;
    }
    q8p_for((npix + R - 1) / R * j.groups, work, conv_windows, &j);
}

int32_t q8c_dw_local(const q8c_dw_t *p) {
    const int32_t taps = p->out_w * (p->kh * p->kw + 1) * (int32_t)sizeof(void *);
    return (p->c * 4 > taps ? p->c * 4 : taps) + 64;
}

typedef struct {
    const q8c_dw_t *p;
    const int8_t *in;
    int8_t *out;
    int32_t merged; /* every n <= 30 (rq16_consts) */
} dw_job_t;

#if Q8C_ISA == 1
/* Taps in pairs, 32 channels a step: the two taps' int16 values interleaved (unpacklo/hi) and vpdpwssd against the
   weights interleaved the same way (cpu_c.dw_pairs) add x_a w_a + x_b w_b for 16 channels in one instruction; the
   accumulators hold the channels in unpack order, and so do the bias and requantization arrays, until packs_epi32
   puts the two halves back in order. A tap outside the input (padding) is a masked load of zeros; so are channels
   past c. Items are output rows. */
static inline __attribute__((always_inline)) void dw_pairs_body(const void *ctx, int32_t lo, int32_t hi, void *local,
                                                                const int merged) {
    const dw_job_t *j = ctx;
    const q8c_dw_t *p = j->p;
    const int32_t C = p->c, T = p->kh * p->kw, P2 = (T + 1) / 2, nblk = (C + 31) / 32, kw = p->kw;
    const int8_t **ptr = (const int8_t **)local; /* [out_w][taps + 1] */
    const __m512i lo_v = _mm512_set1_epi32(p->relu ? 0 : -128), hi_v = _mm512_set1_epi32(127);
    const __m512i am = _mm512_set1_epi32(p->rq_add.m), al = _mm512_set1_epi32(p->rq_add.l);
    const __m512i an = _mm512_set1_epi32(p->rq_add.n);
    const rq16c_t ka = rq16_consts(am, al, an);
    for (int32_t oy = lo; oy < hi; oy++) {
        const int32_t y0 = oy * p->stride - p->pad_t, rows_in = y0 >= 0 && y0 + p->kh <= p->in_h;
        for (int32_t ox = 0; ox < p->out_w; ox++) { /* the row's taps where the fast path below does not take it */
            const int32_t x0 = ox * p->stride - p->pad_l;
            if (rows_in && x0 >= 0 && x0 + kw <= p->in_w && T == 9) continue;
            const int8_t **pt = ptr + ox * (T + 1);
            for (int32_t r = 0, t = 0; r < p->kh; r++)
                for (int32_t c = 0; c < kw; c++, t++) {
                    const int32_t iy = y0 + r, ix = x0 + c;
                    pt[t] = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w ? j->in + (iy * p->in_w + ix) * C : 0;
                }
            pt[T] = 0; /* the zero tap of an odd count */
        }
        for (int32_t blk = 0; blk < nblk; blk++) { /* the block's weights and parameters stay in registers/L1 */
            const int32_t c0 = blk * 32;
            const __mmask32 cm = C - c0 >= 32 ? 0xFFFFFFFFu : (1u << (C - c0)) - 1;
            const int32_t *bp = p->pairs.bias + c0;
            const __m512i b_lo = _mm512_loadu_si512(bp), b_hi = _mm512_loadu_si512(bp + 16);
            const int32_t *m = p->pairs.rq.m + c0, *l = p->pairs.rq.l + c0, *n = p->pairs.rq.n + c0;
            const rq16c_t k_lo = rq16_consts(_mm512_loadu_si512(m), _mm512_loadu_si512(l), _mm512_loadu_si512(n));
            const rq16c_t k_hi = rq16_consts(_mm512_loadu_si512(m + 16), _mm512_loadu_si512(l + 16),
                                             _mm512_loadu_si512(n + 16));
            const int16_t *wb = p->pairs.w + blk * 64;
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                const int32_t x0 = ox * p->stride - p->pad_l, at = (oy * p->out_w + ox) * C;
                __m512i acc_lo = b_lo, acc_hi = b_hi;
                const int16_t *w = wb;
                if (rows_in && x0 >= 0 && x0 + kw <= p->in_w && T == 9) { /* 3x3 inside the input: fixed offsets */
                    const int8_t *base = j->in + (y0 * p->in_w + x0) * C + c0;
                    const int32_t rs = p->in_w * C;
#define DW_X(t) _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(cm, base + (t) / 3 * rs + (t) % 3 * C))
#define DW_PAIR(xa, xb)                                                                                   \
    do {                                                                                                  \
        const __m512i a_ = (xa), b_ = (xb);                                                               \
        acc_lo = _mm512_dpwssd_epi32(acc_lo, _mm512_unpacklo_epi16(a_, b_), _mm512_loadu_si512(w));      \
        acc_hi = _mm512_dpwssd_epi32(acc_hi, _mm512_unpackhi_epi16(a_, b_), _mm512_loadu_si512(w + 32)); \
        w += nblk * 64;                                                                                   \
    } while (0)
                    DW_PAIR(DW_X(0), DW_X(1));
                    DW_PAIR(DW_X(2), DW_X(3));
                    DW_PAIR(DW_X(4), DW_X(5));
                    DW_PAIR(DW_X(6), DW_X(7));
                    DW_PAIR(DW_X(8), _mm512_setzero_si512());
#undef DW_X
                } else { /* padding taps (masked loads of zeros), other kernel sizes: the row's tap table */
                    const int8_t **pt = ptr + ox * (T + 1);
                    for (int32_t q = 0; q < P2; q++) {
                        const int8_t *pa = pt[2 * q], *pb = pt[2 * q + 1];
                        DW_PAIR(_mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(pa ? cm : 0, pa ? pa + c0 : j->in)),
                                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(pb ? cm : 0, pb ? pb + c0 : j->in)));
                    }
                }
#undef DW_PAIR
                __m512i y_lo = rq16x(acc_lo, &k_lo, merged), y_hi = rq16x(acc_hi, &k_hi, merged);
                if (p->skip) { /* the residual, widened into the same unpack order */
                    const __m512i s16 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(cm, p->skip + at + c0));
                    const __m512i sign = _mm512_srai_epi16(s16, 15);
                    y_lo = _mm512_add_epi32(y_lo, rq16x(_mm512_unpacklo_epi16(s16, sign), &ka, merged));
                    y_hi = _mm512_add_epi32(y_hi, rq16x(_mm512_unpackhi_epi16(s16, sign), &ka, merged));
                }
                y_lo = _mm512_min_epi32(_mm512_max_epi32(y_lo, lo_v), hi_v);
                y_hi = _mm512_min_epi32(_mm512_max_epi32(y_hi, lo_v), hi_v);
                _mm256_mask_storeu_epi8(j->out + at + c0, cm, _mm512_cvtepi16_epi8(_mm512_packs_epi32(y_lo, y_hi)));
            }
        }
    }
}
static void dw_pairs(const void *ctx, int32_t lo, int32_t hi, void *local) {
    if (((const dw_job_t *)ctx)->merged) dw_pairs_body(ctx, lo, hi, local, 1);
    else dw_pairs_body(ctx, lo, hi, local, 0);
}
#endif

/* per output pixel the taps inside the input, all channels at once (the compiler's vector loop); items are output
   rows */
static void dw_rows(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const dw_job_t *j = ctx;
    const q8c_dw_t *p = j->p;
    const int8_t *in = j->in;
    int8_t *out = j->out;
    const int32_t C = p->c, C16 = C & ~15;
    int32_t *restrict acc = (int32_t *)local;
    for (int32_t oy = lo; oy < hi; oy++) {
        const int32_t y0 = oy * p->stride - p->pad_t;
        const int32_t r0 = q8_tap_lo(y0), r1 = q8_tap_hi(y0, p->in_h, p->kh);
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride - p->pad_l;
            const int32_t t0 = q8_tap_lo(x0), t1 = q8_tap_hi(x0, p->in_w, p->kw);
            for (int32_t c = 0; c < C; c++) acc[c] = p->bias[c];
            for (int32_t r = r0; r < r1; r++)
                for (int32_t t = t0; t < t1; t++) {
                    const int8_t *restrict x = in + ((y0 + r) * p->in_w + x0 + t) * C;
                    const int8_t *restrict w = p->w + (r * p->kw + t) * C;
                    for (int32_t c0 = 0; c0 < C16; c0 += 16) /* blocks of a known count vectorize whole */
                        for (int32_t c = c0; c < c0 + 16; c++) acc[c] += x[c] * w[c];
                    for (int32_t c = C16; c < C; c++) acc[c] += x[c] * w[c];
                }
            const int32_t at = (oy * p->out_w + ox) * C;
            const int8_t *skip = p->skip ? p->skip + at : 0;
            for (int32_t c0 = 0; c0 < C16; c0 += 16)
                EPILOGUE16(acc + c0, p->rq.m + c0, p->rq.l + c0, p->rq.n + c0, skip ? skip + c0 : 0, p->rq_add,
                           p->relu, out + at + c0);
            if (C16 < C)
                epilogue(acc + C16, C - C16, p->rq.m + C16, p->rq.l + C16, p->rq.n + C16, skip ? skip + C16 : 0,
                         p->rq_add, p->relu, out + at + C16);
        }
    }
}


/* Depthwise conv (ReLU6 and residual fused). */
void q8c_dwconv(const q8c_dw_t *p, const int8_t *in, int8_t *out, void *scratch) {
    int32_t merged = Q8C_FALLBACK != 1 && (p->rq_add.n <= 30 || !p->skip);
    for (int32_t c = 0; c < p->c; c++) merged &= p->rq.n[c] <= 30;
    const dw_job_t j = {p, in, out, merged};
    const int64_t work = (int64_t)p->out_h * p->out_w * p->c * p->kh * p->kw / 16 + p->out_h * p->out_w * 2;
    (void)scratch;
#if Q8C_ISA == 1
    if (p->pairs.w) {
        q8p_for(p->out_h, work, dw_pairs, &j);
        return;
    }
#endif
    q8p_for(p->out_h, work, dw_rows, &j);
}

static void add_run(int32_t n, const int8_t *restrict a, const int8_t *restrict b, q8_rq_t ra, q8_rq_t rb,
                    int32_t relu, int8_t *restrict out) {
    const int32_t lo = relu ? 0 : -128, am = ra.m, al = ra.l, an = ra.n, bm = rb.m, bl = rb.l, bn = rb.n;
    int32_t i = 0;
#if Q8C_ISA == 1
    const rq16c_t ka = rq16_consts(_mm512_set1_epi32(am), _mm512_set1_epi32(al), _mm512_set1_epi32(an));
    const rq16c_t kb = rq16_consts(_mm512_set1_epi32(bm), _mm512_set1_epi32(bl), _mm512_set1_epi32(bn));
    const __m512i lov = _mm512_set1_epi32(lo), hiv = _mm512_set1_epi32(127);
    for (; i + 16 <= n; i += 16) {
        const __m512i x = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(a + i)));
        const __m512i y = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        __m512i v = _mm512_add_epi32(rq16k(x, &ka), rq16k(y, &kb));
        v = _mm512_min_epi32(_mm512_max_epi32(v, lov), hiv);
        _mm_storeu_si128((__m128i *)(void *)(out + i), _mm512_cvtepi32_epi8(v));
    }
#endif
    for (; i < n; i++) {
        int32_t y = rq1(a[i], am, al, an) + rq1(b[i], bm, bl, bn);
        y = y < lo ? lo : y > 127 ? 127 : y;
        out[i] = (int8_t)y;
    }
}

/* Global average pool (kernels_int8.c's q8_avgpool, the same numbers): the sums over pixels as vector adds, then the
   requantization of every channel (vector loops, no per-channel call). */
void q8c_avgpool(const int8_t *restrict in, int32_t hw, int32_t c, const q8_rq_t *rq, int8_t *restrict out,
                 void *scratch) {
    int32_t *restrict s = (int32_t *)scratch;
    const int32_t m = rq->m, l = rq->l, n = rq->n;
    for (int32_t k = 0; k < c; k++) s[k] = 0;
    for (int32_t i = 0; i < hw; i++)
        for (int32_t k = 0; k < c; k++) s[k] += in[i * c + k];
    for (int32_t k = 0; k < c; k++) {
        int32_t y = rq1(s[k], m, l, n);
        out[k] = (int8_t)(y < -128 ? -128 : y > 127 ? 127 : y);
    }
}

typedef struct {
    const int8_t *a, *b;
    int8_t *out;
    q8_rq_t ra, rb;
    int32_t n, relu;
} add_job_t;

#define ADD_BLOCK 1024
static void add_blocks(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const add_job_t *j = ctx;
    const int32_t from = lo * ADD_BLOCK, to = hi * ADD_BLOCK < j->n ? hi * ADD_BLOCK : j->n;
    (void)local;
    add_run(to - from, j->a + from, j->b + from, j->ra, j->rb, j->relu, j->out + from);
}

void q8c_add(int32_t n, const int8_t *a, const int8_t *b, q8_rq_t ra, q8_rq_t rb, int32_t relu, int8_t *out) {
    const add_job_t j = {a, b, out, ra, rb, n, relu};
    q8p_for((n + ADD_BLOCK - 1) / ADD_BLOCK, n / 8, add_blocks, &j);
}

int32_t q8c_gn_scratch(const q8_gn_t *p) { return p->c * 48 + 512; }

/* GroupNorm (kernels_int8.c's q8_groupnorm, same numbers) in two passes over HWC with the channels innermost: the
   per-channel sums (items: blocks of 16 channels over every pixel), then every value with its channel's factors
   (items: pixels); the factors in between, once per group. */
typedef struct {
    const q8_gn_t *p;
    const int8_t *in;
    int8_t *out;
    int32_t *s, *m, *down, *b;
    uint32_t *q;
    int64_t *m64, *sh64, *b64;
    int32_t merged; /* AVX-512: sh64 and b64 hold down + 16 and (b + 2^15) << down (gn16m) */
    int32_t split;  /* AVX-512: the m64 region holds gn_apply_split's int32 factors instead */
} gn_job_t;

#if Q8C_ISA == 1
#define GN_BLOCK 32
/* Blocks of 32 channels: two pixels' int16 values interleaved (unpacklo/hi, as dw_pairs) so one vpdpwssd adds both
   pixels' values (against ones) or squares for 16 channels; the sums come out in unpack order (per 128-bit lane k:
   channels 8k..8k+3 in the "lo" register, 8k+4..8k+7 in the "hi" one) and are put back in order at the end. */
static void gn_sums(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const gn_job_t *jb = ctx;
    const int32_t c = jb->p->c, hw = jb->p->hw;
    const int8_t *in = jb->in;
    const __m512i ones = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
    const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    (void)local;
    for (int32_t blk = lo; blk < hi; blk++) {
        const int32_t j0 = blk * GN_BLOCK, nc = c - j0 < GN_BLOCK ? c - j0 : GN_BLOCK;
        const __mmask32 cm = nc == GN_BLOCK ? 0xFFFFFFFFu : (1u << nc) - 1;
        __m512i s_lo = zero, s_hi = zero, q_lo = zero, q_hi = zero;
        const int8_t *x = in + j0;
        int32_t i = 0;
        for (; i + 2 <= hw; i += 2, x += 2 * c) {
            const __m512i u = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(cm, x));
            const __m512i v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(cm, x + c));
            const __m512i a = _mm512_unpacklo_epi16(u, v), b = _mm512_unpackhi_epi16(u, v);
            s_lo = _mm512_dpwssd_epi32(s_lo, a, ones), s_hi = _mm512_dpwssd_epi32(s_hi, b, ones);
            q_lo = _mm512_dpwssd_epi32(q_lo, a, a), q_hi = _mm512_dpwssd_epi32(q_hi, b, b); /* < hw 2^14: no wrap */
        }
        if (i < hw) { /* an odd pixel count: the last one paired with zeros */
            const __m512i u = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(cm, x));
            const __m512i a = _mm512_unpacklo_epi16(u, zero), b = _mm512_unpackhi_epi16(u, zero);
            s_lo = _mm512_dpwssd_epi32(s_lo, a, ones), s_hi = _mm512_dpwssd_epi32(s_hi, b, ones);
            q_lo = _mm512_dpwssd_epi32(q_lo, a, a), q_hi = _mm512_dpwssd_epi32(q_hi, b, b);
        }
        const __mmask16 m0 = (__mmask16)cm, m1 = (__mmask16)(cm >> 16);
        _mm512_mask_storeu_epi32(jb->s + j0, m0, _mm512_permutex2var_epi32(s_lo, first, s_hi));
        _mm512_mask_storeu_epi32(jb->q + j0, m0, _mm512_permutex2var_epi32(q_lo, first, q_hi));
        _mm512_mask_storeu_epi32(jb->s + j0 + 16, m1, _mm512_permutex2var_epi32(s_lo, second, s_hi));
        _mm512_mask_storeu_epi32(jb->q + j0 + 16, m1, _mm512_permutex2var_epi32(q_lo, second, q_hi));
    }
}
#else
#define GN_BLOCK 16
static void gn_sums(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const gn_job_t *jb = ctx;
    const int32_t c = jb->p->c, hw = jb->p->hw;
    const int8_t *in = jb->in;
    int32_t *restrict s = jb->s;
    uint32_t *restrict q = jb->q;
    (void)local;
    for (int32_t blk = lo; blk < hi; blk++) {
        const int32_t j0 = blk * 16, j1 = j0 + 16 < c ? j0 + 16 : c;
#if Q8C_ISA == 2
        if (j1 - j0 == 16) { /* the block's sums in registers over every pixel, in halves of 8 channels */
            __m256i s0 = _mm256_setzero_si256(), s1 = s0, q0 = s0, q1 = s0;
            for (int32_t i = 0; i < hw; i++) {
                const __m256i u = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(in + i * c + j0)));
                const __m256i u2 = _mm256_mullo_epi16(u, u);
                s0 = _mm256_add_epi32(s0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(u)));
                s1 = _mm256_add_epi32(s1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(u, 1)));
                q0 = _mm256_add_epi32(q0, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(u2)));
                q1 = _mm256_add_epi32(q1, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(u2, 1)));
            }
            _mm256_storeu_si256((__m256i *)(void *)(s + j0), s0);
            _mm256_storeu_si256((__m256i *)(void *)(s + j0 + 8), s1);
            _mm256_storeu_si256((__m256i *)(void *)(q + j0), q0);
            _mm256_storeu_si256((__m256i *)(void *)(q + j0 + 8), q1);
            continue;
        }
#endif
        for (int32_t j = j0; j < j1; j++) s[j] = 0, q[j] = 0;
        for (int32_t i = 0; i < hw; i++) {
            const int8_t *restrict x = in + i * c;
            for (int32_t j = j0; j < j1; j++) {
                s[j] += x[j];
                q[j] += (uint32_t)(x[j] * x[j]);
            }
        }
    }
}

#endif

#if Q8C_ISA == 1
/* 16 channels of one pixel: int32 differences, their even and odd lanes' int64 products (vpmuldq), the two halves'
   low words merged */
static inline __attribute__((always_inline)) void gn16(const int8_t *x, int8_t *y, int32_t j0, __mmask16 cm,
                                                       __m512i nv, __m512i lov, __m512i hiv, const int32_t *s,
                                                       const int64_t *m64, const int64_t *sh64, const int64_t *b64) {
    const __m512i d = _mm512_sub_epi32(_mm512_mullo_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(cm, x + j0)), nv),
                                       _mm512_maskz_loadu_epi32(cm, s + j0));
    const __m512i pe = _mm512_mul_epi32(d, _mm512_loadu_si512(m64 + j0));
    const __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(d, 32), _mm512_loadu_si512(m64 + j0 + 8));
    const __m512i te = _mm512_srai_epi64(
        _mm512_add_epi64(_mm512_srav_epi64(pe, _mm512_loadu_si512(sh64 + j0)), _mm512_loadu_si512(b64 + j0)), 16);
    const __m512i to = _mm512_srai_epi64(
        _mm512_add_epi64(_mm512_srav_epi64(po, _mm512_loadu_si512(sh64 + j0 + 8)), _mm512_loadu_si512(b64 + j0 + 8)), 16);
    __m512i v = _mm512_mask_blend_epi32(0xAAAA, te, _mm512_slli_epi64(to, 32)); /* |v| < 2^31: low words */
    v = _mm512_min_epi32(_mm512_max_epi32(v, lov), hiv);
    _mm_mask_storeu_epi8(y + j0, cm, _mm512_cvtepi32_epi8(v));
}

/* gn16 with the two roundings merged (q8c_groupnorm checked 0 <= down <= 30, so nothing overflows):
   ((d m >> down) + b + 2^15) >> 16 == (d m + ((b + 2^15) << down)) >> (down + 16), sh64 and b64 holding the shift
   and the addend; n x by vpmaddwd where n < 2^15 (x sign-extended: its high half times n's zero high half adds 0);
   the odd lanes moved down by a shuffle, and the two results' low words merged by one permute */
static inline __attribute__((always_inline)) void gn16m(const int8_t *x, int8_t *y, int32_t j0, __mmask16 cm,
                                                        __m512i nv, int32_t small_n, __m512i lov, __m512i hiv,
                                                        const int32_t *s, const int64_t *m64, const int64_t *sh64,
                                                        const int64_t *b64) {
    const __m512i x32 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(cm, x + j0));
    const __m512i d = _mm512_sub_epi32(small_n ? _mm512_madd_epi16(x32, nv) : _mm512_mullo_epi32(x32, nv),
                                       _mm512_maskz_loadu_epi32(cm, s + j0));
    const __m512i pe = _mm512_mul_epi32(d, _mm512_loadu_si512(m64 + j0));
    const __m512i po = _mm512_mul_epi32(_mm512_shuffle_epi32(d, _MM_PERM_DDBB), _mm512_loadu_si512(m64 + j0 + 8));
    const __m512i te = _mm512_srav_epi64(_mm512_add_epi64(pe, _mm512_loadu_si512(b64 + j0)), _mm512_loadu_si512(sh64 + j0));
    const __m512i to = _mm512_srav_epi64(_mm512_add_epi64(po, _mm512_loadu_si512(b64 + j0 + 8)),
                                         _mm512_loadu_si512(sh64 + j0 + 8));
    const __m512i merge = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    __m512i v = _mm512_permutex2var_epi32(te, merge, to); /* |v| < 2^31: low words */
    v = _mm512_min_epi32(_mm512_max_epi32(v, lov), hiv);
    _mm_mask_storeu_epi8(y + j0, cm, _mm512_cvtepi32_epi8(v));
}
#endif

#if Q8C_ISA == 1
/* gn16m's (A x + B) >> E (A = n m, B = ((b + 2^15) << down) - s m, int64) in int32 lanes only: with S = min(E, 24)
   and A = ah 2^S + al, B = bh 2^S + bl (0 <= al, bl < 2^S), (A x + B) >> S == ah x + bh + ((al x + bl) >> S), the
   last term's |al x + bl| < 2^31 for int8 x, and the rest within int32 where q8c_groupnorm checked |ah| 128 + |bh| +
   128 < 2^31; then >> (E - S). Factors: [al, ah, bl, bh, S, E - S] arrays of `cu` channels. */
static void gn_apply_split(const gn_job_t *jb, int32_t lo, int32_t hi, __m512i lov, __m512i hiv) {
    const int32_t c = jb->p->c, cu = (c + 15) & ~15;
    const int32_t *f = (const int32_t *)(const void *)jb->m64;
    for (int32_t j0 = 0; j0 < c; j0 += 16) { /* a block's factors in registers over the item's pixels */
        const __mmask16 cm = c - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (c - j0)) - 1);
        const int32_t *al = f + j0, *ah = al + cu, *bl = ah + cu, *bh = bl + cu, *sl = bh + cu, *sr = sl + cu;
        const __m512i Al = _mm512_loadu_si512(al), Ah = _mm512_loadu_si512(ah), Bl = _mm512_loadu_si512(bl);
        const __m512i Bh = _mm512_loadu_si512(bh), Sl = _mm512_loadu_si512(sl), Sr = _mm512_loadu_si512(sr);
        const int8_t *x = jb->in + lo * c + j0;
        int8_t *y = jb->out + lo * c + j0;
        for (int32_t i = lo; i < hi; i++, x += c, y += c) {
            const __m512i x32 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(cm, x));
            const __m512i low = _mm512_srav_epi32(_mm512_add_epi32(_mm512_mullo_epi32(x32, Al), Bl), Sl);
            __m512i v = _mm512_add_epi32(_mm512_add_epi32(_mm512_mullo_epi32(x32, Ah), Bh), low);
            v = _mm512_min_epi32(_mm512_max_epi32(_mm512_srav_epi32(v, Sr), lov), hiv);
            _mm_mask_storeu_epi8(y, cm, _mm512_cvtepi32_epi8(v));
        }
    }
}
#endif

static void gn_apply(const void *ctx, int32_t lo, int32_t hi, void *local) {
    const gn_job_t *jb = ctx;
    const q8_gn_t *p = jb->p;
    const int32_t c = p->c, cg = c / p->groups, n = p->hw * cg, c16 = c & ~15;
    const int32_t *restrict s = jb->s, *restrict m = jb->m, *restrict down = jb->down, *restrict b = jb->b;
    const int64_t *restrict m64 = jb->m64, *restrict sh64 = jb->sh64, *restrict b64 = jb->b64;
    const int32_t lo_y = p->relu && p->lo < 0 ? 0 : p->lo, hi_y = p->hi;
    (void)local, (void)m64, (void)sh64, (void)b64;
#if Q8C_ISA == 1
    const __m512i nv = _mm512_set1_epi32(n), lov = _mm512_set1_epi32(lo_y), hiv = _mm512_set1_epi32(hi_y);
    const int32_t small_n = n < 32768;
#elif Q8C_ISA == 2
    const __m256i nv = _mm256_set1_epi32(n), lov = _mm256_set1_epi32(lo_y), hiv = _mm256_set1_epi32(hi_y);
    const __m256i half_bit = _mm256_set1_epi64x(1 << 15), zero = _mm256_setzero_si256();
    const __m256i low_words = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
#endif
#if Q8C_ISA == 1
    if (jb->split) {
        gn_apply_split(jb, lo, hi, lov, hiv);
        return;
    }
#endif
    for (int32_t i = lo; i < hi; i++) {
        const int8_t *restrict x = jb->in + i * c;
        int8_t *restrict y = jb->out + i * c;
#define Q8C_GN(j)                                                                                 \
    do {                                                                                          \
        int64_t v = ((((int64_t)(n * x[j] - s[j]) * m[j]) >> down[j]) + b[j] + (1 << 15)) >> 16; \
        v = v < lo_y ? lo_y : v > hi_y ? hi_y : v;                                                        \
        y[j] = (int8_t)v;                                                                         \
    } while (0)
        int32_t j0 = 0;
#if Q8C_ISA == 1
        if (jb->merged) {
            for (; j0 + 16 <= c; j0 += 16) gn16m(x, y, j0, 0xFFFF, nv, small_n, lov, hiv, s, m64, sh64, b64);
            if (j0 < c) /* the tail, masked */
                gn16m(x, y, j0, (__mmask16)((1u << (c - j0)) - 1), nv, small_n, lov, hiv, s, m64, sh64, b64);
        } else {
            for (; j0 + 16 <= c; j0 += 16) gn16(x, y, j0, 0xFFFF, nv, lov, hiv, s, m64, sh64, b64);
            if (j0 < c) /* the tail, masked */
                gn16(x, y, j0, (__mmask16)((1u << (c - j0)) - 1), nv, lov, hiv, s, m64, sh64, b64);
        }
        j0 = c;
#elif Q8C_ISA == 2
        for (; j0 < c16; j0 += 8) { /* 8 channels: 4 int64 products at a time; AVX2 has no arithmetic 64-bit shift,
                                       so x >> k is ((x ^ sign) >> k) ^ sign */
            const __m256i d = _mm256_sub_epi32(
                _mm256_mullo_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(x + j0))), nv),
                _mm256_loadu_si256((const __m256i *)(const void *)(s + j0)));
            __m256i h[2];
            for (int32_t half = 0; half < 2; half++) {
                const int32_t j = j0 + 4 * half;
                const __m256i dq = _mm256_cvtepi32_epi64(half ? _mm256_extracti128_si256(d, 1) : _mm256_castsi256_si128(d));
                const __m256i mq = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(const void *)(m + j)));
                const __m256i sh = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(const void *)(down + j)));
                const __m256i bq = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(const void *)(b + j)));
                __m256i t = _mm256_mul_epi32(dq, mq), sign = _mm256_cmpgt_epi64(zero, t);
                t = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(t, sign), sh), sign);
                t = _mm256_add_epi64(_mm256_add_epi64(t, bq), half_bit);
                sign = _mm256_cmpgt_epi64(zero, t);
                t = _mm256_xor_si256(_mm256_srli_epi64(_mm256_xor_si256(t, sign), 16), sign);
                h[half] = _mm256_permutevar8x32_epi32(t, low_words); /* low 32 bits of each lane, in the low half */
            }
            __m256i v = _mm256_permute2x128_si256(h[0], h[1], 0x20);
            v = _mm256_min_epi32(_mm256_max_epi32(v, lov), hiv);
            const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64((__m128i *)(void *)(y + j0), _mm_packs_epi16(p16, p16));
        }
#endif
        for (; j0 < c16; j0 += 16)
            for (int32_t j = j0; j < j0 + 16; j++) Q8C_GN(j);
        for (int32_t j = j0 > c16 ? j0 : c16; j < c; j++) Q8C_GN(j); /* (AVX-512 did the tail) */
#undef Q8C_GN
    }
}

#if Q8C_ISA == 1
/* gn_apply_split's factors straight from the channel sums, 8 channels (int64 lanes) a step: per group its sums and
   1/sqrt (q8_gn_recip), then per channel m and down (as the general path below: m truncated to int32, down capped at
   63), A = n m, B = ((b + 2^15) << down) - s m, split at S = min(down + 16, 24). Returns 0 where a channel's numbers
   do not fit that form (0 <= down <= 30, |ah| 128 + |bh| + 128 < 2^31): the general path then starts over. */
static int32_t gn_split_factors(const q8_gn_t *p, const int32_t *s, const uint32_t *q, int32_t *f, int32_t cu) {
    const int32_t c = p->c, cg = c / p->groups;
    const __m512i nn = _mm512_set1_epi64((int64_t)p->hw * cg), one = _mm512_set1_epi64(1);
    __mmask8 bad = 0;
    for (int32_t g0 = 0; g0 < c; g0 += cg) {
        int32_t sg = 0;
        uint32_t qg = 0;
        for (int32_t j = g0; j < g0 + cg; j++) sg += s[j], qg += q[j];
        int32_t k;
        const __m512i rv = _mm512_set1_epi64((int64_t)q8_gn_recip(p, sg, qg, &k)), sv = _mm512_set1_epi64(sg);
        for (int32_t j0 = g0; j0 < g0 + cg; j0 += 8) {
            const __mmask8 cm = g0 + cg - j0 >= 8 ? 0xFF : (__mmask8)((1u << (g0 + cg - j0)) - 1);
            const __m512i gv = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(cm, p->g + j0));
            const __m512i m64 = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mullo_epi64(gv, rv), _mm512_set1_epi64(1 << 30)), 31);
            const __m512i mv = _mm512_cvtepi32_epi64(_mm512_cvtepi64_epi32(m64)); /* (int32_t) */
            const __m512i gev = _mm512_cvtepi8_epi64(_mm_maskz_loadu_epi8(cm, p->ge + j0));
            const __m512i dv = _mm512_min_epi64(_mm512_sub_epi64(_mm512_set1_epi64(61 - k - 16), gev), _mm512_set1_epi64(63));
            bad |= _mm512_mask_cmplt_epi64_mask(cm, dv, _mm512_setzero_si512())
                   | _mm512_mask_cmpgt_epi64_mask(cm, dv, _mm512_set1_epi64(30));
            const __m512i bv = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(cm, p->b + j0));
            const __m512i A = _mm512_mullo_epi64(mv, nn);
            const __m512i B = _mm512_sub_epi64(_mm512_sllv_epi64(_mm512_add_epi64(bv, _mm512_set1_epi64(1 << 15)), dv),
                                               _mm512_mul_epi32(sv, mv));
            const __m512i E = _mm512_add_epi64(dv, _mm512_set1_epi64(16)), S = _mm512_min_epi64(E, _mm512_set1_epi64(24));
            const __m512i frac = _mm512_sub_epi64(_mm512_sllv_epi64(one, S), one);
            const __m512i ah = _mm512_srav_epi64(A, S), bh = _mm512_srav_epi64(B, S);
            const __m512i big = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(_mm512_abs_epi64(ah), 7),
                                                                  _mm512_abs_epi64(bh)), _mm512_set1_epi64(128));
            bad |= _mm512_mask_cmpge_epi64_mask(cm, big, _mm512_set1_epi64(1LL << 31));
            const __m512i out[6] = {_mm512_and_si512(A, frac), ah, _mm512_and_si512(B, frac), bh, S, _mm512_sub_epi64(E, S)};
            for (int32_t a = 0; a < 6; a++) _mm256_mask_storeu_epi32(f + a * cu + j0, cm, _mm512_cvtepi64_epi32(out[a]));
        }
    }
    return !bad;
}
#endif

void q8c_groupnorm(const q8_gn_t *p, const int8_t *in, int8_t *out, void *scratch) {
    const int32_t c = p->c, cg = c / p->groups, hw = p->hw;
    gn_job_t jb = {.p = p, .in = in, .out = out};
    int32_t *restrict s = (int32_t *)scratch, *restrict m = s + c, *restrict down = m + c;
    uint32_t *restrict q = (uint32_t *)(down + c);
    int32_t *restrict b = (int32_t *)(q + c);
    /* the same factors as int64 (b with the rounding bit), 64-byte aligned, for the vector apply */
    const int32_t cu = (c + 15) & ~15; /* the split arrays run to whole blocks */
    int64_t *restrict m64 = (int64_t *)(((uintptr_t)(b + c) + 63) & ~(uintptr_t)63), *restrict sh64 = m64 + cu;
    int64_t *restrict b64 = sh64 + cu;
    jb.s = s, jb.m = m, jb.down = down, jb.b = b, jb.q = q, jb.m64 = m64, jb.sh64 = sh64, jb.b64 = b64;
    const int64_t work = (int64_t)hw * c / 8; /* ~1/8 ns a value a pass (one thread, measured here) */
    q8p_for((c + GN_BLOCK - 1) / GN_BLOCK, work, gn_sums, &jb);
#if Q8C_ISA == 1
    if (Q8C_FALLBACK == 0 && gn_split_factors(p, s, q, (int32_t *)(void *)m64, cu)) {
        jb.split = 1;
        q8p_for(hw, work * 2, gn_apply, &jb);
        return;
    }
#endif
    const int32_t *restrict pg = p->g, *restrict pb = p->b;
    const int8_t *restrict pge = p->ge;
    for (int32_t g0 = 0; g0 < c; g0 += cg) { /* the group's factors, then its channels' (a vector loop) */
        int32_t sg = 0;
        uint32_t qg = 0;
        for (int32_t j = g0; j < g0 + cg; j++) sg += s[j], qg += q[j];
        int32_t k;
        const int64_t recip = (int64_t)q8_gn_recip(p, sg, qg, &k);
        int32_t j0 = g0;
#if Q8C_ISA == 1
        const __m512i rv = _mm512_set1_epi64(recip), round = _mm512_set1_epi64(1 << 30);
        for (; j0 < g0 + cg; j0 += 16) { /* the loop below, 16 channels at a time (a tail masked) */
            const __mmask16 cm = g0 + cg - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (g0 + cg - j0)) - 1);
            const __m512i gv = _mm512_maskz_loadu_epi32(cm, pg + j0);
            const __m512i lo = _mm512_srai_epi64(
                _mm512_add_epi64(_mm512_mullo_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(gv)), rv), round), 31);
            const __m512i hi = _mm512_srai_epi64(
                _mm512_add_epi64(_mm512_mullo_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(gv, 1)), rv), round), 31);
            _mm512_mask_storeu_epi32(m + j0, cm, _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)),
                                                                    _mm512_cvtepi64_epi32(hi), 1));
            const __m512i sh = _mm512_sub_epi32(_mm512_set1_epi32(61 - k - 16),
                                                _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(cm, pge + j0)));
            _mm512_mask_storeu_epi32(down + j0, cm, _mm512_min_epi32(sh, _mm512_set1_epi32(63)));
            _mm512_mask_storeu_epi32(s + j0, cm, _mm512_set1_epi32(sg));
            _mm512_mask_storeu_epi32(b + j0, cm, _mm512_maskz_loadu_epi32(cm, pb + j0));
        }
#endif
        for (int32_t j = j0; j < g0 + cg; j++) {
            m[j] = (int32_t)(((int64_t)pg[j] * recip + (1 << 30)) >> 31);
            const int32_t sh = 61 - k - pge[j] - 16;
            down[j] = sh > 63 ? 63 : sh;
            s[j] = sg;
            b[j] = pb[j];
        }
    }
#if Q8C_ISA == 1
    /* per block of 16 channels, int64 lanes: the 8 even channels', then the 8 odd ones' (gn_apply multiplies the
       even and the odd int32 lanes of a register apart, vpmuldq) */
    const __m512i evens_odds = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    jb.merged = Q8C_FALLBACK != 1;
    for (int32_t j = 0; j < c; j++) jb.merged &= down[j] >= 0 && down[j] <= 30;
    { /* gn16 / gn16m's int64 factors */
        for (int32_t j0 = 0; j0 < c; j0 += 16) { /* a tail block's lanes past c: zeros (gn_apply masks them) */
            const __mmask16 cm = c - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (c - j0)) - 1);
            const __m512i mv = _mm512_permutexvar_epi32(evens_odds, _mm512_maskz_loadu_epi32(cm, m + j0));
            const __m512i dv = _mm512_permutexvar_epi32(evens_odds, _mm512_maskz_loadu_epi32(cm, down + j0));
            const __m512i bv = _mm512_permutexvar_epi32(evens_odds, _mm512_maskz_loadu_epi32(cm, b + j0));
            const __m512i half = _mm512_set1_epi64(1 << 15);
            _mm512_storeu_si512(m64 + j0, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(mv)));
            _mm512_storeu_si512(m64 + j0 + 8, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(mv, 1)));
            for (int32_t h = 0; h < 2; h++) {
                const __m512i d64 = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(dv, 1) : _mm512_castsi512_si256(dv));
                const __m512i b64v = _mm512_add_epi64(
                    _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(bv, 1) : _mm512_castsi512_si256(bv)), half);
                _mm512_storeu_si512(sh64 + j0 + 8 * h, jb.merged ? _mm512_add_epi64(d64, _mm512_set1_epi64(16)) : d64);
                _mm512_storeu_si512(b64 + j0 + 8 * h, jb.merged ? _mm512_sllv_epi64(b64v, d64) : b64v);
            }
        }
    }
#endif
    q8p_for(hw, work * 2, gn_apply, &jb);
}
