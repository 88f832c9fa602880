/*
 * Backoff, Retry-After and status classes (see policy.h). Pure: no libuv, no clock of its own.
 */
#include "sink/policy.h"

#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <time.h>

uint64_t sl_backoff_ms(uint64_t initial_ms, uint64_t max_ms, unsigned attempt, uint64_t rnd)
{
    if (attempt == 0)
        attempt = 1;
    uint64_t ceil = initial_ms;
    for (unsigned i = 1; i < attempt && ceil < max_ms; i++)
        ceil = ceil > UINT64_MAX / 2 ? UINT64_MAX : ceil * 2;
    if (ceil > max_ms)
        ceil = max_ms;
    if (ceil == UINT64_MAX)
        return rnd;
    return rnd % (ceil + 1);
}

static int digits(const char *s, size_t n, uint64_t *v)
{
    *v = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (*v > (UINT64_MAX - 9) / 10)
            return -1;
        *v = *v * 10 + (uint64_t)(s[i] - '0');
    }
    return 0;
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian), without timegm's locale and
 * time-zone state. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" exactly (29 bytes): seconds since the epoch, or -1. */
static int64_t imf_fixdate(const char *s, size_t n)
{
    static const char *const wd[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    if (n != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
        return -1;
    int ok = 0;
    for (int i = 0; i < 7; i++)
        ok |= memcmp(s, wd[i], 3) == 0;
    if (!ok)
        return -1;
    unsigned m = 0;
    for (unsigned i = 0; i < 12; i++)
        if (memcmp(s + 8, mon[i], 3) == 0)
            m = i + 1;
    uint64_t d, y, hh, mm, ss;
    if (m == 0 || digits(s + 5, 2, &d) || digits(s + 12, 4, &y) || digits(s + 17, 2, &hh) ||
        digits(s + 20, 2, &mm) || digits(s + 23, 2, &ss))
        return -1;
    if (d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60 || y < 1970)
        return -1;
    return days_from_civil((int64_t)y, m, (unsigned)d) * 86400 +
           (int64_t)(hh * 3600 + mm * 60 + ss);
}

int sl_retry_after_parse(const char *s, size_t len, uint64_t now_wall_ms, uint64_t cap_ms,
                         uint64_t *out_ms)
{
    if (s == NULL)
        return -1;
    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 &&
           (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    uint64_t v;
    if (len > 0 && s[0] >= '0' && s[0] <= '9') {
        /* More than 10 digits is over 300 years: malformed rather than a real wish. */
        if (len > 10 || digits(s, len, &v) != 0)
            return -1;
        v *= 1000;
    } else {
        int64_t t = imf_fixdate(s, len);
        if (t < 0)
            return -1;
        uint64_t at = (uint64_t)t * 1000;
        v = at > now_wall_ms ? at - now_wall_ms : 0;
    }
    *out_ms = v < cap_ms ? v : cap_ms;
    return 0;
}

sl_status_class_t sl_status_class(long status)
{
    if (status >= 200 && status <= 299)
        return SL_STATUS_OK;
    if (status == 400 || status == 413 || status == 422)
        return SL_STATUS_REJECT;
    if (status == 410)
        return SL_STATUS_GONE;
    /* Everything else (no answer, 3xx because redirects are not followed, 401/403/404 which a
     * misconfigured proxy or a deploy in progress answers, 408, 425, 429, 5xx, and statuses we
     * do not know) is retried: giving up on a stream is reserved for answers that say so. */
    return SL_STATUS_RETRY;
}

const char *sl_status_class_name(sl_status_class_t c)
{
    switch (c) {
    case SL_STATUS_OK:
        return "ok";
    case SL_STATUS_RETRY:
        return "retry";
    case SL_STATUS_REJECT:
        return "reject";
    case SL_STATUS_GONE:
        return "gone";
    }
    return "?";
}

static int v4_private(const uint8_t a[4])
{
    return a[0] == 0 || a[0] == 10 || a[0] == 127 || (a[0] == 169 && a[1] == 254) ||
           (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168) ||
           (a[0] == 100 && (a[1] & 0xc0) == 64) || a[0] >= 224;
}

int sl_addr_private(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return v4_private((const uint8_t *)&in->sin_addr);
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        static const uint8_t zero[15] = {0};
        if (memcmp(a, mapped, 12) == 0)
            return v4_private(a + 12);
        if (memcmp(a, zero, 15) == 0)
            return 1; /* :: and ::1 */
        return a[0] == 0xff || (a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80);
    }
    return 1;
}
