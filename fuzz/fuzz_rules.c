/*
 * libFuzzer target: the publish rules both transports share (core/rules.c): the NDJSON split,
 * the payload, event and topic checks and the acknowledged-id body. Checks what the rules
 * promise: every accepted batch line is non-empty, inside the body, within max_message_bytes,
 * free of the reserved prefix, and there are at most max_batch_messages of them; a refusal
 * always names a status, a code and a message.
 */
#include "core/rules.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static sl_config_t cfg;

static void check_verdict(sl_verdict_t v)
{
    if (v.status != 0 && (v.status < 400 || v.code == NULL || v.message == NULL))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        sl_config_init(&cfg);
        cfg.max_message_bytes = 64;
        cfg.max_batch_messages = 16;
        init = 1;
    }
    const char *s = (const char *)data;
    const char **p;
    size_t *lens, n;
    sl_verdict_t v = sl_rule_ndjson(&cfg, s, size, &p, &lens, &n);
    check_verdict(v);
    if (v.status == 0) {
        if (n == 0 || n > cfg.max_batch_messages)
            abort();
        for (size_t i = 0; i < n; i++) {
            if (lens[i] == 0 || lens[i] > cfg.max_message_bytes || p[i] < s ||
                p[i] + lens[i] > s + size || memchr(p[i], '\n', lens[i]) != NULL ||
                sl_rule_reserved(p[i], lens[i]))
                abort();
        }
        free(p);
        free(lens);
    } else if (p != NULL || lens != NULL) {
        abort();
    }
    check_verdict(sl_rule_payload(&cfg, s, size));
    check_verdict(sl_rule_event(s, size));
    check_verdict(sl_rule_topic(&cfg, s, size));
    uint64_t e, q;
    (void)sl_rule_ack_id(s, size, &e, &q);
    return 0;
}
