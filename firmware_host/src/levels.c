/* On-device level switching: from the stored endpoint weights and a level, compute each layer's control vector
   (blend position, TopK threshold, weight and activation quantization grids), then run the level-dependent kernels.
   The formulas mirror lcs/subspace/compress.py exactly (fp32 arithmetic, round half to even = nearbyintf). */
#include <math.h>
#include <string.h>
#include "lcs_model.h"

/* (1 - alpha) w0 + alpha w1, as lcs/subspace/layers.py blends (exactly w0 at alpha 0, w1 at alpha 1). With the
   float32 alpha both sides use and no contraction (-ffp-contract=off), the blended weights are bit-identical. */
static inline float blended(const float *w0, const float *w1, float alpha, uint32_t i) {
    if (!w1) return w0[i];
    return (1.0f - alpha) * w0[i] + alpha * w1[i];
}

static inline uint32_t magnitude_bits(float v) {      /* |v| as an order-preserving integer */
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7FFFFFFFu;
}

/* The largest threshold t with count(|w| >= t) >= kept: the kept-th largest magnitude, found by a binary search
   over the float bit patterns (31 counting passes, no RAM besides a few words). */
static float topk_threshold(const float *w0, const float *w1, float alpha, uint32_t n, uint32_t kept) {
    if (kept >= n) return 0.0f;
    if (kept == 0) return INFINITY;
    uint32_t lo = 0, hi = 0x7F800000u;  /* invariant: count(>= lo) >= kept, count(>= hi + 1) < kept */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2, count = 0;
        for (uint32_t i = 0; i < n; i++) count += magnitude_bits(blended(w0, w1, alpha, i)) >= mid;
        if (count >= kept) lo = mid; else hi = mid - 1;
    }
    float t;
    memcpy(&t, &lo, sizeof t);
    return t;
}

/* quant_params of compress.py: signed b-bit grid covering [min(lo,0), max(hi,0)]. */
static void quant_params(float lo, float hi, int bits, float *scale, float *zero) {
    float qmin = (float)(-(1 << (bits - 1))), qmax = (float)((1 << (bits - 1)) - 1);
    lo = lo < 0.0f ? lo : 0.0f;
    hi = hi > 0.0f ? hi : 0.0f;
    float s = (hi - lo) / (qmax - qmin);
    if (!(s > 0.0f)) s = 1.0f;
    float z = qmin - nearbyintf(lo / s);
    *scale = s;
    *zero = z < qmin ? qmin : (z > qmax ? qmax : z);
}

int lcs_active_level;

int lcs_set_level(int index, const uint8_t *bank) {
    if (index < 0 || index >= lcs_num_levels) return -1;
    lcs_active_level = index;
    const lcs_level_t *level = &lcs_levels[index];
    for (uint16_t l = 0; l < lcs_num_layers; l++) {
        const lcs_layer_t *layer = &lcs_layers[l];
        float *c = layer->ctrl;
        if (!c) continue;
        c[CTRL_ALPHA] = level->alpha;
        if (layer->is_norm) continue;
        const float *w0 = (const float *)(const void *)(bank + layer->w0);
        const float *w1 = layer->w1 >= 0 ? (const float *)(const void *)(bank + layer->w1) : 0;
        c[CTRL_THR] = 0.0f;
        c[CTRL_W_QON] = c[CTRL_A_QON] = 0.0f;
        c[CTRL_W_SCALE] = c[CTRL_A_SCALE] = 1.0f;
        c[CTRL_W_ZERO] = c[CTRL_A_ZERO] = 0.0f;
        c[CTRL_QMIN] = -INFINITY;
        c[CTRL_QMAX] = INFINITY;
        if (!layer->compressible) continue;
        if (level->keep < 1.0) {
            /* UnstructuredMap.kept_count: numel - floor((1 - keep) * numel + 1e-9) */
            uint32_t dropped = (uint32_t)floor((1.0 - level->keep) * (double)layer->numel + 1e-9);
            c[CTRL_THR] = topk_threshold(w0, w1, level->alpha, layer->numel, layer->numel - dropped);
        }
        if (level->bits) {
            float lo = INFINITY, hi = -INFINITY, thr = c[CTRL_THR];
            for (uint32_t i = 0; i < layer->numel; i++) {   /* range of the masked weights */
                float v = blended(w0, w1, level->alpha, i);
                if (!(v >= thr || -v >= thr)) v = 0.0f;
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            quant_params(lo, hi, level->bits, &c[CTRL_W_SCALE], &c[CTRL_W_ZERO]);
            c[CTRL_QMIN] = (float)(-(1 << (level->bits - 1)));
            c[CTRL_QMAX] = (float)((1 << (level->bits - 1)) - 1);
            c[CTRL_W_QON] = 1.0f;
            if (layer->has_act_range) {
                quant_params(layer->act_lo, layer->act_hi, level->bits, &c[CTRL_A_SCALE], &c[CTRL_A_ZERO]);
                c[CTRL_A_QON] = 1.0f;
            }
        }
    }
    return lcs_model_run_switch();
}
