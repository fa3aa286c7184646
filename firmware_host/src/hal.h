/* Board hooks: the only code a board supplies (firmware_host/boards/<board>/). */
#ifndef LCS_HAL_H
#define LCS_HAL_H
#include <stddef.h>
#include <stdint.h>

void hal_init(void);                        /* clocks, UART, cycle counter */
int hal_read_byte(void);                    /* blocking; -1 when the link is gone (host-sim) */
void hal_write(const uint8_t *data, size_t n);
uint64_t hal_cycles(void);                  /* free-running counter (SysTick under QEMU -icount; ns on host-sim) */
void hal_reset(void);                       /* restart the firmware; does not return */
/* Program `n` bytes of the weight store at `dst` (flash programming on hardware; a copy where the store is
   writable memory, as on QEMU's MPS2 SSRAM and host-sim). */
void hal_store_write(uint8_t *dst, const uint8_t *src, size_t n);
extern const char hal_board_name[];
#endif
