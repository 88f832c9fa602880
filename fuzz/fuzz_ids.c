/*
 * libFuzzer target: message ids, topic and event names, percent-decoding and query strings,
 * the parsers every request's target goes through.
 */
#include "lib/http.h"
#include "core/rules.h"
#include "core/topic.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    uint64_t e, q;
    for (int suffix = 0; suffix < 2; suffix++) {
        if (sl_id_parse(s, size, suffix, &e, &q) == 0) {
            /* A parsed id formats back to a string that parses to the same value. */
            char buf[SL_ID_MAX];
            size_t n = sl_id_format(buf, e, q);
            uint64_t e2, q2;
            if (sl_id_parse(buf, n, 0, &e2, &q2) != 0 || e2 != e || q2 != q)
                abort();
        }
    }
    (void)sl_topic_name_valid(s, size, 1024);
    (void)sl_rule_event(s, size);
    char *out = malloc(size + 1);
    int n = sl_url_decode(out, s, size);
    if (n > (int)size)
        abort();
    free(out);
    const char *p = s, *end = s + size, *k, *v;
    size_t kl, vl;
    while (sl_query_next(&p, end, &k, &kl, &v, &vl))
        if (k < s || k + kl > end || v < s || v + vl > end)
            abort();
    return 0;
}
