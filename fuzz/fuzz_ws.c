/*
 * libFuzzer target: the WebSocket byte-level parsers a peer reaches. The publish envelope must
 * either be refused or decode into strings no longer than its input, and decoding must be
 * stable (an envelope re-encoded from the decoded strings decodes to the same strings). The
 * UTF-8 validator must give the same answer fed whole or split at any point, and the accept-key
 * check must never read past its input.
 */
#include "lib/sse.h"
#include "lib/ws.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_envelope(const char *s, size_t n)
{
    char *scratch = malloc(n + 1);
    sl_ws_envelope_t e;
    if (sl_ws_parse_envelope(s, n, scratch, &e) == 0) {
        if (e.data == NULL || e.data_len > n || e.topic_len > n || e.event_len > n)
            abort();
        /* Re-encode and parse again. */
        size_t cap = 64 + 6 * (e.data_len + e.topic_len + e.event_len), len = 0;
        char *buf = malloc(cap);
        memcpy(buf, "{\"data\":", 8);
        len = 8;
        sl_json_put_string(buf, &len, cap, e.data, e.data_len);
        if (e.topic != NULL) {
            memcpy(buf + len, ",\"topic\":", 9);
            len += 9;
            sl_json_put_string(buf, &len, cap, e.topic, e.topic_len);
        }
        buf[len++] = '}';
        char *scratch2 = malloc(len + 1);
        sl_ws_envelope_t e2;
        if (sl_ws_parse_envelope(buf, len, scratch2, &e2) != 0 || e2.data_len != e.data_len ||
            memcmp(e2.data, e.data, e.data_len) != 0)
            abort();
        if ((e.topic == NULL) != (e2.topic == NULL) ||
            (e.topic && (e2.topic_len != e.topic_len || memcmp(e2.topic, e.topic, e.topic_len))))
            abort();
        free(scratch2);
        free(buf);
    }
    free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_envelope((const char *)data, size);
    int whole = sl_utf8_valid(data, size);
    size_t at = size ? data[0] % (size + 1) : 0;
    uint32_t st = 0;
    int split =
        sl_utf8_feed(&st, data, at) == 0 && sl_utf8_feed(&st, data + at, size - at) == 0 && st == 0;
    if (whole != split)
        abort();
    char out[29];
    (void)sl_ws_accept_key((const char *)data, size, out);
    return 0;
}
