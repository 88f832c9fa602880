/*
 * Base64 (see base64.h), through OpenSSL.
 */
#include "lib/base64.h"

#include <openssl/evp.h>

size_t sl_base64_encode(char *dst, const void *src, size_t n)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)dst, src, (int)n);
}
