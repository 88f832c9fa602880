/*
 * Standard Webhooks signatures (https://www.standardwebhooks.com): the `webhook-signature`
 * header is a space-separated list of `v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`,
 * one per secret, so that a receiver can verify with either the old or the new secret while
 * they are rotated. Secrets are given as in the spec, `whsec_<base64>` (or raw base64). Pure:
 * OpenSSL's EVP_MAC, no libuv.
 */
#ifndef SL_SINK_SIGN_H
#define SL_SINK_SIGN_H

#include <openssl/types.h>
#include <stddef.h>
#include <stdint.h>

#define SL_SIGN_MAX_SECRETS 4
#define SL_SIGN_SECRET_MAX 128

/* Zero it before use. After sl_signer_prepare() it holds one keyed HMAC context per secret
 * (released by sl_signer_dispose), so a signature costs no key schedule and no algorithm
 * lookup; without it every signature does both. */
typedef struct sl_signer {
    size_t n;
    size_t len[SL_SIGN_MAX_SECRETS];
    unsigned char key[SL_SIGN_MAX_SECRETS][SL_SIGN_SECRET_MAX];
    EVP_MAC_CTX *ctx[SL_SIGN_MAX_SECRETS];
} sl_signer_t;

/* Adds a secret ("whsec_…" or bare base64, 1..128 decoded bytes). Returns 0, or -1 when it is
 * malformed or there are already SL_SIGN_MAX_SECRETS. */
int sl_signer_add(sl_signer_t *s, const char *secret, size_t len);

/* Parses a secrets file: one secret per line, blank lines and '#' comments ignored. Returns the
 * number added, or -1 on a malformed line (with *bad_line set to its number). */
int sl_signer_parse(sl_signer_t *s, const char *text, size_t len, int *bad_line);

/* Makes the keyed contexts for the secrets added so far (add no more afterwards). Returns 0,
 * or -1 when OpenSSL cannot (the signer then still signs, the slow way). */
int sl_signer_prepare(sl_signer_t *s);

/* Releases what sl_signer_prepare() made. */
void sl_signer_dispose(sl_signer_t *s);

/* The bytes the value of `webhook-signature` needs for s's secrets. */
static inline size_t sl_signer_value_cap(const sl_signer_t *s)
{
    return s->n * 48 + 1;
}

/* Writes the header value for message id, timestamp (seconds) and body into out (at least
 * sl_signer_value_cap bytes), NUL-terminated. Returns its length, or -1 if the HMAC failed.
 * A prepared signer's contexts are reused: one thread at a time. */
int sl_signer_sign(const sl_signer_t *s, const char *id, uint64_t ts, const void *body,
                   size_t body_len, char *out);

/* Base64 decoding (standard alphabet, padding optional). Returns the decoded length or -1. */

#endif
