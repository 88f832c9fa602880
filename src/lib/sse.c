/*
 * SSE encoding. The data of one message is encoded once at publish time (see sl_msg_new) and
 * shared by every reader; this file holds the byte-level rules.
 */
#include "lib/sse.h"

#include <stdio.h>
#include <string.h>

static const char data_prefix[] = "data: ";
#define DATA_PREFIX_LEN (sizeof(data_prefix) - 1)

int sl_sse_needs_split(const char *payload, size_t len)
{
    return memchr(payload, '\n', len) != NULL || memchr(payload, '\r', len) != NULL;
}

/* The index of the first `c` in p[from..n), or n. */
static size_t next_of(const char *p, size_t from, size_t n, char c)
{
    const char *q = from < n ? memchr(p + from, c, n - from) : NULL;
    return q != NULL ? (size_t)(q - p) : n;
}

/* Runs BODY with `ls` and `ln` set to each line of the payload, split at CR, LF or CRLF. A
 * payload always has at least one (possibly empty) line. memchr goes many bytes a step, and
 * payloads mostly hold no line break at all. The next LF is found once and kept until a line
 * passes it, and a CR is looked for only before it: each byte is scanned at most twice, so a
 * payload of many CRs (or many LFs) costs no more than one without. */
#define EACH_LINE(payload, len, BODY)                                                              \
    do {                                                                                           \
        size_t s_ = 0, lf_ = next_of((payload), 0, (len), '\n');                                   \
        for (;;) {                                                                                 \
            if (lf_ < s_)                                                                          \
                lf_ = next_of((payload), s_, (len), '\n');                                         \
            size_t i_ = next_of((payload), s_, lf_, '\r');                                         \
            const char *ls = (payload) + s_;                                                       \
            size_t ln = i_ - s_;                                                                   \
            BODY;                                                                                  \
            if (i_ == (len))                                                                       \
                break;                                                                             \
            if ((payload)[i_] == '\r' && i_ + 1 < (len) && (payload)[i_ + 1] == '\n')              \
                i_++;                                                                              \
            s_ = i_ + 1;                                                                           \
        }                                                                                          \
    } while (0)

size_t sl_sse_data_len(const char *payload, size_t len)
{
    size_t total = 0;
    EACH_LINE(payload, len, {
        (void)ls;
        total += DATA_PREFIX_LEN + ln + 1;
    });
    return total;
}

char *sl_sse_put_data(char *dst, const char *payload, size_t len)
{
    EACH_LINE(payload, len, {
        memcpy(dst, data_prefix, DATA_PREFIX_LEN);
        dst += DATA_PREFIX_LEN;
        memcpy(dst, ls, ln);
        dst += ln;
        *dst++ = '\n';
    });
    return dst;
}

size_t sl_sse_retry(char *buf, uint64_t retry_ms)
{
    return (size_t)sprintf(buf, "retry: %llu\n\n", (unsigned long long)retry_ms);
}
