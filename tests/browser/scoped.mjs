// Scoped tokens in a real browser (issue 19). The server has a read token,
// a write token and the signing key below; this script mints its own HS256
// JWTs with that key, as an app's backend would.
//
// (1) A page holding only a one-id token watches its job over `EventSource`
//     with `?access_token=`, live; the same token on another id is refused.
// (2) client.js's watchAll with a prefix token from a function returning a
//     promise: the first token it gets has expired, the 401 makes it ask
//     again, and then it follows the prefix only, live.
// (3) The dashboard opened with a prefix token (`#token=`) shows only that
//     prefix, and follows it live over the multi-record stream.
//
// Records written by tests/browser.rs before this starts:
//   user-7:book   running, 10 %
//   user-7:draft  pending
//   user-8:other  running, 50 %

import { createHmac } from 'node:crypto';
import { base, run, write, log, assert, assertEqual, until, screenshot } from './lib.mjs';

const KID = 'k1';
const SECRET = 'browser-scoped-signing-key-0123456789abcdef';

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

function jwt(claims) {
  const head = b64url({ alg: 'HS256', typ: 'JWT', kid: KID }) + '.' + b64url(claims);
  return head + '.' + createHmac('sha256', SECRET).update(head).digest('base64url');
}

const now = () => Math.floor(Date.now() / 1000);
const bookToken = jwt({ sub: 'user-7:book', exp: now() + 600 });
const prefixToken = jwt({ prefix: 'user-7:', exp: now() + 600 });
const expiredToken = jwt({ prefix: 'user-7:', exp: now() - 60 });

await run('scoped', async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1300, height: 700 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));

  // (1) EventSource with ?access_token=: no header, just the URL.
  await page.goto(`${base}/healthz`);
  await page.evaluate(({ base, token }) => {
    window.events = [];
    window.refused = null;
    const source = new EventSource(`${base}/progress/user-7:book/events?access_token=${token}`);
    source.addEventListener('progress', (e) => window.events.push(JSON.parse(e.data)));
    window.source = source;
    const other = new EventSource(`${base}/progress/user-8:other/events?access_token=${token}`);
    other.onerror = () => { window.refused = other.readyState; other.close(); };
  }, { base, token: bookToken });
  await until('the first event', () => page.evaluate(() => window.events.length >= 1));
  assertEqual(await page.evaluate(() => window.events[0].progress), 10, 'the job as it is');
  await write(['PATCH', 'user-7:book', { progress: 60 }]);
  await until('the change arrives', () => page.evaluate(() => window.events.some((r) => r.progress === 60)));
  await until('the other id is refused', () => page.evaluate(() => window.refused !== null));
  assertEqual(await page.evaluate(() => window.refused), 2, 'EventSource gave up on the 403 (CLOSED)');
  await page.evaluate(() => window.source.close());
  log('EventSource followed user-7:book with a one-id token');

  // (2) watchAll, the token from a function returning a promise.
  await page.addScriptTag({ url: `${base}/client.js` });
  await page.evaluate(({ base, tokens }) => {
    window.asked = 0;
    window.seen = {};
    window.errors = [];
    window.readyCount = null;
    window.progressd.watchAll({}, (record) => { window.seen[record.id] = record; }, {
      baseUrl: base,
      token: () => new Promise((resolve) => setTimeout(() => resolve(tokens[Math.min(window.asked++, 1)]), 10)),
      onReady: (count) => { window.readyCount = count; },
      onError: (error) => window.errors.push(error.status),
    });
  }, { base, tokens: [expiredToken, prefixToken] });
  await until('the snapshot', () => page.evaluate(() => window.readyCount !== null));
  assertEqual(await page.evaluate(() => Object.keys(window.seen).sort()), ['user-7:book', 'user-7:draft'], 'the prefix only');
  assertEqual(await page.evaluate(() => window.errors), [401], 'the expired token was refused once');
  assertEqual(await page.evaluate(() => window.asked), 2, 'then the function was asked again');
  await write(['PATCH', 'user-8:other', { progress: 55 }], ['PATCH', 'user-7:draft', { status: 'running', progress: 5 }]);
  await until('the prefix follows live', () => page.evaluate(() => window.seen['user-7:draft'].status === 'running'));
  assert(await page.evaluate(() => !('user-8:other' in window.seen)), 'nothing outside the prefix');

  // (3) The dashboard with a prefix token.
  const dash = await context.newPage();
  dash.on('pageerror', (error) => pageErrors.push(error.message));
  await dash.goto(`${base}/dashboard#token=${prefixToken}`);
  const shownIds = () => dash.evaluate(() => [...document.querySelectorAll('#rows tr')].map((r) => r.dataset.id).sort());
  await until('the prefix listed', async () => JSON.stringify(await shownIds()) === JSON.stringify(['user-7:book', 'user-7:draft']));
  await write(['PUT', 'user-8:new', { status: 'running' }], ['PUT', 'user-7:new', { status: 'running', progress: 1 }],
    ['PATCH', 'user-7:book', { progress: 80 }]);
  await until('a new job of the prefix appears', async () => (await shownIds()).includes('user-7:new'));
  await until('the book row moves to 80 %', () => dash.evaluate(() => {
    const tr = [...document.querySelectorAll('#rows tr')].find((r) => r.dataset.id === 'user-7:book');
    return tr && tr.querySelector('[role=progressbar]').getAttribute('aria-valuenow') === '80';
  }));
  assertEqual(await shownIds(), ['user-7:book', 'user-7:draft', 'user-7:new'], 'still only the prefix');
  assert(await dash.isHidden('#notice'), 'no message with the prefix token');
  await screenshot(dash, 'dashboard-prefix-token.png');

  assertEqual(pageErrors, [], 'no uncaught errors in the pages');
});
