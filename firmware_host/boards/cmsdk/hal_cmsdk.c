/* Board hooks for QEMU's MPS2/MPS3 boards: CMSDK APB UART (base from the board file, -DLCS_UART_BASE); the cycle
   counter is the shared DWT/SysTick one (cycles.c): QEMU has no DWT, and SysTick under -icount counts exactly the
   same every run. */
#include <string.h>
#include "hal.h"

#ifndef LCS_UART_BASE
#define LCS_UART_BASE 0x40004000u
#endif
#ifndef LCS_BOARD_NAME
#define LCS_BOARD_NAME "cmsdk"
#endif
#define UART_DATA  (*(volatile uint32_t *)(LCS_UART_BASE + 0x00))
#define UART_STATE (*(volatile uint32_t *)(LCS_UART_BASE + 0x04))  /* bit0 TX full, bit1 RX full */
#define UART_CTRL  (*(volatile uint32_t *)(LCS_UART_BASE + 0x08))  /* bit0 TX enable, bit1 RX enable */
#define UART_BAUD  (*(volatile uint32_t *)(LCS_UART_BASE + 0x10))
#define SCB_AIRCR  (*(volatile uint32_t *)0xE000ED0Cu)

const char hal_board_name[] = LCS_BOARD_NAME;
void lcs_cycles_init(void);

void hal_init(void) {
    UART_BAUD = 16;
    UART_CTRL = 3;  /* TX and RX both enabled, or QEMU drops bytes */
    lcs_cycles_init();
}

int hal_read_byte(void) {
    while (!(UART_STATE & 2u)) {}
    return (int)(UART_DATA & 0xFFu);
}

void hal_write(const uint8_t *data, size_t n) {
    while (n--) {
        while (UART_STATE & 1u) {}
        UART_DATA = *data++;
    }
}

void hal_reset(void) {
    hal_write((const uint8_t *)"", 0);
    while (UART_STATE & 1u) {}
    SCB_AIRCR = 0x05FA0004u;  /* SYSRESETREQ */
    for (;;) {}
}

void hal_store_write(uint8_t *dst, const uint8_t *src, size_t n) { memcpy(dst, src, n); }
