// Cancellation from a browser (issue 21). The server has a read token, a
// write token and the signing key below; this script mints its own HS256
// JWTs with that key, as an app's backend would, some with the claim
// `"cancel": true`.
//
// (1) A page holding a one-id token with the cancel claim watches its job
//     through client.js and calls handle.requestCancel('user asked'); the
//     test's worker then PATCHes progress and its response carries
//     cancel_requested_at; it acknowledges with status: cancelled, which the
//     page's watch delivers as its end.
// (2) The same page cannot cancel another id, and a token without the
//     claim cannot cancel its own: both rejected with 403 forbidden_scope.
// (3) The dashboard shows no Cancel button with a prefix token that only
//     reads; with one that carries the claim it shows them on running and
//     pending jobs only, and a click records the request, which the
//     worker's next write sees.
//
// Records written by tests/browser.rs before this starts:
//   user-7:book   running, 10 %
//   user-7:draft  pending
//   user-7:done   completed
//   user-7:run    running, 30 %
//   user-8:other  running, 50 %

import { createHmac } from 'node:crypto';
import { base, run, step, log, assert, assertEqual, until, screenshot } from './lib.mjs';

const KID = 'k1';
const SECRET = 'browser-cancel-signing-key-0123456789abcdef';

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

function jwt(claims) {
  const head = b64url({ alg: 'HS256', typ: 'JWT', kid: KID }) + '.' + b64url(claims);
  return head + '.' + createHmac('sha256', SECRET).update(head).digest('base64url');
}

const exp = Math.floor(Date.now() / 1000) + 600;
const bookCanceller = jwt({ sub: 'user-7:book', exp, cancel: true });
const bookReader = jwt({ sub: 'user-7:book', exp });
const prefixReader = jwt({ prefix: 'user-7:', exp });
const prefixCanceller = jwt({ prefix: 'user-7:', exp, cancel: true });

/** The test's worker: one write, its response body. */
const worker = (method, id, body) => step('respond', { method, id, body });

await run('cancel', async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1300, height: 700 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));

  // (1) requestCancel through client.js with a token carrying the claim.
  await page.goto(`${base}/healthz`);
  await page.addScriptTag({ url: `${base}/client.js` });
  await page.evaluate(({ base, token }) => {
    window.seen = [];
    window.ended = null;
    window.handle = window.progressd.watch('user-7:book', (record) => window.seen.push(record), {
      baseUrl: base, token, onEnd: (reason) => { window.ended = reason; },
    });
  }, { base, token: bookCanceller });
  await until('the job as it is', () => page.evaluate(() => window.seen.length >= 1));
  const requested = await page.evaluate(() => window.handle.requestCancel('user asked'));
  assert(typeof requested.cancel_requested_at === 'string', `the record says when: ${JSON.stringify(requested)}`);
  assertEqual(requested.cancel_reason, 'user asked', 'and why');
  assertEqual(requested.status, 'running', 'the job itself has not stopped yet');
  const seenByWorker = await worker('PATCH', 'user-7:book', { progress: 20 });
  assertEqual(seenByWorker.cancel_requested_at, requested.cancel_requested_at, "the worker's next PATCH sees the request");
  assertEqual(seenByWorker.cancel_reason, 'user asked', 'with its reason');
  log('the worker saw the request in its PATCH response', seenByWorker.cancel_requested_at);
  await worker('PATCH', 'user-7:book', { status: 'cancelled' });
  await until('the watch ends on the acknowledgement', () => page.evaluate(() => window.ended === 'terminal'));
  const last = await page.evaluate(() => window.seen[window.seen.length - 1]);
  assertEqual([last.status, last.cancel_reason], ['cancelled', 'user asked'], 'the page saw it end as cancelled');
  // Finished: a second request is a 409.
  const late = await page.evaluate(() => window.handle.requestCancel().then(() => null, (e) => [e.status, e.code]));
  assertEqual(late, [409, 'conflict_terminal'], 'a finished job cannot be cancelled');

  // (2) Nothing but its own job, and nothing without the claim.
  const refusals = await page.evaluate(async ({ base, canceller, reader }) => {
    const code = (p) => p.then(() => 'accepted', (e) => `${e.status} ${e.code}`);
    return [
      await code(window.progressd.requestCancel('user-8:other', 'not mine', { baseUrl: base, token: canceller })),
      await code(window.progressd.requestCancel('user-7:draft', null, { baseUrl: base, token: () => reader })),
    ];
  }, { base, canceller: bookCanceller, reader: bookReader });
  assertEqual(refusals, ['403 forbidden_scope', '403 forbidden_scope'], 'another id; no claim');
  const other = await worker('PATCH', 'user-8:other', { progress: 55 });
  assertEqual(other.cancel_requested_at, null, 'the refused requests changed nothing');

  // (3) The dashboard: no button with a token that only reads…
  const dash = await context.newPage();
  dash.on('pageerror', (error) => pageErrors.push(error.message));
  const visibleButtons = () => dash.evaluate(() => [...document.querySelectorAll('#rows tr')]
    .filter((tr) => { const b = tr.querySelector('button.cancel-job'); return b && !b.hidden; })
    .map((tr) => tr.dataset.id).sort());
  await dash.goto(`${base}/dashboard#token=${prefixReader}`);
  await until('the prefix listed', () => dash.evaluate(() => document.querySelectorAll('#rows tr').length === 4));
  // Give GET /access time to answer: the buttons must stay hidden.
  await new Promise((resolve) => setTimeout(resolve, 500));
  assertEqual(await visibleButtons(), [], 'a read-only token shows no Cancel button');
  // …and with one that carries the claim, on the running and pending jobs only.
  await dash.goto(`${base}/dashboard#token=${prefixCanceller}`);
  await dash.reload();
  await until('the Cancel buttons', async () => JSON.stringify(await visibleButtons()) === JSON.stringify(['user-7:draft', 'user-7:run']));
  // user-7:book is cancelled and user-7:done completed: only the pending draft and the running job can be.
  await screenshot(dash, 'dashboard-cancel-button.png');
  // One click arms the button, the second sends the request.
  const draftButton = '#rows tr[data-id="user-7:draft"] button.cancel-job';
  await dash.click(draftButton);
  assertEqual(await dash.textContent(draftButton), 'Confirm?', 'a first click only asks to confirm');
  assert(await dash.evaluate(() => document.querySelector('#rows tr[data-id="user-7:draft"] .badge-cancel-requested').hidden),
    'nothing sent yet');
  await dash.click(draftButton);
  await until('the request shows', () => dash.evaluate(() => {
    const tr = [...document.querySelectorAll('#rows tr')].find((r) => r.dataset.id === 'user-7:draft');
    return tr && !tr.querySelector('.badge-cancel-requested').hidden && tr.querySelector('button.cancel-job').hidden;
  }));
  assert(await dash.isHidden('#detail'), 'the click did not open the detail view');
  const draft = await worker('PATCH', 'user-7:draft', { status: 'running' });
  assert(typeof draft.cancel_requested_at === 'string', `the worker's next PATCH sees the dashboard's request: ${JSON.stringify(draft)}`);
  assertEqual(draft.cancel_reason, 'cancelled from the dashboard', 'the dashboard says where it came from');
  await screenshot(dash, 'dashboard-cancel-requested.png');
  // The detail view of the running job has its own button.
  await dash.click('#rows tr[data-id="user-7:run"] .job-id');
  await until('the detail view', () => dash.isVisible('#d-cancel'));
  await dash.click('#d-cancel');
  await dash.click('#d-cancel');
  await until('the detail view shows the request', () => dash.evaluate(() =>
    document.getElementById('d-cancel').hidden && document.getElementById('d-facts').textContent.includes('cancelled from the dashboard')));
  const run = await worker('PATCH', 'user-7:run', { progress: 40 });
  assert(typeof run.cancel_requested_at === 'string', 'the running job\'s worker sees it too');
  assertEqual(await visibleButtons(), [], 'no job left to cancel');

  assertEqual(pageErrors, [], 'no uncaught errors in the pages');
});
