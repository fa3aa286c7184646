/* int8 kernels; the arithmetic is lcs/int8/graph.py's (see kernels_int8.h).

   Dense conv: for each output row the kh input rows it reads are widened once to int16 in a small scratch
   (zero padding included, so the inner loop has no bounds checks), then each 2 output pixels x 2 output
   channels block accumulates over kh rows of kw * in_c contiguous values. With DSP the widened rows are
   stored lane-swizzled: 4 channels c..c+3 as the words (c, c+2), (c+1, c+3), which is what `sxtb16` and
   `sxtb16 ror #8` make of a weight word, so the weights stay int8 in flash and one `smlad` does 2 MACs.
   Requantization, bias, residual add and ReLU happen in the block's epilogue. */
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

int32_t q8_requant(int32_t x, const q8_rq_t *rq) {
    int32_t t = high_mul((int32_t)((uint32_t)x << rq->l), rq->m);
    return (t + ((1 << rq->n) >> 1)) >> rq->n;
}

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
    if (p->depthwise) return 0;
    return p->kh * padded_w(p) * p->in_c * 2;
}

/* One input row (iy, may be outside the tensor) as int16 over the padded columns. */
static void widen_row(const q8_conv_t *p, const int8_t *in, int32_t iy, int16_t *dst) {
    const int32_t wp = padded_w(p), ic = p->in_c, ac = p->act_c;
    if (iy < 0 || iy >= p->in_h) {
        memset(dst, 0, (size_t)wp * ic * 2);
        return;
    }
    for (int32_t x = 0; x < wp; x++, dst += ic) {
        int32_t ix = x - p->pad_l;
        if (ix < 0 || ix >= p->in_w) {
            memset(dst, 0, (size_t)ic * 2);
            continue;
        }
        const int8_t *src = in + (iy * p->in_w + ix) * ac;
        for (int32_t c = 0; c < ic; c += 4) {
            uint32_t v;
            if (ac == ic) {
                v = ld32(src + c);
            } else { /* channels padded up to a multiple of 4 (e.g. an RGB stem): the rest read as 0 */
                v = 0;
                for (int32_t k = 0; k < 4 && c + k < ac; k++) v |= (uint32_t)(uint8_t)src[c + k] << (8 * k);
            }
#if Q8_DSP
            uint32_t e = __sxtb16(v), o = sxtb16_hi(v);
            __builtin_memcpy(dst + c, &e, 4);
            __builtin_memcpy(dst + c + 2, &o, 4);
#else
            for (int32_t k = 0; k < 4; k++) dst[c + k] = (int8_t)(v >> (8 * k));
#endif
        }
    }
}

static inline void store_out(const q8_conv_t *p, int8_t *out, int32_t idx, int32_t o, int32_t acc) {
    int32_t v = q8_requant(acc, &p->rq[o]);
    if (p->skip) v += q8_requant(p->skip[idx], &p->rq_add);
    out[idx] = clamp8(v, p->relu);
}

void q8_conv(const q8_conv_t *p, const int8_t *in, int8_t *out, int16_t *scratch) {
    if (p->depthwise) {
        q8_dwconv(p, in, out);
        return;
    }
    const int32_t ic = p->in_c, wp = padded_w(p), row = wp * ic, len = p->kw * ic;
    const int32_t K = p->kh * len, step = p->stride * ic, oc_n = p->out_c, ow_n = p->out_w;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t r = 0; r < p->kh; r++) widen_row(p, in, oy * p->stride - p->pad_t + r, scratch + r * row);
        const int32_t obase = oy * ow_n * oc_n;
        for (int32_t o = 0; o < oc_n; o += 2) {
            const int32_t o1 = o + 1 < oc_n ? o + 1 : o; /* odd tail: compute channel o twice, store once */
            const int8_t *w0 = p->w + o * K, *w1 = p->w + o1 * K;
            for (int32_t ox = 0; ox < ow_n; ox += 2) {
                const int32_t d = ox + 1 < ow_n ? step : 0;
                int32_t a00 = p->bias[o], a01 = p->bias[o1], a10 = a00, a11 = a01;
                const int16_t *arow = scratch + ox * step;
                for (int32_t r = 0; r < p->kh; r++) {
                    const int16_t *x0 = arow + r * row, *x1 = x0 + d;
                    const int8_t *k0 = w0 + r * len, *k1 = w1 + r * len;
#if Q8_DSP
                    for (int32_t i = 0; i < len; i += 4) {
                        uint32_t wa = ld32(k0 + i), wb = ld32(k1 + i);
                        uint32_t wae = __sxtb16(wa), wao = sxtb16_hi(wa);
                        uint32_t wbe = __sxtb16(wb), wbo = sxtb16_hi(wb);
                        uint32_t e0 = ld32(x0 + i), q0 = ld32(x0 + i + 2);
                        a00 = __smlad(e0, wae, a00);
                        a01 = __smlad(e0, wbe, a01);
                        a00 = __smlad(q0, wao, a00);
                        a01 = __smlad(q0, wbo, a01);
                        uint32_t e1 = ld32(x1 + i), q1 = ld32(x1 + i + 2);
                        a10 = __smlad(e1, wae, a10);
                        a11 = __smlad(e1, wbe, a11);
                        a10 = __smlad(q1, wao, a10);
                        a11 = __smlad(q1, wbo, a11);
                    }
#else
                    for (int32_t i = 0; i < len; i++) {
                        int32_t ka = k0[i], kb = k1[i], v0 = x0[i], v1 = x1[i];
                        a00 += v0 * ka;
                        a01 += v0 * kb;
                        a10 += v1 * ka;
                        a11 += v1 * kb;
                    }
#endif
                }
                int32_t idx = obase + ox * oc_n + o;
                store_out(p, out, idx, o, a00);
                if (o1 != o) store_out(p, out, idx + 1, o1, a01);
                if (d) {
                    store_out(p, out, idx + oc_n, o, a10);
                    if (o1 != o) store_out(p, out, idx + oc_n + 1, o1, a11);
                }
            }
        }
    }
}

void q8_dwconv(const q8_conv_t *p, const int8_t *in, int8_t *out) {
    const int32_t c_n = p->out_c;
    int32_t acc[256];
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            for (int32_t c0 = 0; c0 < c_n; c0 += 256) {
                const int32_t cn = c_n - c0 < 256 ? c_n - c0 : 256;
                for (int32_t c = 0; c < cn; c++) acc[c] = p->bias[c0 + c];
                for (int32_t r = 0; r < p->kh; r++) {
                    const int32_t iy = oy * p->stride - p->pad_t + r;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (int32_t s = 0; s < p->kw; s++) {
                        const int32_t ix = ox * p->stride - p->pad_l + s;
                        if (ix < 0 || ix >= p->in_w) continue;
                        const int8_t *x = in + (iy * p->in_w + ix) * c_n + c0;
                        const int8_t *k = p->w + (r * p->kw + s) * c_n + c0;
                        for (int32_t c = 0; c < cn; c++) acc[c] += x[c] * k[c];
                    }
                }
                const int32_t base = (oy * p->out_w + ox) * c_n + c0;
                for (int32_t c = 0; c < cn; c++) store_out(p, out, base + c, c0 + c, acc[c]);
            }
        }
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
