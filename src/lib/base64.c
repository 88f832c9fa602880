/*
 * Base64 (see base64.h), through OpenSSL.
 */
#include "lib/base64.h"

#include <openssl/evp.h>
#include <stdint.h>

size_t sl_base64_encode(char *dst, const void *src, size_t n)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)dst, src, (int)n);
}

/* The value of one character in the standard or the URL alphabet, -1 if it is not one. */
static int value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

long sl_base64_decode_as(const char *in, size_t n, unsigned char *out, size_t cap, int url,
                         int strict)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = value((unsigned char)in[i], url);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (strict && acc != 0)
        return -1;
    return (long)o;
}

int sl_base64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    while (n > 0 && in[n - 1] == '=')
        n--;
    return (int)sl_base64_decode_as(in, n, out, cap, 0, 0);
}
