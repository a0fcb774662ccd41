/* Clock-skew shim for the fault suite (LD_PRELOAD).
 *
 * Interposes clock_gettime, gettimeofday and time. The skew comes from the file named by
 * LARDER_SKEW_FILE, re-read at most every 100 ms (of the real monotonic clock), one line:
 *
 *     rt_offset_ns rt_ppm mono_offset_ns mono_ppm epoch_mono_ns
 *
 * Wall clocks (REALTIME, REALTIME_COARSE, TAI) read   real + rt_offset_ns + rt_ppm * e / 1e6,
 * monotonic clocks (MONOTONIC, MONOTONIC_COARSE, BOOTTIME) read
 *                                                     real + mono_offset_ns + mono_ppm * e / 1e6,
 * where e = real CLOCK_MONOTONIC - epoch_mono_ns (0 before the epoch): a jump is an offset,
 * a drift a rate. MONOTONIC_RAW and the CPU-time clocks are left alone. A missing or
 * unreadable file means no skew. The parameters are published with a sequence lock so a
 * thread never sees half of an update.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;

struct skew {
    int64_t rt_offset_ns, rt_ppm, mono_offset_ns, mono_ppm, epoch_ns;
};

static struct skew cur;            /* guarded by seq */
static unsigned long seq;          /* odd while being written */
static int64_t next_read_ns;       /* real monotonic time of the next file read */
static int refreshing;             /* one thread re-reads the file at a time */

static int real_gettime(clockid_t c, struct timespec *ts) {
    if (real_clock_gettime)
        return real_clock_gettime(c, ts);
    return (int)syscall(SYS_clock_gettime, c, ts);
}

__attribute__((constructor)) static void clockskew_init(void) {
    real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
}

static int64_t ns_of(const struct timespec *ts) {
    return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

/* Parses five integers; anything else leaves *out zero. */
static void parse(const char *buf, struct skew *out) {
    int64_t v[5] = {0, 0, 0, 0, 0};
    const char *p = buf;
    for (int i = 0; i < 5; i++) {
        char *end;
        v[i] = strtoll(p, &end, 10);
        if (end == p)
            return;
        p = end;
    }
    out->rt_offset_ns = v[0];
    out->rt_ppm = v[1];
    out->mono_offset_ns = v[2];
    out->mono_ppm = v[3];
    out->epoch_ns = v[4];
}

static void maybe_refresh(int64_t mono_now) {
    if (mono_now < __atomic_load_n(&next_read_ns, __ATOMIC_ACQUIRE))
        return;
    if (__atomic_exchange_n(&refreshing, 1, __ATOMIC_ACQUIRE))
        return;
    struct skew s = {0, 0, 0, 0, 0};
    const char *path = getenv("LARDER_SKEW_FILE");
    if (path) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char buf[256];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                parse(buf, &s);
            }
        }
    }
    __atomic_add_fetch(&seq, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&cur.rt_offset_ns, s.rt_offset_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&cur.rt_ppm, s.rt_ppm, __ATOMIC_RELAXED);
    __atomic_store_n(&cur.mono_offset_ns, s.mono_offset_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&cur.mono_ppm, s.mono_ppm, __ATOMIC_RELAXED);
    __atomic_store_n(&cur.epoch_ns, s.epoch_ns, __ATOMIC_RELAXED);
    __atomic_add_fetch(&seq, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&next_read_ns, mono_now + 100000000LL, __ATOMIC_RELEASE);
    __atomic_store_n(&refreshing, 0, __ATOMIC_RELEASE);
}

static struct skew snapshot(void) {
    struct skew s;
    unsigned long a, b;
    do {
        a = __atomic_load_n(&seq, __ATOMIC_ACQUIRE);
        s.rt_offset_ns = __atomic_load_n(&cur.rt_offset_ns, __ATOMIC_RELAXED);
        s.rt_ppm = __atomic_load_n(&cur.rt_ppm, __ATOMIC_RELAXED);
        s.mono_offset_ns = __atomic_load_n(&cur.mono_offset_ns, __ATOMIC_RELAXED);
        s.mono_ppm = __atomic_load_n(&cur.mono_ppm, __ATOMIC_RELAXED);
        s.epoch_ns = __atomic_load_n(&cur.epoch_ns, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        b = __atomic_load_n(&seq, __ATOMIC_ACQUIRE);
    } while (a != b || (a & 1));
    return s;
}

/* The skew to add now: 0 = none, 1 = wall clock, 2 = monotonic clock. */
static int64_t skew_ns(int kind) {
    struct timespec m;
    if (real_gettime(CLOCK_MONOTONIC, &m) != 0)
        return 0;
    int64_t mono_now = ns_of(&m);
    maybe_refresh(mono_now);
    struct skew s = snapshot();
    int64_t e = mono_now > s.epoch_ns ? mono_now - s.epoch_ns : 0;
    /* ppm * e / 1e6 without overflow for e up to centuries */
    int64_t off = kind == 1 ? s.rt_offset_ns : s.mono_offset_ns;
    int64_t ppm = kind == 1 ? s.rt_ppm : s.mono_ppm;
    return off + (e / 1000000LL) * ppm + (e % 1000000LL) * ppm / 1000000LL;
}

static int kind_of(clockid_t c) {
    switch (c) {
    case CLOCK_REALTIME:
    case CLOCK_REALTIME_COARSE:
    case CLOCK_TAI:
        return 1;
    case CLOCK_MONOTONIC:
    case CLOCK_MONOTONIC_COARSE:
    case CLOCK_BOOTTIME:
        return 2;
    default:
        return 0;
    }
}

int clock_gettime(clockid_t c, struct timespec *ts) {
    int r = real_gettime(c, ts);
    int kind = kind_of(c);
    if (r != 0 || kind == 0)
        return r;
    int64_t t = ns_of(ts) + skew_ns(kind);
    ts->tv_sec = t / 1000000000LL;
    ts->tv_nsec = t % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
    return 0;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0) { /* glibc declares tv non-null */
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
