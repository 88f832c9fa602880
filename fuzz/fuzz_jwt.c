/*
 * libFuzzer target: JWT verification and JWKS parsing. The first byte picks the mode: a token
 * checked against fixed key sets (an HMAC secret, the RFC 7515 RSA and EC keys, an Ed25519 key,
 * with a kid each), a JWKS document loaded into a fresh set, or a WebSocket token-refresh
 * message read for its "token" member. What must hold: no crash or
 * leak, a refusal for anything not signed by these keys, and the budget back where it began.
 */
#include "lib/budget.h"
#include "lib/jwt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *KEYS =
    "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-"
    "EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"},"
    "{\"kty\":\"RSA\",\"kid\":\"r\",\"n\":\"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_"
    "wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_"
    "YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-"
    "KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-"
    "DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ\",\"e\":\"AQAB\"},"
    "{\"kty\":\"EC\",\"kid\":\"e\",\"crv\":\"P-256\",\"x\":"
    "\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"x_"
    "FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
    "{\"kty\":\"OKP\",\"kid\":\"d\",\"crv\":\"Ed25519\",\"x\":"
    "\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}";

static sl_jwt_keyset_t *keys;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (keys == NULL) {
        sl_budget_set_limit(1ull << 30, 0);
        const char *why;
        keys = sl_jwt_keyset_new();
        if (sl_jwt_keyset_add_jwks(keys, KEYS, strlen(KEYS), &why) != 0)
            abort();
    }
    if (size == 0)
        return 0;
    uint64_t used = sl_budget.used;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] & 2) {
        /* The reader behind {"sluice":"token","token":…} refreshes. */
        char out[256];
        long r = sl_jwt_json_string(s, n, "token", out, sizeof(out));
        if (r >= (long)sizeof(out) || (r >= 0 && out[r] != '\0'))
            abort();
    } else if (data[0] & 1) {
        sl_jwt_keyset_t *ks = sl_jwt_keyset_new();
        const char *why = NULL;
        if (sl_jwt_keyset_add_jwks(ks, s, n, &why) != 0 && why == NULL)
            abort();
        sl_jwt_keyset_free(ks);
    } else {
        sl_jwt_opts_t o = {.max_bytes = 8192, .leeway_s = 5, .audience = "sluice"};
        sl_jwt_claims_t *c = NULL;
        int r = sl_jwt_verify(keys, &o, s, n, 1300819000, &c);
        if ((r == 0) != (c != NULL))
            abort();
        if (c != NULL) {
            /* Packed globs stay inside their allocation. */
            if (c->subs + strlen(c->subs) >= (const char *)c + c->size)
                abort();
            (void)sl_jwt_globs_match(c->pub, c->npub, "chat/1");
            (void)sl_jwt_globs_match(c->subs, c->nsub, "chat/1");
        }
        sl_jwt_claims_free(c);
    }
    if (sl_budget.used != used)
        abort();
    return 0;
}
