/*
 * Authorization decisions (core/auth.h): finding a request's token, verifying it with the
 * loaded keys, and matching its claims against a topic's policy. Key files are read here,
 * synchronously, at start and on SIGHUP (a few small files, rarely). No libuv calls.
 */
#include "core/auth.h"

#include "lib/util.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const reason_names[SL_AUTH_R__COUNT] = {
    "ok",
    "too_large",
    "malformed",
    "bad_alg",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "bad_claims",
    "missing",
    "insufficient_scope",
    "not_admin",
};

const char *sl_auth_reason_name(int r)
{
    return r >= 0 && r < SL_AUTH_R__COUNT ? reason_names[r] : "?";
}

#define KEY_FILE_MAX (1u << 20)

/* Reads a key file; an error names the file. */
static int read_key_file(const char *path, char **buf, size_t *len, FILE *errs)
{
    int r = sl_jwt_read_file(path, KEY_FILE_MAX, buf, len);
    if (r != 0 && errs != NULL)
        fprintf(errs, "%s: cannot read: %s\n", path,
                r == -EFBIG ? "not a regular file of at most 1 MiB" : strerror(-r));
    return r;
}

/* A secret or token file holds the bytes themselves; the line end an editor adds is not part
 * of them. */
static void chomp(char *buf, size_t *len)
{
    if (*len > 0 && buf[*len - 1] == '\n')
        (*len)--;
    if (*len > 0 && buf[*len - 1] == '\r')
        (*len)--;
    buf[*len] = '\0';
}

int sl_auth_load(sl_auth_t *a, const sl_config_t *cfg, FILE *errs)
{
    int errors = 0;
    char *buf = NULL, *admin = NULL;
    size_t len = 0, admin_len = 0;
    const char *why = NULL;
    sl_jwt_keyset_t *ks = sl_jwt_keyset_new();
    if (cfg->auth_hmac_secret_file != NULL) {
        if (read_key_file(cfg->auth_hmac_secret_file, &buf, &len, errs) != 0) {
            errors++;
        } else {
            chomp(buf, &len);
            if (sl_jwt_keyset_add_secret(ks, NULL, buf, len, &why) != 0) {
                errors++;
                if (errs != NULL)
                    fprintf(errs, "%s: %s\n", cfg->auth_hmac_secret_file, why);
            }
            OPENSSL_cleanse(buf, len);
            free(buf);
        }
    }
    if (cfg->auth_public_key_file != NULL) {
        if (read_key_file(cfg->auth_public_key_file, &buf, &len, errs) != 0) {
            errors++;
        } else {
            if (sl_jwt_keyset_add_pem(ks, NULL, buf, len, &why) != 0) {
                errors++;
                if (errs != NULL)
                    fprintf(errs, "%s: %s\n", cfg->auth_public_key_file, why);
            }
            free(buf);
        }
    }
    if (cfg->auth_jwks_file != NULL) {
        if (read_key_file(cfg->auth_jwks_file, &buf, &len, errs) != 0) {
            errors++;
        } else {
            if (sl_jwt_keyset_add_jwks(ks, buf, len, &why) != 0) {
                errors++;
                if (errs != NULL)
                    fprintf(errs, "%s: %s\n", cfg->auth_jwks_file, why);
            }
            free(buf);
        }
    }
    if (cfg->auth_admin_token_file != NULL) {
        if (read_key_file(cfg->auth_admin_token_file, &admin, &admin_len, errs) != 0) {
            errors++;
        } else {
            chomp(admin, &admin_len);
            /* A short admin token could be guessed; the same floor as an HMAC secret. */
            if (admin_len < 32) {
                errors++;
                if (errs != NULL)
                    fprintf(errs, "%s: admin token shorter than 32 bytes\n",
                            cfg->auth_admin_token_file);
            }
        }
    }
    if (errors != 0) {
        sl_jwt_keyset_free(ks);
        if (admin != NULL)
            OPENSSL_clear_free(admin, admin_len);
        return errors;
    }
    sl_jwt_keyset_free(a->keys);
    if (a->admin_token != NULL)
        OPENSSL_clear_free(a->admin_token, a->admin_len);
    a->cfg = cfg;
    a->keys = ks;
    a->admin_token = admin;
    a->admin_len = admin_len;
    a->opts = (sl_jwt_opts_t){
        .max_bytes = cfg->auth_max_token_bytes,
        .leeway_s = (int64_t)(cfg->auth_leeway_ms / 1000),
        .issuer = cfg->auth_issuer,
        .audience = cfg->auth_audience,
        .claim = cfg->auth_claim,
    };
    return 0;
}

void sl_auth_dispose(sl_auth_t *a)
{
    sl_jwt_keyset_free(a->keys);
    if (a->admin_token != NULL)
        OPENSSL_clear_free(a->admin_token, a->admin_len);
    a->keys = NULL;
    a->admin_token = NULL;
}

/* The value of cookie `name` in a Cookie header ("a=1; b=2"). */
static const char *find_cookie(const char *h, size_t hlen, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *end = h + hlen;
    while (h < end) {
        while (h < end && (*h == ' ' || *h == '\t' || *h == ';'))
            h++;
        const char *e = memchr(h, ';', (size_t)(end - h));
        if (e == NULL)
            e = end;
        if ((size_t)(e - h) > nlen && memcmp(h, name, nlen) == 0 && h[nlen] == '=') {
            const char *v = h + nlen + 1;
            size_t l = (size_t)(e - v);
            while (l > 0 && (v[l - 1] == ' ' || v[l - 1] == '\t'))
                l--;
            if (l >= 2 && v[0] == '"' && v[l - 1] == '"') {
                v++;
                l -= 2;
            }
            *vlen = l;
            return v;
        }
        h = e;
    }
    return NULL;
}

sl_auth_cred_t sl_auth_find(const sl_config_t *cfg, const char *authz, size_t alen,
                            const char *query_token, size_t qlen, const char *cookie, size_t clen)
{
    sl_auth_cred_t c = {NULL, 0, NULL};
    if (authz != NULL && alen > 7 && strncasecmp(authz, "Bearer ", 7) == 0) {
        const char *t = authz + 7;
        size_t l = alen - 7;
        while (l > 0 && *t == ' ') {
            t++;
            l--;
        }
        while (l > 0 && (t[l - 1] == ' ' || t[l - 1] == '\t'))
            l--;
        return (sl_auth_cred_t){t, l, "header"};
    }
    if (query_token != NULL)
        return (sl_auth_cred_t){query_token, qlen, "query"};
    if (cookie != NULL && cfg->auth_cookie != NULL) {
        size_t vl;
        const char *v = find_cookie(cookie, clen, cfg->auth_cookie, &vl);
        if (v != NULL)
            return (sl_auth_cred_t){v, vl, "cookie"};
    }
    return c;
}

sl_verdict_t sl_auth_verify(const sl_auth_t *a, const sl_auth_cred_t *cred, int64_t now_s,
                            sl_jwt_claims_t **out)
{
    *out = NULL;
    if (cred->token == NULL)
        return (sl_verdict_t){401, "token_required", "a token is required", SL_AUTH_R_MISSING};
    if (a->keys == NULL || a->keys->n == 0)
        return (sl_verdict_t){401, "invalid_token", "no key to verify tokens with",
                              SL_JWT_E_NO_KEY};
    int r = sl_jwt_verify(a->keys, &a->opts, cred->token, cred->len, now_s, out);
    if (r == 0)
        return SL_VERDICT_OK;
    static const char *const words[SL_JWT_NERRORS] = {
        "",
        "token too large",
        "malformed token",
        "algorithm not accepted",
        "no key for this token",
        "signature does not verify",
        "token expired",
        "token not yet valid",
        "wrong issuer",
        "wrong audience",
        "malformed claims",
    };
    return (sl_verdict_t){401, "invalid_token", words[r], r};
}

sl_verdict_t sl_auth_topic(const sl_config_t *cfg, const sl_jwt_claims_t *claims, int action,
                           const char *name)
{
    int pub, sub;
    sl_config_topic_policy(cfg, name, &pub, &sub);
    int policy = action == SL_AUTH_PUBLISH ? pub : sub;
    if (policy == SL_POLICY_ANYONE)
        return SL_VERDICT_OK;
    if (claims == NULL)
        return (sl_verdict_t){401, "token_required", "a token is required for this topic",
                              SL_AUTH_R_MISSING};
    int ok = action == SL_AUTH_PUBLISH ? sl_jwt_globs_match(claims->pub, claims->npub, name)
                                       : sl_jwt_globs_match(claims->subs, claims->nsub, name);
    if (ok)
        return SL_VERDICT_OK;
    return (sl_verdict_t){403, "insufficient_scope",
                          action == SL_AUTH_PUBLISH ? "the token does not grant publishing here"
                                                    : "the token does not grant subscribing here",
                          SL_AUTH_R_SCOPE};
}

int sl_auth_owner(const sl_jwt_claims_t *claims, char out[65])
{
    out[0] = '\0';
    if (claims == NULL || claims->subject[0] == '\0')
        return -1;
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(claims->subject, strlen(claims->subject), md, &mdlen, EVP_sha256(), NULL) != 1)
        abort();
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

const char *sl_auth_subject_log(const sl_jwt_claims_t *claims, char *buf)
{
    size_t i = 0;
    /* The subject comes from a signed token, but a log line must never be forged by it. */
    for (const char *s = claims != NULL ? claims->subject : ""; *s != '\0' && i < 64; s++, i++)
        buf[i] = (*s >= 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '?';
    buf[i] = '\0';
    return buf;
}

int sl_auth_is_admin_token(const sl_auth_t *a, const sl_auth_cred_t *cred)
{
    return a->admin_token != NULL && cred->token != NULL && cred->len == a->admin_len &&
           CRYPTO_memcmp(cred->token, a->admin_token, a->admin_len) == 0;
}

sl_verdict_t sl_auth_admin(const sl_auth_t *a, const sl_auth_cred_t *cred,
                           const sl_jwt_claims_t *claims)
{
    if (a == NULL || !a->cfg->auth)
        return SL_VERDICT_OK;
    if (sl_auth_is_admin_token(a, cred) || (claims != NULL && claims->admin))
        return SL_VERDICT_OK;
    if (cred->token == NULL)
        return (sl_verdict_t){401, "token_required", "an admin token is required",
                              SL_AUTH_R_MISSING};
    return (sl_verdict_t){403, "insufficient_scope", "the token does not grant admin",
                          SL_AUTH_R_NOT_ADMIN};
}

size_t sl_auth_challenge(const sl_verdict_t *v, char *buf, size_t cap)
{
    int n;
    if (v->status == 401 && strcmp(v->code, "token_required") == 0)
        n = snprintf(buf, cap, "WWW-Authenticate: Bearer realm=\"sluice\"\r\n");
    else if (v->status == 401)
        n = snprintf(buf, cap,
                     "WWW-Authenticate: Bearer realm=\"sluice\", error=\"invalid_token\", "
                     "error_description=\"%s\"\r\n",
                     v->message);
    else if (v->status == 403)
        n = snprintf(buf, cap,
                     "WWW-Authenticate: Bearer realm=\"sluice\", error=\"insufficient_scope\"\r\n");
    else
        n = 0;
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
