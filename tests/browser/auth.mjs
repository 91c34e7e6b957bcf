// /dashboard against a server with tokens (read token `reader-token`):
// without a token it says clearly that one is needed, a wrong token is
// refused with its own message, the read token shows the jobs and the
// detail view follows a record live with it, and `#token=` in the URL
// fragment works too and is removed from the address bar.
//
// Records written by tests/browser.rs before this starts:
//   auth-job  running, 20 %

import { base, run, write, log, assert, assertEqual, until, sleep, screenshot } from './lib.mjs';

const READ_TOKEN = 'reader-token';

await run('auth', async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1300, height: 700 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  const rowIds = () => page.$$eval('#rows tr', (rows) => rows.map((r) => r.dataset.id));

  // The page itself needs no token.
  const response = await page.goto(`${base}/dashboard?refresh=1`);
  assertEqual(response.status(), 200, 'the page loads without a token');

  // No token: a clear message, no rows.
  await until('the no-token message', () => page.isVisible('#notice'));
  const missing = await page.textContent('#notice');
  log('without a token:', missing);
  assert(missing.includes('401') && /needs a token/.test(missing) && /read token/.test(missing), `the message explains: ${missing}`);
  assertEqual(await rowIds(), [], 'no rows without a token');
  assertEqual(await page.textContent('#token-state'), 'no token', 'the token state');
  await screenshot(page, 'dashboard-unauthorized.png');

  // A wrong token: refused, said so.
  await page.fill('#token-input', 'not-the-token');
  await page.click('#token-form button[type=submit]');
  await until('the wrong-token message', async () => /did not accept/.test(await page.textContent('#notice')));
  assertEqual(await rowIds(), [], 'no rows with a wrong token');

  // The read token: the jobs appear, the message goes.
  await page.fill('#token-input', READ_TOKEN);
  await page.click('#token-form button[type=submit]');
  await until('the job list', async () => (await rowIds()).includes('auth-job'));
  await until('the message is gone', () => page.isHidden('#notice'));
  assertEqual(await page.textContent('#token-state'), 'token set', 'the token state');
  assertEqual(await page.inputValue('#token-input'), '', 'the input does not keep showing the token');
  assertEqual(await page.evaluate(() => sessionStorage.getItem('progressd.token')), READ_TOKEN, 'kept for this session');
  assertEqual(await page.evaluate(() => localStorage.getItem('progressd.token')), null, 'not remembered unless asked');

  // The detail view follows the record with the token (bearer on the stream or the polls).
  await page.click('#rows tr[data-id="auth-job"]');
  await until('the detail is live', async () => (await page.textContent('#d-live')).startsWith('live'));
  assertEqual(await page.getAttribute('#d-bar', 'aria-valuenow'), '20', 'the detail starts at 20 %');
  await write(['PATCH', 'auth-job', { progress: 70, message: 'nearly there' }]);
  await until('the detail follows to 70 %', async () => (await page.getAttribute('#d-bar', 'aria-valuenow')) === '70');
  assertEqual(await page.textContent('#d-message'), 'nearly there', 'the message follows');
  await sleep(500);  // the bars' width transition
  await screenshot(page, 'dashboard-authorized.png');

  // Forget: back to the message.
  await page.click('#token-forget');
  await until('the no-token message again', async () => /needs a token/.test(await page.textContent('#notice')));

  // A fresh browser with the token in the fragment.
  const fresh = await browser.newContext({ viewport: { width: 1300, height: 700 } });
  const other = await fresh.newPage();
  other.on('pageerror', (error) => pageErrors.push(error.message));
  await other.goto(`${base}/dashboard?refresh=1#token=${READ_TOKEN}`);
  await until('the list with the fragment token', async () =>
    (await other.$$eval('#rows tr', (rows) => rows.map((r) => r.dataset.id))).includes('auth-job'));
  assert(!other.url().includes(READ_TOKEN), `the token left the address bar: ${other.url()}`);
  assert(await other.isHidden('#notice'), 'no message with the fragment token');
  await fresh.close();

  assertEqual(pageErrors, [], 'no uncaught errors in the page');
});
