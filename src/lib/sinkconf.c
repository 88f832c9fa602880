/*
 * `[sinks]` and `[sink "NAME"]` (see sinkconf.h).
 */
#include "lib/sinkconf.h"

#include "lib/config.h"
#include "lib/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <strings.h>

static void sink_defaults(sl_sink_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->batch_max_messages = 100;
    c->batch_max_bytes = 1 << 20;
    c->batch_linger_ms = 20;
    c->max_in_flight = 16;
    c->connect_timeout_ms = 5000;
    c->timeout_ms = 15000;
    c->retry_initial_ms = 1000;
    c->retry_max_ms = 600000;
    c->breaker_failures = 5;
    c->breaker_open_ms = 30000;
    c->breaker_open_max_ms = 600000;
    c->rotate_bytes = 64u << 20;
    c->rotate_interval_ms = 300000;
    c->fsync_mode = SL_FILE_SYNC_BATCH;
    c->workers = 4;
}

void sl_sinks_conf_init(sl_sinks_conf_t *s)
{
    memset(s, 0, sizeof(*s));
    s->max_in_flight = 512;
    s->max_host_connections = 16;
    s->breaker_registry_max = 4096;
    s->breaker_idle_ttl_ms = 3600000;
}

void sl_sinks_conf_dispose(sl_sinks_conf_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        sl_sink_conf_t *c = &s->v[i];
        free(c->topics);
        free(c->url);
        free(c->dead_letter);
        free(c->signing_secret_file);
        free(c->directory);
        for (size_t h = 0; h < c->nheaders; h++)
            free(c->headers[h]);
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static int name_valid(const char *s, size_t n)
{
    if (n == 0 || n > SL_SINK_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* The name inside `sink "NAME"`, or NULL. */
static const char *sink_name(const char *section, size_t *len)
{
    if (strncmp(section, "sink", 4) != 0 || (section[4] != ' ' && section[4] != '"'))
        return NULL;
    const char *q = section + 4;
    while (*q == ' ' || *q == '\t')
        q++;
    size_t l = strlen(q);
    if (l < 2 || q[0] != '"' || q[l - 1] != '"')
        return NULL;
    *len = l - 2;
    return q + 1;
}

static sl_sink_conf_t *find(sl_sinks_conf_t *s, const char *name, size_t len)
{
    /* A section's keys follow its header: the newest sink first, so a file with thousands of
     * sinks loads in linear time. */
    if (s->n > 0 && strlen(s->v[s->n - 1].name) == len &&
        memcmp(s->v[s->n - 1].name, name, len) == 0)
        return &s->v[s->n - 1];
    for (size_t i = 0; i < s->n; i++)
        if (strlen(s->v[i].name) == len && memcmp(s->v[i].name, name, len) == 0)
            return &s->v[i];
    return NULL;
}

int sl_sinkconf_section(sl_sinks_conf_t *s, const char *section, int line, const char **why)
{
    if (strcmp(section, "sinks") == 0)
        return 1;
    if (strncmp(section, "sink", 4) != 0 || (section[4] != ' ' && section[4] != '"'))
        return 0;
    size_t len;
    const char *name = sink_name(section, &len);
    if (name == NULL || !name_valid(name, len)) {
        *why = "want [sink \"NAME\"], NAME 1..32 of [A-Za-z0-9._-]";
        return -1;
    }
    if (find(s, name, len) != NULL)
        return 1;
    s->v = sl_realloc(s->v, (s->n + 1) * sizeof(*s->v));
    sl_sink_conf_t *c = &s->v[s->n++];
    sink_defaults(c);
    memcpy(c->name, name, len);
    c->name[len] = '\0';
    c->line = line;
    return 1;
}

/* The characters topic names allow (core/topic.h), checked here without the core. */
static int topic_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 1024 || s[0] == '/' || s[n - 1] == '/' || strstr(s, "//") != NULL)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~/-") == n;
}

static void set_str(char **dst, const char *val)
{
    free(*dst);
    *dst = sl_strdup(val);
}

static int parse_count(const char *s, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    if (strcasecmp(s, "true") == 0 || strcasecmp(s, "yes") == 0 || strcmp(s, "1") == 0 ||
        strcasecmp(s, "on") == 0)
        *out = 1;
    else if (strcasecmp(s, "false") == 0 || strcasecmp(s, "no") == 0 || strcmp(s, "0") == 0 ||
             strcasecmp(s, "off") == 0)
        *out = 0;
    else
        return -EINVAL;
    return 0;
}

typedef enum { K_SIZE, K_DURATION, K_COUNT } kind_t;
typedef struct kdef {
    const char *name;
    kind_t kind;
    size_t off;
    uint64_t min, max;
} kdef_t;

#define SOFF(f) offsetof(sl_sinks_conf_t, f)
static const kdef_t global_keys[] = {
    {"max_in_flight", K_COUNT, SOFF(max_in_flight), 1, 1u << 20},
    {"max_host_connections", K_COUNT, SOFF(max_host_connections), 1, 1u << 16},
    {"breaker_registry_max", K_COUNT, SOFF(breaker_registry_max), 1, 1u << 24},
    {"breaker_idle_ttl", K_DURATION, SOFF(breaker_idle_ttl_ms), 1, UINT64_MAX},
};
#define COFF(f) offsetof(sl_sink_conf_t, f)
static const kdef_t sink_keys[] = {
    {"batch_max_messages", K_COUNT, COFF(batch_max_messages), 1, 100000},
    {"batch_max_bytes", K_SIZE, COFF(batch_max_bytes), 1, 256u << 20},
    {"batch_linger", K_DURATION, COFF(batch_linger_ms), 0, 60000},
    {"max_in_flight", K_COUNT, COFF(max_in_flight), 1, 1u << 16},
    {"connect_timeout", K_DURATION, COFF(connect_timeout_ms), 1, 3600000},
    {"timeout", K_DURATION, COFF(timeout_ms), 1, 86400000},
    {"retry_initial", K_DURATION, COFF(retry_initial_ms), 1, 86400000},
    {"retry_max", K_DURATION, COFF(retry_max_ms), 1, 86400000},
    {"breaker_failures", K_COUNT, COFF(breaker_failures), 1, 1000},
    {"breaker_open", K_DURATION, COFF(breaker_open_ms), 1, 86400000},
    {"breaker_open_max", K_DURATION, COFF(breaker_open_max_ms), 1, 86400000},
    {"rotate_bytes", K_SIZE, COFF(rotate_bytes), 4096, UINT64_C(1) << 40},
    {"rotate_interval", K_DURATION, COFF(rotate_interval_ms), 0, 86400000ull * 366},
    {"workers", K_COUNT, COFF(workers), 1, 64},
};

static int table(void *base, const kdef_t *defs, size_t n, const char *key, const char *val,
                 char *err, size_t errlen, int *found)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(defs[i].name, key) != 0)
            continue;
        *found = 1;
        uint64_t v;
        int rc = defs[i].kind == K_SIZE       ? sl_parse_size(val, &v)
                 : defs[i].kind == K_DURATION ? sl_parse_duration_ms(val, &v)
                                              : parse_count(val, &v);
        if (rc != 0) {
            snprintf(err, errlen, "invalid value '%s' for %s", val, key);
            return -1;
        }
        if (v < defs[i].min || v > defs[i].max) {
            snprintf(err, errlen, "%s = %s is out of range", key, val);
            return -1;
        }
        *(uint64_t *)((char *)base + defs[i].off) = v;
        return 0;
    }
    *found = 0;
    return 0;
}

int sl_sinkconf_key(sl_sinks_conf_t *s, const char *section, const char *key, const char *val,
                    char *err, size_t errlen)
{
    int found;
    if (strcmp(section, "sinks") == 0) {
        int rc = table(s, global_keys, sizeof(global_keys) / sizeof(global_keys[0]), key, val, err,
                       errlen, &found);
        if (!found) {
            snprintf(err, errlen, "unknown key '%s' in [sinks]", key);
            return -1;
        }
        return rc;
    }
    size_t len;
    const char *name = sink_name(section, &len);
    sl_sink_conf_t *c = name ? find(s, name, len) : NULL;
    if (c == NULL) {
        snprintf(err, errlen, "key '%s' in a malformed [sink] section", key);
        return -1;
    }
    int rc = table(c, sink_keys, sizeof(sink_keys) / sizeof(sink_keys[0]), key, val, err, errlen,
                   &found);
    if (found) {
        if (rc == 0 && strcmp(key, "batch_max_messages") == 0)
            c->batch_max_messages_set = 1;
        return rc;
    }
    rc = 0;
    if (strcmp(key, "type") == 0) {
        if (strcmp(val, "webhook") == 0)
            c->type = SL_SINK_WEBHOOK;
        else if (strcmp(val, "file") == 0)
            c->type = SL_SINK_FILE;
        else
            rc = -1;
    } else if (strcmp(key, "topics") == 0) {
        if (strspn(val, " ,\t") == strlen(val))
            rc = -1;
        else
            set_str(&c->topics, val);
    } else if (strcmp(key, "start") == 0) {
        if (strcmp(val, "new") == 0)
            c->start_oldest = 0;
        else if (strcmp(val, "oldest") == 0)
            c->start_oldest = 1;
        else
            rc = -1;
    } else if (strcmp(key, "url") == 0) {
        set_str(&c->url, val);
    } else if (strcmp(key, "format") == 0) {
        if (strcmp(val, "ndjson") == 0)
            c->format = 0;
        else if (strcmp(val, "json") == 0)
            c->format = 1;
        else if (strcmp(val, "raw") == 0)
            c->format = 2;
        else if (strcmp(val, "jsonl") == 0)
            c->format = 0; /* the ndjson envelopes, one per line */
        else
            rc = -1;
    } else if (strcmp(key, "directory") == 0) {
        if (val[0] == '\0') {
            rc = -1;
        } else {
            set_str(&c->directory, val);
        }
    } else if (strcmp(key, "fsync") == 0) {
        if (strcmp(val, "batch") == 0)
            c->fsync_mode = SL_FILE_SYNC_BATCH;
        else if (strcmp(val, "rotate") == 0)
            c->fsync_mode = SL_FILE_SYNC_ROTATE;
        else if (strcmp(val, "never") == 0)
            c->fsync_mode = SL_FILE_SYNC_NEVER;
        else
            rc = -1;
    } else if (strcmp(key, "stream_in_flight") == 0) {
        /* Per-topic order needs one request per stream at a time; more is not offered. */
        if (strcmp(val, "1") != 0) {
            snprintf(err, errlen, "stream_in_flight must be 1 (per-topic order)");
            return -1;
        }
    } else if (strcmp(key, "dead_letter") == 0) {
        if (!topic_name_ok(val)) {
            snprintf(err, errlen, "dead_letter '%s' is not a valid topic name", val);
            return -1;
        }
        set_str(&c->dead_letter, val);
    } else if (strcmp(key, "signing_secret_file") == 0) {
        set_str(&c->signing_secret_file, val);
    } else if (strcmp(key, "header") == 0) {
        const char *colon = strchr(val, ':');
        if (colon == NULL || colon == val || strpbrk(val, "\r\n") != NULL) {
            snprintf(err, errlen, "header must be 'Name: value'");
            return -1;
        }
        if (c->nheaders >= SL_SINK_MAX_HEADERS) {
            snprintf(err, errlen, "at most %d header lines per sink", SL_SINK_MAX_HEADERS);
            return -1;
        }
        c->headers[c->nheaders++] = sl_strdup(val);
    } else if (strcmp(key, "on_max_backlog") == 0) {
        if (strcmp(val, "block") == 0)
            c->skip_on_backlog = 0;
        else if (strcmp(val, "skip") == 0)
            c->skip_on_backlog = 1;
        else
            rc = -1;
    } else if (strcmp(key, "allow_private") == 0) {
        rc = parse_bool(val, &c->allow_private);
    } else {
        snprintf(err, errlen, "unknown key '%s' in [sink \"%s\"]", key, c->name);
        return -1;
    }
    if (rc != 0)
        snprintf(err, errlen, "invalid value '%s' for %s", val, key);
    return rc;
}

int sl_sinkconf_check(const sl_sinks_conf_t *s,
                      void (*report)(void *arg, int line, const char *msg), void *arg)
{
    int errors = 0;
    char msg[256];
    for (size_t i = 0; i < s->n; i++) {
        const sl_sink_conf_t *c = &s->v[i];
#define BAD(...)                                                                                   \
    do {                                                                                           \
        snprintf(msg, sizeof(msg), __VA_ARGS__);                                                   \
        report(arg, c->line, msg);                                                                 \
        errors++;                                                                                  \
    } while (0)
        if (c->type == 0)
            BAD("[sink \"%s\"]: type is required (webhook or file)", c->name);
        if (c->type == SL_SINK_FILE) {
            if (c->directory == NULL)
                BAD("[sink \"%s\"]: directory is required (type = file)", c->name);
            if (c->format == 1)
                BAD("[sink \"%s\"]: a file sink's format is raw or jsonl", c->name);
            if (c->url != NULL)
                BAD("[sink \"%s\"]: url is for type = webhook", c->name);
        }
        if (c->topics == NULL)
            BAD("[sink \"%s\"]: topics is required", c->name);
        if (c->type == SL_SINK_WEBHOOK) {
            const char *why = NULL;
            if (c->url == NULL)
                BAD("[sink \"%s\"]: url is required", c->name);
            else if (sl_url_template_check(c->url, &why) != 0)
                BAD("[sink \"%s\"]: invalid url: %s", c->name, why);
        }
        if (c->retry_initial_ms > c->retry_max_ms)
            BAD("[sink \"%s\"]: retry_initial is above retry_max", c->name);
        if (c->breaker_open_ms > c->breaker_open_max_ms)
            BAD("[sink \"%s\"]: breaker_open is above breaker_open_max", c->name);
        if (c->dead_letter != NULL && c->topics != NULL && sl_sinkconf_matches(c, c->dead_letter))
            BAD("[sink \"%s\"]: the dead-letter topic is one of the sink's own topics", c->name);
#undef BAD
    }
    return errors;
}

int sl_sinkconf_matches(const sl_sink_conf_t *c, const char *name)
{
    const char *p = c->topics;
    char glob[512];
    while (*p) {
        p += strspn(p, " ,\t");
        size_t n = strcspn(p, " ,\t");
        if (n == 0)
            break;
        if (n < sizeof(glob)) {
            memcpy(glob, p, n);
            glob[n] = '\0';
            if (sl_glob_match(glob, name))
                return 1;
        }
        p += n;
    }
    return 0;
}

/* ---- URLs ------------------------------------------------------------------------------ */

/* Length of "http://" or "https://" at the start of s (case-insensitive), or 0. */
static size_t scheme_len(const char *s)
{
    if (strncasecmp(s, "http://", 7) == 0)
        return 7;
    if (strncasecmp(s, "https://", 8) == 0)
        return 8;
    return 0;
}

int sl_url_template_check(const char *tmpl, const char **why)
{
    size_t sl = scheme_len(tmpl);
    if (sl == 0) {
        *why = "the URL must start with http:// or https://";
        return -1;
    }
    const char *host = tmpl + sl;
    size_t hl = strcspn(host, "/?#");
    if (hl == 0) {
        *why = "the URL has no host";
        return -1;
    }
    if (memchr(host, '{', hl) != NULL || memchr(host, '@', hl) != NULL) {
        *why = "placeholders and credentials are not allowed in the host";
        return -1;
    }
    for (const char *p = tmpl; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c >= 0x7f) {
            *why = "the URL contains blanks or control bytes";
            return -1;
        }
        if (c == '#') {
            *why = "the URL may not have a fragment";
            return -1;
        }
        if (c == '{') {
            if (strncmp(p, "{topic}", 7) == 0)
                p += 6;
            else if (strncmp(p, "{sink}", 6) == 0)
                p += 5;
            else {
                *why = "unknown placeholder (use {topic} or {sink})";
                return -1;
            }
        } else if (c == '}') {
            *why = "unbalanced '}'";
            return -1;
        }
    }
    return 0;
}

static int put_escaped(char *out, size_t cap, size_t *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            if (*o + 1 >= cap)
                return -1;
            out[(*o)++] = (char)c;
        } else {
            if (*o + 3 >= cap)
                return -1;
            out[(*o)++] = '%';
            out[(*o)++] = hex[c >> 4];
            out[(*o)++] = hex[c & 15];
        }
    }
    return 0;
}

int sl_url_expand(const char *tmpl, const char *topic, size_t topic_len, const char *sink,
                  char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = tmpl; *p; p++) {
        if (strncmp(p, "{topic}", 7) == 0) {
            if (put_escaped(out, cap, &o, topic, topic_len) != 0)
                return -1;
            p += 6;
        } else if (strncmp(p, "{sink}", 6) == 0) {
            if (put_escaped(out, cap, &o, sink, strlen(sink)) != 0)
                return -1;
            p += 5;
        } else {
            if (o + 1 >= cap)
                return -1;
            out[o++] = *p;
        }
    }
    if (o >= cap)
        return -1;
    out[o] = '\0';
    return (int)o;
}

int sl_url_origin(const char *url, char *out, size_t cap)
{
    size_t sl = scheme_len(url);
    if (sl == 0)
        return -1;
    int https = sl == 8;
    const char *host = url + sl;
    size_t hl = strcspn(host, "/?#");
    if (hl == 0)
        return -1;
    /* A port is the digits after the last ':' outside an IPv6 literal's brackets. */
    const char *rb = memchr(host, ']', hl);
    const char *colon = NULL;
    for (const char *p = rb ? rb : host; p < host + hl; p++)
        if (*p == ':')
            colon = p;
    size_t name_len = colon ? (size_t)(colon - host) : hl;
    const char *port = colon ? colon + 1 : (https ? "443" : "80");
    size_t port_len = colon ? (size_t)(host + hl - port) : strlen(port);
    if (port_len == 0)
        return -1;
    size_t need = sl + name_len + 1 + port_len + 1;
    if (need > cap)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < sl; i++)
        out[o++] = (char)tolower((unsigned char)url[i]);
    for (size_t i = 0; i < name_len; i++)
        out[o++] = (char)tolower((unsigned char)host[i]);
    out[o++] = ':';
    memcpy(out + o, port, port_len);
    o += port_len;
    out[o] = '\0';
    return (int)o;
}
