/*
 * JSON output helpers (see json.h).
 */
#include "lib/json.h"

#include <string.h>

int sl_json_put_string(char *buf, size_t *len, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t l = *len;
    if (l + 2 > cap)
        return -1;
    buf[l++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (l + 7 > cap)
            return -1;
        if (c == '"' || c == '\\') {
            buf[l++] = '\\';
            buf[l++] = (char)c;
        } else if (c < 0x20) {
            memcpy(buf + l, "\\u00", 4);
            buf[l + 4] = hex[c >> 4];
            buf[l + 5] = hex[c & 15];
            l += 6;
        } else {
            buf[l++] = (char)c;
        }
    }
    if (l + 1 > cap)
        return -1;
    buf[l++] = '"';
    *len = l;
    return 0;
}
