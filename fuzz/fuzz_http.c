/*
 * libFuzzer target: the HTTP request parser. Input is fed in pieces whose sizes come from the
 * input itself, with the pipelining loop the connection uses; every request is disposed and the
 * budget must return to where it started.
 */
#include "lib/budget.h"
#include "lib/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sl_http_limits_t lim = {
        .max_url = 256, .max_header_bytes = 2048, .max_message = 4096, .max_body = 16384};
    if (size < 1)
        return 0;
    uint64_t start = sl_budget.used;
    size_t step = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    sl_http_req_t req;
    sl_http_req_init(&req, &lim);
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < step ? size - off : step, used = 0;
        sl_http_result_t r = sl_http_feed(&req, (const char *)data + off, n, &used);
        if (used > n)
            abort();
        off += used;
        if (r == SL_HTTP_ERROR)
            break;
        if (r == SL_HTTP_DONE) {
            if (!req.complete)
                abort();
            sl_http_req_next(&req);
        }
    }
    sl_http_req_dispose(&req);
    if (sl_budget.used != start)
        abort();
    return 0;
}
