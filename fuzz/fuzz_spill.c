/*
 * libFuzzer target: the log's record decoder, which reads whatever a damaged segment holds. A
 * record that decodes must encode back to the same bytes; walking a buffer record by record
 * must never read past it. The decoder without the CRC (for records checked once already)
 * must never read past the buffer either, and must agree with the checked one wherever that
 * accepts a record.
 */
#include "store/spill.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t at = 0; at < size; at++) {
        sl_rec_t t;
        if (sl_rec_decode_trusted(data + at, size - at, &t) == SL_REC_OK &&
            (t.size > size - at || t.payload + t.payload_len > (const char *)data + size))
            abort();
    }
    size_t pos = 0;
    while (pos < size) {
        sl_rec_t r, t;
        if (sl_rec_decode(data + pos, size - pos, &r) != SL_REC_OK)
            break;
        if (sl_rec_decode_trusted(data + pos, size - pos, &t) != SL_REC_OK || t.size != r.size ||
            t.seq != r.seq || t.payload != r.payload || t.event_len != r.event_len)
            abort();
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
