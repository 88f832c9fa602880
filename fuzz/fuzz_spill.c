/*
 * libFuzzer target: the log's record decoder, which reads whatever a damaged segment holds. A
 * record that decodes must encode back to the same bytes; walking a buffer record by record
 * must never read past it.
 */
#include "store/spill.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t pos = 0;
    while (pos < size) {
        sl_rec_t r;
        if (sl_rec_decode(data + pos, size - pos, &r) != SL_REC_OK)
            break;
        if (r.size > size - pos)
            abort();
        uint8_t *again = malloc(r.size);
        sl_rec_encode(again, r.seq, r.ts_ms, r.event, r.event_len, r.payload, r.payload_len);
        if (memcmp(again, data + pos, r.size) != 0)
            abort();
        free(again);
        pos += r.size;
    }
    return 0;
}
