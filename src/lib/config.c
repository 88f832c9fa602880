/*
 * Configuration: defaults, the INI file (inih), sizes, durations, listen addresses and topic
 * globs. Every error is reported with file:line and counted; parsing goes on after an error so
 * that one run of --check-config lists them all. No libuv calls.
 */
#include "lib/config.h"

#include "lib/log.h"
#include "lib/template.h"
#include "lib/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

void sl_config_init(sl_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen_host = sl_strdup("127.0.0.1");
    cfg->listen_port = 8080;
    cfg->data_dir = sl_strdup("./sluice-data");
    cfg->memory_limit = 256ull << 20;
    cfg->shutdown_drain_ms = 5000;
    cfg->header_timeout_ms = 10000;
    cfg->idle_timeout_ms = 60000;
    cfg->write_stall_ms = 30000;
    cfg->sse_retry_ms = 2000;
    cfg->topic_idle_ttl_ms = 60000;
    cfg->send_buffer = 128 << 10;
    cfg->log_level = SL_LOG_INFO;
    cfg->ws_ping_interval_ms = 30000;
    cfg->ws_pong_timeout_ms = 20000;
    cfg->ws_close_timeout_ms = 5000;
    cfg->disk_quota = 8ull << 30;
    cfg->max_publish_wait_ms = 30000;
    cfg->body_timeout_ms = 30000;
    cfg->auth_claim = sl_strdup("sluice");
    cfg->auth_leeway_ms = 5000;
    cfg->auth_max_token_bytes = 8192;
    cfg->rate_limit_keys = 100000;
    cfg->auth_max_cursors_per_subject = 100;
    cfg->max_connections = 100000;
    cfg->max_connections_per_ip = 10000;
    cfg->max_header_bytes = 16 << 10;
    cfg->max_url_bytes = 8 << 10;
    cfg->max_message_bytes = 1 << 20;
    cfg->max_body_bytes = 8 << 20;
    cfg->max_topics_per_connection = 64;
    cfg->max_topic_name = 256;
    cfg->max_topics = 100000;
    cfg->max_batch_messages = 10000;
    cfg->max_cursors_per_topic = 1024;
    cfg->max_cursors = 65536;
    cfg->ipv6_prefix = 64;
    sl_topic_conf_t *t = &cfg->topic_defaults;
    t->max_messages = 1024;
    t->max_bytes = 16 << 20;
    t->overflow = SL_OVERFLOW_SKIP;
    t->lag_soft_ms = 10000;
    t->heartbeat_ms = 15000;
    t->fsync = SL_FSYNC_INTERVAL;
    t->fsync_interval_ms = 100;
    t->segment_bytes = 16 << 20;
    t->disk_quota = 1ull << 30;
    sl_sinks_conf_init(&cfg->sinks);
    char host[256];
    if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
        strcpy(host, "sluice");
    host[sizeof(host) - 1] = '\0';
    cfg->node = sl_strdup(host);
}

static void source_dispose(sl_source_conf_t *s)
{
    free(s->name);
    free(s->brokers);
    free(s->group);
    for (size_t i = 0; i < s->ntopics; i++)
        free(s->topics[i]);
    free(s->topics);
    free(s->topic_tmpl);
    free(s->event_tmpl);
    for (size_t i = 0; i < 2 * s->nprops; i++)
        free(s->props[i]);
    free(s->props);
}

void sl_config_dispose(sl_config_t *cfg)
{
    free(cfg->listen_host);
    free(cfg->data_dir);
    free(cfg->origins);
    cfg->origins = NULL;
    for (size_t i = 0; i < cfg->nrules; i++)
        free(cfg->rules[i].glob);
    free(cfg->rules);
    char **auth_strings[] = {&cfg->auth_hmac_secret_file,
                             &cfg->auth_public_key_file,
                             &cfg->auth_jwks_file,
                             &cfg->auth_admin_token_file,
                             &cfg->auth_issuer,
                             &cfg->auth_audience,
                             &cfg->auth_claim,
                             &cfg->auth_cookie};
    for (size_t i = 0; i < sizeof(auth_strings) / sizeof(auth_strings[0]); i++) {
        free(*auth_strings[i]);
        *auth_strings[i] = NULL;
    }
    for (size_t i = 0; i < cfg->nsources; i++)
        source_dispose(&cfg->sources[i]);
    free(cfg->sources);
    cfg->sources = NULL;
    cfg->nsources = 0;
    free(cfg->node);
    cfg->node = NULL;
    cfg->listen_host = cfg->data_dir = NULL;
    cfg->rules = NULL;
    cfg->nrules = 0;
    sl_sinks_conf_dispose(&cfg->sinks);
}

/* ---- value parsers ---------------------------------------------------------------------- */

/* Leading decimal digits of s into *v; returns the number of digits, or -1 on overflow. */
static int parse_digits(const char *s, uint64_t *v)
{
    int n = 0;
    *v = 0;
    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        uint64_t d = (uint64_t)(s[n] - '0');
        if (*v > (UINT64_MAX - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    return n;
}

int sl_parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        unsigned shift;
    } units[] = {{"", 0},    {"b", 0},    {"k", 10}, {"kb", 10}, {"kib", 10}, {"m", 20},
                 {"mb", 20}, {"mib", 20}, {"g", 30}, {"gb", 30}, {"gib", 30}};
    uint64_t v;
    int n = parse_digits(s, &v);
    if (n <= 0)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(s + n, units[i].suffix) == 0) {
            if (units[i].shift && v > (UINT64_MAX >> units[i].shift))
                return -EINVAL;
            *out = v << units[i].shift;
            return 0;
        }
    }
    return -EINVAL;
}

int sl_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    uint64_t v;
    int n = parse_digits(s, &v);
    if (n <= 0)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s + n, units[i].suffix) == 0) {
            if (v > UINT64_MAX / units[i].ms)
                return -EINVAL;
            *out = v * units[i].ms;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_count(const char *s, uint64_t *out)
{
    uint64_t v;
    int n = parse_digits(s, &v);
    if (n <= 0 || s[n] != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -EINVAL;
}

int sl_config_set_listen(sl_config_t *cfg, const char *addr_port)
{
    const char *colon = strrchr(addr_port, ':');
    char host[64];
    size_t hlen;
    if (colon == NULL || colon == addr_port)
        return -EINVAL;
    const char *h = addr_port;
    hlen = (size_t)(colon - addr_port);
    int v6 = 0;
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return -EINVAL;
        h++;
        hlen -= 2;
        v6 = 1;
    }
    if (hlen >= sizeof(host))
        return -EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    unsigned char buf[16];
    if (inet_pton(v6 ? AF_INET6 : AF_INET, host, buf) != 1)
        return -EINVAL;
    uint64_t port;
    if (parse_count(colon + 1, &port) != 0 || port > 65535)
        return -EINVAL;
    free(cfg->listen_host);
    cfg->listen_host = sl_strdup(host);
    cfg->listen_port = (int)port;
    return 0;
}

int sl_glob_match(const char *glob, const char *s)
{
    /* Iterative matching with one backtrack point: linear in practice, never exponential. */
    const char *star = NULL, *retry = NULL;
    while (*s != '\0') {
        if (*glob == '*') {
            star = glob++;
            retry = s;
        } else if (*glob == '?' || *glob == *s) {
            glob++;
            s++;
        } else if (star != NULL) {
            glob = star + 1;
            s = ++retry;
        } else {
            return 0;
        }
    }
    while (*glob == '*')
        glob++;
    return *glob == '\0';
}

void sl_config_topic(const sl_config_t *cfg, const char *name, sl_topic_conf_t *out)
{
    *out = cfg->topic_defaults;
    for (size_t i = 0; i < cfg->nrules; i++) {
        const sl_topic_rule_t *r = &cfg->rules[i];
        if (!sl_glob_match(r->glob, name))
            continue;
        const sl_topic_conf_t *c = &r->conf;
#define TAKE(bit, field)                                                                           \
    if (r->set & (bit))                                                                            \
    out->field = c->field
        TAKE(SL_TK_MAX_MESSAGES, max_messages);
        TAKE(SL_TK_MAX_BYTES, max_bytes);
        TAKE(SL_TK_MAX_AGE, max_age_ms);
        TAKE(SL_TK_OVERFLOW, overflow);
        TAKE(SL_TK_LAG_HARD_MESSAGES, lag_hard_messages);
        TAKE(SL_TK_LAG_HARD_BYTES, lag_hard_bytes);
        TAKE(SL_TK_LAG_SOFT_MESSAGES, lag_soft_messages);
        TAKE(SL_TK_LAG_SOFT_BYTES, lag_soft_bytes);
        TAKE(SL_TK_LAG_SOFT, lag_soft_ms);
        TAKE(SL_TK_LAG_MAX_AGE, lag_max_age_ms);
        TAKE(SL_TK_HEARTBEAT, heartbeat_ms);
        TAKE(SL_TK_HEARTBEAT_EVENT, heartbeat_event);
        TAKE(SL_TK_DURABILITY, lossless);
        TAKE(SL_TK_FSYNC, fsync);
        TAKE(SL_TK_FSYNC_INTERVAL, fsync_interval_ms);
        TAKE(SL_TK_SEGMENT_BYTES, segment_bytes);
        TAKE(SL_TK_DISK_QUOTA, disk_quota);
        TAKE(SL_TK_CURSOR_TTL, cursor_ttl_ms);
        TAKE(SL_TK_PUBLISH, publish_auth);
        TAKE(SL_TK_SUBSCRIBE, subscribe_auth);
#undef TAKE
    }
    uint8_t dflt = cfg->auth ? SL_POLICY_TOKEN : SL_POLICY_ANYONE;
    if (out->publish_auth == SL_POLICY_DEFAULT)
        out->publish_auth = dflt;
    if (out->subscribe_auth == SL_POLICY_DEFAULT)
        out->subscribe_auth = dflt;
}

void sl_config_topic_policy(const sl_config_t *cfg, const char *name, int *publish, int *subscribe)
{
    int pub = SL_POLICY_DEFAULT, sub = SL_POLICY_DEFAULT;
    for (size_t i = 0; i < cfg->nrules; i++) {
        const sl_topic_rule_t *r = &cfg->rules[i];
        if ((r->set & (SL_TK_PUBLISH | SL_TK_SUBSCRIBE)) == 0 || !sl_glob_match(r->glob, name))
            continue;
        if (r->set & SL_TK_PUBLISH)
            pub = r->conf.publish_auth;
        if (r->set & SL_TK_SUBSCRIBE)
            sub = r->conf.subscribe_auth;
    }
    int dflt = cfg->auth ? SL_POLICY_TOKEN : SL_POLICY_ANYONE;
    *publish = pub == SL_POLICY_DEFAULT ? dflt : pub;
    *subscribe = sub == SL_POLICY_DEFAULT ? dflt : sub;
}

/* ---- the INI file ----------------------------------------------------------------------- */

typedef struct parse_ctx {
    sl_config_t *cfg;
    const char *name;
    FILE *errs;
    int errors;
    int line;
    /* The reader's input: a FILE or a string. */
    FILE *f;
    const char *text;
    /* Line of the keys checked after the whole file. */
    int message_line, body_line;
    /* The last [topic "…"] section header seen, and its rule index (-1 if malformed). */
    char *section;
    long rule;
    int auth_line;   /* the first [auth] header */
    int policy_line; /* the last `publish = token` or `subscribe = token` */
    long source;     /* the current [source "…"] index, -1 if malformed */
} parse_ctx_t;

static void error_at(parse_ctx_t *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error_at(parse_ctx_t *p, int line, const char *fmt, ...)
{
    p->errors++;
    if (p->errs == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(p->errs, "%s:%d: ", p->name, line);
    vfprintf(p->errs, fmt, ap);
    fputc('\n', p->errs);
    va_end(ap);
}

static sl_topic_rule_t *rule_for(parse_ctx_t *p, const char *section);
static sl_source_conf_t *source_for(parse_ctx_t *p, const char *section);

static int is_source_section(const char *name)
{
    return strncmp(name, "source", 6) == 0 && (name[6] == ' ' || name[6] == '\t' || name[6] == '"');
}

/* Validates a section header as it is read, so that a section with no keys (which inih never
 * reports) is checked too. Keys of an unknown section are then ignored silently. */
static void check_section(parse_ctx_t *p, const char *line)
{
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line != '[')
        return;
    const char *end = strchr(line, ']');
    if (end == NULL)
        return; /* inih reports the syntax error */
    char name[256];
    size_t len = (size_t)(end - line - 1);
    if (len >= sizeof(name))
        len = sizeof(name) - 1;
    memcpy(name, line + 1, len);
    name[len] = '\0';
    if (strcmp(name, "server") == 0 || strcmp(name, "limits") == 0)
        return;
    if (strcmp(name, "auth") == 0) {
        p->cfg->auth = 1;
        if (p->auth_line == 0)
            p->auth_line = p->line;
        return;
    }
    if (strncmp(name, "topic", 5) == 0 && (name[5] == ' ' || name[5] == '\t' || name[5] == '"')) {
        rule_for(p, name);
        return;
    }
    const char *why = NULL;
    int sk = sl_sinkconf_section(&p->cfg->sinks, name, p->line, &why);
    if (sk > 0)
        return;
    if (is_source_section(name)) {
        source_for(p, name);
        return;
    }
    free(p->section);
    p->section = sl_strdup(name);
    p->rule = -1;
    if (sk < 0)
        error_at(p, p->line, "malformed section [%s]: %s", name, why);
    else
        error_at(p, p->line, "unknown section [%s]", name);
}

/* inih reads lines through this, so the count of lines read is the current line number. */
static char *read_line(char *buf, int size, void *stream)
{
    parse_ctx_t *p = stream;
    char *r;
    if (p->f != NULL) {
        r = fgets(buf, size, p->f);
    } else {
        if (*p->text == '\0')
            return NULL;
        const char *nl = strchr(p->text, '\n');
        size_t len = nl ? (size_t)(nl - p->text) + 1 : strlen(p->text);
        if (len > (size_t)size - 1)
            len = (size_t)size - 1;
        memcpy(buf, p->text, len);
        buf[len] = '\0';
        p->text += len;
        r = buf;
    }
    if (r != NULL && (strchr(r, '\n') != NULL || (p->f != NULL && feof(p->f)) ||
                      (p->f == NULL && *p->text == '\0'))) {
        p->line++;
        check_section(p, r);
    }
    return r;
}

/* Returns the rule for a `topic "glob"` section name, creating it on first sight. */
static sl_topic_rule_t *rule_for(parse_ctx_t *p, const char *section)
{
    if (p->section != NULL && strcmp(p->section, section) == 0)
        return p->rule >= 0 ? &p->cfg->rules[p->rule] : NULL;
    free(p->section);
    p->section = sl_strdup(section);
    p->rule = -1;
    size_t len = strlen(section);
    const char *q = section + 5;
    while (*q == ' ' || *q == '\t')
        q++;
    size_t glen = len - (size_t)(q - section);
    if (glen < 3 || q[0] != '"' || q[glen - 1] != '"' || memchr(q + 1, '"', glen - 2) != NULL) {
        error_at(p, p->line, "malformed section [%s]: want [topic \"glob\"]", section);
        return NULL;
    }
    sl_config_t *cfg = p->cfg;
    cfg->rules = sl_realloc(cfg->rules, (cfg->nrules + 1) * sizeof(*cfg->rules));
    sl_topic_rule_t *r = &cfg->rules[cfg->nrules];
    memset(r, 0, sizeof(*r));
    r->glob = sl_strndup(q + 1, glen - 2);
    p->rule = (long)cfg->nrules++;
    return r;
}

static int topic_key(parse_ctx_t *p, sl_topic_rule_t *r, const char *key, const char *val)
{
    sl_topic_conf_t *c = &r->conf;
    int rc = 0;
    uint32_t bit = 0;
    if (strcmp(key, "max_messages") == 0) {
        bit = SL_TK_MAX_MESSAGES;
        rc = parse_count(val, &c->max_messages);
        if (rc == 0 && c->max_messages < 1) {
            error_at(p, p->line, "max_messages must be at least 1");
            return 0;
        }
    } else if (strcmp(key, "max_bytes") == 0) {
        bit = SL_TK_MAX_BYTES;
        rc = sl_parse_size(val, &c->max_bytes);
        if (rc == 0 && c->max_bytes < 1) {
            error_at(p, p->line, "max_bytes must be at least 1");
            return 0;
        }
    } else if (strcmp(key, "max_age") == 0) {
        bit = SL_TK_MAX_AGE;
        rc = sl_parse_duration_ms(val, &c->max_age_ms);
    } else if (strcmp(key, "overflow") == 0) {
        bit = SL_TK_OVERFLOW;
        if (strcmp(val, "skip") == 0)
            c->overflow = SL_OVERFLOW_SKIP;
        else if (strcmp(val, "disconnect") == 0)
            c->overflow = SL_OVERFLOW_DISCONNECT;
        else
            rc = -EINVAL;
    } else if (strcmp(key, "lag_hard_messages") == 0) {
        bit = SL_TK_LAG_HARD_MESSAGES;
        rc = parse_count(val, &c->lag_hard_messages);
    } else if (strcmp(key, "lag_hard_bytes") == 0) {
        bit = SL_TK_LAG_HARD_BYTES;
        rc = sl_parse_size(val, &c->lag_hard_bytes);
    } else if (strcmp(key, "lag_soft_messages") == 0) {
        bit = SL_TK_LAG_SOFT_MESSAGES;
        rc = parse_count(val, &c->lag_soft_messages);
    } else if (strcmp(key, "lag_soft_bytes") == 0) {
        bit = SL_TK_LAG_SOFT_BYTES;
        rc = sl_parse_size(val, &c->lag_soft_bytes);
    } else if (strcmp(key, "lag_soft") == 0) {
        bit = SL_TK_LAG_SOFT;
        rc = sl_parse_duration_ms(val, &c->lag_soft_ms);
    } else if (strcmp(key, "lag_max_age") == 0) {
        bit = SL_TK_LAG_MAX_AGE;
        rc = sl_parse_duration_ms(val, &c->lag_max_age_ms);
    } else if (strcmp(key, "heartbeat") == 0) {
        bit = SL_TK_HEARTBEAT;
        rc = sl_parse_duration_ms(val, &c->heartbeat_ms);
    } else if (strcmp(key, "heartbeat_event") == 0) {
        bit = SL_TK_HEARTBEAT_EVENT;
        rc = parse_bool(val, &c->heartbeat_event);
    } else if (strcmp(key, "durability") == 0) {
        bit = SL_TK_DURABILITY;
        if (strcmp(val, "lossy") == 0)
            c->lossless = 0;
        else if (strcmp(val, "lossless") == 0)
            c->lossless = 1;
        else
            rc = -EINVAL;
    } else if (strcmp(key, "fsync") == 0) {
        bit = SL_TK_FSYNC;
        if (strcmp(val, "always") == 0)
            c->fsync = SL_FSYNC_ALWAYS;
        else if (strcmp(val, "interval") == 0)
            c->fsync = SL_FSYNC_INTERVAL;
        else if (strcmp(val, "never") == 0)
            c->fsync = SL_FSYNC_NEVER;
        else
            rc = -EINVAL;
    } else if (strcmp(key, "fsync_interval") == 0) {
        bit = SL_TK_FSYNC_INTERVAL;
        rc = sl_parse_duration_ms(val, &c->fsync_interval_ms);
    } else if (strcmp(key, "segment_bytes") == 0) {
        bit = SL_TK_SEGMENT_BYTES;
        rc = sl_parse_size(val, &c->segment_bytes);
        if (rc == 0 && (c->segment_bytes < 4096 || c->segment_bytes > (1ull << 32))) {
            error_at(p, p->line, "segment_bytes must be between 4KiB and 4GiB");
            return 0;
        }
    } else if (strcmp(key, "disk_quota") == 0) {
        bit = SL_TK_DISK_QUOTA;
        rc = sl_parse_size(val, &c->disk_quota);
    } else if (strcmp(key, "cursor_ttl") == 0) {
        bit = SL_TK_CURSOR_TTL;
        rc = sl_parse_duration_ms(val, &c->cursor_ttl_ms);
    } else if (strcmp(key, "publish") == 0 || strcmp(key, "subscribe") == 0) {
        int pub = key[0] == 'p';
        bit = pub ? SL_TK_PUBLISH : SL_TK_SUBSCRIBE;
        uint8_t *f = pub ? &c->publish_auth : &c->subscribe_auth;
        if (strcmp(val, "anyone") == 0) {
            *f = SL_POLICY_ANYONE;
        } else if (strcmp(val, "token") == 0) {
            *f = SL_POLICY_TOKEN;
            p->policy_line = p->line;
        } else {
            error_at(p, p->line, "invalid value '%s' for %s (anyone, token)", val, key);
            return 0;
        }
    } else {
        error_at(p, p->line, "unknown key '%s' in [topic \"%s\"]", key, r->glob);
        return 0;
    }
    if (rc != 0)
        error_at(p, p->line, "invalid value '%s' for %s", val, key);
    else
        r->set |= bit;
    return 0;
}

typedef enum { K_SIZE, K_DURATION, K_COUNT } kind_t;

typedef struct key_def {
    const char *name;
    kind_t kind;
    size_t offset;
    uint64_t min, max;
} key_def_t;

#define CFG_OFF(f) offsetof(sl_config_t, f)
static const key_def_t server_keys[] = {
    {"memory_limit", K_SIZE, CFG_OFF(memory_limit), 1u << 20, UINT64_MAX},
    {"shutdown_drain", K_DURATION, CFG_OFF(shutdown_drain_ms), 0, UINT64_MAX},
    {"header_timeout", K_DURATION, CFG_OFF(header_timeout_ms), 1, UINT64_MAX},
    {"idle_timeout", K_DURATION, CFG_OFF(idle_timeout_ms), 1, UINT64_MAX},
    {"write_stall_timeout", K_DURATION, CFG_OFF(write_stall_ms), 1, UINT64_MAX},
    {"sse_retry", K_DURATION, CFG_OFF(sse_retry_ms), 0, UINT64_MAX},
    {"topic_idle_ttl", K_DURATION, CFG_OFF(topic_idle_ttl_ms), 0, UINT64_MAX},
    {"send_buffer", K_SIZE, CFG_OFF(send_buffer), 0, 1u << 30},
    {"ws_ping_interval", K_DURATION, CFG_OFF(ws_ping_interval_ms), 0, UINT64_MAX},
    {"ws_pong_timeout", K_DURATION, CFG_OFF(ws_pong_timeout_ms), 1, UINT64_MAX},
    {"ws_close_timeout", K_DURATION, CFG_OFF(ws_close_timeout_ms), 1, UINT64_MAX},
    {"disk_quota", K_SIZE, CFG_OFF(disk_quota), 0, UINT64_MAX},
    {"max_publish_wait", K_DURATION, CFG_OFF(max_publish_wait_ms), 0, UINT64_MAX},
    {"body_timeout", K_DURATION, CFG_OFF(body_timeout_ms), 1, UINT64_MAX},
};
static const key_def_t limit_keys[] = {
    {"max_connections", K_COUNT, CFG_OFF(max_connections), 1, UINT64_MAX},
    {"max_connections_per_ip", K_COUNT, CFG_OFF(max_connections_per_ip), 1, UINT64_MAX},
    {"max_header_bytes", K_SIZE, CFG_OFF(max_header_bytes), 1024, 65535},
    {"max_url_bytes", K_SIZE, CFG_OFF(max_url_bytes), 256, 1u << 20},
    /* 512 MiB keeps every encoding of a message (SSE data lines add 7 bytes per line, JSON
     * escapes 6 per byte) under the 4 GiB a single libuv buffer can describe. */
    {"max_message_bytes", K_SIZE, CFG_OFF(max_message_bytes), 1, 512ull << 20},
    {"max_body_bytes", K_SIZE, CFG_OFF(max_body_bytes), 1, 1ull << 31},
    {"max_topics_per_connection", K_COUNT, CFG_OFF(max_topics_per_connection), 1, 1024},
    {"max_topic_name", K_COUNT, CFG_OFF(max_topic_name), 1, 1024},
    {"max_topics", K_COUNT, CFG_OFF(max_topics), 1, UINT64_MAX},
    {"max_batch_messages", K_COUNT, CFG_OFF(max_batch_messages), 1, UINT64_MAX},
    {"max_pending_bytes", K_SIZE, CFG_OFF(max_pending_bytes), 0, UINT64_MAX},
    {"max_cursors_per_topic", K_COUNT, CFG_OFF(max_cursors_per_topic), 1, UINT64_MAX},
    {"max_cursors", K_COUNT, CFG_OFF(max_cursors), 1, UINT64_MAX},
    {"ipv6_prefix", K_COUNT, CFG_OFF(ipv6_prefix), 0, 128},
    {"publish_rate", K_COUNT, CFG_OFF(publish_rate), 0, UINT32_MAX},
    {"publish_burst", K_COUNT, CFG_OFF(publish_burst), 0, UINT32_MAX},
    {"publish_bytes_rate", K_SIZE, CFG_OFF(publish_bytes_rate), 0, UINT64_MAX},
    {"publish_bytes_burst", K_SIZE, CFG_OFF(publish_bytes_burst), 0, UINT64_MAX},
    {"connection_rate", K_COUNT, CFG_OFF(connection_rate), 0, UINT32_MAX},
    {"connection_burst", K_COUNT, CFG_OFF(connection_burst), 0, UINT32_MAX},
    {"rate_limit_keys", K_COUNT, CFG_OFF(rate_limit_keys), 1, 10000000},
};

/* Sets a numeric key from the table; returns 1 if the key was found there. */
static int table_key(parse_ctx_t *p, const key_def_t *defs, size_t n, const char *key,
                     const char *val)
{
    for (size_t i = 0; i < n; i++) {
        const key_def_t *d = &defs[i];
        if (strcmp(key, d->name) != 0)
            continue;
        uint64_t v;
        int rc = d->kind == K_SIZE       ? sl_parse_size(val, &v)
                 : d->kind == K_DURATION ? sl_parse_duration_ms(val, &v)
                                         : parse_count(val, &v);
        if (rc != 0)
            error_at(p, p->line, "invalid value '%s' for %s", val, key);
        else if (v < d->min || v > d->max)
            error_at(p, p->line, "%s = %s is out of range", key, val);
        else
            *(uint64_t *)((char *)p->cfg + d->offset) = v;
        if (strcmp(key, "max_message_bytes") == 0)
            p->message_line = p->line;
        if (strcmp(key, "max_body_bytes") == 0)
            p->body_line = p->line;
        return 1;
    }
    return 0;
}

/* `origins = https://a.example, http://b.example:8080`: each entry scheme://host[:port], kept
 * as one comma-separated string without blanks. An empty value means any origin. */
static void set_origins(parse_ctx_t *p, const char *val)
{
    size_t n = strlen(val);
    char *out = sl_malloc(n + 1), *o = out;
    const char *s = val, *end = val + n;
    while (s < end) {
        while (s < end && (*s == ' ' || *s == '\t' || *s == ','))
            s++;
        const char *e = s;
        while (e < end && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        if (e == s)
            break;
        const char *sep = memchr(s, ':', (size_t)(e - s));
        if (sep == NULL || e - sep < 4 || sep[1] != '/' || sep[2] != '/') {
            error_at(p, p->line, "invalid origin '%.*s' (want scheme://host[:port])", (int)(e - s),
                     s);
            free(out);
            return;
        }
        if (o != out)
            *o++ = ',';
        memcpy(o, s, (size_t)(e - s));
        o += e - s;
        s = e;
    }
    *o = '\0';
    free(p->cfg->origins);
    p->cfg->origins = NULL;
    if (o != out)
        p->cfg->origins = out;
    else
        free(out);
}

int sl_config_origin_allowed(const sl_config_t *cfg, const char *origin, size_t len)
{
    if (cfg->origins == NULL)
        return 1;
    const char *s = cfg->origins;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if (l == len && strncasecmp(s, origin, len) == 0)
            return 1;
        s += l + (e != NULL);
    }
    return 0;
}

static const key_def_t auth_keys[] = {
    {"leeway", K_DURATION, CFG_OFF(auth_leeway_ms), 0, 3600000},
    {"max_token_bytes", K_SIZE, CFG_OFF(auth_max_token_bytes), 256, 64u << 10},
    {"max_cursors_per_subject", K_COUNT, CFG_OFF(auth_max_cursors_per_subject), 0, UINT64_MAX},
};

/* String keys of [auth]: where each is kept. An empty value clears it. */
static int auth_string_key(parse_ctx_t *p, const char *key, const char *val)
{
    static const struct {
        const char *name;
        size_t offset;
    } keys[] = {
        {"hmac_secret_file", CFG_OFF(auth_hmac_secret_file)},
        {"public_key_file", CFG_OFF(auth_public_key_file)},
        {"jwks_file", CFG_OFF(auth_jwks_file)},
        {"admin_token_file", CFG_OFF(auth_admin_token_file)},
        {"issuer", CFG_OFF(auth_issuer)},
        {"audience", CFG_OFF(auth_audience)},
        {"claim", CFG_OFF(auth_claim)},
        {"cookie", CFG_OFF(auth_cookie)},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strcmp(key, keys[i].name) != 0)
            continue;
        char **f = (char **)((char *)p->cfg + keys[i].offset);
        if (strcmp(key, "claim") == 0 && (*val == '\0' || strlen(val) > 255)) {
            error_at(p, p->line, "claim must be 1..255 bytes");
            return 1;
        }
        if (strcmp(key, "cookie") == 0 && strpbrk(val, " \t;,=\"") != NULL) {
            error_at(p, p->line, "invalid cookie name '%s'", val);
            return 1;
        }
        free(*f);
        *f = *val != '\0' ? sl_strdup(val) : NULL;
        return 1;
    }
    return 0;
}

/* Returns the source of a `source "NAME"` section, creating it on first sight. */
static sl_source_conf_t *source_for(parse_ctx_t *p, const char *section)
{
    if (p->section != NULL && strcmp(p->section, section) == 0)
        return p->source >= 0 ? &p->cfg->sources[p->source] : NULL;
    free(p->section);
    p->section = sl_strdup(section);
    p->source = -1;
    p->rule = -1;
    const char *q = section + 6;
    while (*q == ' ' || *q == '\t')
        q++;
    size_t len = strlen(q);
    int ok = len >= 3 && len - 2 <= 64 && q[0] == '"' && q[len - 1] == '"';
    for (size_t i = 1; ok && i + 1 < len; i++) {
        char c = q[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-';
    }
    if (!ok) {
        error_at(p, p->line,
                 "malformed section [%s]: want [source \"NAME\"], NAME 1..64 of "
                 "[A-Za-z0-9._-]",
                 section);
        return NULL;
    }
    sl_config_t *cfg = p->cfg;
    for (size_t i = 0; i < cfg->nsources; i++) {
        if (strlen(cfg->sources[i].name) == len - 2 &&
            memcmp(cfg->sources[i].name, q + 1, len - 2) == 0) {
            error_at(p, p->line, "duplicate section [%s]", section);
            return NULL;
        }
    }
    cfg->sources = sl_realloc(cfg->sources, (cfg->nsources + 1) * sizeof(*cfg->sources));
    sl_source_conf_t *src = &cfg->sources[cfg->nsources];
    memset(src, 0, sizeof(*src));
    src->name = sl_strndup(q + 1, len - 2);
    src->line = p->line;
    src->prefetch = 2u << 20;
    src->commit_interval_ms = 1000;
    p->source = (long)cfg->nsources++;
    return src;
}

/* librdkafka properties sluice sets itself: passing them through would break what sluice
 * promises (offsets stored only when done, bounded prefetch, incremental rebalances). */
static const char *const managed_props[] = {
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "partition.assignment.strategy",
    "enable.partition.eof",
    "group.protocol.type",
    "rebalance_cb",
    "offset_commit_cb",
    "consume_cb",
    "opaque",
    "client.id",
};

int sl_source_managed_property(const char *name)
{
    for (size_t i = 0; i < sizeof(managed_props) / sizeof(managed_props[0]); i++)
        if (strcmp(name, managed_props[i]) == 0)
            return 1;
    return 0;
}

/* Splits a comma-separated list into trimmed, non-empty items. */
static void set_topics(parse_ctx_t *p, sl_source_conf_t *s, const char *val)
{
    for (size_t i = 0; i < s->ntopics; i++)
        free(s->topics[i]);
    s->ntopics = 0;
    const char *q = val;
    while (*q) {
        const char *e = strchr(q, ',');
        size_t l = e ? (size_t)(e - q) : strlen(q);
        const char *a = q, *b = q + l;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b > a) {
            s->topics = sl_realloc(s->topics, (s->ntopics + 1) * sizeof(*s->topics));
            s->topics[s->ntopics++] = sl_strndup(a, (size_t)(b - a));
        }
        q += l + (e != NULL);
    }
    if (s->ntopics == 0)
        error_at(p, p->line, "kafka_topics must name at least one topic");
}

static void set_str(char **dst, const char *val)
{
    free(*dst);
    *dst = sl_strdup(val);
}

static void source_key(parse_ctx_t *p, sl_source_conf_t *s, const char *key, const char *val)
{
    const char *why;
    if (strcmp(key, "type") == 0) {
        if (strcmp(val, "kafka") == 0)
            s->kafka = 1;
        else
            error_at(p, p->line, "invalid type '%s' (the only source type is kafka)", val);
    } else if (strcmp(key, "brokers") == 0) {
        if (*val == '\0')
            error_at(p, p->line, "brokers must not be empty");
        else
            set_str(&s->brokers, val);
    } else if (strcmp(key, "group") == 0) {
        if (sl_tmpl_check(val, SL_TMPL_NODE, &why) != 0)
            error_at(p, p->line, "invalid group '%s': %s", val, why);
        else
            set_str(&s->group, val);
    } else if (strcmp(key, "kafka_topics") == 0) {
        set_topics(p, s, val);
    } else if (strcmp(key, "topic") == 0) {
        if (sl_tmpl_check(val, SL_TMPL_RECORD, &why) != 0)
            error_at(p, p->line, "invalid topic template '%s': %s", val, why);
        else
            set_str(&s->topic_tmpl, val);
    } else if (strcmp(key, "event") == 0) {
        if (sl_tmpl_check(val, SL_TMPL_RECORD, &why) != 0)
            error_at(p, p->line, "invalid event template '%s': %s", val, why);
        else
            set_str(&s->event_tmpl, val);
    } else if (strcmp(key, "start") == 0) {
        if (strcmp(val, "earliest") == 0)
            s->start_latest = 0;
        else if (strcmp(val, "latest") == 0)
            s->start_latest = 1;
        else
            error_at(p, p->line, "invalid start '%s' (earliest, latest)", val);
    } else if (strcmp(key, "fan_in") == 0) {
        if (strcmp(val, "refuse") == 0)
            s->fan_in_local = 0;
        else if (strcmp(val, "local") == 0)
            s->fan_in_local = 1;
        else
            error_at(p, p->line, "invalid fan_in '%s' (refuse, local)", val);
    } else if (strcmp(key, "on_reject") == 0) {
        if (strcmp(val, "skip") == 0)
            s->reject_pause = 0;
        else if (strcmp(val, "pause") == 0)
            s->reject_pause = 1;
        else
            error_at(p, p->line, "invalid on_reject '%s' (skip, pause)", val);
    } else if (strcmp(key, "prefetch") == 0) {
        uint64_t v;
        if (sl_parse_size(val, &v) != 0 || v < (64u << 10) || v > (1ull << 30))
            error_at(p, p->line, "invalid prefetch '%s' (a size from 64KiB to 1GiB)", val);
        else
            s->prefetch = v;
    } else if (strcmp(key, "commit_interval") == 0) {
        uint64_t v;
        if (sl_parse_duration_ms(val, &v) != 0 || v < 10)
            error_at(p, p->line, "invalid commit_interval '%s' (at least 10ms)", val);
        else
            s->commit_interval_ms = v;
    } else if (strncmp(key, "kafka.", 6) == 0 && key[6] != '\0') {
        if (sl_source_managed_property(key + 6)) {
            error_at(p, p->line, "%s is managed by sluice and cannot be set (see README.md)", key);
            return;
        }
        s->props = sl_realloc(s->props, (s->nprops + 1) * 2 * sizeof(*s->props));
        s->props[2 * s->nprops] = sl_strdup(key + 6);
        s->props[2 * s->nprops + 1] = sl_strdup(val);
        s->nprops++;
    } else {
        error_at(p, p->line, "unknown key '%s' in [source \"%s\"]", key, s->name);
    }
}

/* After the whole file: every source has what it needs. */
static void check_sources(parse_ctx_t *p)
{
    sl_config_t *cfg = p->cfg;
    for (size_t i = 0; i < cfg->nsources; i++) {
        sl_source_conf_t *s = &cfg->sources[i];
        if (!s->kafka)
            error_at(p, s->line, "[source \"%s\"] needs type = kafka", s->name);
        if (s->brokers == NULL)
            error_at(p, s->line, "[source \"%s\"] needs brokers", s->name);
        if (s->ntopics == 0)
            error_at(p, s->line, "[source \"%s\"] needs kafka_topics", s->name);
        if (s->topic_tmpl == NULL)
            error_at(p, s->line, "[source \"%s\"] needs topic (a template)", s->name);
        if (s->group == NULL)
            s->group = sl_strdup("sluice-{node}");
    }
}

static int on_entry(void *user, const char *section, const char *key, const char *val)
{
    parse_ctx_t *p = user;
    sl_config_t *cfg = p->cfg;
    if (key == NULL) /* a section header alone (inih calls this only when configured to) */
        return 1;
    if (strcmp(section, "server") == 0) {
        if (table_key(p, server_keys, sizeof(server_keys) / sizeof(server_keys[0]), key, val))
            return 1;
        if (strcmp(key, "listen") == 0) {
            if (sl_config_set_listen(cfg, val) != 0)
                error_at(p, p->line, "invalid listen address '%s' (want ADDR:PORT)", val);
        } else if (strcmp(key, "data_dir") == 0) {
            if (*val == '\0') {
                error_at(p, p->line, "data_dir must not be empty");
            } else {
                free(cfg->data_dir);
                cfg->data_dir = sl_strdup(val);
            }
        } else if (strcmp(key, "origins") == 0) {
            set_origins(p, val);
        } else if (strcmp(key, "node") == 0) {
            if (*val == '\0' || strlen(val) > 64 || strpbrk(val, "{}") != NULL)
                error_at(p, p->line, "invalid node '%s' (1..64 bytes, no braces)", val);
            else
                set_str(&cfg->node, val);
        } else if (strcmp(key, "log_level") == 0) {
            int lvl = sl_log_parse_level(val);
            if (lvl < 0)
                error_at(p, p->line, "invalid log_level '%s' (debug, info, warn, error)", val);
            else
                cfg->log_level = lvl;
        } else {
            error_at(p, p->line, "unknown key '%s' in [server]", key);
        }
    } else if (strcmp(section, "auth") == 0) {
        if (!table_key(p, auth_keys, sizeof(auth_keys) / sizeof(auth_keys[0]), key, val) &&
            !auth_string_key(p, key, val))
            error_at(p, p->line, "unknown key '%s' in [auth]", key);
    } else if (strcmp(section, "limits") == 0) {
        if (!table_key(p, limit_keys, sizeof(limit_keys) / sizeof(limit_keys[0]), key, val))
            error_at(p, p->line, "unknown key '%s' in [limits]", key);
    } else if (strncmp(section, "topic", 5) == 0 &&
               (section[5] == ' ' || section[5] == '\t' || section[5] == '"')) {
        sl_topic_rule_t *r = rule_for(p, section);
        if (r != NULL)
            topic_key(p, r, key, val);
    } else if (strcmp(section, "sinks") == 0 ||
               (strncmp(section, "sink", 4) == 0 && (section[4] == ' ' || section[4] == '"'))) {
        char err[256];
        const char *why;
        if (sl_sinkconf_section(&cfg->sinks, section, p->line, &why) > 0 &&
            sl_sinkconf_key(&cfg->sinks, section, key, val, err, sizeof(err)) != 0)
            error_at(p, p->line, "%s", err);
    } else if (is_source_section(section)) {
        sl_source_conf_t *s = source_for(p, section);
        if (s != NULL)
            source_key(p, s, key, val);
    } else if (section[0] == '\0') {
        error_at(p, p->line, "key '%s' outside of any section", key);
    }
    /* Keys of an unknown section: its header was reported by check_section(). */
    return 1;
}

static void report_sink(void *arg, int line, const char *msg)
{
    error_at(arg, line, "%s", msg);
}

static int load(sl_config_t *cfg, const char *name, FILE *f, const char *text, FILE *errs)
{
    parse_ctx_t p = {
        .cfg = cfg, .name = name, .errs = errs, .f = f, .text = text, .rule = -1, .source = -1};
    int rc = ini_parse_stream(read_line, &p, on_entry, &p);
    if (rc > 0)
        error_at(&p, rc, "syntax error");
    if (cfg->max_message_bytes > cfg->max_body_bytes)
        error_at(&p, p.message_line > p.body_line ? p.message_line : p.body_line,
                 "max_message_bytes (%llu) is larger than max_body_bytes (%llu)",
                 (unsigned long long)cfg->max_message_bytes,
                 (unsigned long long)cfg->max_body_bytes);
    if (cfg->max_pending_bytes == 0)
        cfg->max_pending_bytes = cfg->memory_limit / 8;
    if (cfg->auth && cfg->auth_hmac_secret_file == NULL && cfg->auth_public_key_file == NULL &&
        cfg->auth_jwks_file == NULL && cfg->auth_admin_token_file == NULL)
        error_at(&p, p.auth_line,
                 "[auth] needs hmac_secret_file, public_key_file, jwks_file or admin_token_file");
    if (!cfg->auth && p.policy_line > 0)
        error_at(&p, p.policy_line, "a token policy needs an [auth] section to verify tokens");
    if (cfg->max_pending_bytes >= cfg->memory_limit / 2)
        error_at(&p, p.line, "max_pending_bytes (%llu) must be below half of memory_limit (%llu)",
                 (unsigned long long)cfg->max_pending_bytes, (unsigned long long)cfg->memory_limit);
    sl_sinkconf_check(&cfg->sinks, report_sink, &p);
    check_sources(&p);
    free(p.section);
    return p.errors;
}

int sl_config_load(sl_config_t *cfg, const char *path, FILE *errs)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errs != NULL)
            fprintf(errs, "%s:0: cannot open: %s\n", path, strerror(errno));
        return 1;
    }
    int n = load(cfg, path, f, NULL, errs);
    fclose(f);
    return n;
}

int sl_config_load_string(sl_config_t *cfg, const char *name, const char *text, FILE *errs)
{
    return load(cfg, name, NULL, text, errs);
}
