/*
 * Allocation wrappers, error names, clocks and randomness shared by every module.
 */
#include "lib/util.h"

#include <stdarg.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static void oom(size_t n)
{
    char buf[96];
    int len = snprintf(buf, sizeof(buf), "sluice: out of memory allocating %zu bytes\n", n);
    if (len > 0 && write(2, buf, (size_t)len) < 0) {
        /* Nothing more can be done. */
    }
    abort();
}

void *sl_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *sl_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *sl_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *sl_strndup(const char *s, size_t n)
{
    char *p = sl_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *sl_strdup(const char *s)
{
    return sl_strndup(s, strlen(s));
}

const char *sl_strerror(int err)
{
    switch (err) {
    case SL_EOVERLOAD:
        return "memory budget exhausted";
    case SL_ETOOBIG:
        return "over the size limit";
    case SL_EBADID:
        return "malformed message id";
    case SL_ELIMIT:
        return "count limit reached";
    case SL_EFULL:
        return "lossless topic full";
    case SL_EDISK:
        return "lossless topic log cannot be written";
    case SL_EINVAL:
        return "malformed name or value";
    case SL_ERESERVED:
        return "reserved name";
    case SL_EBUSY:
        return "in use";
    default:
        return err < 0 ? strerror(-err) : "success";
    }
}

uint64_t sl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t sl_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t sl_random64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    }
    return v;
}

void sl_buf_printf(sl_buf_t *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = 2 * b->cap + (size_t)(n > 0 ? n : 0);
        b->buf = sl_realloc(b->buf, b->cap);
    }
}

void sl_buf_put(sl_buf_t *b, const char *p, size_t n)
{
    while (b->cap - b->len <= n) {
        b->cap *= 2;
        b->buf = sl_realloc(b->buf, b->cap);
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->buf[b->len] = '\0';
}
