/* A plain C reference of the small CNN (conv3x3 -> group norm -> ReLU, x4; global average pool; linear) at one
   uncompressed level, reading the same weight bank as the generated executor. benchmarks/mcu.py links it in place
   of the TVM kernels + static executor to compare cycles. Layer geometry comes from ref_config.h (generated). */
#include <math.h>
#include <string.h>
#include "lcs_model.h"
#include "ref_config.h"

static const uint8_t *bank;
static float buf_a[REF_MAX_ACT], buf_b[REF_MAX_ACT];

void lcs_model_bind(const uint8_t *b) { bank = b; }
int lcs_model_run_switch(void) { return 0; }

static const float *W(int32_t offset) { return (const float *)(const void *)(bank + offset); }

static void conv3x3(const float *x, int cin, int h, int w, const float *k, int cout, int stride, float *y) {
    int oh = (h + 2 - 3) / stride + 1, ow = (w + 2 - 3) / stride + 1;
    for (int o = 0; o < cout; o++)
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++) {
                float acc = 0.0f;
                for (int c = 0; c < cin; c++)
                    for (int u = 0; u < 3; u++) {
                        int r = i * stride + u - 1;
                        if (r < 0 || r >= h) continue;
                        for (int v = 0; v < 3; v++) {
                            int s = j * stride + v - 1;
                            if (s < 0 || s >= w) continue;
                            acc += x[(c * h + r) * w + s] * k[((o * cin + c) * 3 + u) * 3 + v];
                        }
                    }
                y[(o * oh + i) * ow + j] = acc;
            }
}

static void group_norm_relu(float *x, int c, int hw, int groups, const float *g, const float *b) {
    int per = c / groups;
    for (int q = 0; q < groups; q++) {
        float *p = x + q * per * hw;
        int n = per * hw;
        float mean = 0.0f, var = 0.0f;
        for (int i = 0; i < n; i++) mean += p[i];
        mean /= (float)n;
        for (int i = 0; i < n; i++) var += (p[i] - mean) * (p[i] - mean);
        float inv = 1.0f / sqrtf(var / (float)n + 1e-5f);
        for (int ch = 0; ch < per; ch++)
            for (int i = 0; i < hw; i++) {
                float v = (p[ch * hw + i] - mean) * inv * g[q * per + ch] + b[q * per + ch];
                p[ch * hw + i] = v > 0.0f ? v : 0.0f;
            }
    }
}

int lcs_model_infer(const float *input, float *output) {
    static const int cout[4] = REF_COUT, stride[4] = REF_STRIDE, groups[4] = REF_GROUPS;
    static const int32_t conv_w[4] = REF_CONV_W, norm_g[4] = REF_NORM_G, norm_b[4] = REF_NORM_B;
    const float *x = input;
    float *y = buf_a;
    int c = REF_IN_C, h = REF_IN_HW, w = REF_IN_HW;
    for (int l = 0; l < 4; l++) {
        conv3x3(x, c, h, w, W(conv_w[l]), cout[l], stride[l], y);
        h = (h - 1) / stride[l] + 1;
        w = (w - 1) / stride[l] + 1;
        c = cout[l];
        group_norm_relu(y, c, h * w, groups[l], W(norm_g[l]), W(norm_b[l]));
        x = y;
        y = (y == buf_a) ? buf_b : buf_a;
    }
    float pooled[REF_FEATURES];
    for (int ch = 0; ch < c; ch++) {
        float s = 0.0f;
        for (int i = 0; i < h * w; i++) s += x[ch * h * w + i];
        pooled[ch] = s / (float)(h * w);
    }
    const float *fw = W(REF_FC_W), *fb = W(REF_FC_B);
    for (int o = 0; o < REF_CLASSES; o++) {
        float acc = fb[o];
        for (int i = 0; i < c; i++) acc += pooled[i] * fw[o * c + i];
        output[o] = acc;
    }
    return 0;
}
