/* A small persistent thread pool for the CPU int8 kernels (q8_cpu.c): one per level library. The calling thread is
   one of the participants; workers wait for the next job spinning (a job hand-off costs a few hundred ns, not a
   futex round trip, so a layer of a few microseconds still gains), and fall asleep after Q8P_SPIN_NS without one
   (or at once after q8p_park) so an idle pool costs nothing. Every item of a job is computed by exactly one
   participant with the same code, so results do not depend on the thread count. */
#ifndef Q8_POOL_H
#define Q8_POOL_H
#include <stddef.h>
#include <stdint.h>

#define Q8P_MAX_THREADS 64

/* fn(ctx, lo, hi, local): items [lo, hi) of a job; `local` is the participant's own scratch (q8p_start's bytes,
   64-byte aligned). */
typedef void (*q8p_fn)(const void *ctx, int32_t lo, int32_t hi, void *local);

/* Use `threads` threads (the caller included) from now on, each with `local_bytes` of scratch: 0, or -1 for a
   count outside [1, Q8P_MAX_THREADS], -2 where a thread or its scratch could not be created. */
int32_t q8p_start(int32_t threads, size_t local_bytes);
/* Items [0, n) on up to the pool's thread count, fewer where the job is small: `work` is the job's estimated
   nanoseconds on one thread, and each participant gets at least Q8P_MIN_NS of it. Returns when all are done. */
void q8p_for(int32_t n, int64_t work_ns, q8p_fn fn, const void *ctx);
/* The caller's scratch (participant 0's). */
void *q8p_local(void);
/* Workers stop spinning now (another level runs next). */
void q8p_park(void);

#endif
