/*
 * Structured logging to stderr. A line is assembled in a stack buffer, control characters are
 * escaped so a peer-supplied value can never forge a line, and it is written with one write(2).
 */
#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int sl_log_level = SL_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int sl_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

/* Appends src to dst[*len..cap), escaping control bytes as \xNN. Always leaves room for '\n'. */
static void append_escaped(char *dst, size_t *len, size_t cap, const char *src, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n && *len + 5 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c < 0x20 || c == 0x7f) {
            dst[(*len)++] = '\\';
            dst[(*len)++] = 'x';
            dst[(*len)++] = hex[c >> 4];
            dst[(*len)++] = hex[c & 15];
        } else {
            dst[(*len)++] = (char)c;
        }
    }
}

void sl_log(int level, const char *msg, const char *kv, ...)
{
    if (level < sl_log_level)
        return;
    char line[2048], tmp[1536];
    size_t len = 0;
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level & 3]);
    len = (size_t)n;
    append_escaped(line, &len, sizeof(line), msg, strlen(msg));
    if (len < sizeof(line) - 2)
        line[len++] = '"';
    if (kv != NULL) {
        va_list ap;
        va_start(ap, kv);
        int m = vsnprintf(tmp, sizeof(tmp), kv, ap);
        va_end(ap);
        if (m > 0) {
            size_t tl = (size_t)m < sizeof(tmp) ? (size_t)m : sizeof(tmp) - 1;
            if (len < sizeof(line) - 2)
                line[len++] = ' ';
            append_escaped(line, &len, sizeof(line), tmp, tl);
        }
    }
    line[len++] = '\n';
    if (write(2, line, len) < 0) {
        /* stderr is gone; nothing to report to. */
    }
}
