/* int8 kernels for application CPUs (x86-64, aarch64): the arithmetic of kernels_int8.h (lcs/int8/graph.py's
   integer reference, bit for bit) with the dense convolution as an int8 GEMM. Weights are packed at build time
   (lcs/int8/cpu_c.py) in one layout for every instruction set; the compiler flags of the target pick the inner
   loop (Q8C_ISA, below). This directory is not part of the microcontroller firmware (its sources are the C files of src/). */
#ifndef Q8_CPU_H
#define Q8_CPU_H
#include <stdint.h>

#include "../kernels_int8.h"

/* The GEMM's inner loop, chosen by the compiler's target features:
   avx512vnni: vpdpbusd (u8 x s8 -> s32, 64 MACs an instruction), activations offset by 128 (bias_u8 undoes it);
   avx2:       vpmaddubsw on |a| x (w signed by a), exact for weights in [-127, 127], then vpmaddwd by ones;
   neon:       smull/smull2 + sadalp (Cortex-A72: no dot-product instructions);
   scalar:     portable C. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define Q8C_ISA 1
#define Q8C_ISA_NAME "avx512vnni"
#elif defined(__AVX2__)
#define Q8C_ISA 2
#define Q8C_ISA_NAME "avx2"
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define Q8C_ISA 3
#define Q8C_ISA_NAME "neon"
#else
#define Q8C_ISA 0
#define Q8C_ISA_NAME "scalar"
#endif

#define Q8C_NR 16 /* output channels per packed weight block */
#define Q8C_KR 4  /* window values per step (the block is [K/4][16][4]) */

/* Per-output-channel requantization (graph.py's rq), one array per field so the epilogue vectorizes. */
typedef struct {
    const int32_t *m, *l, *n;
} q8c_rq_t;

/* A dense conv (a dense layer is a 1x1 conv on a 1x1 input): HWC in and out. */
typedef struct {
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t kh, kw, stride, pad_t, pad_l;
    int32_t k, kp;             /* window values kh*kw*in_c ((ky, kx, c) order), rounded up to a multiple of 4 */
    int32_t relu;
    const int8_t *w;           /* [ceil(out_c/16)][kp/4][16][4], zero beyond out_c and k */
    const int32_t *bias;       /* [out_c rounded up to 16] */
    const int32_t *bias_u8;    /* bias - 128 * (sum of the channel's weights): activations offset by 128 */
    q8c_rq_t rq;               /* [out_c rounded up to 16] */
    const int8_t *skip;        /* residual of the output's shape added before the ReLU, or 0 */
    q8_rq_t rq_add;
} q8c_conv_t;

typedef struct {
    int32_t in_h, in_w, c, out_h, out_w, kh, kw, stride, pad_t, pad_l, relu;
    const int8_t *w; /* [kh][kw][c] */
    const int32_t *bias;
    q8c_rq_t rq;
    const int8_t *skip;
    q8_rq_t rq_add;
    struct { /* AVX-512 VNNI: taps in pairs for vpdpwssd (lcs/int8/cpu_c.py dw_pairs, dw_order); 0 elsewhere */
        const int16_t *w;    /* [taps/2][c/32][lo, hi][16][2] */
        const int32_t *bias; /* per block of 32 channels: 16 "lo" channels then 16 "hi" ones */
        q8c_rq_t rq;
    } pairs;
} q8c_dw_t;

/* The kernels split their work over the thread pool (q8_pool.h, started by the caller). `scratch` is shared by the
   participants (64-byte aligned, q8c_*_scratch bytes); each also needs q8c_*_local bytes of its own (q8p_start). */
int32_t q8c_conv_scratch(const q8c_conv_t *p);
int32_t q8c_conv_local(const q8c_conv_t *p);
void q8c_conv(const q8c_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
int32_t q8c_dw_local(const q8c_dw_t *p);
void q8c_dwconv(const q8c_dw_t *p, const int8_t *in, int8_t *out, void *scratch);
/* graph.Add: out = clamp(rq(a) + rq(b)), ReLU optional; n values. */
void q8c_add(int32_t n, const int8_t *a, const int8_t *b, q8_rq_t ra, q8_rq_t rb, int32_t relu, int8_t *out);
/* q8_avgpool with c * 4 bytes of scratch */
void q8c_avgpool(const int8_t *in, int32_t hw, int32_t c, const q8_rq_t *rq, int8_t *out, void *scratch);
int32_t q8c_gn_scratch(const q8_gn_t *p);
void q8c_groupnorm(const q8_gn_t *p, const int8_t *in, int8_t *out, void *scratch);
/* The float NCHW input -> int8 HWC on c_store >= c_in channels (the rest zero), as firmware_c.device_input: x * inv
   in float32, round half to even, clamp. */
void q8c_input(const float *in, int32_t hw, int32_t c_in, int32_t c_store, float inv, int8_t *out);
const char *q8c_isa(void);

#endif
