/* Board hooks for the nRF51 (BBC micro:bit v1: nRF51822, Cortex-M0 at 16 MHz, 16 KB RAM). UART0 on the interface
   chip's virtual COM port (P0.24 TX, P0.25 RX), TIMER0 at 16 MHz as the cycle counter: the nRF51's M0 has neither
   DWT nor SysTick. One timer tick is one CPU cycle (HFCLK 16 MHz, prescaler 0). */
#include <string.h>
#include "hal.h"

#ifndef LCS_BOARD_NAME
#define LCS_BOARD_NAME "nrf51"
#endif
#ifndef LCS_UART_TX_PIN
#define LCS_UART_TX_PIN 24
#endif
#ifndef LCS_UART_RX_PIN
#define LCS_UART_RX_PIN 25
#endif
#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define CLOCK      0x40000000u
#define UART       0x40002000u
#define TIMER      0x40008000u
#define GPIO       0x50000000u
#define SCB_AIRCR  REG(0xE000ED0Cu)

const char hal_board_name[] = LCS_BOARD_NAME;
static uint32_t last_count, wraps;

void hal_init(void) {
    REG(CLOCK + 0x000) = 1;                          /* TASKS_HFCLKSTART: the crystal, for an accurate baud rate */
    for (int i = 0; i < 100000 && !REG(CLOCK + 0x100); i++) {}   /* bounded: QEMU does not model the clock */
    REG(GPIO + 0x508) = 1u << LCS_UART_TX_PIN;       /* OUTSET: TX idles high */
    REG(GPIO + 0x700 + 4u * LCS_UART_TX_PIN) = 1;    /* PIN_CNF: output */
    REG(GPIO + 0x700 + 4u * LCS_UART_RX_PIN) = 0;    /* input, buffer connected */
    REG(UART + 0x50C) = LCS_UART_TX_PIN;             /* PSELTXD */
    REG(UART + 0x514) = LCS_UART_RX_PIN;             /* PSELRXD */
    REG(UART + 0x524) = 0x01D7E000u;                 /* BAUDRATE 115200 */
    REG(UART + 0x500) = 4;                           /* ENABLE */
    REG(UART + 0x108) = 0;                           /* EVENTS_RXDRDY */
    REG(UART + 0x11C) = 0;                           /* EVENTS_TXDRDY */
    REG(UART + 0x000) = 1;                           /* TASKS_STARTRX */
    REG(UART + 0x008) = 1;                           /* TASKS_STARTTX */
    REG(TIMER + 0x504) = 0;                          /* MODE timer */
    REG(TIMER + 0x508) = 3;                          /* BITMODE 32 bit */
    REG(TIMER + 0x510) = 0;                          /* PRESCALER: 16 MHz */
    REG(TIMER + 0x00C) = 1;                          /* TASKS_CLEAR */
    REG(TIMER + 0x000) = 1;                          /* TASKS_START */
}

int hal_read_byte(void) {
    while (!REG(UART + 0x108)) {}
    REG(UART + 0x108) = 0;                           /* clear first: reading RXD raises it again if more wait */
    return (int)(REG(UART + 0x518) & 0xFFu);
}

void hal_write(const uint8_t *data, size_t n) {
    while (n--) {
        REG(UART + 0x11C) = 0;
        REG(UART + 0x51C) = *data++;                 /* TXD */
        while (!REG(UART + 0x11C)) {}
    }
}

uint64_t hal_cycles(void) {
    REG(TIMER + 0x040) = 1;                          /* TASKS_CAPTURE[0] */
    uint32_t now = REG(TIMER + 0x540);               /* CC[0] */
    if (now < last_count) wraps++;                   /* 32 bits at 16 MHz wrap every 268 s: extend per read */
    last_count = now;
    return ((uint64_t)wraps << 32) | now;
}

void hal_reset(void) {
    SCB_AIRCR = 0x05FA0004u;                         /* SYSRESETREQ (hal_write waited for the last byte) */
    for (;;) {}
}

/* The weight store is flash, programmed only by `lcs flash`: the micro:bit builds without an upload bank
   ("upload_bank": false in the board file), so UPLOAD_BEGIN answers NO_SPACE and this is never reached. */
void hal_store_write(uint8_t *dst, const uint8_t *src, size_t n) { memcpy(dst, src, n); }
