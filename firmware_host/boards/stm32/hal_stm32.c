/* Board hooks for STM32 chips: a USART polled by the firmware and the Cortex-M cycle counter (cycles.c). Every
   address, pin and clock comes from the board file's defines (targets/<board>.json), so one file serves the F4
   Nucleo/Discovery kits (USART2 on the ST-Link's virtual COM port), QEMU's netduinoplus2 (USART1) and the newer
   USART layout of the U5 (LCS_STM32_USART_V2). The core runs on its reset clock (HSI / MSI): no PLL to set up, and
   nothing here polls a ready bit QEMU does not model (its RCC and GPIO ignore writes). */
#include <string.h>
#include "hal.h"

#ifndef LCS_BOARD_NAME
#define LCS_BOARD_NAME "stm32"
#endif
#define REG(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

#ifdef LCS_STM32_USART_V2   /* CR1 at 0, BRR 0x0C, ISR 0x1C, ICR 0x20, RDR 0x24, TDR 0x28; UE is CR1 bit 0 */
#define USART_CR1  REG(LCS_UART_BASE + 0x00)
#define USART_BRR  REG(LCS_UART_BASE + 0x0C)
#define USART_ISR  REG(LCS_UART_BASE + 0x1C)
#define USART_ICR  REG(LCS_UART_BASE + 0x20)
#define USART_RDR  REG(LCS_UART_BASE + 0x24)
#define USART_TDR  REG(LCS_UART_BASE + 0x28)
#define CR1_ENABLE ((1u << 0) | (1u << 2) | (1u << 3))   /* UE, RE, TE */
#else                        /* F1/F2/F4: SR at 0, DR 0x04, BRR 0x08, CR1 0x0C; UE is CR1 bit 13 */
#define USART_ISR  REG(LCS_UART_BASE + 0x00)
#define USART_RDR  REG(LCS_UART_BASE + 0x04)
#define USART_TDR  REG(LCS_UART_BASE + 0x04)
#define USART_BRR  REG(LCS_UART_BASE + 0x08)
#define USART_CR1  REG(LCS_UART_BASE + 0x0C)
#define CR1_ENABLE ((1u << 13) | (1u << 2) | (1u << 3))  /* UE, RE, TE */
#endif
#define ISR_TXE  (1u << 7)
#define ISR_RXNE (1u << 5)
#define ISR_ORE  (1u << 3)
#define SCB_AIRCR REG(0xE000ED0Cu)

void lcs_cycles_init(void);
const char hal_board_name[] = LCS_BOARD_NAME;

static void pin_to_uart(uint32_t pin) {   /* alternate function LCS_UART_AF on GPIO pin `pin` */
    REG(LCS_GPIO_BASE + 0x00) = (REG(LCS_GPIO_BASE + 0x00) & ~(3u << (2 * pin))) | (2u << (2 * pin));  /* MODER */
    uint32_t afr = LCS_GPIO_BASE + 0x20 + 4u * (pin / 8u), shift = 4u * (pin % 8u);
    REG(afr) = (REG(afr) & ~(0xFu << shift)) | ((uint32_t)LCS_UART_AF << shift);
}

void hal_init(void) {
    REG(LCS_RCC_GPIO_ENR) |= LCS_RCC_GPIO_BIT;
    REG(LCS_RCC_UART_ENR) |= LCS_RCC_UART_BIT;
    (void)REG(LCS_RCC_UART_ENR);          /* the clock is on two bus cycles after the write */
    pin_to_uart(LCS_UART_TX_PIN);
    pin_to_uart(LCS_UART_RX_PIN);
    USART_BRR = (LCS_UART_CLOCK_HZ + LCS_UART_BAUD / 2u) / LCS_UART_BAUD;  /* 16x oversampling */
    USART_CR1 = CR1_ENABLE;               /* QEMU drops received bytes unless UE and RE are both set */
    lcs_cycles_init();
}

int hal_read_byte(void) {
    for (;;) {
        uint32_t isr = USART_ISR;
        if (isr & ISR_RXNE) return (int)(USART_RDR & 0xFFu);
#ifdef LCS_STM32_USART_V2
        if (isr & ISR_ORE) USART_ICR = ISR_ORE;
#else
        if (isr & ISR_ORE) (void)USART_RDR;   /* SR then DR read clears an overrun */
#endif
    }
}

void hal_write(const uint8_t *data, size_t n) {
    while (n--) {
        while (!(USART_ISR & ISR_TXE)) {}
        USART_TDR = *data++;
    }
}

void hal_reset(void) {
    while (!(USART_ISR & (1u << 6))) {}   /* TC: the last reply byte has left */
    SCB_AIRCR = 0x05FA0004u;              /* SYSRESETREQ */
    for (;;) {}
}

/* The weight store is flash, programmed only by `lcs flash`: these boards build without an upload bank
   ("upload_bank": false in the board file), so UPLOAD_BEGIN answers NO_SPACE and this is never reached. */
void hal_store_write(uint8_t *dst, const uint8_t *src, size_t n) { memcpy(dst, src, n); }
