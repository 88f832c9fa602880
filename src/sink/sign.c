/*
 * Standard Webhooks signing with OpenSSL 3's EVP_MAC (see sign.h).
 */
#include "sink/sign.h"

#include "lib/base64.h"
#include "lib/ws.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int sl_signer_add(sl_signer_t *s, const char *secret, size_t len)
{
    if (s->n >= SL_SIGN_MAX_SECRETS)
        return -1;
    if (len > 6 && memcmp(secret, "whsec_", 6) == 0) {
        secret += 6;
        len -= 6;
    }
    int n = sl_base64_decode(secret, len, s->key[s->n], SL_SIGN_SECRET_MAX);
    if (n <= 0)
        return -1;
    s->len[s->n++] = (size_t)n;
    return 0;
}

int sl_signer_parse(sl_signer_t *s, const char *text, size_t len, int *bad_line)
{
    int added = 0, line = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        line++;
        const char *a = p, *b = e;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r'))
            b--;
        if (a < b && *a != '#') {
            if (sl_signer_add(s, a, (size_t)(b - a)) != 0) {
                *bad_line = line;
                return -1;
            }
            added++;
        }
        p = nl ? nl + 1 : end;
    }
    return added;
}

static int hmac_sha256(const unsigned char *key, size_t klen, const char *pre, size_t plen,
                       const void *body, size_t blen, unsigned char mac[32])
{
    int rc = -1;
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (m == NULL)
        return -1;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(m);
    if (ctx == NULL)
        goto out_free_mac;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    size_t outl = 0;
    if (EVP_MAC_init(ctx, key, klen, params) == 1 &&
        EVP_MAC_update(ctx, (const unsigned char *)pre, plen) == 1 &&
        (blen == 0 || EVP_MAC_update(ctx, body, blen) == 1) &&
        EVP_MAC_final(ctx, mac, &outl, 32) == 1 && outl == 32)
        rc = 0;
    EVP_MAC_CTX_free(ctx);
out_free_mac:
    EVP_MAC_free(m);
    return rc;
}

int sl_signer_prepare(sl_signer_t *s)
{
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (m == NULL)
        return -1;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    int rc = 0;
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        /* The context holds its own reference to the algorithm. */
        s->ctx[i] = EVP_MAC_CTX_new(m);
        if (s->ctx[i] == NULL || EVP_MAC_init(s->ctx[i], s->key[i], s->len[i], params) != 1)
            rc = -1;
    }
    EVP_MAC_free(m);
    if (rc != 0)
        sl_signer_dispose(s);
    return rc;
}

void sl_signer_dispose(sl_signer_t *s)
{
    for (size_t i = 0; i < SL_SIGN_MAX_SECRETS; i++) {
        EVP_MAC_CTX_free(s->ctx[i]);
        s->ctx[i] = NULL;
    }
}

/* HMAC with a keyed context: initialising it without a key starts over with the same key. */
static int hmac_keyed(EVP_MAC_CTX *ctx, const char *pre, size_t plen, const void *body, size_t blen,
                      unsigned char mac[32])
{
    size_t outl = 0;
    if (EVP_MAC_init(ctx, NULL, 0, NULL) == 1 &&
        EVP_MAC_update(ctx, (const unsigned char *)pre, plen) == 1 &&
        (blen == 0 || EVP_MAC_update(ctx, body, blen) == 1) &&
        EVP_MAC_final(ctx, mac, &outl, 32) == 1 && outl == 32)
        return 0;
    return -1;
}

int sl_signer_sign(const sl_signer_t *s, const char *id, uint64_t ts, const void *body,
                   size_t body_len, char *out)
{
    char pre[160];
    int plen = snprintf(pre, sizeof(pre), "%s.%" PRIu64 ".", id, ts);
    if (plen < 0 || (size_t)plen >= sizeof(pre))
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < s->n; i++) {
        unsigned char mac[32];
        int rc = s->ctx[i] != NULL
                     ? hmac_keyed(s->ctx[i], pre, (size_t)plen, body, body_len, mac)
                     : hmac_sha256(s->key[i], s->len[i], pre, (size_t)plen, body, body_len, mac);
        if (rc != 0)
            return -1;
        if (i > 0)
            out[o++] = ' ';
        memcpy(out + o, "v1,", 3);
        o += 3;
        o += sl_base64_encode(out + o, mac, 32);
    }
    out[o] = '\0';
    return (int)o;
}
