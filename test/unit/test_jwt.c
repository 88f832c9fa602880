/*
 * Unit tests of JWT verification: the RFC 7515 (HS256, RS256, ES256) and RFC 8037 (EdDSA)
 * example tokens verify with their published keys; tokens signed here with OpenSSL cover the
 * other algorithms; and every refusal the server relies on is exercised: tampering, alg
 * confusion, "none", unknown kid, time and audience checks, oversized and malformed input.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/budget.h"
#include "lib/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RFC 7515 A.1: HS256 with a 64-byte oct key. */
static const char *A1_TOKEN =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
static const char *A1_JWKS =
    "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-"
    "EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"}]}";

/* RFC 7515 A.2: RS256. */
static const char *A2_TOKEN =
    "eyJhbGciOiJSUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_"
    "O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSj"
    "tQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeY"
    "I2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
static const char *A2_JWKS =
    "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"rsa1\",\"n\":\"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_"
    "wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_"
    "YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-"
    "KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-"
    "DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ\",\"e\":\"AQAB\"}]}";

/* RFC 7515 A.3: ES256. */
static const char *A3_TOKEN =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVl"
    "fQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
static const char *A3_JWKS = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
                             "\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"y\":\"x_"
                             "FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}";

/* RFC 8037 A.4: Ed25519. Its payload is the text "Example of Ed25519 signing", not claims, so
 * a verified signature shows as SL_JWT_E_CLAIMS (the payload is parsed only after it). */
static const char *ED_TOKEN = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
                              "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhV"
                              "sPt9g7sVvpAr_MuM0KAg";
static const char *ED_JWKS = "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":"
                             "\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}";

#define A_EXP 1300819380

static sl_jwt_opts_t opts(void)
{
    return (sl_jwt_opts_t){.max_bytes = 8192, .leeway_s = 0};
}

static sl_jwt_keyset_t *jwks(const char *doc)
{
    sl_jwt_keyset_t *ks = sl_jwt_keyset_new();
    const char *why = NULL;
    int r = sl_jwt_keyset_add_jwks(ks, doc, strlen(doc), &why);
    if (r != 0)
        fail_msg("jwks refused: %s", why);
    return ks;
}

static int verify(const sl_jwt_keyset_t *ks, const char *tok, int64_t now)
{
    sl_jwt_opts_t o = opts();
    sl_jwt_claims_t *c = NULL;
    int r = sl_jwt_verify(ks, &o, tok, strlen(tok), now, &c);
    assert_true((r == 0) == (c != NULL));
    sl_jwt_claims_free(c);
    return r;
}

/* Flips one character of part `part` (0 header, 1 payload, 2 signature) of a token. */
static char *tamper(const char *tok, int part)
{
    char *t = strdup(tok);
    char *p = t;
    for (int i = 0; i < part; i++)
        p = strchr(p, '.') + 1;
    p[1] = p[1] == 'A' ? 'B' : 'A';
    return t;
}

static void test_rfc_vectors(void **state)
{
    (void)state;
    sl_jwt_keyset_t *hs = jwks(A1_JWKS), *rs = jwks(A2_JWKS), *es = jwks(A3_JWKS);
    sl_jwt_keyset_t *ed = jwks(ED_JWKS);
    assert_int_equal(verify(hs, A1_TOKEN, A_EXP - 10), 0);
    assert_int_equal(verify(rs, A2_TOKEN, A_EXP - 10), 0);
    assert_int_equal(verify(es, A3_TOKEN, A_EXP - 10), 0);
    assert_int_equal(verify(ed, ED_TOKEN, 0), SL_JWT_E_CLAIMS);

    /* Each tampered in its payload and in its signature. */
    const char *toks[] = {A1_TOKEN, A2_TOKEN, A3_TOKEN};
    sl_jwt_keyset_t *sets[] = {hs, rs, es};
    for (int i = 0; i < 3; i++) {
        for (int part = 1; part <= 2; part++) {
            char *t = tamper(toks[i], part);
            int r = verify(sets[i], t, A_EXP - 10);
            assert_true(r == SL_JWT_E_SIGNATURE || r == SL_JWT_E_MALFORMED);
            free(t);
        }
    }
    char *t = tamper(ED_TOKEN, 2);
    assert_int_equal(verify(ed, t, 0), SL_JWT_E_SIGNATURE);
    free(t);

    /* Expiry: at exp it is still valid, one second after it is not, leeway extends it. */
    assert_int_equal(verify(hs, A1_TOKEN, A_EXP), 0);
    assert_int_equal(verify(hs, A1_TOKEN, A_EXP + 1), SL_JWT_E_EXPIRED);
    sl_jwt_opts_t o = opts();
    o.leeway_s = 30;
    sl_jwt_claims_t *c = NULL;
    assert_int_equal(sl_jwt_verify(hs, &o, A1_TOKEN, strlen(A1_TOKEN), A_EXP + 20, &c), 0);
    assert_int_equal(c->exp, A_EXP);
    sl_jwt_claims_free(c);

    /* Issuer: "joe". */
    o = opts();
    o.issuer = "joe";
    assert_int_equal(sl_jwt_verify(hs, &o, A1_TOKEN, strlen(A1_TOKEN), A_EXP - 1, &c), 0);
    sl_jwt_claims_free(c);
    o.issuer = "jane";
    assert_int_equal(sl_jwt_verify(hs, &o, A1_TOKEN, strlen(A1_TOKEN), A_EXP - 1, &c),
                     SL_JWT_E_ISSUER);
    o = opts();
    o.audience = "sluice";
    assert_int_equal(sl_jwt_verify(hs, &o, A1_TOKEN, strlen(A1_TOKEN), A_EXP - 1, &c),
                     SL_JWT_E_AUDIENCE);

    /* Wrong key type: the RS256 token against the HMAC key set and the other way round. */
    assert_int_equal(verify(hs, A2_TOKEN, A_EXP - 10), SL_JWT_E_NO_KEY);
    assert_int_equal(verify(rs, A1_TOKEN, A_EXP - 10), SL_JWT_E_NO_KEY);
    assert_int_equal(verify(es, A2_TOKEN, A_EXP - 10), SL_JWT_E_NO_KEY);
    sl_jwt_keyset_free(hs);
    sl_jwt_keyset_free(rs);
    sl_jwt_keyset_free(es);
    sl_jwt_keyset_free(ed);
}

/* ---- tokens made here ---- */

static char *b64url(const unsigned char *in, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(n * 4 / 3 + 4);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = al[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = al[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return out;
}

static const char *alg_md(int alg)
{
    const char *m[] = {"SHA256", "SHA384", "SHA512"};
    if (alg == SL_JWT_EDDSA)
        return NULL;
    if (alg == SL_JWT_ES256)
        return "SHA256";
    if (alg == SL_JWT_ES384)
        return "SHA384";
    return m[alg % 3];
}

/* Signs header.payload with pkey (or the secret for HS*), the JOSE way. */
static char *sign(int alg, EVP_PKEY *pk, const unsigned char *secret, size_t slen,
                  const char *header, const char *payload)
{
    char *h = b64url((const unsigned char *)header, strlen(header));
    char *p = b64url((const unsigned char *)payload, strlen(payload));
    size_t inlen = strlen(h) + 1 + strlen(p);
    char *in = malloc(inlen + 1);
    snprintf(in, inlen + 1, "%s.%s", h, p);
    unsigned char sig[1024];
    size_t siglen = sizeof(sig);
    if (alg <= SL_JWT_HS512) {
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, alg_md(alg), NULL, secret, slen,
                                  (unsigned char *)in, inlen, sig, sizeof(sig), &siglen));
    } else {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pc = NULL;
        assert_int_equal(EVP_DigestSignInit_ex(m, &pc, alg_md(alg), NULL, NULL, pk, NULL), 1);
        if (alg >= SL_JWT_PS256 && alg <= SL_JWT_PS512) {
            EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING);
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST);
        }
        assert_int_equal(EVP_DigestSign(m, sig, &siglen, (unsigned char *)in, inlen), 1);
        EVP_MD_CTX_free(m);
        if (alg == SL_JWT_ES256 || alg == SL_JWT_ES384) {
            size_t w = alg == SL_JWT_ES256 ? 32 : 48;
            const unsigned char *dp = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &dp, (long)siglen);
            unsigned char rs[96];
            BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, (int)w);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + w, (int)w);
            ECDSA_SIG_free(es);
            memcpy(sig, rs, 2 * w);
            siglen = 2 * w;
        }
    }
    char *s = b64url(sig, siglen);
    size_t tl = inlen + 1 + strlen(s) + 1;
    char *tok = malloc(tl);
    snprintf(tok, tl, "%s.%s", in, s);
    free(h);
    free(p);
    free(in);
    free(s);
    return tok;
}

static sl_jwt_keyset_t *pem_set(EVP_PKEY *pk, const char *kid)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, pk), 1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    sl_jwt_keyset_t *ks = sl_jwt_keyset_new();
    const char *why = NULL;
    int r = sl_jwt_keyset_add_pem(ks, kid, data, (size_t)n, &why);
    if (r != 0)
        fail_msg("pem refused: %s", why);
    BIO_free(b);
    return ks;
}

static void test_every_algorithm(void **state)
{
    (void)state;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(rsa);
    assert_non_null(p256);
    assert_non_null(p384);
    assert_non_null(ed);
    unsigned char secret[64];
    memset(secret, 0x5a, sizeof(secret));
    sl_jwt_keyset_t *hs = sl_jwt_keyset_new();
    const char *why;
    assert_int_equal(sl_jwt_keyset_add_secret(hs, NULL, secret, sizeof(secret), &why), 0);
    sl_jwt_keyset_t *rs = pem_set(rsa, NULL), *e256 = pem_set(p256, NULL);
    sl_jwt_keyset_t *e384 = pem_set(p384, NULL), *eds = pem_set(ed, NULL);
    const char *payload = "{\"sub\":\"alice\",\"exp\":2000000000,"
                          "\"sluice\":{\"pub\":[\"chat/*\"],\"sub\":[\"chat/*\",\"news\"],"
                          "\"admin\":true}}";
    for (int alg = 0; alg < SL_JWT_NALGS; alg++) {
        EVP_PKEY *pk = alg <= SL_JWT_HS512   ? NULL
                       : alg <= SL_JWT_PS512 ? rsa
                       : alg == SL_JWT_ES256 ? p256
                       : alg == SL_JWT_ES384 ? p384
                                             : ed;
        sl_jwt_keyset_t *ks = alg <= SL_JWT_HS512   ? hs
                              : alg <= SL_JWT_PS512 ? rs
                              : alg == SL_JWT_ES256 ? e256
                              : alg == SL_JWT_ES384 ? e384
                                                    : eds;
        char header[64];
        snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", sl_jwt_alg_name(alg));
        char *tok = sign(alg, pk, secret, sizeof(secret), header, payload);
        sl_jwt_opts_t o = opts();
        sl_jwt_claims_t *c = NULL;
        int r = sl_jwt_verify(ks, &o, tok, strlen(tok), 1700000000, &c);
        if (r != 0)
            fail_msg("%s: %s", sl_jwt_alg_name(alg), sl_jwt_error_name(r));
        assert_string_equal(c->subject, "alice");
        assert_int_equal(c->exp, 2000000000);
        assert_true(c->admin);
        assert_int_equal(c->npub, 1);
        assert_int_equal(c->nsub, 2);
        assert_true(sl_jwt_globs_match(c->pub, c->npub, "chat/42"));
        assert_false(sl_jwt_globs_match(c->pub, c->npub, "news"));
        assert_true(sl_jwt_globs_match(c->subs, c->nsub, "news"));
        assert_false(sl_jwt_globs_match(c->subs, c->nsub, "newsroom"));
        sl_jwt_claims_free(c);
        char *t2 = tamper(tok, 2);
        r = sl_jwt_verify(ks, &o, t2, strlen(t2), 1700000000, &c);
        assert_true(r == SL_JWT_E_SIGNATURE || r == SL_JWT_E_MALFORMED);
        free(t2);
        free(tok);
    }

    /* ES256 signed with a P-384 key set: the curve is the key's type, so no key. */
    char *tok = sign(SL_JWT_ES384, p384, NULL, 0, "{\"alg\":\"ES384\"}", payload);
    assert_int_equal(verify(e256, tok, 0), SL_JWT_E_NO_KEY);
    free(tok);

    EVP_PKEY_free(rsa);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(ed);
    sl_jwt_keyset_free(hs);
    sl_jwt_keyset_free(rs);
    sl_jwt_keyset_free(e256);
    sl_jwt_keyset_free(e384);
    sl_jwt_keyset_free(eds);
}

static void test_alg_confusion_and_none(void **state)
{
    (void)state;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    sl_jwt_keyset_t *rs = pem_set(rsa, NULL);
    /* The classic attack: HS256 with the server's RSA public key (PEM text) as the secret. */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, rsa);
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    const char *payload = "{\"sub\":\"mallory\",\"sluice\":{\"admin\":true}}";
    char *tok =
        sign(SL_JWT_HS256, NULL, (unsigned char *)pem, (size_t)n, "{\"alg\":\"HS256\"}", payload);
    assert_int_equal(verify(rs, tok, 0), SL_JWT_E_NO_KEY);
    free(tok);
    BIO_free(b);

    /* alg none, in several spellings, with and without a signature. */
    const char *nones[] = {"{\"alg\":\"none\"}",
                           "{\"alg\":\"None\"}",
                           "{\"alg\":\"NONE\"}",
                           "{\"typ\":\"JWT\"}",
                           "{\"alg\":\"HS256\",\"crit\":[\"b64\"]}",
                           "{\"alg\":null}"};
    for (size_t i = 0; i < sizeof(nones) / sizeof(nones[0]); i++) {
        char *h = b64url((const unsigned char *)nones[i], strlen(nones[i]));
        char *p = b64url((const unsigned char *)payload, strlen(payload));
        char t[512];
        snprintf(t, sizeof(t), "%s.%s.", h, p);
        assert_int_equal(verify(rs, t, 0), SL_JWT_E_ALG);
        snprintf(t, sizeof(t), "%s.%s.AAAA", h, p);
        assert_int_equal(verify(rs, t, 0), SL_JWT_E_ALG);
        free(h);
        free(p);
    }

    sl_jwt_keyset_free(rs);
    EVP_PKEY_free(rsa);
}

static void test_kid_selects_key(void **state)
{
    (void)state;
    unsigned char s1[32], s2[32];
    memset(s1, 1, sizeof(s1));
    memset(s2, 2, sizeof(s2));
    char *k1 = b64url(s1, 32), *k2 = b64url(s2, 32);
    char doc[512];
    snprintf(doc, sizeof(doc),
             "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"one\",\"k\":\"%s\"},"
             "{\"kty\":\"oct\",\"kid\":\"two\",\"k\":\"%s\",\"alg\":\"HS512\"},"
             "{\"kty\":\"oct\",\"use\":\"enc\",\"k\":\"%s\"}]}",
             k1, k2, k1);
    sl_jwt_keyset_t *ks = jwks(doc);
    assert_int_equal(ks->n, 2);
    const char *payload = "{\"sub\":\"bob\"}";
    char *t = sign(SL_JWT_HS256, NULL, s1, 32, "{\"alg\":\"HS256\",\"kid\":\"one\"}", payload);
    assert_int_equal(verify(ks, t, 0), 0);
    free(t);
    /* Signed with key one but naming two: two's signature does not match. Two also says
     * HS512 only, so an HS256 token naming it finds no key. */
    t = sign(SL_JWT_HS512, NULL, s1, 32, "{\"alg\":\"HS512\",\"kid\":\"two\"}", payload);
    assert_int_equal(verify(ks, t, 0), SL_JWT_E_SIGNATURE);
    free(t);
    t = sign(SL_JWT_HS256, NULL, s2, 32, "{\"alg\":\"HS256\",\"kid\":\"two\"}", payload);
    assert_int_equal(verify(ks, t, 0), SL_JWT_E_NO_KEY);
    free(t);
    t = sign(SL_JWT_HS256, NULL, s1, 32, "{\"alg\":\"HS256\",\"kid\":\"three\"}", payload);
    assert_int_equal(verify(ks, t, 0), SL_JWT_E_NO_KEY);
    free(t);
    /* No kid: every key of the type is tried. */
    t = sign(SL_JWT_HS512, NULL, s2, 32, "{\"alg\":\"HS512\"}", payload);
    assert_int_equal(verify(ks, t, 0), 0);
    free(t);
    /* A duplicated kid member is ambiguous and refused. */
    t = sign(SL_JWT_HS256, NULL, s1, 32, "{\"alg\":\"HS256\",\"kid\":\"one\",\"kid\":\"two\"}",
             payload);
    assert_int_equal(verify(ks, t, 0), SL_JWT_E_MALFORMED);
    free(t);
    sl_jwt_keyset_free(ks);
    free(k1);
    free(k2);
}

static void test_times_and_claims(void **state)
{
    (void)state;
    unsigned char s[32];
    memset(s, 7, sizeof(s));
    sl_jwt_keyset_t *ks = sl_jwt_keyset_new();
    const char *why;
    assert_int_equal(sl_jwt_keyset_add_secret(ks, NULL, s, sizeof(s), &why), 0);
    const char *h = "{\"alg\":\"HS256\"}";
    struct {
        const char *payload;
        int64_t now;
        int want;
    } cases[] = {
        {"{\"exp\":1000}", 999, 0},
        {"{\"exp\":1000}", 1001, SL_JWT_E_EXPIRED},
        {"{\"exp\":1000.9}", 1000, 0},
        {"{\"nbf\":1000}", 999, SL_JWT_E_NOT_YET},
        {"{\"nbf\":1000}", 1000, 0},
        {"{\"exp\":\"1000\"}", 0, SL_JWT_E_CLAIMS},
        {"{\"exp\":1e400}", 0, SL_JWT_E_CLAIMS},
        {"{\"exp\":1000,\"exp\":5000}", 2000, SL_JWT_E_CLAIMS},
        {"{\"sluice\":[]}", 0, SL_JWT_E_CLAIMS},
        {"{\"sluice\":{\"pub\":\"chat/*\"}}", 0, SL_JWT_E_CLAIMS},
        {"{\"sluice\":{\"pub\":[1]}}", 0, SL_JWT_E_CLAIMS},
        {"{\"sluice\":{\"admin\":1}}", 0, SL_JWT_E_CLAIMS},
        {"{\"sluice\":{\"sub\":[\"a\\u0000b\"]}}", 0, SL_JWT_E_CLAIMS},
        {"[1,2]", 0, SL_JWT_E_CLAIMS},
        {"{\"a\":", 0, SL_JWT_E_CLAIMS},
        {"{}", 0, 0},
        /* valid JSON, nested deeper than the reader allows */
        {"{\"x\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}", 0, SL_JWT_E_CLAIMS},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *t = sign(SL_JWT_HS256, NULL, s, 32, h, cases[i].payload);
        int r = verify(ks, t, cases[i].now);
        if (r != cases[i].want)
            fail_msg("%s at %lld: %s", cases[i].payload, (long long)cases[i].now,
                     sl_jwt_error_name(r));
        free(t);
    }
    /* Audience: a string or an array. */
    sl_jwt_opts_t o = opts();
    o.audience = "sluice";
    sl_jwt_claims_t *c;
    const char *auds[] = {"{\"aud\":\"sluice\"}", "{\"aud\":[\"x\",\"sluice\"]}"};
    for (int i = 0; i < 2; i++) {
        char *t = sign(SL_JWT_HS256, NULL, s, 32, h, auds[i]);
        assert_int_equal(sl_jwt_verify(ks, &o, t, strlen(t), 0, &c), 0);
        sl_jwt_claims_free(c);
        free(t);
    }
    char *t = sign(SL_JWT_HS256, NULL, s, 32, h, "{\"aud\":[\"x\"]}");
    assert_int_equal(sl_jwt_verify(ks, &o, t, strlen(t), 0, &c), SL_JWT_E_AUDIENCE);
    free(t);
    /* The claim name is configurable; JSON escapes in globs are decoded. */
    o = opts();
    o.claim = "https://example.com/sluice";
    t = sign(SL_JWT_HS256, NULL, s, 32, h,
             "{\"https://example.com/sluice\":{\"sub\":[\"chat\\/\\u00e9*\"]}}");
    assert_int_equal(sl_jwt_verify(ks, &o, t, strlen(t), 0, &c), 0);
    assert_int_equal(c->nsub, 1);
    assert_string_equal(c->subs, "chat/\xc3\xa9*");
    assert_false(c->admin);
    assert_string_equal(c->subject, "");
    sl_jwt_claims_free(c);
    free(t);
    /* A long claim name (a URL-style namespace) is found too. */
    char name[120], payload[200];
    memset(name, 'n', 100);
    name[100] = '\0';
    snprintf(payload, sizeof(payload), "{\"%s\":{\"pub\":[\"x\"]}}", name);
    o.claim = name;
    t = sign(SL_JWT_HS256, NULL, s, 32, h, payload);
    assert_int_equal(sl_jwt_verify(ks, &o, t, strlen(t), 0, &c), 0);
    assert_int_equal(c->npub, 1);
    sl_jwt_claims_free(c);
    free(t);
    sl_jwt_keyset_free(ks);
}

static void test_malformed_and_oversized(void **state)
{
    (void)state;
    sl_jwt_keyset_t *hs = jwks(A1_JWKS);
    const char *bad[] = {
        "", ".", "..", "a.b", "a.b.c.d", "eyJhbGciOiJIUzI1NiJ9..AAAA",
        /* padding, whitespace and the standard alphabet are not base64url */
        "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA", "eyJhbGciOiJIUzI1NiJ9.e3 0.AAAA",
        "eyJhbGciOiJIUzI1NiJ9.e30+.AAAA",
        /* non-zero unused bits: "e31" decodes to the same bytes as "e30" in lax decoders */
        "eyJhbGciOiJIUzI1NiJ9.e31.AAAA",
        /* a header that is not an object */
        "WzFd.e30.AAAA"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int r = verify(hs, bad[i], 0);
        if (r != SL_JWT_E_MALFORMED)
            fail_msg("'%s': %s", bad[i], sl_jwt_error_name(r));
    }
    /* A token one byte over the cap is refused before it is looked at. */
    sl_jwt_opts_t o = opts();
    o.max_bytes = strlen(A1_TOKEN) - 1;
    sl_jwt_claims_t *c;
    assert_int_equal(sl_jwt_verify(hs, &o, A1_TOKEN, strlen(A1_TOKEN), 0, &c), SL_JWT_E_TOO_LARGE);
    unsigned char out[256];
    long n = sl_b64url_decode("e30", 3, out);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "{}", 2);
    assert_int_equal(sl_b64url_decode("e", 1, out), -1);
    sl_jwt_keyset_free(hs);
}

static void test_key_loading(void **state)
{
    (void)state;
    sl_jwt_keyset_t *ks = sl_jwt_keyset_new();
    const char *why = NULL;
    assert_int_not_equal(sl_jwt_keyset_add_secret(ks, NULL, "short", 5, &why), 0);
    assert_non_null(why);
    const char *docs[] = {
        "",
        "[]",
        "{}",
        "{\"keys\":{}}",
        "{\"keys\":[]}",
        "{\"keys\":[{\"kty\":\"XYZ\"}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}",
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}]}",
        /* a point not on the curve (x and y of the RFC key swapped) */
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"y\":"
        "\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\",\"x\":\"x_"
        "FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}",
        /* an RSA key of 512 bits */
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"wNgvq_3PkqzKRHvh6Oz7AbhNjtX8ozVp9g4XNOQRqT7ZLvNk5mz"
        "Wy1YGbAO7Gu4TbCzU_I1ASXt_xcB0FZZ4nQ\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"alg\":\"RS256\",\"k\":"
        "\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-"
        "1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"}"
        "]}",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        why = NULL;
        if (sl_jwt_keyset_add_jwks(ks, docs[i], strlen(docs[i]), &why) == 0)
            fail_msg("accepted: %s", docs[i]);
        assert_non_null(why);
    }
    assert_int_not_equal(sl_jwt_keyset_add_pem(ks, NULL, "junk", 4, &why), 0);
    sl_jwt_keyset_free(ks);
}

static void test_budget_returns_to_zero(void **state)
{
    (void)state;
    uint64_t before = sl_budget.used;
    sl_jwt_keyset_t *hs = jwks(A1_JWKS);
    sl_jwt_opts_t o = opts();
    sl_jwt_claims_t *c;
    assert_int_equal(sl_jwt_verify(hs, &o, A1_TOKEN, strlen(A1_TOKEN), 0, &c), 0);
    assert_true(sl_budget.used > before);
    sl_jwt_claims_free(c);
    assert_int_equal(sl_budget.used, before);
    sl_jwt_keyset_free(hs);
}

int main(void)
{
    sl_budget_set_limit(1 << 30, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_vectors),
        cmocka_unit_test(test_every_algorithm),
        cmocka_unit_test(test_alg_confusion_and_none),
        cmocka_unit_test(test_kid_selects_key),
        cmocka_unit_test(test_times_and_claims),
        cmocka_unit_test(test_malformed_and_oversized),
        cmocka_unit_test(test_key_loading),
        cmocka_unit_test(test_budget_returns_to_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
