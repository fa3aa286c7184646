/* Interface between the generic firmware and the generated model (tvm_build/mcu/executor.py writes model_gen.c). */
#ifndef LCS_MODEL_H
#define LCS_MODEL_H
#include <stdint.h>

typedef struct {
    float alpha;
    double keep;          /* unstructured: fraction kept per compressible layer (1 = dense) */
    float width;          /* structured width (1 = full) */
    uint8_t bits;         /* 0 = float, else quantization bit width */
} lcs_level_t;

typedef struct {
    int32_t w0, w1;       /* byte offsets of the endpoint weights in the weight bank (-1: none) */
    uint32_t numel;
    uint8_t is_norm;      /* norm layers: ctrl = [alpha] only */
    uint8_t compressible;
    uint8_t has_act_range;
    float act_lo, act_hi; /* trained activation range of the layer input (quantized levels) */
    float *ctrl;          /* the control vector the kernels read (RAM) */
} lcs_layer_t;

enum { CTRL_ALPHA, CTRL_THR, CTRL_W_SCALE, CTRL_W_ZERO, CTRL_QMIN, CTRL_QMAX, CTRL_W_QON, CTRL_A_SCALE,
       CTRL_A_ZERO, CTRL_A_QON, CTRL_LEN };

extern const uint8_t lcs_family;            /* 0 dense, 1 unstructured, 2 structured, 3 quantization */
extern const uint8_t lcs_num_levels;
extern const uint8_t lcs_default_level;
extern const lcs_level_t lcs_levels[];
extern const uint16_t lcs_num_layers;
extern const lcs_layer_t lcs_layers[];
extern const uint32_t lcs_input_len, lcs_output_len;   /* float32 elements */
extern const uint32_t lcs_weight_bytes;
extern const uint8_t lcs_model_hash[16];
extern uint32_t lcs_bank_a_words[];                    /* the weight store: the built set ... */
#ifdef LCS_NO_UPLOAD_BANK
extern uint32_t *const lcs_bank_b_words;               /* ... and no spare bank where flash is too small */
#else
extern uint32_t lcs_bank_b_words[];                    /* ... and a spare bank for uploads */
#endif
extern const uint8_t lcs_has_upload_bank;
#define lcs_bank_a ((uint8_t *)lcs_bank_a_words)
#define lcs_bank_b ((uint8_t *)lcs_bank_b_words)

extern uint8_t lcs_rx_buffer[];                        /* main.c: frame payloads; INFER input in place */

/* Generated executor. */
void lcs_model_bind(const uint8_t *bank);   /* point the weight tensors at a bank */
int lcs_model_run_switch(void);             /* the level-dependent calls (after the ctrl vectors changed) */
int lcs_model_infer(const float *input, float *output);
extern const char *lcs_last_error;

/* Generic (levels.c). */
extern int lcs_active_level;                           /* the level whose call lists run */
int lcs_set_level(int index, const uint8_t *bank);     /* 0 ok, <0 error */
#endif
