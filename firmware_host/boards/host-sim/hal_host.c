/* host-sim: the firmware as an x86 process. The UART is stdin/stdout (the launcher connects them to the master
   side of a pty, the host opens the slave with pyserial); cycles are nanoseconds of CLOCK_MONOTONIC. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "hal.h"

const char hal_board_name[] = "host-sim";
static char **saved_argv;

void hal_init(void) {}

int hal_read_byte(void) {
    uint8_t c;
    for (;;) {
        ssize_t n = read(0, &c, 1);
        if (n == 1) return c;
        if (n < 0 && errno == EINTR) continue;
        return -1;  /* link closed: the process ends */
    }
}

void hal_write(const uint8_t *data, size_t n) {
    while (n) {
        ssize_t w = write(1, data, n);
        if (w < 0) { if (errno == EINTR) continue; return; }
        data += w;
        n -= (size_t)w;
    }
}

uint64_t hal_cycles(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void hal_reset(void) {
    execv("/proc/self/exe", saved_argv);
    _exit(3);
}

void hal_store_write(uint8_t *dst, const uint8_t *src, size_t n) { memcpy(dst, src, n); }

int lcs_main(void);
int main(int argc, char **argv) {
    (void)argc;
    saved_argv = argv;
    return lcs_main();
}
