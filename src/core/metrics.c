/*
 * Prometheus text rendering of sl_metrics, the budget and the process's own resource use.
 */
#include "core/metrics.h"

#include "core/auth.h"

#include "lib/budget.h"
#include "core/hub.h"
#include "lib/util.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

sl_metrics_t sl_metrics;

static const int http_codes[SL_HTTP_CODES] = {100, 101, 200, 202, 204, 400, 401, 403, 404, 405, 406,
                                              408, 409, 413, 414, 417, 426, 429, 431, 500, 503, 0};

void sl_metrics_http(int code)
{
    for (int i = 0; i < SL_HTTP_CODES - 1; i++) {
        if (http_codes[i] == code) {
            sl_metrics.http_codes[i]++;
            return;
        }
    }
    sl_metrics.http_codes[SL_HTTP_CODES - 1]++;
}

const char *sl_close_reason_name(sl_close_reason_t r)
{
    static const char *const names[] = {
        "peer",  "write_stall", "header_timeout", "idle_timeout", "overflow",     "shutdown",
        "error", "protocol",    "ping_timeout",   "ws_close",     "body_timeout", "token_expired"};
    return r < SL_CLOSE__COUNT ? names[r] : "unknown";
}

static void head(sl_buf_t *o, const char *name, const char *type, const char *help)
{
    sl_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(sl_buf_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
    head(o, name, type, help);
    sl_buf_printf(o, "%s %" PRIu64 "\n", name, v);
}

static char *(*extra_render)(void *arg, size_t *len);
static void *extra_arg;

void sl_metrics_set_extra(char *(*render)(void *arg, size_t *len), void *arg)
{
    extra_render = render;
    extra_arg = arg;
}

static char *(*sinks_render)(void *arg, size_t *len);
static void *sinks_arg;

void sl_metrics_set_sinks_json(char *(*render)(void *arg, size_t *len), void *arg)
{
    sinks_render = render;
    sinks_arg = arg;
}

char *sl_metrics_sinks_json(size_t *len)
{
    return sinks_render != NULL ? sinks_render(sinks_arg, len) : NULL;
}

static uint64_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, rss = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &rss) != 2)
        rss = 0;
    fclose(f);
    return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    uint64_t n = 0;
    if (d == NULL)
        return 0;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n >= 3 ? n - 3 : 0; /* ".", ".." and the directory's own fd */
}

static sl_render_fn extra_metrics, extra_sources;

void sl_metrics_set_sources(sl_render_fn metrics_text, sl_render_fn sources_json)
{
    extra_metrics = metrics_text;
    extra_sources = sources_json;
}

char *sl_metrics_sources(size_t *len)
{
    if (extra_sources != NULL)
        return extra_sources(len);
    *len = 2;
    return sl_strdup("[]");
}

char *sl_metrics_render(const struct sl_hub *hub, size_t *len)
{
    const sl_metrics_t *m = &sl_metrics;
    sl_buf_t o = {.buf = sl_malloc(8192), .len = 0, .cap = 8192};
    one(&o, "sluice_connections", "gauge", "Open TCP connections.", m->connections);
    head(&o, "sluice_subscribers", "gauge", "Open subscriber connections by transport.");
    sl_buf_printf(&o, "sluice_subscribers{transport=\"sse\"} %" PRIu64 "\n", m->subscribers_sse);
    sl_buf_printf(&o, "sluice_subscribers{transport=\"ws\"} %" PRIu64 "\n", m->subscribers_ws);
    one(&o, "sluice_ws_connections", "gauge", "Open WebSocket connections (any mode).",
        m->ws_connections);
    one(&o, "sluice_ws_messages_received_total", "counter",
        "Data messages received over WebSocket.", m->ws_messages_in);
    one(&o, "sluice_ws_pings_total", "counter", "WebSocket pings sent.", m->ws_pings);
    one(&o, "sluice_connections_accepted_total", "counter", "Connections accepted.", m->accepted);
    head(&o, "sluice_connections_rejected_total", "counter",
         "Connections answered 503 at accept, by reason.");
    static const char *const rej[] = {"max_connections", "per_ip", "budget"};
    for (int i = 0; i < SL_REJECT_CONN__COUNT; i++)
        sl_buf_printf(&o, "sluice_connections_rejected_total{reason=\"%s\"} %" PRIu64 "\n", rej[i],
                      m->conn_rejected[i]);
    head(&o, "sluice_connections_closed_total", "counter", "Connections closed, by reason.");
    for (int i = 0; i < SL_CLOSE__COUNT; i++)
        sl_buf_printf(&o, "sluice_connections_closed_total{reason=\"%s\"} %" PRIu64 "\n",
                      sl_close_reason_name((sl_close_reason_t)i), m->closed[i]);
    one(&o, "sluice_topics", "gauge", "Topics in the registry.", hub->ntopics);
    one(&o, "sluice_messages_published_total", "counter", "Messages accepted for publishing.",
        m->published);
    one(&o, "sluice_published_bytes_total", "counter", "Payload bytes accepted.",
        m->published_bytes);
    head(&o, "sluice_publish_rejected_total", "counter", "Publish requests refused, by reason.");
    static const char *const prej[] = {
        "budget",           "too_large",      "bad_topic",          "max_topics",   "bad_event",
        "reserved_payload", "bad_envelope",   "not_publisher",      "topic_full",   "disk_error",
        "disk_timeout",     "reserved_event", "origin_not_allowed", "unauthorized", "rate_limited",
        "source_topic"};
    for (int i = 0; i < SL_REJECT_PUB__COUNT; i++)
        sl_buf_printf(&o, "sluice_publish_rejected_total{reason=\"%s\"} %" PRIu64 "\n", prej[i],
                      m->pub_rejected[i]);
    one(&o, "sluice_origin_rejected_total", "counter",
        "Requests and WebSocket handshakes refused for an Origin not in the allow-list.",
        m->origin_rejected);
    head(&o, "sluice_auth_rejected_total", "counter",
         "Requests, handshakes and WebSocket publishes refused by authorization, by reason.");
    for (int i = 1; i < SL_AUTH_R__COUNT; i++)
        sl_buf_printf(&o, "sluice_auth_rejected_total{reason=\"%s\"} %" PRIu64 "\n",
                      sl_auth_reason_name(i), m->auth_rejected[i]);
    one(&o, "sluice_auth_tokens_accepted_total", "counter", "Tokens that verified.",
        m->auth_accepted);
    one(&o, "sluice_auth_expired_total", "counter",
        "Subscriber and WebSocket connections closed when their token expired.", m->auth_expired);
    one(&o, "sluice_auth_refreshed_total", "counter",
        "WebSocket tokens replaced with {\"sluice\":\"token\"}.", m->auth_refreshed);
    head(&o, "sluice_rate_limited_total", "counter",
         "Publishes and connections refused by a rate limit, by what and key.");
    sl_buf_printf(&o, "sluice_rate_limited_total{what=\"publish\",key=\"subject\"} %" PRIu64 "\n",
                  m->rate_limited[0]);
    sl_buf_printf(&o, "sluice_rate_limited_total{what=\"publish\",key=\"ip\"} %" PRIu64 "\n",
                  m->rate_limited[1]);
    sl_buf_printf(&o, "sluice_rate_limited_total{what=\"connection\",key=\"ip\"} %" PRIu64 "\n",
                  m->rate_limited[2]);
    one(&o, "sluice_auth_key_reloads_total", "counter", "Key sets loaded on SIGHUP.",
        m->auth_reloads);
    one(&o, "sluice_auth_key_reload_failures_total", "counter",
        "SIGHUP reloads refused (the old keys stayed).", m->auth_reload_failures);
    const sl_log_stats_t *ls = &m->log;
    one(&o, "sluice_spill_bytes", "gauge", "Bytes of lossless topics' logs on disk.",
        ls->disk_bytes);
    one(&o, "sluice_spill_segments", "gauge", "Segment files of lossless topics.", ls->segments);
    one(&o, "sluice_spill_written_bytes_total", "counter", "Bytes appended to logs.",
        ls->written_bytes);
    one(&o, "sluice_spill_read_bytes_total", "counter", "Bytes read back from logs for readers.",
        ls->read_bytes);
    one(&o, "sluice_fsyncs_total", "counter", "fsyncs of log segments.", ls->fsyncs);
    one(&o, "sluice_durable_cursors", "gauge", "Durable cursors.", ls->cursors);
    one(&o, "sluice_cursors_expired_total", "counter", "Durable cursors expired by cursor_ttl.",
        ls->cursors_expired);
    head(&o, "sluice_cursors_rejected_total", "counter",
         "New durable cursors refused by a limit, by reason.");
    static const char *const crej[] = {"per_topic", "total", "per_subject"};
    for (int i = 0; i < SL_REJECT_CURSOR__COUNT; i++)
        sl_buf_printf(&o, "sluice_cursors_rejected_total{reason=\"%s\"} %" PRIu64 "\n", crej[i],
                      m->cursors_rejected[i]);
    one(&o, "sluice_spill_corrupt_total", "counter",
        "Corrupt records or files found in logs (recovery and reads).", ls->corrupt);
    one(&o, "sluice_spill_truncated_bytes_total", "counter",
        "Bytes cut from logs at recovery (torn or corrupt tails).", ls->truncated_bytes);
    one(&o, "sluice_spill_write_errors_total", "counter", "Failed log writes.", ls->write_errors);
    one(&o, "sluice_publishers_waiting", "gauge",
        "Publishers held back by full lossless topics or waiting for fsync.", ls->waiting);
    one(&o, "sluice_deliveries_total", "counter", "Messages written to subscribers.",
        m->deliveries);
    one(&o, "sluice_delivered_bytes_total", "counter", "Frame bytes written to subscribers.",
        m->delivered_bytes);
    one(&o, "sluice_subscriber_writes_total", "counter", "Batched writes to subscribers.",
        m->writes);
    one(&o, "sluice_heartbeats_total", "counter", "Heartbeats sent.", m->heartbeats);
    head(&o, "sluice_gaps_total", "counter", "Gap markers decided (policy skip), by reason.");
    for (int i = 0; i < SL_LAG__COUNT; i++)
        sl_buf_printf(&o, "sluice_gaps_total{reason=\"%s\"} %" PRIu64 "\n",
                      sl_lag_reason_name((sl_lag_reason_t)i), m->gaps[i]);
    one(&o, "sluice_gap_messages_total", "counter",
        "Messages readers missed (covered by gap or overflow markers).", m->gap_messages);
    head(&o, "sluice_overflow_disconnects_total", "counter",
         "Readers disconnected by policy disconnect, by reason.");
    for (int i = 0; i < SL_LAG__COUNT; i++)
        sl_buf_printf(&o, "sluice_overflow_disconnects_total{reason=\"%s\"} %" PRIu64 "\n",
                      sl_lag_reason_name((sl_lag_reason_t)i), m->overflow_disconnects[i]);
    head(&o, "sluice_evictions_total", "counter", "Messages dropped from rings, by reason.");
    for (int i = 0; i < SL_EVICT__COUNT; i++)
        sl_buf_printf(&o, "sluice_evictions_total{reason=\"%s\"} %" PRIu64 "\n",
                      sl_evict_reason_name((sl_evict_reason_t)i), m->evictions[i]);
    one(&o, "sluice_memory_accounted_bytes", "gauge", "Bytes charged to the memory budget.",
        sl_budget.used);
    one(&o, "sluice_memory_peak_bytes", "gauge", "Highest accounted bytes seen.", sl_budget.peak);
    one(&o, "sluice_memory_limit_bytes", "gauge", "The memory budget (memory_limit).",
        sl_budget.limit);
    head(&o, "sluice_http_responses_total", "counter", "HTTP responses, by status code.");
    for (int i = 0; i < SL_HTTP_CODES - 1; i++)
        sl_buf_printf(&o, "sluice_http_responses_total{code=\"%d\"} %" PRIu64 "\n", http_codes[i],
                      m->http_codes[i]);
    sl_buf_printf(&o, "sluice_http_responses_total{code=\"other\"} %" PRIu64 "\n",
                  m->http_codes[SL_HTTP_CODES - 1]);
    one(&o, "process_resident_memory_bytes", "gauge", "Resident set size.", resident_bytes());
    one(&o, "process_open_fds", "gauge", "Open file descriptors.", open_fds());
    if (extra_render != NULL) {
        size_t elen = 0;
        char *e = extra_render(extra_arg, &elen);
        if (e != NULL)
            sl_buf_put(&o, e, elen);
        free(e);
    }
    if (extra_metrics != NULL) {
        size_t n;
        char *x = extra_metrics(&n);
        sl_buf_printf(&o, "%.*s", (int)n, x);
        free(x);
    }
    *len = o.len;
    return o.buf;
}
