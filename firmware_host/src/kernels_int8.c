/* int8 kernels; the arithmetic is lcs/int8/graph.py's (see kernels_int8.h).

   Dense conv: for each output row the kh input rows it reads are widened to int16 in a small scratch, column
   by column (zero padding included, so the inner loop has no bounds checks); each 2 output pixels x 2 output
   channels block then accumulates over kw * col contiguous values (col = kh * in_c rounded up to a multiple of
   4). With DSP the widened values are stored lane-swizzled: 4 values c..c+3 as the words (c, c+2), (c+1, c+3),
   which is what `sxtb16` and `sxtb16 ror #8` make of a weight word, so the weights stay int8 in flash and one
   `smlad` does 2 MACs. The accumulators of a row go to an int32 row buffer; a per-row epilogue requantizes them
   channel by channel (residual add and ReLU fused). Depthwise convs share the epilogue; sparse convs (per-channel
   nonzero lists) read an int8 copy of the same window (copy_rows) and, on DSP cores, requantize in place. */
#if defined(__arm__) && defined(__ARM_FP)
/* No float here; with the FPU enabled (the firmware's flags on M4/M7/M33/M55) GCC otherwise finds no registers for
   the 8-pixel sparse step's 14 operands ("impossible constraints"). */
#pragma GCC target("general-regs-only")
#endif
#include "kernels_int8.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define Q8_DSP 1
#else
#define Q8_DSP 0
#endif

static inline uint32_t ld32(const void *p) {
    uint32_t v;
    __builtin_memcpy(&v, p, 4); /* one ldr (also under -ffreestanding) */
    return v;
}

#if Q8_DSP
/* sxtb16 of the word rotated by 8: lanes 1 and 3 (gcc does not fold the rotation into the instruction) */
static inline uint32_t sxtb16_hi(uint32_t v) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#endif

static inline int32_t high_mul(int32_t x, int32_t m) {
#if Q8_DSP
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(x), "r"(m));
    return r;
#else
    return (int32_t)(((int64_t)x * m + 0x80000000LL) >> 32);
#endif
}

static inline int32_t rq_apply(int32_t x, q8_rq_t r) {
    int32_t t = high_mul((int32_t)((uint32_t)x << r.l), r.m);
    return (t + (int32_t)((1u << r.n) >> 1)) >> r.n;
}

int32_t q8_requant(int32_t x, const q8_rq_t *rq) { return rq_apply(x, *rq); }

static inline int8_t clamp8(int32_t v, int relu) {
#if Q8_DSP
    return (int8_t)(relu ? __usat(v, 7) : __ssat(v, 8));
#else
    if (v > 127) v = 127;
    if (v < (relu ? 0 : -128)) v = relu ? 0 : -128;
    return (int8_t)v;
#endif
}

static int32_t padded_w(const q8_conv_t *p) { return (p->out_w - 1) * p->stride + p->kw; }

int32_t q8_conv_scratch(const q8_conv_t *p) {
    if (p->depthwise) return p->out_w * p->out_c * 4;
    return padded_w(p) * p->col * 2 + p->out_w * p->out_c * 4;
}

typedef uint32_t __attribute__((may_alias)) q8_word_t;

static inline void put4(int16_t *dst, uint32_t v) { /* dst is 8-byte aligned: groups of 4 values */
#if Q8_DSP
    q8_word_t *d = (q8_word_t *)(void *)dst;
    d[0] = __sxtb16(v);
    d[1] = sxtb16_hi(v);
#else
    for (int32_t k = 0; k < 4; k++) dst[k] = (int8_t)(v >> (8 * k));
#endif
}

static inline void zero16(int16_t *dst, int32_t n) { /* n: a multiple of 4 values, dst 8-byte aligned */
    q8_word_t *d = (q8_word_t *)(void *)dst;
    for (int32_t i = 0; i < n / 2; i += 2) {
        d[i] = 0;
        d[i + 1] = 0;
    }
}

/* The input under output row oy, widened to int16 column by column: column x holds its kh rows of in_c
   values (then zeros up to col), so the window of an output pixel (kw columns) is kw * col contiguous values,
   in the order of the weights ([o][kw][col], transposed at build time). Padding is written as zeros. */
static void widen_rows(const q8_conv_t *p, const int8_t *in, int32_t oy, int16_t *dst) {
    const int32_t wp = padded_w(p), ic = p->in_c, col = p->col, y0 = oy * p->stride - p->pad_t;
    for (int32_t x = 0; x < wp; x++, dst += col) {
        const int32_t ix = x - p->pad_l;
        if (ix < 0 || ix >= p->in_w) {
            zero16(dst, col);
            continue;
        }
        if ((ic & 3) == 0) { /* whole groups of 4 per row */
            for (int32_t r = 0; r < p->kh; r++) {
                const int32_t iy = y0 + r;
                int16_t *d = dst + r * ic;
                if (iy < 0 || iy >= p->in_h) {
                    zero16(d, ic);
                    continue;
                }
                const int8_t *src = in + (iy * p->in_w + ix) * ic;
                for (int32_t c = 0; c < ic; c += 4) put4(d + c, ld32(src + c));
            }
            continue;
        }
        /* few channels (an RGB or MFCC stem): gather the column value by value */
        uint32_t v = 0;
        int32_t k = 0, g = 0;
        for (int32_t r = 0; r < p->kh; r++) {
            const int32_t iy = y0 + r;
            const int8_t *src = in + (iy * p->in_w + ix) * ic;
            for (int32_t c = 0; c < ic; c++) {
                if (iy >= 0 && iy < p->in_h) v |= (uint32_t)(uint8_t)src[c] << (8 * k);
                if (++k == 4) {
                    put4(dst + g, v);
                    g += 4;
                    v = 0;
                    k = 0;
                }
            }
        }
        for (; g < col; g += 4, v = 0) put4(dst + g, v);
    }
}

/* The sparse kernels' view of the same window: int8, unwidened, in the plain order (column x: its kh rows of in_c
   values, then zeros up to col), so a nonzero's offset is its index in the window and the kernels sign-extend with
   ldrsb. Row by row, so consecutive in-bounds columns copy from consecutive input bytes. */
static void copy_rows(const q8_conv_t *p, const int8_t *in, int32_t oy, int8_t *dst) {
    const int32_t wp = padded_w(p), ic = p->in_c, col = p->col, kh = p->kh, y0 = oy * p->stride - p->pad_t;
    const int32_t xa = p->pad_l < wp ? p->pad_l : wp, xb = p->pad_l + p->in_w < wp ? p->pad_l + p->in_w : wp;
    for (int32_t x = 0; x < wp; x++) /* padding columns, and the zeros after kh * ic in every column */
        if (x < xa || x >= xb) memset(dst + x * col, 0, (size_t)col);
        else if (col > kh * ic) memset(dst + x * col + kh * ic, 0, (size_t)(col - kh * ic));
    for (int32_t r = 0; r < kh; r++) {
        const int32_t iy = y0 + r;
        int8_t *d = dst + xa * col + r * ic;
        if (iy < 0 || iy >= p->in_h) {
            for (int32_t x = xa; x < xb; x++, d += col) memset(d, 0, (size_t)ic);
            continue;
        }
        const int8_t *src = in + (iy * p->in_w + xa - p->pad_l) * ic;
        if ((ic & 3) == 0) {
            for (int32_t x = xa; x < xb; x++, d += col, src += ic)
                for (int32_t c = 0; c < ic; c += 4) *(q8_word_t *)(void *)(d + c) = ld32(src + c);
        } else {
            for (int32_t x = xa; x < xb; x++, d += col, src += ic) memcpy(d, src, (size_t)ic);
        }
    }
}

/* Epilogue parameters held in locals: int8 stores may alias anything reached through p. */
typedef struct {
    const int8_t *skip;
    q8_rq_t add;
    int relu;
} epi_t;

/* Requantize one output row of accumulators (HWC, n_x pixels of n_c channels), channel by channel so each
   channel's parameters stay in registers; residual add and ReLU fused. */
static void epilogue_row(epi_t e, const q8_rq_t *rq, const int32_t *acc, int8_t *out, int32_t n_x, int32_t n_c,
                         int32_t base) {
    const int32_t end = n_x * n_c;
    for (int32_t c = 0; c < n_c; c++) {
        const q8_rq_t r = rq[c];
        if (e.skip) {
            const int8_t *skip = e.skip + base;
            const q8_rq_t a = e.add;
            if (e.relu)
                for (int32_t i = c; i < end; i += n_c) out[i] = clamp8(rq_apply(acc[i], r) + rq_apply(skip[i], a), 1);
            else
                for (int32_t i = c; i < end; i += n_c) out[i] = clamp8(rq_apply(acc[i], r) + rq_apply(skip[i], a), 0);
        } else if (e.relu) {
            for (int32_t i = c; i < end; i += n_c) out[i] = clamp8(rq_apply(acc[i], r), 1);
        } else {
            for (int32_t i = c; i < end; i += n_c) out[i] = clamp8(rq_apply(acc[i], r), 0);
        }
    }
}

#if Q8_DSP
/* The 8-pixel sparse path (DSP cores): per output channel and 8 pixels of a row, each nonzero costs an entry load,
   one add (the entry's offset, shifted, onto the block's base) and 8 ldrsb + smlabb with the pixel distance as an
   immediate: 20 instructions per nonzero and 8 pixels (the 4-pixel loop below takes 12 per 4). The distance
   stride * col bytes must be a constant, so the loop is instantiated for the distances the MLPerf Tiny
   models have; other layers take the 4-pixel loop. The 8 accumulators are requantized on the spot (no row
   buffer, no separate epilogue): smmlar folds the rounding constant of the shift into the high multiply. */
#define Q8_LD(K, A) "ldrsb %[t], [%[b], %[o" #K "]]\n\tsmlabb %[" #A "], %[t], %[v], %[" #A "]\n\t"
#define Q8_SP8_STEP                                                                                        \
    "ldr %[v], [%[q]], #4\n\t"                                                                                  \
    "add %[b], %[x], %[v], lsr #16\n\t"                                                                         \
    "ldrsb %[t], [%[b]]\n\tsmlabb %[a0], %[t], %[v], %[a0]\n\t" Q8_LD(1, a1) Q8_LD(2, a2) Q8_LD(3, a3)           \
        Q8_LD(4, a4) Q8_LD(5, a5) Q8_LD(6, a6) Q8_LD(7, a7)
#define Q8_SP8_OPERANDS                                                                                        \
    : [a0] "+&r"(a0), [a1] "+&r"(a1), [a2] "+&r"(a2), [a3] "+&r"(a3), [a4] "+&r"(a4), [a5] "+&r"(a5),             \
      [a6] "+&r"(a6), [a7] "+&r"(a7), [q] "+&r"(q), [v] "=&r"(v), [b] "=&r"(bp), [t] "=&r"(t)                     \
    : [x] "r"(x), [last] "r"(last), [o1] "i"(S), [o2] "i"(2 * S), [o3] "i"(3 * S), [o4] "i"(4 * S),              \
      [o5] "i"(5 * S), [o6] "i"(6 * S), [o7] "i"(7 * S)                                                         \
    : "cc", "memory"
/* an odd count: one step first; then two steps per loop iteration */
#define Q8_SP8                                                                                                 \
    if ((last - first) & 1) __asm__ volatile(Q8_SP8_STEP Q8_SP8_OPERANDS);                                      \
    if (q != last) __asm__ volatile("1:\n\t" Q8_SP8_STEP Q8_SP8_STEP "cmp %[q], %[last]\n\tbne 1b\n\t" Q8_SP8_OPERANDS)

static inline int32_t smmlar(int32_t x, int32_t m, int32_t c) {
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(m), "r"(c));
    return r;
}

static int sparse8_ok(const q8_conv_t *p) {
    const int32_t s = p->stride * p->col;
    return (p->out_w & 7) == 0 && (s == 16 || s == 32 || s == 48 || s == 64 || s == 96 || s == 128 || s == 192 ||
                                   s == 256);
}

/* Requantize the 8 accumulators of one channel into 8 pixels of the output (skip and relu constant when
   inlined, so each variant is straight-line code). */
static inline __attribute__((always_inline)) void put8(int8_t *dst, const int8_t *sk, int32_t oc_n, q8_rq_t r,
                                                       q8_rq_t ra, int has_skip, int relu, int32_t a0, int32_t a1,
                                                       int32_t a2, int32_t a3, int32_t a4, int32_t a5, int32_t a6,
                                                       int32_t a7) {
    const int32_t c = (1 << r.n) >> 1, ca = (1 << ra.n) >> 1;
#define Q8_PUT(A, K)                                                                                    \
    {                                                                                                   \
        int32_t y = smmlar((int32_t)((uint32_t)(A) << r.l), r.m, c) >> r.n;                             \
        if (has_skip) {                                                                                 \
            y += smmlar((int32_t)((uint32_t)*sk << ra.l), ra.m, ca) >> ra.n;                            \
            sk += oc_n;                                                                                 \
        }                                                                                               \
        *dst = clamp8(y, relu);                                                                         \
        dst += oc_n;                                                                                    \
    }
    Q8_PUT(a0, 0) Q8_PUT(a1, 1) Q8_PUT(a2, 2) Q8_PUT(a3, 3) Q8_PUT(a4, 4) Q8_PUT(a5, 5) Q8_PUT(a6, 6) Q8_PUT(a7, 7)
#undef Q8_PUT
}

/* The 8-pixel path over whole rows. The pixel distance picks one of the instantiated loops through a dense switch
   (a jump table: a few instructions per 8 pixels), so the requantization code after it exists once. */
#define Q8_CASE(I, D)                                                                                          \
    case I: {                                                                                                  \
        const int32_t S = D;                                                                                   \
        Q8_SP8;                                                                                                \
    } break;

/* no jump threading: gcc would copy the requantization variants into every case of the switch (13 KB) */
__attribute__((noinline, optimize("no-thread-jumps"))) static void conv_sparse8(const q8_conv_t *p, const int8_t *in,
                                                                                int8_t *out, int16_t *scratch) {
    const int32_t step = p->stride * p->col, rowb = p->out_w * p->out_c, oc_n = p->out_c, ow_n = p->out_w;
    const int32_t relu = p->relu, si = step == 16 ? 0 : step == 32 ? 1 : step == 48 ? 2 : step == 64 ? 3 :
                                                   step == 96 ? 4 : step == 128 ? 5 : step == 192 ? 6 : 7;
    const q8_rq_t ra = p->rq_add;
    int8_t *const window = (int8_t *)scratch;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        copy_rows(p, in, oy, window);
        int8_t *orow = out + oy * rowb;
        const int8_t *skrow = p->skip ? p->skip + oy * rowb : 0;
        for (int32_t o = 0; o < oc_n; o++) {
            const uint32_t *const first = p->nz + p->nz_start[o], *const last = p->nz + p->nz_start[o + 1];
            const int32_t bias = p->bias[o];
            const q8_rq_t r = p->rq[o];
            for (int32_t ox = 0; ox < ow_n; ox += 8) {
                int32_t a0 = bias, a1 = bias, a2 = bias, a3 = bias, a4 = bias, a5 = bias, a6 = bias, a7 = bias;
                if (first != last) {
                    const int8_t *const x = window + ox * step;
                    const uint32_t *q = first;
                    uint32_t v, t;
                    const int8_t *bp;
                    switch (si) {
                        Q8_CASE(0, 16) Q8_CASE(1, 32) Q8_CASE(2, 48) Q8_CASE(3, 64) Q8_CASE(4, 96) Q8_CASE(5, 128)
                        Q8_CASE(6, 192) default: { const int32_t S = 256; Q8_SP8; } break;
                    }
                }
                int8_t *dst = orow + ox * oc_n + o;
                const int8_t *sk = skrow + ox * oc_n + o;
                if (skrow) {
                    if (relu) put8(dst, sk, oc_n, r, ra, 1, 1, a0, a1, a2, a3, a4, a5, a6, a7);
                    else put8(dst, sk, oc_n, r, ra, 1, 0, a0, a1, a2, a3, a4, a5, a6, a7);
                } else {
                    if (relu) put8(dst, sk, oc_n, r, ra, 0, 1, a0, a1, a2, a3, a4, a5, a6, a7);
                    else put8(dst, sk, oc_n, r, ra, 0, 0, a0, a1, a2, a3, a4, a5, a6, a7);
                }
            }
        }
    }
}
#undef Q8_CASE
#undef Q8_SP8
#undef Q8_SP8_STEP
#undef Q8_SP8_OPERANDS
#undef Q8_LD
#endif

/* Sparse conv: per output channel, only its nonzero weights, for 4 output pixels at a time (each nonzero: one
   entry load, its offset, 4 activation loads, 4 multiply-adds; with DSP `smlabb` reads the weight straight from
   the entry's low half). The entries' offsets index the int8 window of copy_rows (the same on every core). */
static void conv_sparse(const q8_conv_t *p, const int8_t *in, int8_t *out, int16_t *scratch) {
    const epi_t e = {p->skip, p->rq_add, p->relu};
    const int32_t col = p->col, step = p->stride * col, oc_n = p->out_c, ow_n = p->out_w;
    int8_t *const window = (int8_t *)scratch;
    int32_t *const accrow = (int32_t *)(void *)(scratch + padded_w(p) * col);
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        copy_rows(p, in, oy, window);
        for (int32_t o = 0; o < oc_n; o++) {
            const uint32_t *const first = p->nz + p->nz_start[o], *const last = p->nz + p->nz_start[o + 1];
            const int32_t b = p->bias[o];
            int32_t ox = 0;
#if Q8_DSP
            if (ow_n >= 4 && first != last) {
                /* Whole quads of the row in one assembly loop; the quad's bookkeeping values on the stack. */
                struct {
                    int32_t b, cnt, dx, ocn4;
                    int32_t *accp;
                    const uint32_t *first;
                } c = {b, ow_n / 4, 4 * step, 4 * oc_n, accrow + o, first};
                const int8_t *x0 = window, *x1 = x0 + step, *x2 = x1 + step, *x3 = x2 + step;
                const uint32_t *q = first;
                int32_t a0, a1, a2, a3;
                uint32_t v, off, t;
                __asm__ volatile(
                    "2:\n\t"
                    "ldr %[a0], %[b]\n\t"
                    "mov %[a1], %[a0]\n\t"
                    "mov %[a2], %[a0]\n\t"
                    "mov %[a3], %[a0]\n\t"
                    "1:\n\t"
                    "ldr %[v], [%[q]], #4\n\t"
                    "lsr %[off], %[v], #16\n\t"
                    "ldrsb %[t], [%[x0], %[off]]\n\t"
                    "smlabb %[a0], %[t], %[v], %[a0]\n\t"
                    "ldrsb %[t], [%[x1], %[off]]\n\t"
                    "smlabb %[a1], %[t], %[v], %[a1]\n\t"
                    "ldrsb %[t], [%[x2], %[off]]\n\t"
                    "smlabb %[a2], %[t], %[v], %[a2]\n\t"
                    "ldrsb %[t], [%[x3], %[off]]\n\t"
                    "smlabb %[a3], %[t], %[v], %[a3]\n\t"
                    "cmp %[q], %[last]\n\t"
                    "bne 1b\n\t"
                    "ldr %[v], %[accp]\n\t"
                    "ldr %[off], %[ocn4]\n\t"
                    "str %[a0], [%[v]]\n\t"
                    "add %[v], %[v], %[off]\n\t"
                    "str %[a1], [%[v]]\n\t"
                    "add %[v], %[v], %[off]\n\t"
                    "str %[a2], [%[v]]\n\t"
                    "add %[v], %[v], %[off]\n\t"
                    "str %[a3], [%[v]]\n\t"
                    "add %[v], %[v], %[off]\n\t"
                    "str %[v], %[accp]\n\t"
                    "ldr %[q], %[first]\n\t"
                    "ldr %[v], %[dx]\n\t"
                    "add %[x0], %[x0], %[v]\n\t"
                    "add %[x1], %[x1], %[v]\n\t"
                    "add %[x2], %[x2], %[v]\n\t"
                    "add %[x3], %[x3], %[v]\n\t"
                    "ldr %[v], %[cnt]\n\t"
                    "subs %[v], %[v], #1\n\t"
                    "str %[v], %[cnt]\n\t"
                    "bne 2b\n\t"
                    : [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), [q] "+&r"(q), [v] "=&r"(v),
                      [off] "=&r"(off), [t] "=&r"(t), [x0] "+&r"(x0), [x1] "+&r"(x1), [x2] "+&r"(x2), [x3] "+&r"(x3),
                      [cnt] "+m"(c.cnt), [accp] "+m"(c.accp)
                    : [last] "r"(last), [b] "m"(c.b), [dx] "m"(c.dx), [ocn4] "m"(c.ocn4), [first] "m"(c.first)
                    : "cc", "memory");
                ox = ow_n & ~3;
            }
#endif
            for (; ox < ow_n; ox += 4) {
                const int32_t n = ow_n - ox < 4 ? ow_n - ox : 4; /* tail: missing pixels repeat pixel 0 */
                const int8_t *x0 = window + ox * step;
                const int8_t *x1 = x0 + (n > 1 ? step : 0), *x2 = x0 + (n > 2 ? 2 * step : 0);
                const int8_t *x3 = x0 + (n > 3 ? 3 * step : 0);
                int32_t a0 = b, a1 = b, a2 = b, a3 = b;
#if Q8_DSP
                if (first != last) { /* 12 instructions per nonzero and 4 pixels; gcc's version took 14 */
                    const uint32_t *q = first;
                    uint32_t v, off, t;
                    __asm__ volatile(
                        "1:\n\t"
                        "ldr %[v], [%[q]], #4\n\t"
                        "lsr %[off], %[v], #16\n\t"
                        "ldrsb %[t], [%[x0], %[off]]\n\t"
                        "smlabb %[a0], %[t], %[v], %[a0]\n\t"
                        "ldrsb %[t], [%[x1], %[off]]\n\t"
                        "smlabb %[a1], %[t], %[v], %[a1]\n\t"
                        "ldrsb %[t], [%[x2], %[off]]\n\t"
                        "smlabb %[a2], %[t], %[v], %[a2]\n\t"
                        "ldrsb %[t], [%[x3], %[off]]\n\t"
                        "smlabb %[a3], %[t], %[v], %[a3]\n\t"
                        "cmp %[q], %[last]\n\t"
                        "bne 1b\n\t"
                        : [a0] "+&r"(a0), [a1] "+&r"(a1), [a2] "+&r"(a2), [a3] "+&r"(a3), [q] "+&r"(q), [v] "=&r"(v),
                          [off] "=&r"(off), [t] "=&r"(t)
                        : [x0] "r"(x0), [x1] "r"(x1), [x2] "r"(x2), [x3] "r"(x3), [last] "r"(last)
                        : "cc", "memory");
                }
#else
                for (const uint32_t *q = first; q != last; q++) {
                    const uint32_t v = *q, off = v >> 16;
                    const int32_t w = (int16_t)v;
                    a0 += x0[off] * w;
                    a1 += x1[off] * w;
                    a2 += x2[off] * w;
                    a3 += x3[off] * w;
                }
#endif
                int32_t *acc = accrow + ox * oc_n + o;
                acc[0] = a0;
                if (n > 1) acc[oc_n] = a1;
                if (n > 2) acc[2 * oc_n] = a2;
                if (n > 3) acc[3 * oc_n] = a3;
            }
        }
        const int32_t obase = oy * ow_n * oc_n;
        epilogue_row(e, p->rq, accrow, out + obase, ow_n, oc_n, obase);
    }
}

#if Q8_DSP
/* Every in-out operand of the assembly loops is early-clobber ("+&r"): otherwise gcc may give an input of equal
   value (k1 == end when the second weight row starts where the first ends) the same register. */
/* One step of the dense inner loop (see q8_conv). */
#define Q8_STEP \
    "ldr %[wa], [%[k0]], #4\n\t" \
    "ldr %[wb], [%[k1]], #4\n\t" \
    "sxtb16 %[ta], %[wa]\n\t" \
    "sxtb16 %[wa], %[wa], ror #8\n\t" \
    "sxtb16 %[tb], %[wb]\n\t" \
    "sxtb16 %[wb], %[wb], ror #8\n\t" \
    "ldr %[v], [%[x0], #4]\n\t" \
    "smlad %[a00], %[v], %[wa], %[a00]\n\t" \
    "smlad %[a01], %[v], %[wb], %[a01]\n\t" \
    "ldr %[v], [%[x0]], #8\n\t" \
    "smlad %[a00], %[v], %[ta], %[a00]\n\t" \
    "smlad %[a01], %[v], %[tb], %[a01]\n\t" \
    "ldr %[v], [%[x1], #4]\n\t" \
    "smlad %[a10], %[v], %[wa], %[a10]\n\t" \
    "smlad %[a11], %[v], %[wb], %[a11]\n\t" \
    "ldr %[v], [%[x1]], #8\n\t" \
    "smlad %[a10], %[v], %[ta], %[a10]\n\t" \
    "smlad %[a11], %[v], %[tb], %[a11]\n\t"
#endif

void q8_conv(const q8_conv_t *p, const int8_t *in, int8_t *out, int16_t *scratch) {
    if (p->depthwise) {
        q8_dwconv(p, in, out, (int32_t *)(void *)scratch);
        return;
    }
    if (p->nz) {
#if Q8_DSP
        if (sparse8_ok(p)) {
            conv_sparse8(p, in, out, scratch);
            return;
        }
#endif
        conv_sparse(p, in, out, scratch);
        return;
    }
    const epi_t e = {p->skip, p->rq_add, p->relu};
    const int32_t col = p->col, K = p->kw * col, step = p->stride * col;
    const int32_t oc_n = p->out_c, ow_n = p->out_w;
    int32_t *const accrow = (int32_t *)(void *)(scratch + padded_w(p) * col);
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        widen_rows(p, in, oy, scratch);
        const int32_t obase = oy * ow_n * oc_n;
        for (int32_t o = 0; o < oc_n; o += 2) {
            const int32_t o1 = o + 1 < oc_n ? o + 1 : o; /* odd tail: compute channel o twice, store once */
            const int32_t b0 = p->bias[o], b1 = p->bias[o1];
            const int8_t *w0 = p->w + o * K;
            const int32_t dw = (o1 - o) * K;
            int32_t ox = 0;
#if Q8_DSP
            if (ow_n >= 2 && o1 != o) {
                /* Whole pixel pairs of the row in one loop: the pair's bookkeeping (bias, storing 4 accumulators,
                   rewinding the weights, next pixels) in assembly too, its values kept on the stack, since the
                   multiply loop holds all 14 registers. */
                struct {
                    int32_t b0, b1, cnt, dx, kb, ocn4;
                    int32_t *accp;
                } c = {b0, b1, ow_n / 2, 4 * step - 2 * K, K, 4 * oc_n, accrow + o}; /* dx, kb: bytes */
                const int16_t *x0 = scratch, *x1 = scratch + step;
                const int8_t *k0 = w0, *k1 = w0 + dw, *const end = w0 + K;
                int32_t a00, a01, a10, a11;
                uint32_t wa, wb, ta, tb, v;
#define Q8_ROW(PEEL) \
                __asm__ volatile( \
                    "2:\n\t" \
                    "ldr %[a00], %[b0]\n\t" \
                    "ldr %[a01], %[b1]\n\t" \
                    "mov %[a10], %[a00]\n\t" \
                    "mov %[a11], %[a01]\n\t" \
                    PEEL \
                    "1:\n\t" Q8_STEP Q8_STEP \
                    "cmp %[k0], %[end]\n\t" \
                    "bne 1b\n\t" \
                    "3:\n\t" \
                    "ldr %[ta], %[accp]\n\t" \
                    "ldr %[tb], %[ocn4]\n\t" \
                    "str %[a00], [%[ta]]\n\t" \
                    "str %[a01], [%[ta], #4]\n\t" \
                    "add %[ta], %[ta], %[tb]\n\t" \
                    "str %[a10], [%[ta]]\n\t" \
                    "str %[a11], [%[ta], #4]\n\t" \
                    "add %[ta], %[ta], %[tb]\n\t" \
                    "str %[ta], %[accp]\n\t" \
                    "ldr %[ta], %[kb]\n\t" \
                    "sub %[k0], %[k0], %[ta]\n\t" \
                    "sub %[k1], %[k1], %[ta]\n\t" \
                    "ldr %[ta], %[dx]\n\t" \
                    "add %[x0], %[x0], %[ta]\n\t" \
                    "add %[x1], %[x1], %[ta]\n\t" \
                    "ldr %[ta], %[cnt]\n\t" \
                    "subs %[ta], %[ta], #1\n\t" \
                    "str %[ta], %[cnt]\n\t" \
                    "bne 2b\n\t" \
                    : [a00] "=&r"(a00), [a01] "=&r"(a01), [a10] "=&r"(a10), [a11] "=&r"(a11), [k0] "+&r"(k0), \
                      [k1] "+&r"(k1), [x0] "+&r"(x0), [x1] "+&r"(x1), [wa] "=&r"(wa), [wb] "=&r"(wb), [ta] "=&r"(ta), \
                      [tb] "=&r"(tb), [v] "=&r"(v), [cnt] "+m"(c.cnt), [accp] "+m"(c.accp) \
                    : [end] "r"(end), [b0] "m"(c.b0), [b1] "m"(c.b1), [dx] "m"(c.dx), [kb] "m"(c.kb), \
                      [ocn4] "m"(c.ocn4) \
                    : "cc", "memory")
                /* an odd number of steps: one step first, then pairs (none if that was the only step) */
                if (K & 4)
                    Q8_ROW(Q8_STEP "cmp %[k0], %[end]\n\tbeq 3f\n\t");
                else
                    Q8_ROW("");
#undef Q8_ROW
                ox = ow_n & ~1;
            }
#endif
            for (; ox < ow_n; ox += 2) {
                const int32_t d = ox + 1 < ow_n ? step : 0;
                int32_t a00 = b0, a01 = b1, a10 = b0, a11 = b1;
                const int16_t *x0 = scratch + ox * step, *x1 = x0 + d;
                const int8_t *k0 = w0, *k1 = w0 + dw, *const end = w0 + K;
#if Q8_DSP
                /* 4 channels x 2 pixels x 2 output channels per step: 2 weight words, 4 sxtb16, 4 activation
                   words, 8 smlad. In assembly because gcc spills this loop's 14 live values; two steps per
                   loop iteration (an odd step first). */
                uint32_t wa, wb, ta, tb, v;
#define Q8_OPERANDS                                                                                           \
    : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11), [k0] "+&r"(k0), [k1] "+&r"(k1),        \
      [x0] "+&r"(x0), [x1] "+&r"(x1), [wa] "=&r"(wa), [wb] "=&r"(wb), [ta] "=&r"(ta), [tb] "=&r"(tb), [v] "=&r"(v) \
    : [end] "r"(end)                                                                                          \
    : "cc", "memory"
                if (K & 4) __asm__ volatile(Q8_STEP Q8_OPERANDS);
                if (k0 != end) __asm__ volatile("1:\n\t" Q8_STEP Q8_STEP "cmp %[k0], %[end]\n\tbne 1b\n\t" Q8_OPERANDS);
#undef Q8_OPERANDS
#else
                do {
                    int32_t ka = *k0++, kb = *k1++, v0 = *x0++, v1 = *x1++;
                    a00 += v0 * ka;
                    a01 += v0 * kb;
                    a10 += v1 * ka;
                    a11 += v1 * kb;
                } while (k0 != end);
#endif
                int32_t *acc = accrow + ox * oc_n + o;
                acc[0] = a00;
                if (o1 != o) acc[1] = a01;
                if (d) {
                    acc[oc_n] = a10;
                    if (o1 != o) acc[oc_n + 1] = a11;
                }
            }
        }
        epilogue_row(e, p->rq, accrow, out + obase, ow_n, oc_n, obase);
    }
}

/* Depthwise: per output pixel only the taps inside the input (no padding copies), 4 channels per step; with DSP
   one weight word and one activation word give 4 MACs through smlabb/smlatt. One output row of accumulators,
   then the shared epilogue. */
void q8_dwconv(const q8_conv_t *p, const int8_t *in, int8_t *out, int32_t *accrow) {
    const epi_t e = {p->skip, p->rq_add, p->relu};
    const int32_t C = p->out_c, W = p->in_w, kw = p->kw;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t y0 = oy * p->stride - p->pad_t;
        const int32_t r0 = q8_tap_lo(y0), r1 = q8_tap_hi(y0, p->in_h, p->kh);
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride - p->pad_l;
            const int32_t t0 = q8_tap_lo(x0), t1 = q8_tap_hi(x0, W, kw);
            int32_t *acc = accrow + ox * C;
            int32_t c = 0;
#if Q8_DSP
            for (; c + 4 <= C; c += 4) {
                int32_t s0 = p->bias[c], s1 = p->bias[c + 1], s2 = p->bias[c + 2], s3 = p->bias[c + 3];
                for (int32_t r = r0; r < r1; r++) {
                    const int8_t *x = in + ((y0 + r) * W + x0 + t0) * C + c;
                    const int8_t *k = p->w + (r * kw + t0) * C + c;
                    for (int32_t t = t0; t < t1; t++, x += C, k += C) {
                        uint32_t v = ld32(x), w = ld32(k);
                        uint32_t ve = __sxtb16(v), vo = sxtb16_hi(v), we = __sxtb16(w), wo = sxtb16_hi(w);
                        s0 = __smlabb(ve, we, s0);
                        s2 = __smlatt(ve, we, s2);
                        s1 = __smlabb(vo, wo, s1);
                        s3 = __smlatt(vo, wo, s3);
                    }
                }
                acc[c] = s0;
                acc[c + 1] = s1;
                acc[c + 2] = s2;
                acc[c + 3] = s3;
            }
#endif
            for (; c < C; c++) {
                int32_t s0 = p->bias[c];
                for (int32_t r = r0; r < r1; r++)
                    for (int32_t t = t0; t < t1; t++)
                        s0 += in[((y0 + r) * W + x0 + t) * C + c] * p->w[(r * kw + t) * C + c];
                acc[c] = s0;
            }
        }
        const int32_t obase = oy * p->out_w * C;
        epilogue_row(e, p->rq, accrow, out + obase, p->out_w, C, obase);
    }
}

void q8_avgpool(const int8_t *in, int32_t hw, int32_t c, const q8_rq_t *rq, int8_t *out) {
    for (int32_t k = 0; k < c; k++) {
        int32_t s = 0;
        for (int32_t i = 0; i < hw; i++) s += in[i * c + k];
        out[k] = clamp8(q8_requant(s, rq), 0);
    }
}

void q8_dense(const int8_t *in, int32_t n_in, int32_t n_out, const int8_t *w, const int32_t *bias,
              const q8_rq_t *rq, int8_t *out) {
    for (int32_t o = 0; o < n_out; o++) {
        const int8_t *k = w + o * n_in;
        int32_t acc = bias[o], i = 0;
#if Q8_DSP
        for (; i + 4 <= n_in; i += 4) {
            uint32_t a = ld32(in + i), b = ld32(k + i);
            acc = __smlad(__sxtb16(a), __sxtb16(b), acc);
            acc = __smlad(sxtb16_hi(a), sxtb16_hi(b), acc);
        }
#endif
        for (; i < n_in; i++) acc += in[i] * k[i];
        out[o] = clamp8(q8_requant(acc, &rq[o]), 0);
    }
}

/* floor(sqrt(u)), u < 2^62: the bit-by-bit method (once per group, so its 31 steps do not matter) */
static uint32_t isqrt64(uint64_t u) {
#ifdef Q8_CPU
    /* application CPUs (tvm_build/cpu_int8.py defines Q8_CPU): a double's estimate, then exact integer correction
       (graph.isqrt64) */
    uint64_t e = (uint64_t)__builtin_sqrt((double)u);
    while (e * e > u) e--;
    while ((e + 1) * (e + 1) <= u) e++;
    return (uint32_t)e;
#endif
    uint64_t r = 0, bit = 1ull << 62;
    while (bit > u) bit >>= 2;
    for (; bit; bit >>= 2) {
        if (u >= r + bit) {
            u -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
    }
    return (uint32_t)r;
}

uint64_t q8_gn_recip(const q8_gn_t *p, int32_t s, uint32_t q, int32_t *k) {
    const int64_t n = (int64_t)p->hw * (p->c / p->groups);
    const uint64_t u = (uint64_t)(n * q - (int64_t)s * s) + (uint64_t)p->e;
    *k = (62 - (64 - __builtin_clzll(u))) / 2;
    return ((1ull << 61) - 1) / isqrt64(u << (2 * *k));
}

void q8_groupnorm(const q8_gn_t *p, const int8_t *in, int8_t *out) {
    const int32_t c = p->c, cg = c / p->groups, hw = p->hw, n = hw * cg;
    for (int32_t g0 = 0; g0 < c; g0 += cg) {
        int32_t s = 0;
        uint32_t q = 0; /* n < 2^17: fits */
        for (int32_t i = 0; i < hw; i++) {
            const int8_t *x = in + i * c + g0;
            for (int32_t j = 0; j < cg; j++) {
                s += x[j];
                q += (uint32_t)(x[j] * x[j]);
            }
        }
        int32_t k;
        const uint64_t recip = q8_gn_recip(p, s, q, &k);
        for (int32_t j = g0; j < g0 + cg; j++) {
            const int32_t m = (int32_t)(((int64_t)p->g[j] * (int64_t)recip + (1 << 30)) >> 31);
            const int32_t sh = 61 - k - p->ge[j], down = sh - 16 > 63 ? 63 : sh - 16;
            const int64_t b = (int64_t)p->b[j] + (1 << 15);
            for (int32_t i = 0; i < hw; i++) {
                int64_t y = ((((int64_t)(n * in[i * c + j] - s) * m) >> down) + b) >> 16;
                if (y > p->hi) y = p->hi;
                if (y < p->lo) y = p->lo;
                out[i * c + j] = clamp8((int32_t)y, p->relu);
            }
        }
    }
}

/* |q| > t without a branch on the sign: q + t lies in [-127, 254] and exceeds 2t, or is negative (wraps), exactly
   when |q| > t. */
#define Q8_KEPT(q, t, t2) ((uint32_t)((int32_t)(q) + (int32_t)(t)) > (t2))

#if Q8_DSP
/* With DSP, 4 codes per test: per byte (q + t) mod 256 (uadd8) exceeds 2t where usub8 leaves GE clear, and
   sel(0, v) then keeps exactly those codes (a kept code is nonzero). One channel's row of codes [p, end) (a multiple
   of 4) to entries at e: 8 instructions per word that keeps none, about 5 more per kept code (gcc's C took 14 and
   15); returns the end of the entries. */
static inline uint32_t *sparsify_row(const int8_t *p, const int8_t *end, uint32_t t4, uint32_t t24, uint32_t *e) {
    const int8_t *const base = p + 4; /* (p - base) << 16 after the load: the word's first entry, index 0 */
    uint32_t v, s, m, at;
    __asm__ volatile("1:\n\t"
                     "cmp %[p], %[end]\n\t"
                     "bhs 9f\n\t"
                     "ldr %[v], [%[p]], #4\n\t"
                     "uadd8 %[s], %[v], %[t4]\n\t"
                     "usub8 %[s], %[t24], %[s]\n\t"
                     "sel %[m], %[z], %[v]\n\t"
                     "cmp %[m], #0\n\t"
                     "beq 1b\n\t"
                     "sub %[at], %[p], %[base]\n\t"
                     "lsl %[at], %[at], #16\n\t"
                     "tst %[m], #0xFF\n\t"
                     "beq 2f\n\t"
                     "sxtb %[s], %[m]\n\t"
                     "pkhbt %[s], %[s], %[at]\n\t"
                     "str %[s], [%[e]], #4\n\t"
                     "2:\n\t"
                     "add %[at], %[at], #0x10000\n\t"
                     "tst %[m], #0xFF00\n\t"
                     "beq 3f\n\t"
                     "sbfx %[s], %[m], #8, #8\n\t"
                     "pkhbt %[s], %[s], %[at]\n\t"
                     "str %[s], [%[e]], #4\n\t"
                     "3:\n\t"
                     "add %[at], %[at], #0x10000\n\t"
                     "tst %[m], #0xFF0000\n\t"
                     "beq 4f\n\t"
                     "sbfx %[s], %[m], #16, #8\n\t"
                     "pkhbt %[s], %[s], %[at]\n\t"
                     "str %[s], [%[e]], #4\n\t"
                     "4:\n\t"
                     "lsrs %[m], %[m], #24\n\t"
                     "beq 1b\n\t"
                     "add %[at], %[at], #0x10000\n\t"
                     "sxtb %[s], %[m]\n\t"
                     "pkhbt %[s], %[s], %[at]\n\t"
                     "str %[s], [%[e]], #4\n\t"
                     "b 1b\n\t"
                     "9:\n\t"
                     : [p] "+&r"(p), [e] "+&r"(e), [v] "=&r"(v), [s] "=&r"(s), [m] "=&r"(m), [at] "=&r"(at)
                     : [end] "r"(end), [t4] "r"(t4), [t24] "r"(t24), [z] "r"(0), [base] "r"(base)
                     : "cc", "memory");
    return e;
}
#else
/* Without DSP, 4 codes per test too: per byte |q| (codes are in [-127, 127]: the low 7 bits, flipped for a negative
   code, plus its sign), then |q| + 127 - t reaches bit 7 exactly when |q| > t (no byte carries into the next):
   0x80 in each byte whose code is kept. c4 = (127 - t) * 0x01010101. */
static inline uint32_t kept_bits(uint32_t v, uint32_t c4) {
    const uint32_t neg = (v >> 7) & 0x01010101u;
    return ((((v ^ (neg * 0x7Fu)) & 0x7F7F7F7Fu) + neg) + c4) & 0x80808080u;
}
#endif

void q8_mask_codes(const int8_t *w, int32_t oc, int32_t win, int32_t dw_c, const uint8_t *thr, int8_t *dst) {
    if (dw_c > 0) {
        for (int32_t j = 0; j < oc * win; j++) {
            const uint32_t t = thr[j % dw_c];
            dst[j] = Q8_KEPT(w[j], t, 2 * t) ? w[j] : 0;
        }
        return;
    }
    for (int32_t o = 0; o < oc; o++, w += win, dst += win) {
        const uint32_t t = thr[o], t2 = 2 * t;
        int32_t j = 0;
#if Q8_DSP
        const uint32_t t4 = t * 0x01010101u, t24 = t2 * 0x01010101u;
        for (; j + 4 <= win; j += 4) {
            const uint32_t v = ld32(w + j);
            (void)__usub8(t24, __uadd8(v, t4));
            const uint32_t m = __sel(0, v);
            __builtin_memcpy(dst + j, &m, 4);
        }
#else
        const uint32_t c4 = (127u - t) * 0x01010101u;
        for (; j + 4 <= win; j += 4) {
            const uint32_t v = ld32(w + j), m = v & ((kept_bits(v, c4) >> 7) * 0xFFu);
            __builtin_memcpy(dst + j, &m, 4);
        }
#endif
        for (; j < win; j++) dst[j] = Q8_KEPT(w[j], t, t2) ? w[j] : 0;
    }
}

int32_t q8_sparsify(const int8_t *w, int32_t oc, int32_t win, const uint8_t *thr, uint32_t *starts, uint32_t *nz,
                    uint32_t cap) {
    uint32_t n = 0;
    for (int32_t o = 0; o < oc; o++, w += win) {
        const uint32_t t = thr[o], t2 = 2 * t;
        int32_t j = 0;
        starts[o] = n;
#if Q8_DSP
        /* 4 codes per test (most words of a sparse level keep none); near the buffer's end, one by one. A kept
           code is nonzero, so sel(0, v) is both the test and the kept codes. */
        const uint32_t t4 = t * 0x01010101u, t24 = t2 * 0x01010101u;
        if (cap - n >= (uint32_t)win) {
            uint32_t *e = sparsify_row(w, w + (win & ~3), t4, t24, nz + n);
            n = (uint32_t)(e - nz);
            j = win & ~3;
        }
#else
        const uint32_t c4 = (127u - t) * 0x01010101u;
        if (cap - n >= (uint32_t)win) {
            uint32_t *e = nz + n;
            for (; j + 4 <= win; j += 4) {
                const uint32_t v = ld32(w + j), k = kept_bits(v, c4);
                if (k) {
                    const uint32_t at = (uint32_t)j << 16;
                    if (k & 0x80u) *e++ = at | (uint16_t)(int16_t)(int8_t)v;
                    if (k & 0x8000u) *e++ = (at + 0x10000u) | (uint16_t)(int16_t)(int8_t)(v >> 8);
                    if (k & 0x800000u) *e++ = (at + 0x20000u) | (uint16_t)(int16_t)(int8_t)(v >> 16);
                    if (k & 0x80000000u) *e++ = (at + 0x30000u) | (uint16_t)(int16_t)(int8_t)(v >> 24);
                }
            }
            n = (uint32_t)(e - nz);
        }
#endif
        for (; j < win; j++) {
            const int32_t q = w[j];
            if (Q8_KEPT(q, t, t2)) {
                if (n == cap) return -1;
                nz[n++] = (uint32_t)j << 16 | (uint16_t)q;
            }
        }
    }
    starts[oc] = n;
    return (int32_t)n;
}

q8_rq_t q8_rq_shifted(q8_rq_t r, int32_t d) {
    const int32_t s = (int32_t)r.l - (int32_t)r.n + d;  /* the build keeps s in [-31, 31] */
    r.l = (uint8_t)(s > 0 ? s : 0);
    r.n = (uint8_t)(s > 0 ? 0 : -s);
    return r;
}

void q8_bias_shifted(const int32_t *b, int32_t n, int32_t k, int32_t *dst) {
    if (k >= 0)
        for (int32_t i = 0; i < n; i++) dst[i] = (int32_t)((uint32_t)b[i] << k);
    else
        for (int32_t i = 0; i < n; i++) dst[i] = (b[i] + (1 << (-k - 1))) >> -k;
}

/* r x 65536 / R: M' = round(M 2^16 / R) >= M, rounded once to its top 31 bits, the shift moved by what was dropped */
static q8_rq_t rq_over(q8_rq_t r, uint32_t ratio) {
    uint64_t x = (((uint64_t)(uint32_t)r.m << 16) + ratio / 2u) / ratio;
    int32_t s = 0;
    while ((x >> s) >= (1ull << 31)) s++;
    if (s) x = (x + (1ull << (s - 1))) >> s;
    if (x == (1ull << 31)) { x >>= 1; s++; }
    r.m = (int32_t)x;
    return q8_rq_shifted(r, s);
}

/* at least 1 (a zero K from a damaged set must not divide by zero) */
static inline uint32_t grid_ratio(uint32_t k, uint32_t p, uint32_t d) {
    const uint32_t r = (k * p * 65536u + d / 2u) / d;
    return r ? r : 1u;
}

/* |c| <= 127 and R <= 65536: the level's code stays within [-127, 127] */
static inline int8_t regrid_one(int32_t c, int32_t ratio) { return (int8_t)((c * ratio + 32768) >> 16); }

void q8_regrid(const int8_t *w, int32_t oc, int32_t win, int32_t dw_c, const uint8_t *k, uint32_t p, uint32_t d,
               const int32_t *b, const q8_rq_t *rq, int8_t *dw, int32_t *db, q8_rq_t *drq) {
    for (int32_t o = 0; o < oc; o++) {
        const uint32_t ratio = grid_ratio(k[o], p, d);
        db[o] = (int32_t)(((int64_t)b[o] * (int64_t)ratio + 32768) >> 16);
        drq[o] = rq_over(rq[o], ratio);
    }
    if (dw_c > 0) {  /* [kh][kw][c]: the channel of code j is j % dw_c */
        for (int32_t j = 0; j < oc * win; j++) dw[j] = regrid_one(w[j], (int32_t)grid_ratio(k[j % dw_c], p, d));
        return;
    }
    for (int32_t o = 0; o < oc; o++, w += win, dw += win) {
        const int32_t ratio = (int32_t)grid_ratio(k[o], p, d);
        int32_t j = 0;
        for (; j + 4 <= win; j += 4) {  /* four loads, then four stores: no aliasing between them to respect */
            const int32_t c0 = w[j], c1 = w[j + 1], c2 = w[j + 2], c3 = w[j + 3];
            dw[j] = regrid_one(c0, ratio);
            dw[j + 1] = regrid_one(c1, ratio);
            dw[j + 2] = regrid_one(c2, ratio);
            dw[j + 3] = regrid_one(c3, ratio);
        }
        for (; j < win; j++) dw[j] = regrid_one(w[j], ratio);
    }
}
