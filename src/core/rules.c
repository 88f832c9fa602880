/*
 * The publish rules (see rules.h). Every refusal a publisher can earn for what it sent is
 * decided here, once, for both transports.
 */
#define _GNU_SOURCE
#include "core/rules.h"

#include "lib/template.h"

#include "core/metrics.h"
#include "core/topic.h"
#include "lib/util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static sl_verdict_t refuse(int status, const char *code, const char *message, int reason)
{
    return (sl_verdict_t){status, code, message, reason};
}

sl_verdict_t sl_rule_topic(const sl_config_t *cfg, const char *name, size_t len)
{
    if (name == NULL || !sl_topic_name_valid(name, len, cfg->max_topic_name))
        return refuse(400, "bad_topic", "invalid or missing topic name", SL_REJECT_PUB_BAD_TOPIC);
    return SL_VERDICT_OK;
}

/* An event type is 1..64 bytes of [A-Za-z0-9._:-] (so nothing the SSE `event:` line cannot
 * carry: no CR, LF, NUL, space or other byte), and not in the reserved namespace `sluice.` (any
 * case), which would let a publisher forge control events. */
static int event_check(const char *s, size_t len, const char **code, const char **msg)
{
    static const char prefix[] = SL_EVENT_RESERVED_PREFIX;
    if (len == 0 || len > 64)
        goto bad;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            goto bad;
    }
    if (len >= sizeof(prefix) - 1 && strncasecmp(s, prefix, sizeof(prefix) - 1) == 0) {
        *code = "reserved_event";
        *msg = "event types beginning with sluice. are sluice's own control events";
        return SL_ERESERVED;
    }
    return 0;
bad:
    *code = "bad_event";
    *msg = "event type must be 1..64 of [A-Za-z0-9._:-]";
    return SL_EINVAL;
}

sl_verdict_t sl_rule_publish_topic(const sl_config_t *cfg, const char *name, size_t len)
{
    for (size_t i = 0; i < cfg->nsources; i++) {
        const char *tmpl = cfg->sources[i].topic_tmpl;
        size_t pl = tmpl ? sl_tmpl_prefix_len(tmpl) : 0;
        if (pl > 0 && len >= pl && memcmp(name, tmpl, pl) == 0)
            return refuse(409, "source_topic", "topic fed by a Kafka source",
                          SL_REJECT_PUB_SOURCE_TOPIC);
    }
    return SL_VERDICT_OK;
}

sl_verdict_t sl_rule_event(const char *ev, size_t len)
{
    const char *code, *msg;
    int rc = event_check(ev, len, &code, &msg);
    if (rc != 0)
        return refuse(400, code, msg,
                      rc == SL_ERESERVED ? SL_REJECT_PUB_CTL_EVENT : SL_REJECT_PUB_BAD_EVENT);
    return SL_VERDICT_OK;
}

int sl_rule_reserved(const char *payload, size_t len)
{
    static const char prefix[] = "{\"sluice\":";
    return len >= sizeof(prefix) - 1 && memcmp(payload, prefix, sizeof(prefix) - 1) == 0;
}

sl_verdict_t sl_rule_payload(const sl_config_t *cfg, const char *payload, size_t len)
{
    if (len > cfg->max_message_bytes)
        return refuse(413, "too_large", "a payload is over max_message_bytes",
                      SL_REJECT_PUB_TOO_LARGE);
    if (sl_rule_reserved(payload, len))
        return refuse(400, "reserved_payload",
                      "payloads may not begin with {\"sluice\": (control messages)",
                      SL_REJECT_PUB_RESERVED);
    return SL_VERDICT_OK;
}

sl_verdict_t sl_rule_ndjson(const sl_config_t *cfg, const char *body, size_t len,
                            const char ***payloads, size_t **lens, size_t *n)
{
    *payloads = NULL;
    *lens = NULL;
    *n = 0;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += body[i] == '\n';
    if (lines > cfg->max_batch_messages)
        lines = cfg->max_batch_messages + 1; /* one more is enough to refuse */
    const char **p = sl_malloc(lines * sizeof(*p));
    size_t *l = sl_malloc(lines * sizeof(*l));
    size_t count = 0, start = 0;
    sl_verdict_t v = SL_VERDICT_OK;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && body[i] != '\n')
            continue;
        size_t ll = i - start;
        if (ll > 0 && body[start + ll - 1] == '\r')
            ll--;
        if (ll > 0) {
            /* One request's work is bounded: the loop serves others between batches. */
            if (count == cfg->max_batch_messages) {
                v = refuse(413, "too_many_messages", "more lines than max_batch_messages",
                           SL_REJECT_PUB_TOO_LARGE);
                goto out_free;
            }
            v = sl_rule_payload(cfg, body + start, ll);
            if (v.status != 0)
                goto out_free;
            p[count] = body + start;
            l[count++] = ll;
        }
        start = i + 1;
    }
    if (count == 0) {
        v = refuse(400, "bad_request", "empty NDJSON batch", -1);
        goto out_free;
    }
    *payloads = p;
    *lens = l;
    *n = count;
    return v;
out_free:
    free(p);
    free(l);
    return v;
}

int sl_rule_ack_id(const char *b, size_t n, uint64_t *epoch, uint64_t *seq)
{
    while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r' || b[n - 1] == ' '))
        n--;
    while (n > 0 && *b == ' ')
        b++, n--;
    const char *key = n > 0 && b[0] == '{' ? memmem(b, n, "\"id\"", 4) : NULL;
    if (key != NULL) {
        const char *q1 = memchr(key + 4, '"', n - (size_t)(key + 4 - b));
        if (q1 == NULL)
            return SL_EBADID;
        const char *q2 = memchr(q1 + 1, '"', n - (size_t)(q1 + 1 - b));
        if (q2 == NULL)
            return SL_EBADID;
        b = q1 + 1;
        n = (size_t)(q2 - b);
    }
    return sl_id_parse(b, n, 0, epoch, seq) == 0 ? 0 : SL_EBADID;
}
