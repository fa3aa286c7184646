/* int8 inference kernels (HWC activations, OHWI weights, per-output-channel requantization).
   The arithmetic is defined by lcs/int8/graph.py (the numpy reference); outputs are bit-identical to it.
   With __ARM_FEATURE_DSP (Cortex-M4/M7/M33/M55) the inner loops use ACLE SIMD (smlad, sxtb16, ssat/usat);
   otherwise portable C (Cortex-M0/M3, host). */
#ifndef KERNELS_INT8_H
#define KERNELS_INT8_H
#include <stdint.h>

typedef struct {
    int32_t m;     /* multiplier in [2^30, 2^31) */
    uint8_t l, n;  /* left shift before, rounding right shift after the high multiply */
    uint8_t pad[2];
} q8_rq_t;

typedef struct {
    int16_t in_h, in_w, in_c;   /* input tensor (HWC) */
    int16_t col;                /* dense conv: values per window column, kh * in_c rounded up to a multiple of 4
                                   (the extra values are zero weights against zero activations) */
    int16_t out_h, out_w, out_c;
    int16_t kh, kw, stride;
    int16_t pad_t, pad_l;       /* bottom/right padding follows from the output size */
    uint8_t relu, depthwise;
    const int8_t *w;            /* dense: [out_c][kw][col] (col = kh x in_c, padded); depthwise: [kh][kw][c] */
    const int32_t *bias;        /* [out_c] */
    const q8_rq_t *rq;          /* [out_c] */
    const int8_t *skip;         /* residual of the output's shape added before the ReLU, or 0 */
    q8_rq_t rq_add;
    /* Sparse weights (dense convs only; 0: dense kernel). Output channel o's nonzeros are
       nz[nz_start[o] .. nz_start[o + 1]), each (index in the window << 16) | (uint16_t)weight, where the window
       is the kw x col values of w in their order (the same on every core). */
    const uint32_t *nz;
    const uint32_t *nz_start;
} q8_conv_t;

/* Scratch: q8_conv needs q8_conv_scratch(p) bytes, 4-byte aligned (depthwise convs too: it calls q8_dwconv). */
int32_t q8_conv_scratch(const q8_conv_t *p);
void q8_conv(const q8_conv_t *p, const int8_t *in, int8_t *out, int16_t *scratch);
/* The taps of a window starting at `start` (output index * stride - padding) that fall inside an input of `size`:
   [q8_tap_lo, q8_tap_hi) of the kernel's `k` (no padding copies). */
static inline int32_t q8_tap_lo(int32_t start) { return start < 0 ? -start : 0; }
static inline int32_t q8_tap_hi(int32_t start, int32_t size, int32_t k) { return size - start < k ? size - start : k; }
void q8_dwconv(const q8_conv_t *p, const int8_t *in, int8_t *out, int32_t *accrow); /* out_w * out_c int32 */
/* global average pool over h*w positions of c channels */
void q8_avgpool(const int8_t *in, int32_t hw, int32_t c, const q8_rq_t *rq, int8_t *out);
void q8_dense(const int8_t *in, int32_t n_in, int32_t n_out, const int8_t *w, const int32_t *bias,
              const q8_rq_t *rq, int8_t *out);
int32_t q8_requant(int32_t x, const q8_rq_t *rq);

/* Integer GroupNorm (lcs/int8/graph.py's module docstring), HWC, groups of c / groups consecutive channels. */
typedef struct {
    int32_t hw, c, groups;
    int32_t relu;
    int16_t lo, hi;      /* clamp before the ReLU (a level's activation grid, else -128 and 127) */
    int64_t e;           /* eps in units of (s_in / N)^2 */
    const int32_t *g;    /* [c] gamma / s_out mantissa, |g| in [2^30, 2^31) or 0 */
    const int8_t *ge;    /* [c] its exponent */
    const int32_t *b;    /* [c] round(2^16 beta / s_out) */
} q8_gn_t;
void q8_groupnorm(const q8_gn_t *p, const int8_t *in, int8_t *out);
/* One group's 1/sqrt(U) as R and k (R 2^(k - 61)) from its sums S and Q (also the CPU kernel's, q8_cpu.c). */
uint64_t q8_gn_recip(const q8_gn_t *p, int32_t s, uint32_t q, int32_t *k);

/* Level materialization of the derived weight store (lcs/int8/derived.py): a level keeps a code q of output
   channel o iff |q| > thr[o]. `w` holds oc rows of `win` codes (a conv's window, a dense layer's rows); with
   dw_c > 0 (depthwise, [kh][kw][c]) the channel of code j is j % dw_c instead. */
void q8_mask_codes(const int8_t *w, int32_t oc, int32_t win, int32_t dw_c, const uint8_t *thr, int8_t *dst);
/* The kept codes as the sparse kernel's entries and per-channel starts (q8_conv_t.nz, nz_start); at most `cap`
   entries: returns their count, or -1 where they do not fit. */
int32_t q8_sparsify(const int8_t *w, int32_t oc, int32_t win, const uint8_t *thr, uint32_t *starts, uint32_t *nz,
                    uint32_t cap);
/* r times 2^d (same multiplier), and a bias on an input scale 2^-k times the stored one. */
q8_rq_t q8_rq_shifted(q8_rq_t r, int32_t d);
void q8_bias_shifted(const int32_t *b, int32_t n, int32_t k, int32_t *dst);
/* A quantization level's layer from the stored one (lcs/int8/derived.py): per channel o the ratio
   R = max(1, (k[o] p 65536 + d / 2) / d) (<= 65536:
   the caller checks 255 p <= d), codes (c R + 2^15) >> 16, biases (b R + 2^15) >> 16 and
   requantization rq x 65536 / R. `w` as in q8_mask_codes; dw, db, drq: oc x win codes, oc biases, oc tables. */
void q8_regrid(const int8_t *w, int32_t oc, int32_t win, int32_t dw_c, const uint8_t *k, uint32_t p, uint32_t d,
               const int32_t *b, const q8_rq_t *rq, int8_t *dw, int32_t *db, q8_rq_t *drq);

#endif
