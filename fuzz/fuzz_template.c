/*
 * libFuzzer target: URL templates. The input is "template\ntopic"; a template the check accepts
 * is expanded with the topic, and the result must still be a URL whose origin is the
 * template's (a topic can never change where a request goes).
 */
#include "lib/sinkconf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    char *nl = memchr(text, '\n', size);
    const char *topic = "";
    size_t tlen = 0;
    if (nl != NULL) {
        *nl = '\0';
        topic = nl + 1;
        tlen = size - (size_t)(nl + 1 - text);
    }
    const char *why;
    if (sl_url_template_check(text, &why) == 0) {
        char out[4096], o1[512], o2[512];
        int n = sl_url_expand(text, topic, tlen, "sink", out, sizeof(out));
        if (n >= 0) {
            int a = sl_url_origin(text, o1, sizeof(o1));
            int b = sl_url_origin(out, o2, sizeof(o2));
            if (a != b || (a >= 0 && strcmp(o1, o2) != 0))
                abort();
            if (memchr(out, '#', (size_t)n) != NULL)
                abort();
        }
    }
    free(text);
    return 0;
}
