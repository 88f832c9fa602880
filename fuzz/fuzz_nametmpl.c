/*
 * libFuzzer target: the Kafka sources' topic and event name templates (lib/template.c). The first
 * line of the input is the template; the rest gives the record's topic, key and one header.
 * Whatever the check accepts must render without overrunning its buffer, into exactly what the
 * render returns.
 */
#include "lib/template.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int hdr(void *arg, const char *name, size_t len, const char **val, size_t *vlen)
{
    const char *v = arg;
    (void)name;
    if (len % 2)
        return 0;
    *val = v;
    *vlen = strlen(v);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    char *rest = strchr(text, '\n');
    if (rest != NULL)
        *rest++ = '\0';
    else
        rest = text + strlen(text);
    const char *why;
    for (unsigned allowed = 1; allowed <= 3; allowed++) {
        if (sl_tmpl_check(text, allowed, &why) != 0)
            continue;
        sl_tmpl_vars_t v = {.kafka_topic = rest,
                            .kafka_topic_len = strlen(rest),
                            .partition = (int32_t)size,
                            .key = rest,
                            .key_len = strlen(rest) / 2,
                            .node = "node",
                            .header = hdr,
                            .header_arg = rest};
        char out[300];
        int n = sl_tmpl_render(text, &v, out, sizeof(out));
        if (n >= 0 && (size_t)n != strlen(out))
            abort();
        (void)sl_tmpl_prefix_len(text);
    }
    free(text);
    return 0;
}
