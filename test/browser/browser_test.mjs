#!/usr/bin/env node
// Headless-Chromium black-box test of sluice's browser transports.
//
//   node test/browser/browser_test.mjs http://127.0.0.1:PORT [--restart] [--topic NAME]
//
// A real Chromium page (served by a static HTTP server this script starts on another
// 127.0.0.1 port, so every request to sluice is cross-origin and depends on its CORS headers)
// subscribes with `new EventSource(...)` and `new WebSocket(...)`. Node publishes with HTTP
// POST and checks, per transport, the exact sequence of messages the page received.
//
//   phase 0  CORS from page JS: a cross-origin GET and a preflighted (NDJSON) POST.
//   phase 1  live delivery: EventSource (?from=oldest) and WebSocket (?format=json).
//   phase 2  exact resume without a restart: the page closes both, Node publishes N messages,
//            the page reopens with ?lastEventId=<last id> / ?since=<last id>; exactly the N
//            missed messages arrive, in order, then live ones.
//   phase 3  (--restart) the server is restarted by the driver (test/integ/test_browser.py):
//            this script prints "CTRL RESTART" and waits for "RESTARTED" on stdin. Both
//            transports reconnect by themselves (EventSource after the `retry:` hint with
//            Last-Event-ID, the page's WebSocket with ?since=<last id>), get one reset marker
//            (the topic's epoch changed), then every message published while they were down and
//            after, exactly once, in order.
//
// Lines on stdout starting with "CTRL " are for the driver; the last line is "PASS" or the
// script exits non-zero with "FAIL: ..." on stderr.

import http from 'node:http';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT_MS = Number(process.env.BROWSER_TEST_WAIT_MS || 15000); // per wait; ASan is slow

// ---- arguments ----------------------------------------------------------------------------
const argv = process.argv.slice(2);
let sluiceBase = null;
let withRestart = false;
let topic = 'browser';
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--restart') withRestart = true;
  else if (argv[i] === '--topic') topic = argv[++i];
  else if (!sluiceBase) sluiceBase = argv[i].replace(/\/+$/, '');
  else usage();
}
if (!sluiceBase || !/^http:\/\/[^/]+$/.test(sluiceBase)) usage();
function usage() {
  console.error('usage: browser_test.mjs http://HOST:PORT [--restart] [--topic NAME]');
  process.exit(2);
}

const log = (...a) => console.error('[browser_test]', ...a);
class TestFailure extends Error {}
function fail(msg) {
  throw new TestFailure(msg);
}
function check(cond, msg) {
  if (!cond) fail(msg);
}
const J = (v) => JSON.stringify(v);

// ---- control channel (stdin lines from the driver) ----------------------------------------
const stdinLines = [];
let stdinWaiter = null;
if (withRestart) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (l) => {
    stdinLines.push(l.trim());
    if (stdinWaiter) stdinWaiter();
  });
}
async function readControl(timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (stdinLines.length === 0) {
    if (Date.now() > deadline) fail(`no control line from the driver within ${timeoutMs} ms`);
    await new Promise((res) => {
      stdinWaiter = res;
      setTimeout(res, 100);
    });
    stdinWaiter = null;
  }
  return stdinLines.shift();
}

// ---- publishing from Node ------------------------------------------------------------------
const ID_RE = /^([0-9a-f]{16})-(\d+)$/;
async function publish(data) {
  const r = await fetch(`${sluiceBase}/topics/${topic}`, { method: 'POST', body: data });
  const body = await r.text();
  check(r.status === 202, `publish ${J(data)}: HTTP ${r.status} ${body}`);
  const acao = r.headers.get('access-control-allow-origin');
  check(acao === '*', `publish response: Access-Control-Allow-Origin is ${J(acao)}, want "*" ` +
    '(origins is empty; docs/protocol.md "Browsers and CORS")');
  const id = JSON.parse(body).id;
  check(ID_RE.test(id), `publish ${J(data)}: bad id ${J(id)}`);
  return { id, data };
}
async function publishAll(datas) {
  const out = [];
  for (const d of datas) out.push(await publish(d)); // sequential: ids in publish order
  return out;
}
async function topicReaders() {
  const r = await fetch(`${sluiceBase}/topics`);
  check(r.status === 200, `GET /topics: HTTP ${r.status}`);
  const t = (await r.json()).topics.find((x) => x.name === topic);
  return t ? t.readers : 0;
}
const epochOf = (id) => ID_RE.exec(id)[1];
const seqOf = (id) => Number(ID_RE.exec(id)[2]);

// Payloads exercise line splitting (SSE data: lines), non-ASCII UTF-8 and JSON escaping.
function payloads(tag, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    if (i % 3 === 1) out.push(`${tag}-${i} line one\nline two`);
    else if (i % 3 === 2) out.push(`${tag}-${i} "quoted" \\ é ✓ 😀`);
    else out.push(`${tag}-${i}`);
  }
  return out;
}

// ---- the page --------------------------------------------------------------------------------
const PAGE = String.raw`<!doctype html>
<html><head><meta charset="utf-8"><title>sluice browser test</title></head>
<body><p>sluice browser test</p>
<script>
'use strict';
const params = new URL(location.href).searchParams;
const SLUICE = params.get('sluice');
const TOPIC = params.get('topic');
const WSBASE = SLUICE.replace(/^http/, 'ws');

// Everything the page observes, in arrival order, for Node to read and check.
window.T = {
  es: [],           // {kind:'msg'|'sluice.reset'|'sluice.gap'|'sluice.overflow', id, data}
  ws: [],           // {kind:'msg', id, data, env} | {kind:<control name>, data} | {kind:'bad', raw}
  esUrls: [], esOpens: 0, esErrors: 0,
  wsUrls: [], wsOpens: 0, wsCloses: [],   // {code, reason, wasClean, opened}
  errors: [],
};

let es = null;
function esRecord(kind) {
  return (e) => {
    let data = e.data;
    if (kind !== 'msg') { try { data = JSON.parse(e.data); } catch (_) { kind = 'bad:' + kind; } }
    T.es.push({ kind, id: e.lastEventId, data });
  };
}
window.openES = (query) => {
  const url = SLUICE + '/topics/' + TOPIC + query;
  T.esUrls.push(url);
  es = new EventSource(url);
  es.onopen = () => { T.esOpens++; };
  es.onerror = () => { T.esErrors++; T.esState = es.readyState; };
  es.onmessage = esRecord('msg');
  for (const k of ['sluice.reset', 'sluice.gap', 'sluice.overflow']) {
    es.addEventListener(k, esRecord(k));
  }
};
window.closeES = () => { es.close(); };
window.esState = () => (es ? es.readyState : -1);

let ws = null, wsWanted = false, lastWsId = null;
window.wsHold = false;   // while true, the page does not reconnect its WebSocket
function openWS(query) {
  const url = WSBASE + '/topics/' + TOPIC + query;
  T.wsUrls.push(url);
  const s = new WebSocket(url);
  let opened = false;
  ws = s;
  s.onopen = () => { opened = true; T.wsOpens++; };
  s.onmessage = (e) => {
    if (typeof e.data !== 'string') { T.ws.push({ kind: 'bad', raw: 'binary frame' }); return; }
    let obj;
    try { obj = JSON.parse(e.data); } catch (_) { T.ws.push({ kind: 'bad', raw: e.data }); return; }
    if (e.data.startsWith('{"sluice":"')) { T.ws.push({ kind: obj.sluice, data: obj }); return; }
    T.ws.push({ kind: 'msg', id: obj.id, data: obj.data, env: obj, raw: e.data });
    lastWsId = obj.id;
  };
  s.onclose = (e) => {
    T.wsCloses.push({ code: e.code, reason: e.reason, wasClean: e.wasClean, opened });
    if (ws !== s) return;
    ws = null;
    if (wsWanted) reconnectWS();
  };
}
function reconnectWS() {
  setTimeout(() => {
    if (!wsWanted || ws) return;
    if (window.wsHold) { reconnectWS(); return; }
    openWS(lastWsId ? '?since=' + encodeURIComponent(lastWsId) + '&format=json' : '?format=json');
  }, 200);
}
window.startWS = (query) => { wsWanted = true; openWS(query); };
window.stopWS = () => { wsWanted = false; if (ws) ws.close(1000, 'bye'); };
window.wsState = () => (ws ? ws.readyState : -1);
window.lastWsId = () => lastWsId;

// Cross-origin fetches from page JS (they fail without the CORS headers).
window.corsGet = async (path) => {
  try {
    const r = await fetch(SLUICE + path);
    return { status: r.status, body: await r.text() };
  } catch (e) { return { error: String(e) }; }
};
window.corsPostNdjson = async (topic, body) => {
  try {
    const r = await fetch(SLUICE + '/topics/' + topic, {
      method: 'POST', headers: { 'Content-Type': 'application/x-ndjson' }, body });
    return { status: r.status, body: await r.text() };
  } catch (e) { return { error: String(e) }; }
};
window.addEventListener('error', (e) => T.errors.push(String(e.message)));
window.pageReady = true;
</script></body></html>
`;

function startStaticServer() {
  return new Promise((resolve, reject) => {
    const srv = http.createServer((req, res) => {
      const path = new URL(req.url, 'http://x').pathname;
      if (req.method === 'GET' && path === '/favicon.ico') {
        res.writeHead(204);
        res.end();
      } else if (req.method === 'GET' && path === '/') {
        res.writeHead(200, {
          'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(PAGE);
      } else {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found\n');
      }
    });
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

// ---- checking ----------------------------------------------------------------------------------
let page = null;

async function state() {
  return page.evaluate(() => ({
    es: T.es, ws: T.ws, esUrls: T.esUrls, esOpens: T.esOpens, esErrors: T.esErrors,
    esState: window.esState(), wsUrls: T.wsUrls, wsOpens: T.wsOpens, wsCloses: T.wsCloses,
    wsState: window.wsState(), errors: T.errors,
  }));
}

// Polls page state until pred(state) holds; on timeout fails with `what` and the state.
async function waitFor(what, pred, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await state();
    if (pred(s)) return s;
    if (Date.now() > deadline) {
      fail(`timed out after ${timeoutMs} ms waiting for: ${what}\npage state: ${J(s)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Waits for `items.length >= n` entries from index `from` of transport `tr`, then gives the
// server a short grace period to deliver anything unexpected (duplicates, extras).
async function collect(tr, from, n, what) {
  await waitFor(`${what}: ${n} entries on ${tr}`, (s) => s[tr].length - from >= n);
  await new Promise((r) => setTimeout(r, 300));
  return (await state())[tr].slice(from);
}

function describe(list) {
  return list.map((e) => {
    if (e.kind !== 'msg') return `<${e.kind}> ${J(e.data !== undefined ? e.data : e.raw)}`;
    return e.raw !== undefined ? `${e.id} ${J(e.data)}   (frame ${e.raw})` : `${e.id} ${J(e.data)}`;
  }).join('\n    ');
}

// got: entries of one transport; want: [{id,data}] (exactly these messages, in this order).
function assertExactly(tr, got, want, what) {
  const ok = got.length === want.length &&
    got.every((e, i) => e.kind === 'msg' && e.id === want[i].id && e.data === want[i].data);
  if (!ok) {
    fail(`${what}: ${tr} received\n    ${describe(got)}\n  want exactly\n    ` +
      `${describe(want.map((w) => ({ kind: 'msg', ...w })))}`);
  }
  if (tr === 'ws') {
    for (const e of got) {
      const env = e.env;
      check(env.topic === topic && env.event === null && typeof env.sid === 'string' &&
        env.encoding === undefined,
      `${what}: ws envelope ${J(env)} (want topic ${J(topic)}, event null, a sid, no encoding)`);
    }
  }
}

// ---- phases ------------------------------------------------------------------------------------
async function phase0Cors() {
  const g = await page.evaluate(() => window.corsGet('/healthz'));
  check(!g.error && g.status === 200 && g.body === 'ok\n',
    `cross-origin GET /healthz from the page failed: ${J(g)} ` +
    '(needs Access-Control-Allow-Origin on the response)');
  // The topic listing is an admin endpoint: a page of another origin may not read it.
  const a = await page.evaluate(() => window.corsGet('/topics'));
  check(a.error !== undefined, `a page of another origin read GET /topics: ${J(a)} ` +
    '(admin endpoints must not answer Access-Control-Allow-Origin: *)');
  const p = await page.evaluate(() => window.corsPostNdjson('browser-cors', 'a\nb\n'));
  check(!p.error && p.status === 202, `cross-origin NDJSON POST from the page failed: ${J(p)} ` +
    '(a preflighted request: needs OPTIONS -> 204 with Access-Control-Allow-Methods/-Headers, ' +
    'then Access-Control-Allow-Origin on the POST)');
  const ids = JSON.parse(p.body).ids;
  check(Array.isArray(ids) && ids.length === 2, `NDJSON POST from the page: body ${p.body}`);
  log('phase 0 ok: CORS GET, no CORS on /topics, and preflighted POST from the page');
}

async function phase1Live() {
  await page.evaluate(() => window.openES('?from=oldest'));
  await page.evaluate(() => window.startWS('?format=json'));
  await waitFor('EventSource and WebSocket open', (s) => s.esOpens === 1 && s.wsOpens === 1 &&
    s.esState === 1 && s.wsState === 1);
  // Both are subscribed (the WebSocket starts at new messages: it is subscribed once open).
  const pub = await publishAll(payloads('live', 6));
  const es = await collect('es', 0, pub.length, 'phase 1 (live)');
  const ws = await collect('ws', 0, pub.length, 'phase 1 (live)');
  assertExactly('es', es, pub, 'phase 1 (live)');
  assertExactly('ws', ws, pub, 'phase 1 (live)');
  log('phase 1 ok: both transports received', pub.length, 'live messages');
  return pub;
}

async function phase2Resume(prev) {
  const s0 = await state();
  const esLast = s0.es[s0.es.length - 1].id;
  const wsLast = await page.evaluate(() => window.lastWsId());
  check(esLast === prev[prev.length - 1].id && wsLast === esLast,
    `phase 2: last ids es=${esLast} ws=${wsLast}, want ${prev[prev.length - 1].id}`);

  await page.evaluate(() => { window.closeES(); window.stopWS(); });
  await waitFor('page closed its EventSource and WebSocket', (s) => s.esState === 2 &&
    s.wsState === -1 && s.wsCloses.length === s0.wsCloses.length + 1);
  // The server has let go of both readers: messages published now are really missed.
  const deadline = Date.now() + WAIT_MS;
  let readers;
  while ((readers = await topicReaders()) !== 0) {
    if (Date.now() > deadline) {
      fail(`phase 2: GET /topics still reports ${readers} readers of ${topic} ` +
        `${WAIT_MS} ms after the page closed its EventSource and WebSocket`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  const missed = await publishAll(payloads('missed', 5));
  const esFrom = s0.es.length;
  const wsFrom = s0.ws.length;
  await page.evaluate((id) => window.openES('?lastEventId=' + encodeURIComponent(id)), esLast);
  await page.evaluate((id) => window.startWS('?since=' + encodeURIComponent(id) + '&format=json'),
    wsLast);
  const esGot = await collect('es', esFrom, missed.length, 'phase 2 (resume)');
  const wsGot = await collect('ws', wsFrom, missed.length, 'phase 2 (resume)');
  assertExactly('es', esGot, missed, 'phase 2 (resume after close, ?lastEventId=)');
  assertExactly('ws', wsGot, missed, 'phase 2 (resume after close, ?since=)');

  const live = await publishAll(payloads('after-resume', 3));
  const want = missed.concat(live);
  assertExactly('es', await collect('es', esFrom, want.length, 'phase 2 (live after resume)'),
    want, 'phase 2 (resume, then live)');
  assertExactly('ws', await collect('ws', wsFrom, want.length, 'phase 2 (live after resume)'),
    want, 'phase 2 (resume, then live)');
  log('phase 2 ok: exactly', missed.length, 'missed +', live.length, 'live messages after reopen');
  return want;
}

async function phase3Restart(prev) {
  const oldEpoch = epochOf(prev[prev.length - 1].id);
  const s0 = await state();
  check(s0.esState === 1 && s0.wsState === 1,
    `phase 3: not connected before the restart: ${J(s0)}`);
  await page.evaluate(() => { window.wsHold = true; });

  console.log('CTRL RESTART');
  const line = await readControl(60000);
  check(line === 'RESTARTED', `phase 3: driver said ${J(line)}, want "RESTARTED"`);

  // Both transports saw the drop (the WebSocket's close is the server's 1001 "going away").
  const s1 = await waitFor('both transports noticed the server going away', (s) =>
    s.esErrors > s0.esErrors && s.wsCloses.length > s0.wsCloses.length);
  const drop = s1.wsCloses[s0.wsCloses.length];
  check(drop.opened && drop.code === 1001,
    `phase 3: the WebSocket closed with ${J(drop)} at server shutdown, want code 1001 ` +
    '(docs/protocol.md "Liveness and closing")');

  const down = await publishAll(payloads('while-down', 4));
  const newEpoch = epochOf(down[0].id);
  check(newEpoch !== oldEpoch, `phase 3: the restarted server reuses epoch ${oldEpoch}`);
  check(seqOf(down[0].id) === 1, `phase 3: first id after restart is ${down[0].id}, want seq 1`);
  await page.evaluate(() => { window.wsHold = false; });

  // Each transport: one reset marker, then every message published while it was down.
  await collect('es', s0.es.length, 1 + down.length, 'phase 3 (after restart)');
  await collect('ws', s0.ws.length, 1 + down.length, 'phase 3 (after restart)');
  const up = await publishAll(payloads('after-restart', 3));
  const want = down.concat(up);
  const esGot = await collect('es', s0.es.length, 1 + want.length, 'phase 3 (live after restart)');
  const wsGot = await collect('ws', s0.ws.length, 1 + want.length, 'phase 3 (live after restart)');

  for (const [tr, got, resetKind] of [['es', esGot, 'sluice.reset'], ['ws', wsGot, 'reset']]) {
    const r = got[0];
    check(r && r.kind === resetKind,
      `phase 3: ${tr} received first\n    ${describe(got)}\n  want a ${resetKind} marker first`);
    const d = r.data;
    check(d.topic === topic && d.epoch === newEpoch && d.reason === 'epoch',
      `phase 3: ${tr} reset marker ${J(d)}, want {topic:${J(topic)}, epoch:${J(newEpoch)}, ` +
      'reason:"epoch"}');
    assertExactly(tr, got.slice(1), want, `phase 3 (after restart, after the ${resetKind} marker)`);
  }
  const s2 = await state();
  const wsResume = s2.wsUrls.slice(s0.wsUrls.length).filter((u) => u.includes('since='));
  check(wsResume.length >= 1 && wsResume.every((u) =>
    u.includes('since=' + encodeURIComponent(prev[prev.length - 1].id))),
  `phase 3: the page's WebSocket reconnects were ${J(s2.wsUrls.slice(s0.wsUrls.length))}`);
  log('phase 3 ok: after the restart both transports got one reset, then exactly',
    down.length, 'messages published while down +', up.length, 'after');
}

// ---- main -----------------------------------------------------------------------------------
let browser = null;
let staticSrv = null;
const watchdog = setTimeout(() => {
  console.error('FAIL: overall time limit (120 s) exceeded');
  process.exit(1);
}, 120000);

try {
  const h = await fetch(`${sluiceBase}/healthz`)
    .catch((e) => fail(`sluice at ${sluiceBase}: ${e}`));
  check(h.status === 200, `GET /healthz: ${h.status}`);

  staticSrv = await startStaticServer();
  const pageUrl = `http://127.0.0.1:${staticSrv.address().port}/?sluice=` +
    `${encodeURIComponent(sluiceBase)}&topic=${encodeURIComponent(topic)}`;
  check(new URL(pageUrl).origin !== new URL(sluiceBase).origin, 'page and sluice share an origin');

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu'],
    timeout: 30000,
  });
  page = await browser.newPage();
  page.on('console', (m) => log(`page console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e}`));
  await page.goto(pageUrl, { timeout: 30000 });
  await page.waitForFunction(() => window.pageReady === true, null, { timeout: WAIT_MS });
  log('page', pageUrl, 'against', sluiceBase);

  await phase0Cors();
  const p1 = await phase1Live();
  const p2 = await phase2Resume(p1);
  if (withRestart) await phase3Restart(p2);
  const s = await state();
  check(s.errors.length === 0, `page script errors: ${J(s.errors)}`);
  console.log('PASS');
  process.exitCode = 0;
} catch (e) {
  console.error(e instanceof TestFailure ? `FAIL: ${e.message}` : `FAIL: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  if (browser) await browser.close().catch(() => {});
  if (staticSrv) staticSrv.close();
  process.stdin.destroy();
}
