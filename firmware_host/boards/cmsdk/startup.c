/* Cortex-M startup for the QEMU MPS2/MPS3 boards: vector table, .data/.bss set-up, FPU on, then the firmware. */
#include <stdint.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int lcs_main(void);
void SysTick_Handler(void);

void Reset_Handler(void) {
    uint32_t *s = &_sidata, *d = &_sdata;
    while (d < &_edata) *d++ = *s++;
    for (d = &_sbss; d < &_ebss;) *d++ = 0;
#if defined(__ARM_FP)
    /* CPACR: full access to CP10/CP11 (the FPU) before any float instruction runs */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile ("dsb\n isb");
#endif
    lcs_main();
    for (;;) {}
}

static void Default_Handler(void) { for (;;) {} }

__attribute__((section(".isr_vector"), used))
const void *const vectors[16] = {
    &_estack, (void *)Reset_Handler, (void *)Default_Handler, (void *)Default_Handler, (void *)Default_Handler,
    (void *)Default_Handler, (void *)Default_Handler, 0, 0, 0, 0, (void *)Default_Handler, (void *)Default_Handler, 0,
    (void *)Default_Handler, (void *)SysTick_Handler,
};
