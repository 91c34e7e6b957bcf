// /dashboard against a server with no tokens: the list, a live progress bar,
// the status and prefix filters, failed and stalled rows, the detail view
// (result, error, metadata, children, stages) following a record live, and
// record text that tries to inject markup staying text.
//
// Records written by tests/browser.rs before this starts:
//   dash-run      running, 10 %, stage RESEARCH then CHAPTERS, two children, metadata
//   dash-failed   failed, with an error object
//   dash-done     completed, with a result and metadata
//   dash-stalled  running, never written again (the server's heartbeat window is short)
//   dash-xss      message and metadata holding markup

import { base, run, write, log, assert, assertEqual, until, sleep, screenshot, watchConsole } from './lib.mjs';

const ALL = ['dash-run', 'dash-failed', 'dash-done', 'dash-stalled', 'dash-xss'];

await run('dashboard', async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const problems = watchConsole(page, 'dashboard');
  // Pages of four records, so the five need `Load more`.
  const response = await page.goto(`${base}/dashboard?refresh=1&limit=4`);
  assertEqual(response.status(), 200, 'GET /dashboard');
  const csp = response.headers()['content-security-policy'] || '';
  assert(csp.includes("default-src 'self'") && csp.includes("script-src 'self'"), `a strict CSP: ${csp}`);

  const row = (id) => page.evaluate((id) => {
    const tr = [...document.querySelectorAll('#rows tr')].find((r) => r.dataset.id === id);
    if (!tr) return null;
    const bar = tr.querySelector('[role=progressbar]');
    return {
      classes: [...tr.classList],
      valuenow: Number(bar.getAttribute('aria-valuenow')),
      width: bar.firstChild.style.width,
      text: tr.textContent,
    };
  }, id);
  const shownIds = () => page.evaluate(() => [...document.querySelectorAll('#rows tr')].map((r) => r.dataset.id));

  // The first page: the four newest; `Load more` follows next_cursor.
  await until('the first page', async () => (await shownIds()).length === 4);
  assertEqual(await shownIds(), ['dash-xss', 'dash-stalled', 'dash-done', 'dash-failed'], 'the first page, newest first');
  assert(await page.isVisible('#more'), 'Load more is offered');
  await page.click('#more');

  // The list: every record, newest first.
  await until('all records listed', async () => {
    const shown = await shownIds();
    return ALL.every((id) => shown.includes(id));
  });
  const ids = await shownIds();
  for (const id of ALL) assert(ids.includes(id), `${id} is listed (got ${ids})`);
  assertEqual(ids, [...ALL].reverse(), 'newest first');
  await until('no further page', () => page.isHidden('#more'));

  const first = await row('dash-run');
  assertEqual(first.valuenow, 10, 'dash-run starts at 10 %');
  assertEqual(first.width, '10%', 'the bar is 10 % wide');
  assert((await row('dash-failed')).classes.includes('is-failed'), 'the failed record is highlighted');
  await until('dash-stalled is highlighted as stalled', async () => (await row('dash-stalled')).classes.includes('is-stalled'));
  assert((await row('dash-stalled')).text.includes('stalled'), 'the stalled row says so');
  const stalledText = (await row('dash-stalled')).text;
  assert(!stalledText.includes('any moment') && !/\bin \d/.test(stalledText), `a stalled row shows no ETA: ${stalledText}`);

  // Markup in record data stays text.
  const xss = await row('dash-xss');
  assert(xss.text.includes('<img src=x onerror='), `the message is shown as text: ${xss.text}`);
  assertEqual(await page.evaluate(() => window.__pwned === undefined && !document.querySelector('#rows img')), true, 'no injected element ran');

  await screenshot(page, 'dashboard.png');

  // A PUT/PATCH that moves progress moves the bar.
  await write(['PATCH', 'dash-run', { progress: 60 }]);
  await until('the bar of dash-run reaches 60 %', async () => {
    const r = await row('dash-run');
    return r.valuenow === 60 && r.width === '60%';
  });
  log('the list bar moved from 10 % to 60 %');

  // Filter by status, then by prefix, then clear.
  await page.selectOption('#filter-status', 'failed');
  await until('only failed records', async () => JSON.stringify(await shownIds()) === JSON.stringify(['dash-failed']));
  assert(page.url().includes('status=failed'), `the filter is in the URL: ${page.url()}`);
  await page.selectOption('#filter-status', 'running');
  await until('only running records', async () => {
    const shown = await shownIds();
    return shown.length === 3 && ['dash-run', 'dash-stalled', 'dash-xss'].every((id) => shown.includes(id));
  });
  await page.selectOption('#filter-status', 'completed,failed,cancelled');
  await until('only finished records', async () => JSON.stringify((await shownIds()).sort()) === JSON.stringify(['dash-done', 'dash-failed']));
  await page.selectOption('#filter-status', '');
  await page.fill('#filter-prefix', 'dash-d');
  await until('only the dash-d prefix', async () => JSON.stringify(await shownIds()) === JSON.stringify(['dash-done']));
  await page.fill('#filter-prefix', '');
  await until('the first page again', async () => (await shownIds()).length === 4);
  await page.click('#more');
  await until('everything again', async () => (await shownIds()).length === ALL.length);

  // Detail: result and metadata of a finished record.
  await page.click('#rows tr[data-id="dash-done"]');
  await until('the detail of dash-done', async () => (await page.textContent('#d-id')) === 'dash-done' && !(await page.isHidden('#d-result-box')));
  const result = JSON.parse(await page.textContent('#d-result'));
  assertEqual(result, { url: 'https://example.com/book.pdf', pages: 312 }, 'the result');
  assertEqual(JSON.parse(await page.textContent('#d-metadata')), { bookId: 42 }, 'the metadata');
  assert(await page.isHidden('#d-error-box'), 'no error box for a completed record');
  await until('the finished watch says so', async () => (await page.textContent('#d-live')) === 'finished');

  // Detail: the error of a failed record.
  await page.click('#rows tr[data-id="dash-failed"]');
  await until('the detail of dash-failed', async () => (await page.textContent('#d-id')) === 'dash-failed' && !(await page.isHidden('#d-error-box')));
  assertEqual(JSON.parse(await page.textContent('#d-error')), { message: 'the printer caught fire', code: 'E_FIRE' }, 'the error');
  assertEqual(await page.textContent('#d-status'), 'failed', 'the status badge');

  // Detail: markup in metadata stays text.
  await page.click('#rows tr[data-id="dash-xss"]');
  await until('the detail of dash-xss', async () => (await page.textContent('#d-id')) === 'dash-xss' && !(await page.isHidden('#d-metadata-box')));
  assert((await page.textContent('#d-metadata')).includes('<script>'), 'metadata markup is shown as text');
  assertEqual(await page.evaluate(() => window.__pwned === undefined && !document.querySelector('#detail script, #detail img')), true, 'no injected element');

  // Detail: a running record followed live.
  await page.click('#rows tr[data-id="dash-run"]');
  await until('the detail of dash-run', async () => (await page.textContent('#d-id')) === 'dash-run');
  await until('the live watch is connected', async () => (await page.textContent('#d-live')).startsWith('live'));
  assertEqual(await page.getAttribute('#d-bar', 'aria-valuenow'), '60', 'the detail bar');
  const children = await page.$$eval('#d-children li', (items) => items.map((li) => ({
    text: li.querySelector('.child-head').textContent,
    value: li.querySelector('[role=progressbar]').getAttribute('aria-valuenow'),
  })));
  assertEqual(children.map((c) => c.value), ['100', '25'], 'the children bars');
  assert(children[0].text.includes('Chapter 1'), `child titles: ${JSON.stringify(children)}`);
  const stagesBefore = await page.$$eval('#d-stages li', (items) => items.map((li) => li.textContent));
  assertEqual(stagesBefore.length, 1, `one stage so far: ${stagesBefore}`);

  await write(['PATCH', 'dash-run', { stage: 'CHAPTERS', progress: 80, message: 'writing chapter 2' }]);
  await until('the detail follows to 80 %', async () => (await page.getAttribute('#d-bar', 'aria-valuenow')) === '80');
  const stages = await page.$$eval('#d-stages li', (items) => items.map((li) => li.textContent));
  assertEqual(stages.length, 2, `two stages: ${stages}`);
  assert(stages[0].startsWith('RESEARCH') && /\d/.test(stages[0]), `the closed stage has a duration: ${stages[0]}`);
  assert(stages[1].startsWith('CHAPTERS') && stages[1].includes('so far'), `the open stage: ${stages[1]}`);
  assertEqual(await page.textContent('#d-message'), 'writing chapter 2', 'the message follows');
  assert((await page.textContent('#d-facts')).includes('ETA'), 'an ETA is shown while running with a rate');
  await sleep(500);  // the bars' width transition
  await screenshot(page, 'dashboard-detail.png');

  await write(['PATCH', 'dash-run', { status: 'completed' }]);
  await until('the detail shows completion', async () =>
    (await page.textContent('#d-status')) === 'completed' && (await page.textContent('#d-live')) === 'finished');
  assertEqual(await page.getAttribute('#d-bar', 'aria-valuenow'), '100', 'completed at 100 %');
  assertEqual((await row('dash-run')).valuenow, 100, 'the list row follows the detail view');

  // Escape closes the detail view.
  await page.keyboard.press('Escape');
  await until('the detail closes', () => page.isHidden('#detail'));

  const cspViolations = problems.filter((p) => /Content Security Policy|Refused/.test(p));
  assertEqual(cspViolations, [], 'no CSP violations');
  assertEqual(problems, [], 'no console errors');
});
