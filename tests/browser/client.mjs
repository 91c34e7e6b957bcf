// /client.js dropped into a page of another origin (a static server of this
// script; the progressd under test allows any CORS origin and needs the read
// token `reader`): progressd.watch delivers versions in order and stops on a
// terminal status, cancel() stops it, a deletion ends it, a 404 waits for the
// record to appear while a 410 ends the watch, a missing token is a fatal
// 401, and with the event stream blocked it falls back to polling.
//
// Records written by tests/browser.rs before this starts, each `running`:
//   c-order, c-resume, c-cancel, c-poll, c-del, c-del-poll; and book-42 (10 %)
// for the README's browser snippet, run as printed (only its host changed).

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { base, run, write, log, assert, assertEqual, until, sleep, screenshot, hasEventStream } from './lib.mjs';

const TOKEN = 'reader';

const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>client.js on another origin</title>
<link rel="icon" href="data:,">
<script src="${base}/client.js"></script>
<style>body{font:14px system-ui;margin:20px} pre{background:#f4f4f4;padding:8px}</style>
</head><body>
<h1>progressd.watch from another origin</h1>
<pre id="log"></pre>
<script>
  window.updates = {}; window.ends = {}; window.errors = {}; window.handles = {};
  function line(text) { document.getElementById('log').textContent += text + '\\n'; }
  window.startWatch = function (name, id, options) {
    updates[name] = []; errors[name] = [];
    var opts = Object.assign({}, options, {
      onError: function (e) {
        errors[name].push({ status: e.status, code: e.code || null, fatal: !!e.fatal, message: e.message });
        line(name + ': error ' + e.status + (e.fatal ? ' (fatal)' : ''));
      },
      onEnd: function (reason) { ends[name] = reason; line(name + ': end (' + reason + ')'); }
    });
    handles[name] = progressd.watch(id, function (r) {
      updates[name].push({ version: r.version, status: r.status, progress: r.progress });
      line(name + ': v' + r.version + ' ' + r.status + ' ' + r.progress + ' % via ' + handles[name].transport);
    }, opts);
    return handles[name].transport;
  };
</script>
</body></html>`;

// The README's first html block, the host of its script changed to the server's.
const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const snippet = readme.split('```html\n')[1].split('\n```')[0];
const README_PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>README snippet</title>
<link rel="icon" href="data:,"></head><body>
${snippet.replaceAll('https://progressd.example', base)}
</body></html>`;

// The page's own origin: a different port of 127.0.0.1 is a different origin.
const server = createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(req.url === '/readme.html' ? README_PAGE : PAGE);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/page.html`;

function assertInOrder(list, what) {
  for (let i = 1; i < list.length; i++) {
    assert(list[i].version > list[i - 1].version, `${what}: versions increase (${list.map((u) => u.version)})`);
  }
}

await run('client', async (browser) => {
  const sse = await hasEventStream('c-order', TOKEN);
  log(sse ? 'the server streams events' : 'NOTE: the server has no event stream; the client is tested on polling only');

  const page = await browser.newPage({ viewport: { width: 900, height: 700 } });
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  const requests = [];
  page.on('request', (request) => requests.push(request.url()));
  const requestsFor = (id) => requests.filter((url) => new URL(url).pathname.startsWith(`/progress/${id}`)).length;
  const js = (fn, ...args) => page.evaluate(fn, ...args);

  await page.goto(pageUrl);
  assertEqual(await js(() => typeof window.progressd.watch), 'function', 'client.js defines progressd.watch');

  // No token where one is needed: a fatal 401, reported once, and the watch ends.
  await js(() => startWatch('noauth', 'c-order', {}));
  await until('the tokenless watch ends', () => js(() => ends.noauth));
  assertEqual(await js(() => ends.noauth), 'error', 'ends with an error');
  const noauth = await js(() => errors.noauth);
  assertEqual(noauth.map((e) => [e.status, e.code, e.fatal]), [[401, 'unauthorized', true]], 'one fatal 401');

  // Updates arrive in order and the watch stops after the terminal one.
  const transport = await js(() => startWatch('order', 'c-order', { token: 'reader' }));
  assertEqual(transport, 'sse', 'streams by default');
  await until('the first update', () => js(() => updates.order.length >= 1));
  await write(...[10, 20, 30, 40, 50, 60, 70, 80, 90].flatMap((p) => [['PATCH', 'c-order', { progress: p }], 30]),
    ['PATCH', 'c-order', { status: 'completed', result: { ok: true } }]);
  await until('the terminal update', () => js(() => ends.order), 20_000);
  assertEqual(await js(() => ends.order), 'terminal', 'ends on the terminal status');
  const order = await js(() => updates.order);
  log('c-order updates', JSON.stringify(order));
  assertInOrder(order, 'c-order');
  assert(order.length >= 3, `several updates arrived: ${order.length}`);
  assertEqual(order[order.length - 1].status, 'completed', 'the terminal version is delivered last');
  assertEqual(order[order.length - 1].progress, 100, 'completed at 100 %');
  assertEqual(order[order.length - 1].version, 11, 'the last version is the terminal write');
  if (sse) assertEqual(await js(() => handles.order.transport), 'sse', 'it stayed on the event stream');
  assertEqual(await js(() => errors.order), [], 'no errors on the way');
  const afterEnd = requestsFor('c-order');
  await sleep(1500);
  assertEqual(requestsFor('c-order'), afterEnd, 'no request after the terminal status');

  // A stream that goes quiet is dropped and resumed with Last-Event-ID;
  // nothing is delivered twice.
  if (sse) {
    const resumeHeaders = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname === '/progress/c-resume/events') resumeHeaders.push(request.headers());
    });
    await js(() => startWatch('resume', 'c-resume', { token: 'reader', idleTimeout: 600 }));
    await until('the first c-resume update', () => js(() => updates.resume.length === 1));
    await until('a reconnect with Last-Event-ID', () => resumeHeaders.some((h) => h['last-event-id'] === '1'));
    await write(['PATCH', 'c-resume', { progress: 50 }], 100, ['PATCH', 'c-resume', { status: 'completed' }]);
    await until('the resumed watch ends', () => js(() => ends.resume), 20_000);
    assertEqual(await js(() => ends.resume), 'terminal', 'resumed: ends on the terminal status');
    const resumed = await js(() => updates.resume);
    log('c-resume updates', JSON.stringify(resumed), 'over', resumeHeaders.length, 'connections');
    assertInOrder(resumed, 'c-resume');
    assertEqual(resumed[resumed.length - 1].version, 3, 'resumed: the terminal version last');
    assert(resumeHeaders.length >= 2, 'reconnected');
    assert((await js(() => errors.resume)).every((e) => !e.fatal), 'quiet streams are not fatal');
  }

  // cancel() stops everything: no update, no request afterwards.
  await js(() => startWatch('cancel', 'c-cancel', { token: 'reader' }));
  await until('the first c-cancel update', () => js(() => updates.cancel.length === 1));
  await js(() => handles.cancel.cancel());
  assertEqual(await js(() => ends.cancel), 'cancelled', 'onEnd(cancelled)');
  assertEqual(await js(() => handles.cancel.done), 'cancelled', 'done resolves to cancelled');
  const beforeWrites = requestsFor('c-cancel');
  await write(['PATCH', 'c-cancel', { progress: 50 }], 100, ['PATCH', 'c-cancel', { status: 'completed' }]);
  await sleep(1500);
  assertEqual(await js(() => updates.cancel.length), 1, 'no update after cancel()');
  assertEqual(requestsFor('c-cancel'), beforeWrites, 'no request after cancel()');

  // A deleted record ends the watch (the stream's `deleted` event, or a 404 when polling).
  await js(() => startWatch('del', 'c-del', { token: 'reader' }));
  await until('the first c-del update', () => js(() => updates.del.length === 1));
  await write(['DELETE', 'c-del']);
  await until('the deletion ends the watch', () => js(() => ends.del));
  assertEqual(await js(() => ends.del), 'deleted', 'ends as deleted');

  await js(() => startWatch('delpoll', 'c-del-poll', { token: 'reader', transport: 'poll' }));
  await until('the first c-del-poll update', () => js(() => updates.delpoll.length === 1));
  await sleep(300);  // the long-poll is waiting now
  await write(['DELETE', 'c-del-poll']);
  await until('the deletion ends the polling watch', () => js(() => ends.delpoll));
  assertEqual(await js(() => ends.delpoll), 'deleted', 'polling: ends as deleted');

  // 404 means "not yet": a watch started before the worker's first PUT
  // waits for it; 410 means gone: a watch of a deleted record ends at once.
  await js(() => startWatch('later', 'c-later', { token: 'reader', interval: 300 }));
  await sleep(1000);
  assertEqual(await js(() => ends.later || null), null, 'a 404 does not end the watch');
  assertEqual(await js(() => errors.later.filter((e) => e.fatal).length), 0, 'nor is it fatal');
  await write(['PUT', 'c-later', { status: 'running' }]);
  await until('the record appears', () => js(() => updates.later.length === 1), 20_000);
  await write(['DELETE', 'c-later']);
  await until('the deletion ends the late watch', () => js(() => ends.later));
  assertEqual(await js(() => ends.later), 'deleted', 'late: ends as deleted');
  for (const transport of ['auto', 'poll']) {
    const name = 'gone' + transport;
    await js((args) => startWatch(args[0], 'c-later', { token: 'reader', transport: args[1] }), [name, transport]);
    await until(`a watch of a gone record ends (${transport})`, () => js((n) => ends[n], name));
    assertEqual(await js((n) => ends[n], name), 'deleted', `410: ends as deleted (${transport})`);
    assertEqual(await js((n) => updates[n].length, name), 0, `410: nothing delivered (${transport})`);
  }

  // The event stream blocked: it falls back to (long-)polling and still
  // delivers every change in order, up to the terminal one.
  const isEventStream = (url) => url.pathname.endsWith('/events');
  await page.route(isEventStream, (route) => route.abort('connectionrefused'));
  await js(() => startWatch('poll', 'c-poll', { token: 'reader', interval: 500 }));
  await until('the fallback to polling', () => js(() => handles.poll.transport === 'poll' && updates.poll.length >= 1), 20_000);
  const streamErrors = await js(() => errors.poll);
  assert(streamErrors.length >= 1 && streamErrors.every((e) => !e.fatal), `the stream failures were reported: ${JSON.stringify(streamErrors)}`);
  await write(['PATCH', 'c-poll', { progress: 30 }], 300, ['PATCH', 'c-poll', { progress: 60 }], 300,
    ['PATCH', 'c-poll', { status: 'completed' }]);
  await until('the polling watch ends', () => js(() => ends.poll), 20_000);
  assertEqual(await js(() => ends.poll), 'terminal', 'polling: ends on the terminal status');
  const polled = await js(() => updates.poll);
  log('c-poll updates', JSON.stringify(polled));
  assertInOrder(polled, 'c-poll');
  assertEqual(polled.map((u) => u.progress), [0, 30, 60, 100], 'every change arrived by polling');
  assertEqual(polled[polled.length - 1].status, 'completed', 'polling: terminal last');
  const pollUrls = requests.filter((url) => new URL(url).pathname === '/progress/c-poll');
  assert(pollUrls.some((url) => url.includes('wait=')), `long-polls were used: ${pollUrls}`);
  await page.unroute(isEventStream);

  await screenshot(page, 'client.png');
  assertEqual(pageErrors, [], 'no uncaught errors in the page');

  // The README's snippet: its <progress> follows the record.
  assert(snippet.includes('<progress id="book-42"'), 'the README snippet has a <progress> element');
  await page.goto(pageUrl.replace('/page.html', '/readme.html'));
  const shown = () => js(() => [document.getElementById('book-42').value, document.getElementById('book-42-status').textContent]);
  await until('the README snippet shows 10 %', async () => (await shown())[0] === 10);
  await write(['PATCH', 'book-42', { progress: 55, message: 'chapter 3 of 5' }]);
  await until('the <progress> follows to 55 %', async () => (await shown())[0] === 55);
  assertEqual(await shown(), [55, 'chapter 3 of 5'], 'the bar and the message');
  assertEqual(pageErrors, [], 'no uncaught errors in the README snippet');
});

server.close();
