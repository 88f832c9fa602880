/*
 * Name templates of the Kafka source: a sluice topic name or an SSE event type made from a
 * Kafka record's coordinates, e.g. "shop/{kafka_topic}/{partition}". Placeholders:
 * {kafka_topic} {partition} {key} {header:NAME} (and, in a group name only, {node}). Pure
 * string work, no allocation: usable from the configuration, the source and the fuzzer.
 */
#ifndef SL_TEMPLATE_H
#define SL_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

/* What a template is rendered from. Strings are not NUL-terminated; a missing key or header
 * renders as nothing (the result is then validated by the caller like any other name). */
typedef struct sl_tmpl_vars {
    const char *kafka_topic;
    size_t kafka_topic_len;
    int32_t partition;
    const char *key;
    size_t key_len;
    const char *node; /* {node}: only where the caller allows it (node != NULL) */
    /* Looks header `name` up; sets *val and *len and returns 1, or returns 0. */
    int (*header)(void *arg, const char *name, size_t name_len, const char **val, size_t *len);
    void *header_arg;
} sl_tmpl_vars_t;

/* Placeholders a template may use (bits). */
enum {
    SL_TMPL_RECORD = 1, /* {kafka_topic} {partition} {key} {header:NAME} */
    SL_TMPL_NODE = 2,   /* {node} */
};

/* Checks template `s`: balanced braces, known placeholders among `allowed`, header names of
 * 1..64 bytes of [A-Za-z0-9._-]. Returns 0, or -1 with a static reason in *why. */
int sl_tmpl_check(const char *s, unsigned allowed, const char **why);

/* Renders checked template `s` into out (cap bytes, NUL-terminated). Returns the length, or -1
 * if it does not fit. */
int sl_tmpl_render(const char *s, const sl_tmpl_vars_t *v, char *out, size_t cap);

/* The length of the literal prefix of `s` (up to its first placeholder). */
size_t sl_tmpl_prefix_len(const char *s);

/* 1 if the template mentions {partition} (a topic per partition: fan-in impossible). */
int sl_tmpl_has(const char *s, const char *placeholder);

#endif
