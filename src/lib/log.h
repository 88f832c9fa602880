/*
 * Structured log lines on stderr: `ts=<iso8601> level=<lvl> msg="<text>" key=value ...`.
 * One line per call, written with a single write(2) so lines from a crash are never torn.
 * Safe to call from any module; it makes no libuv calls.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

enum { SL_LOG_DEBUG = 0, SL_LOG_INFO = 1, SL_LOG_WARN = 2, SL_LOG_ERROR = 3 };

extern int sl_log_level;

/* Parses "debug", "info", "warn", "error". Returns the level or -1. */
int sl_log_parse_level(const char *s);

/* Logs `msg` followed by printf-formatted key=value pairs in `kv` (may be NULL). Values that
 * come from peers must be passed through %s only after sl_log_quote-safe formatting: the
 * logger escapes control characters and quotes in the whole line. */
void sl_log(int level, const char *msg, const char *kv, ...) __attribute__((format(printf, 3, 4)));

#define SL_DEBUG(...)                                                                              \
    do {                                                                                           \
        if (sl_log_level <= SL_LOG_DEBUG)                                                          \
            sl_log(SL_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define SL_INFO(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define SL_WARN(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define SL_ERROR(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

#endif
