/* The firmware: a host-initiated request/response loop over the UART (PROTOCOL.md). The device never speaks
   first, so nothing is lost when the host opens the port late. */
#include <string.h>
#include "hal.h"
#include "lcs_model.h"

#ifndef LCS_MAX_PAYLOAD
#define LCS_MAX_PAYLOAD 4096
#endif
#define FIRMWARE_VERSION "lcs-fw 0.1.0"
#define PROTOCOL_VERSION 2

enum { HELLO = 1, SET_LEVEL, INFER, STATS, UPLOAD_BEGIN, UPLOAD_CHUNK, UPLOAD_COMMIT, RESET, LEVEL_INFO };
enum { OK = 0, BAD_CRC, BAD_LENGTH, UNKNOWN_COMMAND, BAD_ARGUMENT, OUT_OF_RANGE, UPLOAD_STATE, UPLOAD_CHECK, NO_SPACE };
#define REPLY 0x80u
#define ERROR_FRAME 0xFFu

/* Received payloads; an INFER payload is the model's input tensor in place (the executor reads it from here). */
uint8_t lcs_rx_buffer[LCS_MAX_PAYLOAD] __attribute__((aligned(16)));
#define rx lcs_rx_buffer
#ifndef LCS_TX_BYTES
#define LCS_TX_BYTES (LCS_MAX_PAYLOAD + 8)
#endif
static uint8_t tx[LCS_TX_BYTES] __attribute__((aligned(4)));  /* replies are small: output + header, HELLO */

static struct {
    uint32_t frames_ok, frames_bad, inferences, switches, last_infer_cycles, last_switch_cycles, uploads, repeats;
    uint8_t level;
} stats;

/* The last request executed; its reply stays in tx until the next one. A frame equal to it (type, seq, length and
   CRC, so the same payload) is a retry whose reply was lost: it gets that reply again, the command is not run twice.
   Costs a few words of RAM: tx is already sized for the largest reply. */
static struct { uint8_t valid, type, seq; uint16_t length, reply_length; uint32_t crc; } last;

static const uint8_t *active_bank;         /* the last good weight set */
static struct { int open; uint32_t total, crc, received; uint8_t *bank; } upload;

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32); the table is const so it stays in flash. */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du
};

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

static void error_frame(uint8_t seq, uint8_t status) {
    send_frame(ERROR_FRAME, seq, &status, 1);
}

/* 0 ok; <0: the level could not be made from the active weight set (no level runs until a switch succeeds) */
static int switch_to(int index, uint32_t *cycles_out) {
    uint64_t t0 = hal_cycles();
    int rc = lcs_set_level(index, active_bank);
    uint32_t cycles = (uint32_t)(hal_cycles() - t0);
    if (rc == 0) {
        stats.level = (uint8_t)index;
        stats.switches++;
        stats.last_switch_cycles = cycles;
    }
    if (cycles_out) *cycles_out = cycles;
    return rc;
}

static void put_string(uint8_t **p, const char *s) {
    size_t n = strlen(s);
    if (n > 64) n = 64;
    *(*p)++ = (uint8_t)n;
    memcpy(*p, s, n);
    *p += n;
}

static uint16_t refuse(uint8_t status) {
    tx[0] = status;
    return 1;
}

/* Run one request; the reply payload is left in tx, its length returned. */
static uint16_t handle(uint8_t type, uint8_t seq, const uint8_t *p, uint16_t len) {
    uint8_t *o = tx + 1;
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
        if (len != 1) return refuse(BAD_LENGTH);
        if (p[0] >= lcs_num_levels) return refuse(OUT_OF_RANGE);
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
        } else return refuse(BAD_LENGTH);
        if (index < 0 || index >= lcs_num_levels) return refuse(OUT_OF_RANGE);
        uint32_t cycles;
        if (switch_to(index, &cycles) != 0) return refuse(BAD_ARGUMENT);
        *o++ = (uint8_t)index;
        put_u32(o, cycles); o += 4;
        break;
    }
    case INFER: {
        if (len != lcs_input_len * 4u) return refuse(BAD_LENGTH);
        uint64_t t0 = hal_cycles();
        int rc = lcs_model_infer((const float *)(const void *)p, (float *)(void *)(tx + 8));
        uint32_t cycles = (uint32_t)(hal_cycles() - t0);
        if (rc != 0) return refuse(BAD_ARGUMENT);
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
        put_u32(o, stats.repeats); o += 4;
        break;
    case UPLOAD_BEGIN:
        if (len != 8) return refuse(BAD_LENGTH);
        if (!lcs_has_upload_bank) return refuse(NO_SPACE);
        if (get_u32(p) != lcs_weight_bytes) return refuse(BAD_ARGUMENT);
        upload.open = 1;
        upload.total = get_u32(p);
        upload.crc = get_u32(p + 4);
        upload.received = 0;
        upload.bank = active_bank == lcs_bank_a ? lcs_bank_b : lcs_bank_a;  /* never the running set */
        break;
    case UPLOAD_CHUNK: {
        if (len < 4) return refuse(BAD_LENGTH);
        uint32_t offset = get_u32(p), n = len - 4u;
        if (!upload.open || offset != upload.received || n > upload.total - upload.received) {
            return refuse(UPLOAD_STATE);
        }
        hal_store_write(upload.bank + offset, p + 4, n);
        upload.received += n;
        put_u32(o, upload.received); o += 4;
        break;
    }
    case UPLOAD_COMMIT:
        if (!upload.open || upload.received != upload.total) return refuse(UPLOAD_STATE);
        upload.open = 0;
        if (crc_update(0, upload.bank, upload.total) != upload.crc) return refuse(UPLOAD_CHECK);
        active_bank = upload.bank;
        lcs_model_bind(active_bank);
        stats.uploads++;
        switch_to(stats.level, 0);  /* recompute the level from the new (checked) weights */
        put_u32(o, upload.crc); o += 4;
        break;
    case RESET:
        send_frame(type | REPLY, seq, tx, 1);
        hal_reset();
        return 0;
    default:
        return refuse(UNKNOWN_COMMAND);
    }
    return (uint16_t)(o - tx);
}

static int read_byte(void) { return hal_read_byte(); }


int lcs_main(void) {
    hal_init();
    active_bank = lcs_bank_a;
    lcs_model_bind(active_bank);
    switch_to(lcs_default_level, 0);
    stats.switches = 0;
    last.valid = 0;
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
            error_frame(head[1], BAD_LENGTH);
            continue;
        }
        for (uint16_t i = 0; i < len; i++) { if ((c = read_byte()) < 0) return 0; rx[i] = (uint8_t)c; }
        uint8_t tail[4];
        for (int i = 0; i < 4; i++) { if ((c = read_byte()) < 0) return 0; tail[i] = (uint8_t)c; }
        uint32_t crc = crc_update(crc_update(0, head, 4), rx, len);
        if (crc != get_u32(tail)) {
            stats.frames_bad++;
            error_frame(head[1], BAD_CRC);
            continue;
        }
        stats.frames_ok++;
        if (last.valid && last.type == head[0] && last.seq == head[1] && last.length == len && last.crc == crc) {
            stats.repeats++;  /* a retry: answer again from tx, do not run the command twice */
        } else {
            last.valid = 0;   /* tx is about to change */
            uint16_t n = handle(head[0], head[1], rx, len);
            last.type = head[0]; last.seq = head[1]; last.length = len; last.crc = crc;
            last.reply_length = n;
            last.valid = 1;
        }
        send_frame(head[0] | REPLY, head[1], tx, last.reply_length);
    }
}
