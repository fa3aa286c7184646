/* The int8 kernels' thread pool (q8_pool.h). A job is published by bumping `gen` (the job's sequence number in the
   high bits, its participant count in the low byte) after its fields are written. Participants claim chunks of
   items with a compare-and-swap on `claim` (the job's sequence number and its next item), so a worker that the OS
   runs late claims nothing of a job that is over, and the caller waits only for chunks claimed, never for a worker
   to show up: on a busy machine the caller simply does more of the work itself. */
#define _POSIX_C_SOURCE 200809L
#include "q8_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define Q8P_SPIN_NS 200000 /* a worker waits this long for the next job before it sleeps: > an inference's gaps */
#ifndef Q8P_MIN_NS /* tests set 1: every job split, however small */
#define Q8P_MIN_NS 1500    /* the least work (estimated ns) worth handing to one more thread: ~5x a hand-off */
#endif

static struct {
    _Alignas(64) _Atomic uint32_t gen;
    _Atomic int32_t parked;
    _Alignas(64) _Atomic uint64_t claim;
    _Atomic int32_t n, chunk;
    _Alignas(64) _Atomic int32_t finished; /* items of the current job done */
    _Alignas(64) _Atomic int32_t sleeping;
    _Atomic int32_t exiting; /* the library is being unloaded: workers return */
    int32_t threads, started;
    q8p_fn fn;
    const void *ctx;
    size_t local_bytes;
    void *local[Q8P_MAX_THREADS];
    pthread_t thread[Q8P_MAX_THREADS];
    uint32_t born[Q8P_MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t cv;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void run_chunks(uint32_t seq, void *local) {
    for (;;) {
        uint64_t w = atomic_load_explicit(&P.claim, memory_order_acquire);
        if ((uint32_t)(w >> 32) != seq) return; /* a later job: this one is over */
        const int32_t lo = (int32_t)(uint32_t)w, n = atomic_load_explicit(&P.n, memory_order_relaxed);
        if (lo >= n) return;
        const int32_t chunk = atomic_load_explicit(&P.chunk, memory_order_relaxed), hi = lo + chunk < n ? lo + chunk : n;
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &w, (uint64_t)seq << 32 | (uint32_t)hi,
                                                   memory_order_acquire, memory_order_relaxed))
            continue; /* n and chunk may have been a later job's: only a successful claim counts */
        P.fn(P.ctx, lo, hi, local); /* the job cannot end while this chunk is out: fn and ctx are its own */
        atomic_fetch_add_explicit(&P.finished, hi - lo, memory_order_release);
    }
}

static void *worker(void *arg) {
    const int32_t me = (int32_t)(intptr_t)arg; /* 1, 2, ...: the caller is participant 0 */
    uint32_t seen = P.born[me]; /* the last job before this worker existed: it may start after the next is posted */
    for (;;) {
        uint32_t g = atomic_load_explicit(&P.gen, memory_order_acquire);
        if (g == seen) { /* spin a while, then sleep until the next job */
            const int64_t until = now_ns() + Q8P_SPIN_NS;
            for (int32_t k = 1; (g = atomic_load_explicit(&P.gen, memory_order_acquire)) == seen; k++) {
                CPU_RELAX();
                if ((k & 255) == 0 && (atomic_load_explicit(&P.parked, memory_order_relaxed) || now_ns() > until)) {
                    pthread_mutex_lock(&P.mu);
                    atomic_fetch_add(&P.sleeping, 1); /* seq_cst with the publisher's gen store: no lost wake-up */
                    while ((g = atomic_load(&P.gen)) == seen) pthread_cond_wait(&P.cv, &P.mu);
                    atomic_fetch_sub(&P.sleeping, 1);
                    pthread_mutex_unlock(&P.mu);
                    break;
                }
            }
        }
        seen = g;
        if (atomic_load(&P.exiting)) return 0;
        if (me < (int32_t)(g & 0xff)) run_chunks(g >> 8, P.local[me]); /* a participant of this job */
    }
    return 0;
}

/* At unload (dlclose, process exit) the workers must be gone before the library's code is unmapped: a worker still
   spinning in it would fault (a Runtime dropped right after a call did, on a 2-thread level). */
__attribute__((destructor)) static void q8p_stop(void) {
    if (!P.started) return;
    pthread_mutex_lock(&P.mu);
    atomic_store(&P.exiting, 1);
    atomic_fetch_add(&P.gen, 1u << 8); /* a new generation with no participants: every worker wakes and returns */
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int32_t i = 1; i <= P.started; i++) pthread_join(P.thread[i], 0);
    P.started = 0;
}

static void *alloc_local(size_t bytes) {
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

int32_t q8p_start(int32_t threads, size_t local_bytes) {
    if (threads < 1 || threads > Q8P_MAX_THREADS) return -1;
    if (local_bytes < 64) local_bytes = 64;
    if (local_bytes > P.local_bytes) { /* grow every participant's scratch (workers are waiting: no job runs) */
        for (int32_t i = 0; i < P.started + 1; i++) {
            void *m = alloc_local(local_bytes);
            if (!m) return -2;
            free(P.local[i]);
            P.local[i] = m;
        }
        P.local_bytes = local_bytes;
    }
    while (P.started + 1 < threads) {
        const int32_t me = P.started + 1;
        if (!P.local[me] && !(P.local[me] = alloc_local(P.local_bytes))) return -2;
        P.born[me] = atomic_load(&P.gen);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 8 << 20); /* TVM kernels on the static executor keep their locals on the stack */
        const int rc = pthread_create(&P.thread[me], &attr, worker, (void *)(intptr_t)me);
        pthread_attr_destroy(&attr);
        if (rc) return -2;
        P.started = me;
    }
    P.threads = threads;
    atomic_store_explicit(&P.parked, 0, memory_order_relaxed);
    return 0;
}

void *q8p_local(void) { return P.local[0]; }

void q8p_park(void) { atomic_store_explicit(&P.parked, 1, memory_order_relaxed); }

void q8p_for(int32_t n, int64_t work_ns, q8p_fn fn, const void *ctx) {
    int64_t parts = work_ns / Q8P_MIN_NS;
    if (parts > P.threads) parts = P.threads;
    if (parts > n) parts = n;
    if (parts <= 1) {
        fn(ctx, 0, n, P.local[0]);
        return;
    }
    const uint32_t seq = (atomic_load_explicit(&P.gen, memory_order_relaxed) >> 8) + 1;
    P.fn = fn, P.ctx = ctx;
    atomic_store_explicit(&P.n, n, memory_order_relaxed);
    atomic_store_explicit(&P.chunk, (int32_t)((n + 4 * parts - 1) / (4 * parts)), memory_order_relaxed); /* ~4 each */
    atomic_store_explicit(&P.finished, 0, memory_order_relaxed);
    atomic_store_explicit(&P.claim, (uint64_t)(seq & 0xffffff) << 32, memory_order_release);
    atomic_store(&P.gen, seq << 8 | (uint32_t)parts); /* seq_cst: publishes the job, ordered with the sleepers' count */
    if (atomic_load(&P.sleeping)) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
    run_chunks(seq & 0xffffff, P.local[0]);
    for (int32_t k = 1; atomic_load_explicit(&P.finished, memory_order_acquire) < n; k++) {
        CPU_RELAX();
        if (k > 1024) sched_yield(); /* a worker the OS stopped mid-chunk: give it the core */
    }
}
