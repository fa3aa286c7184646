/* Board hooks for QEMU's MPS2/MPS3 boards: CMSDK APB UART (base from the board file, -DLCS_UART_BASE) and SysTick
   as the cycle counter. QEMU has no DWT cycle counter; SysTick under -icount counts exactly the same every run. */
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
#define SYST_CSR   (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR   (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR   (*(volatile uint32_t *)0xE000E018u)
#define SCB_AIRCR  (*(volatile uint32_t *)0xE000ED0Cu)

const char hal_board_name[] = LCS_BOARD_NAME;
static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

void hal_init(void) {
    UART_BAUD = 16;
    UART_CTRL = 3;  /* TX and RX both enabled, or QEMU drops bytes */
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7;   /* processor clock, interrupt on wrap, enabled */
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

uint64_t hal_cycles(void) {
    uint32_t wraps, value;
    do {  /* re-read if the counter wrapped in between */
        wraps = systick_wraps;
        value = SYST_CVR;
    } while (wraps != systick_wraps);
    return ((uint64_t)wraps << 24) + (0xFFFFFFu - value);
}

void hal_reset(void) {
    hal_write((const uint8_t *)"", 0);
    while (UART_STATE & 1u) {}
    SCB_AIRCR = 0x05FA0004u;  /* SYSRESETREQ */
    for (;;) {}
}

void hal_store_write(uint8_t *dst, const uint8_t *src, size_t n) { memcpy(dst, src, n); }
