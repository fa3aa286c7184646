/* The firmware: a host-initiated request/response loop over the UART (PROTOCOL.md). The device never speaks
   first, so nothing is lost when the host opens the port late. */
#include <string.h>
#include "hal.h"
#include "lcs_model.h"

#ifndef LCS_MAX_PAYLOAD
#define LCS_MAX_PAYLOAD 4096
#endif
#define FIRMWARE_VERSION "lcs-fw 0.1.0"
#define PROTOCOL_VERSION 1

enum { HELLO = 1, SET_LEVEL, INFER, STATS, UPLOAD_BEGIN, UPLOAD_CHUNK, UPLOAD_COMMIT, RESET, LEVEL_INFO };
enum { OK = 0, BAD_CRC, BAD_LENGTH, UNKNOWN_COMMAND, BAD_ARGUMENT, OUT_OF_RANGE, UPLOAD_STATE, UPLOAD_CHECK };
#define REPLY 0x80u
#define ERROR_FRAME 0xFFu

static uint8_t rx[LCS_MAX_PAYLOAD] __attribute__((aligned(4)));
static uint8_t tx[LCS_MAX_PAYLOAD + 8] __attribute__((aligned(4)));

static struct {
    uint32_t frames_ok, frames_bad, inferences, switches, last_infer_cycles, last_switch_cycles, uploads;
    uint8_t level;
} stats;

static const uint8_t *active_bank;         /* the last good weight set */
static struct { int open; uint32_t total, crc, received; uint8_t *bank; } upload;

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32). */
static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

static float fabsf_(float v) { return v < 0.0f ? -v : v; }

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get_u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static void send_frame(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t len) {
    uint8_t head[6] = {0xA5, 0x5A, type, seq, 0, 0}, tail[4];
    put_u16(head + 4, len);
    uint32_t crc = crc_update(0, head + 2, 4);
    crc = crc_update(crc, payload, len);
    put_u32(tail, crc);
    hal_write(head, 6);
    hal_write(payload, len);
    hal_write(tail, 4);
}

static void reply_status(uint8_t type, uint8_t seq, uint8_t status) {
    send_frame(type, seq, &status, 1);
}

static uint32_t switch_to(int index) {
    uint64_t t0 = hal_cycles();
    int rc = lcs_set_level(index, active_bank);
    uint32_t cycles = (uint32_t)(hal_cycles() - t0);
    if (rc == 0) {
        stats.level = (uint8_t)index;
        stats.switches++;
        stats.last_switch_cycles = cycles;
    }
    return cycles;
}

static void put_string(uint8_t **p, const char *s) {
    size_t n = strlen(s);
    if (n > 64) n = 64;
    *(*p)++ = (uint8_t)n;
    memcpy(*p, s, n);
    *p += n;
}

static void handle(uint8_t type, uint8_t seq, const uint8_t *p, uint16_t len) {
    uint8_t r = type | REPLY, *o = tx + 1;
    tx[0] = OK;
    switch (type) {
    case HELLO:
        *o++ = PROTOCOL_VERSION; *o++ = lcs_family; *o++ = lcs_num_levels; *o++ = stats.level;
        put_u32(o, lcs_input_len); o += 4;
        put_u32(o, lcs_output_len); o += 4;
        put_u16(o, LCS_MAX_PAYLOAD); o += 2;
        put_u32(o, lcs_weight_bytes); o += 4;
        put_u32(o, crc_update(0, active_bank, lcs_weight_bytes)); o += 4;
        memcpy(o, lcs_model_hash, 16); o += 16;
        put_string(&o, FIRMWARE_VERSION);
        put_string(&o, hal_board_name);
        break;
    case LEVEL_INFO: {
        if (len != 1) { reply_status(r, seq, BAD_LENGTH); return; }
        if (p[0] >= lcs_num_levels) { reply_status(r, seq, OUT_OF_RANGE); return; }
        const lcs_level_t *lv = &lcs_levels[p[0]];
        float keep = (float)lv->keep;
        *o++ = p[0];
        memcpy(o, &lv->alpha, 4); o += 4;
        memcpy(o, &keep, 4); o += 4;
        memcpy(o, &lv->width, 4); o += 4;
        *o++ = lv->bits;
        break;
    }
    case SET_LEVEL: {
        int index = -1;
        if (len == 2 && p[0] == 0) index = p[1];
        else if (len == 5 && p[0] == 1) {
            float alpha;
            memcpy(&alpha, p + 1, 4);
            for (int i = 0; i < lcs_num_levels; i++)   /* alpha must name a built level */
                if (fabsf_(alpha - lcs_levels[i].alpha) <= 1e-6f) index = i;
        } else { reply_status(r, seq, BAD_LENGTH); return; }
        if (index < 0 || index >= lcs_num_levels) { reply_status(r, seq, OUT_OF_RANGE); return; }
        uint32_t cycles = switch_to(index);
        *o++ = (uint8_t)index;
        put_u32(o, cycles); o += 4;
        break;
    }
    case INFER: {
        if (len != lcs_input_len * 4u) { reply_status(r, seq, BAD_LENGTH); return; }
        uint64_t t0 = hal_cycles();
        int rc = lcs_model_infer((const float *)(const void *)p, (float *)(void *)(tx + 8));
        uint32_t cycles = (uint32_t)(hal_cycles() - t0);
        if (rc != 0) { reply_status(r, seq, BAD_ARGUMENT); return; }
        stats.inferences++;
        stats.last_infer_cycles = cycles;
        /* layout: status, cycles u32, then the floats (written at tx + 8 for alignment, moved down) */
        memmove(tx + 5, tx + 8, lcs_output_len * 4u);
        put_u32(tx + 1, cycles);
        o = tx + 5 + lcs_output_len * 4u;
        break;
    }
    case STATS:
        put_u32(o, stats.frames_ok); o += 4;
        put_u32(o, stats.frames_bad); o += 4;
        put_u32(o, stats.inferences); o += 4;
        put_u32(o, stats.switches); o += 4;
        put_u32(o, stats.last_infer_cycles); o += 4;
        put_u32(o, stats.last_switch_cycles); o += 4;
        put_u32(o, stats.uploads); o += 4;
        *o++ = stats.level;
        break;
    case UPLOAD_BEGIN:
        if (len != 8) { reply_status(r, seq, BAD_LENGTH); return; }
        if (get_u32(p) != lcs_weight_bytes) { reply_status(r, seq, BAD_ARGUMENT); return; }
        upload.open = 1;
        upload.total = get_u32(p);
        upload.crc = get_u32(p + 4);
        upload.received = 0;
        upload.bank = active_bank == lcs_bank_a ? lcs_bank_b : lcs_bank_a;  /* never the running set */
        break;
    case UPLOAD_CHUNK: {
        if (len < 4) { reply_status(r, seq, BAD_LENGTH); return; }
        uint32_t offset = get_u32(p), n = len - 4u;
        if (!upload.open || offset != upload.received || n > upload.total - upload.received) {
            reply_status(r, seq, UPLOAD_STATE); return;
        }
        hal_store_write(upload.bank + offset, p + 4, n);
        upload.received += n;
        put_u32(o, upload.received); o += 4;
        break;
    }
    case UPLOAD_COMMIT:
        if (!upload.open || upload.received != upload.total) { reply_status(r, seq, UPLOAD_STATE); return; }
        upload.open = 0;
        if (crc_update(0, upload.bank, upload.total) != upload.crc) { reply_status(r, seq, UPLOAD_CHECK); return; }
        active_bank = upload.bank;
        lcs_model_bind(active_bank);
        stats.uploads++;
        switch_to(stats.level);  /* recompute the level from the new weights */
        put_u32(o, upload.crc); o += 4;
        break;
    case RESET:
        reply_status(r, seq, OK);
        hal_reset();
        return;
    default:
        reply_status(r, seq, UNKNOWN_COMMAND);
        return;
    }
    send_frame(r, seq, tx, (uint16_t)(o - tx));
}

static int read_byte(void) { return hal_read_byte(); }


int lcs_main(void) {
    hal_init();
    crc_init();
    active_bank = lcs_bank_a;
    lcs_model_bind(active_bank);
    switch_to(lcs_default_level);
    stats.switches = 0;
    for (;;) {
        /* hunt for the sync bytes */
        int c = read_byte();
        if (c < 0) return 0;
        if (c != 0xA5) continue;
        if ((c = read_byte()) < 0) return 0;
        if (c != 0x5A) continue;
        uint8_t head[4];
        for (int i = 0; i < 4; i++) { if ((c = read_byte()) < 0) return 0; head[i] = (uint8_t)c; }
        uint16_t len = (uint16_t)(head[2] | head[3] << 8);
        if (len > LCS_MAX_PAYLOAD) {       /* cannot hold it: say so and hunt for the next sync */
            stats.frames_bad++;
            reply_status(ERROR_FRAME, head[1], BAD_LENGTH);
            continue;
        }
        for (uint16_t i = 0; i < len; i++) { if ((c = read_byte()) < 0) return 0; rx[i] = (uint8_t)c; }
        uint8_t tail[4];
        for (int i = 0; i < 4; i++) { if ((c = read_byte()) < 0) return 0; tail[i] = (uint8_t)c; }
        uint32_t crc = crc_update(crc_update(0, head, 4), rx, len);
        if (crc != get_u32(tail)) {
            stats.frames_bad++;
            reply_status(ERROR_FRAME, head[1], BAD_CRC);
            continue;
        }
        stats.frames_ok++;
        handle(head[0], head[1], rx, len);
    }
}
