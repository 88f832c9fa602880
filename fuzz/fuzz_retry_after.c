/*
 * libFuzzer target: Retry-After values (delta-seconds and HTTP-dates); the result never passes
 * its cap.
 */
#include "sink/policy.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t ms;
    if (sl_retry_after_parse((const char *)data, size, 1700000000000ull, 600000, &ms) == 0 &&
        ms > 600000)
        abort();
    return 0;
}
