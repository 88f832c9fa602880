/*
 * The HTTP API: routes complete requests to publishing, subscribing (SSE, WebSocket), the
 * durable cursor API and the read-only endpoints, validating every peer-supplied part first.
 * docs/protocol.md is the contract it implements. It meets connections only through the
 * handler it installs on the server (net/conn.h, sl_handler_t).
 */
#ifndef SL_API_H
#define SL_API_H

#include "net/conn.h"

/* Installs the API as the server's request handler (once, at start). */
void sl_api_install(sl_server_t *srv);

#endif
