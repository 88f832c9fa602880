/*
 * Name templates (template.h): a small scanner over "{…}" placeholders, shared by the check
 * and the renderer so that whatever the configuration accepted renders the same way.
 */
#include "lib/template.h"

#include <stdio.h>
#include <string.h>

#define HEADER_NAME_MAX 64

static int header_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > HEADER_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The placeholder "{name}" whose name is p[0..len): which one, and the header name. */
enum { PH_TOPIC, PH_PARTITION, PH_KEY, PH_HEADER, PH_NODE, PH_BAD };
static int placeholder(const char *p, size_t len, const char **hname, size_t *hlen)
{
    if (len == 11 && memcmp(p, "kafka_topic", 11) == 0)
        return PH_TOPIC;
    if (len == 9 && memcmp(p, "partition", 9) == 0)
        return PH_PARTITION;
    if (len == 3 && memcmp(p, "key", 3) == 0)
        return PH_KEY;
    if (len == 4 && memcmp(p, "node", 4) == 0)
        return PH_NODE;
    if (len > 7 && memcmp(p, "header:", 7) == 0 && header_name_ok(p + 7, len - 7)) {
        *hname = p + 7;
        *hlen = len - 7;
        return PH_HEADER;
    }
    return PH_BAD;
}

int sl_tmpl_check(const char *s, unsigned allowed, const char **why)
{
    if (*s == '\0') {
        *why = "empty template";
        return -1;
    }
    for (const char *p = s; *p; p++) {
        if (*p == '}') {
            *why = "unbalanced '}'";
            return -1;
        }
        if (*p != '{')
            continue;
        const char *end = strchr(p + 1, '}');
        const char *open = strchr(p + 1, '{');
        if (end == NULL || (open != NULL && open < end)) {
            *why = "unbalanced '{'";
            return -1;
        }
        const char *hn;
        size_t hl;
        int ph = placeholder(p + 1, (size_t)(end - p - 1), &hn, &hl);
        if (ph == PH_BAD) {
            *why = "unknown placeholder (want {kafka_topic}, {partition}, {key}, "
                   "{header:NAME})";
            return -1;
        }
        if ((ph == PH_NODE && !(allowed & SL_TMPL_NODE)) ||
            (ph != PH_NODE && !(allowed & SL_TMPL_RECORD))) {
            *why = "placeholder not allowed here";
            return -1;
        }
        p = end;
    }
    return 0;
}

static int put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len >= cap)
        return -1;
    memcpy(out + *n, s, len);
    *n += len;
    return 0;
}

int sl_tmpl_render(const char *s, const sl_tmpl_vars_t *v, char *out, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return -1;
    for (const char *p = s; *p; p++) {
        const char *end;
        if (*p != '{' || (end = strchr(p + 1, '}')) == NULL) {
            if (put(out, cap, &n, p, 1) != 0)
                return -1;
            continue;
        }
        const char *hn = NULL, *val = NULL;
        size_t hl = 0, vlen = 0;
        char num[16];
        switch (placeholder(p + 1, (size_t)(end - p - 1), &hn, &hl)) {
        case PH_TOPIC:
            val = v->kafka_topic;
            vlen = v->kafka_topic_len;
            break;
        case PH_PARTITION:
            vlen = (size_t)snprintf(num, sizeof(num), "%d", (int)v->partition);
            val = num;
            break;
        case PH_KEY:
            val = v->key;
            vlen = v->key_len;
            break;
        case PH_NODE:
            val = v->node;
            vlen = v->node ? strlen(v->node) : 0;
            break;
        case PH_HEADER:
            if (v->header == NULL || !v->header(v->header_arg, hn, hl, &val, &vlen))
                val = NULL, vlen = 0;
            break;
        default:
            return -1; /* not a checked template */
        }
        if (vlen > 0 && (val == NULL || put(out, cap, &n, val, vlen) != 0))
            return -1;
        p = end;
    }
    out[n] = '\0';
    return (int)n;
}

size_t sl_tmpl_prefix_len(const char *s)
{
    const char *b = strchr(s, '{');
    return b ? (size_t)(b - s) : strlen(s);
}

int sl_tmpl_has(const char *s, const char *ph)
{
    return strstr(s, ph) != NULL;
}
