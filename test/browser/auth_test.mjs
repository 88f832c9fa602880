#!/usr/bin/env node
// Headless-Chromium test of authorization from a page: browsers' EventSource and WebSocket
// cannot set an Authorization header, so they carry the token as ?access_token=.
//
//   node test/browser/auth_test.mjs http://127.0.0.1:PORT TOPIC SUB_TOKEN PUB_TOKEN SHORT_TOKEN
//
// SUB_TOKEN may subscribe to TOPIC, PUB_TOKEN may publish to it (Node publishes with it as a
// Bearer header), SHORT_TOKEN may subscribe but expires a few seconds after it was made.
//   1. Without a token the page's EventSource is refused (401 ends it: readyState CLOSED) and
//      its WebSocket never opens.
//   2. With ?access_token= both open from a page of another origin and receive what Node
//      publishes.
//   3. With the short token, the EventSource receives `sluice.expired` when the token expires
//      and the WebSocket is closed with code 4401.
// The last stdout line is "PASS", or the script exits non-zero with "FAIL: ..." on stderr.

import http from 'node:http';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT_MS = Number(process.env.BROWSER_TEST_WAIT_MS || 15000);
const [base, topic, subTok, pubTok, shortTok] = process.argv.slice(2);
if (!shortTok) {
  console.error('usage: auth_test.mjs http://HOST:PORT TOPIC SUB_TOKEN PUB_TOKEN SHORT_TOKEN');
  process.exit(2);
}
const log = (...a) => console.error('[auth_test]', ...a);
class TestFailure extends Error {}
const fail = (m) => { throw new TestFailure(m); };
const check = (c, m) => { if (!c) fail(m); };
const J = (v) => JSON.stringify(v);

const PAGE = String.raw`<!doctype html><html><head><meta charset="utf-8"></head><body><script>
'use strict';
const p = new URL(location.href).searchParams;
const SLUICE = p.get('sluice'), TOPIC = p.get('topic');
window.T = {};
window.openES = (name, query) => {
  const t = T[name] = { msgs: [], expired: [], opens: 0, errors: 0, state: -1 };
  const es = new EventSource(SLUICE + '/topics/' + TOPIC + query);
  es.onopen = () => { t.opens++; };
  es.onmessage = (e) => { t.msgs.push(e.data); };
  es.addEventListener('sluice.expired', (e) => { t.expired.push(JSON.parse(e.data)); });
  es.onerror = () => { t.errors++; };
  setInterval(() => { t.state = es.readyState; }, 20);
};
window.openWS = (name, query) => {
  const t = T[name] = { msgs: [], opens: 0, closes: [] };
  const s = new WebSocket(SLUICE.replace(/^http/, 'ws') + '/topics/' + TOPIC + query);
  s.onopen = () => { t.opens++; };
  s.onmessage = (e) => { t.msgs.push(JSON.parse(e.data).data); };
  s.onclose = (e) => { t.closes.push({ code: e.code, reason: e.reason }); };
};
window.pageReady = true;
</script></body></html>`;

let browser = null, staticSrv = null, page = null;
const watchdog = setTimeout(() => { console.error('FAIL: time limit'); process.exit(1); }, 90000);

async function waitFor(what, pred) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const s = await page.evaluate(() => T);
    if (pred(s)) return s;
    if (Date.now() > deadline) fail(`timed out waiting for: ${what}\npage state: ${J(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function publish(data) {
  const r = await fetch(`${base}/topics/${topic}`, {
    method: 'POST', body: data, headers: { Authorization: `Bearer ${pubTok}` } });
  check(r.status === 202, `publish: HTTP ${r.status} ${await r.text()}`);
}

try {
  staticSrv = await new Promise((resolve) => {
    const s = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(PAGE);
    });
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
  const pageUrl = `http://127.0.0.1:${staticSrv.address().port}/?sluice=` +
    `${encodeURIComponent(base)}&topic=${encodeURIComponent(topic)}`;
  browser = await chromium.launch({ executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu'], timeout: 30000 });
  page = await browser.newPage();
  page.on('pageerror', (e) => log(`page error: ${e}`));
  await page.goto(pageUrl, { timeout: 30000 });
  await page.waitForFunction(() => window.pageReady === true, null, { timeout: WAIT_MS });

  // 1. no token
  await page.evaluate(() => { openES('anon', ''); openWS('anonws', '?format=json'); });
  await waitFor('the anonymous EventSource is refused for good',
    (s) => s.anon.state === 2 && s.anon.errors >= 1 && s.anonws.closes.length === 1);
  let s = await page.evaluate(() => T);
  check(s.anon.opens === 0 && s.anonws.opens === 0, `anonymous subscribers opened: ${J(s)}`);
  log('1 ok: without a token the EventSource is refused and the WebSocket never opens');

  // 2. ?access_token=
  const q = `?access_token=${encodeURIComponent(subTok)}`;
  await page.evaluate((q) => { openES('es', q); openWS('ws', q + '&format=json'); }, q);
  await waitFor('both open', (s) => s.es.opens === 1 && s.ws.opens === 1);
  const sent = ['one', 'two', 'three'];
  for (const m of sent) await publish(m);
  s = await waitFor('three messages on each', (s) => s.es.msgs.length >= 3 && s.ws.msgs.length >= 3);
  check(J(s.es.msgs) === J(sent) && J(s.ws.msgs) === J(sent), `received ${J(s)}`);
  log('2 ok: EventSource and WebSocket with ?access_token= received', sent.length, 'messages');

  // 3. expiry
  const sq = `?access_token=${encodeURIComponent(shortTok)}`;
  await page.evaluate((q) => { openES('short', q); openWS('shortws', q + '&format=json'); }, sq);
  await waitFor('short-lived subscribers open', (s) => s.short.opens === 1 && s.shortws.opens === 1);
  s = await waitFor('expiry reaches both',
    (s) => s.short.expired.length === 1 && s.shortws.closes.length === 1 && s.short.state === 2);
  check(s.short.expired[0].reason === 'token_expired', `expired event ${J(s.short.expired)}`);
  check(s.shortws.closes[0].code === 4401, `WebSocket close ${J(s.shortws.closes)}`);
  log('3 ok: sluice.expired on the EventSource, close 4401 on the WebSocket');
  console.log('PASS');
  process.exitCode = 0;
} catch (e) {
  console.error(e instanceof TestFailure ? `FAIL: ${e.message}` : `FAIL: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  if (browser) await browser.close().catch(() => {});
  if (staticSrv) staticSrv.close();
}
