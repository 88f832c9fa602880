/*
 * The publish rules, as pure functions shared by every transport: a publish over HTTP and one
 * over WebSocket pass the same checks and are refused with the same status, code and words
 * (docs/protocol.md), which each transport renders its own way (an HTTP error response, a
 * WebSocket error message). Also the NDJSON batch split and the acknowledged-id body. No I/O.
 */
#ifndef SL_RULES_H
#define SL_RULES_H

#include "lib/config.h"

#include <stddef.h>
#include <stdint.h>

/* A refusal: the HTTP status (0: accepted), the error code and message of docs/protocol.md,
 * and the sl_pub_reject_t the metrics count it under (-1: not counted). */
typedef struct sl_verdict {
    int status;
    const char *code;
    const char *message;
    int reason;
} sl_verdict_t;

#define SL_VERDICT_OK ((sl_verdict_t){0, NULL, NULL, 0})

/* Checks a topic name (`name` may be NULL: missing). */
sl_verdict_t sl_rule_topic(const sl_config_t *cfg, const char *name, size_t len);

/* Checks that a publisher may write to topic `name`: not under the literal prefix of a
 * source's topic template (those topics are fed by their source alone; 409 source_topic).
 * A template that begins with a placeholder claims no prefix. */
sl_verdict_t sl_rule_publish_topic(const sl_config_t *cfg, const char *name, size_t len);

/* Checks an event type (1..64 of [A-Za-z0-9._:-], not in the reserved `sluice.` space). */
sl_verdict_t sl_rule_event(const char *ev, size_t len);

/* Checks one payload: its size, and the prefix reserved for control messages. */
sl_verdict_t sl_rule_payload(const sl_config_t *cfg, const char *payload, size_t len);

/* 1 if a payload begins with the bytes reserved for control messages, {"sluice":. */
int sl_rule_reserved(const char *payload, size_t len);

/* Splits an NDJSON body into its non-empty lines (a trailing \r dropped), each checked as a
 * payload, at most max_batch_messages of them. On success *payloads and *lens are malloc'ed
 * arrays of *n entries pointing into body (the caller frees both). */
sl_verdict_t sl_rule_ndjson(const sl_config_t *cfg, const char *body, size_t len,
                            const char ***payloads, size_t **lens, size_t *n);

/* Parses an acknowledged id from a body: the id itself, or {"id":"…"}. Returns 0 or
 * SL_EBADID. */
int sl_rule_ack_id(const char *b, size_t n, uint64_t *epoch, uint64_t *seq);

#endif
