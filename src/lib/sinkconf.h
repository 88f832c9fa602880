/*
 * Sink settings: the `[sinks]` section (server-wide) and the `[sink "NAME"]` sections, parsed
 * key by key for config.c and checked as a whole once the file is read. Pure: no libuv. The
 * sinks themselves (src/sink/) read the result. Endpoint URL templates live here too, as the
 * configuration checks them.
 */
#ifndef SL_SINKCONF_H
#define SL_SINKCONF_H

#include <stddef.h>
#include <stdint.h>

#define SL_SINK_NAME_MAX 32
#define SL_SINK_MAX_HEADERS 16

typedef enum { SL_SINK_WEBHOOK = 1, SL_SINK_FILE = 2 } sl_sink_type_t;

/* One `[sink "NAME"]`. Durations in ms, sizes in bytes. Owned by sl_config_t. */
typedef struct sl_sink_conf {
    char name[SL_SINK_NAME_MAX + 1];
    int line; /* of its section header, for messages */
    sl_sink_type_t type;
    char *topics; /* globs separated by commas or blanks */
    int start_oldest;
    char *url;
    int format; /* sl_sink_format_t (sink/batch.h): 0 ndjson, 1 json, 2 raw */
    uint64_t batch_max_messages, batch_max_bytes, batch_linger_ms;
    int batch_max_messages_set; /* given in the file (a file sink has its own default) */
    uint64_t max_in_flight;
    uint64_t connect_timeout_ms, timeout_ms;
    uint64_t retry_initial_ms, retry_max_ms;
    char *dead_letter;
    char *signing_secret_file;
    char *headers[SL_SINK_MAX_HEADERS];
    size_t nheaders;
    uint64_t breaker_failures, breaker_open_ms, breaker_open_max_ms;
    int skip_on_backlog; /* on_max_backlog = skip */
    int allow_private;
    /* type = file */
    char *directory;
    uint64_t rotate_bytes, rotate_interval_ms; /* rotate_interval 0: by size only */
    int fsync_mode;                            /* sl_file_sync_t */
    uint64_t workers;                          /* file jobs in flight for this sink */
} sl_sink_conf_t;

/* When a file sink makes its writes durable before it acknowledges them. */
typedef enum {
    SL_FILE_SYNC_BATCH = 0,
    SL_FILE_SYNC_ROTATE = 1,
    SL_FILE_SYNC_NEVER = 2
} sl_file_sync_t;

/* `[sinks]` and every sink. */
typedef struct sl_sinks_conf {
    uint64_t max_in_flight;
    uint64_t max_host_connections;
    uint64_t breaker_registry_max;
    uint64_t breaker_idle_ttl_ms;
    sl_sink_conf_t *v;
    size_t n;
} sl_sinks_conf_t;

void sl_sinks_conf_init(sl_sinks_conf_t *s);
void sl_sinks_conf_dispose(sl_sinks_conf_t *s);

/* A section header: 1 if it is `sinks` or `sink "NAME"` (a new sink is added for the latter,
 * or the existing one found), 0 if it is none of ours. On a malformed name returns -1 with
 * *why set. */
int sl_sinkconf_section(sl_sinks_conf_t *s, const char *section, int line, const char **why);

/* One key of section `section` (already accepted by sl_sinkconf_section). Returns 0, or -1
 * with a message in err[errlen]. */
int sl_sinkconf_key(sl_sinks_conf_t *s, const char *section, const char *key, const char *val,
                    char *err, size_t errlen);

/* Checks the sinks as a whole (required keys, names). Calls report(arg, line, message) for
 * each problem and returns their number. */
int sl_sinkconf_check(const sl_sinks_conf_t *s,
                      void (*report)(void *arg, int line, const char *msg), void *arg);

/* 1 if topic `name` is one of sink c's topics. */
int sl_sinkconf_matches(const sl_sink_conf_t *c, const char *name);

/* URL templates: `{topic}` and `{sink}` are replaced by the percent-escaped topic or sink name
 * (every byte but A-Z a-z 0-9 - . _ ~ is escaped, '/' too), only in the path and query. */
/* Checks a template: http:// or https://, a host, no placeholder before the path, no unknown
 * placeholder, no blanks or control bytes. Returns 0 or -1 with *why set to a static reason. */
int sl_url_template_check(const char *tmpl, const char **why);
/* Expands a checked template into out[cap]. Returns the length (NUL-terminated) or -1 if it
 * does not fit. */
int sl_url_expand(const char *tmpl, const char *topic, size_t topic_len, const char *sink,
                  char *out, size_t cap);
/* The origin of a URL, "scheme://host:port" with scheme and host in lower case and the default
 * port made explicit: the key of its circuit breaker. Returns the length or -1. */
int sl_url_origin(const char *url, char *out, size_t cap);

#endif
