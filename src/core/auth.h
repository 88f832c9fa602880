/*
 * Authorization: the keys of [auth] and the decisions made with them. Which token a request
 * carries (Authorization: Bearer, ?access_token=, a cookie), whether it is valid, and whether
 * it grants publishing, subscribing or the admin endpoints on a topic are pure functions
 * returning verdicts, shared by HTTP, SSE and WebSocket, which render them their own way. The
 * keys are loaded from files at start and on SIGHUP; a reload that fails keeps the old keys.
 */
#ifndef SL_AUTH_H
#define SL_AUTH_H

#include "core/metrics.h"
#include "core/rules.h"
#include "lib/config.h"
#include "lib/jwt.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Why a request was refused, for sluice_auth_rejected_total{reason}. The first values are the
 * token errors of lib/jwt.h. */
enum {
    SL_AUTH_R_MISSING = SL_JWT_NERRORS, /* a token is needed and none was sent */
    SL_AUTH_R_SCOPE,                    /* the token does not grant this topic */
    SL_AUTH_R_NOT_ADMIN,                /* an admin endpoint without admin rights */
    SL_AUTH_R__COUNT,
};
_Static_assert(SL_AUTH_R__COUNT == SL_AUTH_REASONS, "metrics.h counts every reason");
const char *sl_auth_reason_name(int r);

enum { SL_AUTH_PUBLISH = 0, SL_AUTH_SUBSCRIBE };

/* The loaded keys. Owned by main; lives as long as the server. */
typedef struct sl_auth {
    const sl_config_t *cfg;
    sl_jwt_keyset_t *keys; /* NULL: no token can be valid (admin token only) */
    char *admin_token;     /* NULL: none */
    size_t admin_len;
    sl_jwt_opts_t opts;
} sl_auth_t;

/* Reads every key file of cfg's [auth] into a new key set and, only if all of them are valid,
 * replaces the current one (the first call: sets it). Errors go to errs as "file: reason".
 * Returns 0 or the number of errors; on error the previous keys stay in force. */
int sl_auth_load(sl_auth_t *a, const sl_config_t *cfg, FILE *errs);

void sl_auth_dispose(sl_auth_t *a);

/* The credentials a request carries, as found by sl_auth_find. */
typedef struct sl_auth_cred {
    const char *token; /* NULL: none */
    size_t len;
    const char *where; /* "header", "query", "cookie" */
} sl_auth_cred_t;

/* Picks the token of a request: the Authorization header (scheme Bearer, any case), then the
 * access_token query parameter, then the configured cookie. Any argument may be NULL. An
 * Authorization header of another scheme is not a token (and not an error). */
sl_auth_cred_t sl_auth_find(const sl_config_t *cfg, const char *authz, size_t alen,
                            const char *query_token, size_t qlen, const char *cookie, size_t clen);

/* Verifies a token at wall-clock now_s. A 401 verdict when it is invalid (its reason an
 * SL_AUTH_R_* / sl_jwt_err_t); on success *out holds its claims (the caller frees them). */
sl_verdict_t sl_auth_verify(const sl_auth_t *a, const sl_auth_cred_t *cred, int64_t now_s,
                            sl_jwt_claims_t **out);

/* Whether `claims` (NULL: no token) may do `action` on topic `name` under the topic's policy:
 * a 401 verdict when a token is needed and there is none, 403 when it does not grant it. */
sl_verdict_t sl_auth_topic(const sl_config_t *cfg, const sl_jwt_claims_t *claims, int action,
                           const char *name);

/* Whether a request may use the admin endpoints: a token with the admin claim, or the admin
 * token itself (compared in constant time). `claims` are those of cred's token, if it
 * verified. Without [auth] everything is allowed. */
sl_verdict_t sl_auth_admin(const sl_auth_t *a, const sl_auth_cred_t *cred,
                           const sl_jwt_claims_t *claims);

/* The WWW-Authenticate header line (RFC 6750 §3) for a 401 or 403 verdict into buf (>= 128
 * bytes), "\r\n" included; returns its length (0 for other verdicts). */
size_t sl_auth_challenge(const sl_verdict_t *v, char *buf, size_t cap);

/* The owner key of a durable cursor created with these claims: the SHA-256 of the subject in
 * hex (so any subject fits a fixed-size, file-safe field). Returns 0, or -1 (out "") when
 * there is no subject. */
int sl_auth_owner(const sl_jwt_claims_t *claims, char out[65]);

/* The subject of claims (NULL: none) as it may appear in a log line: at most 64 bytes, every
 * byte outside printable ASCII, and '"' and '\\', written '?'. Returns buf (>= 65 bytes). */
const char *sl_auth_subject_log(const sl_jwt_claims_t *claims, char *buf);

/* 1 if cred is exactly the admin token. */
int sl_auth_is_admin_token(const sl_auth_t *a, const sl_auth_cred_t *cred);

#endif
