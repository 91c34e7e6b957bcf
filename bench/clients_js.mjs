// The Node worker client's update rate and the PATCH rate it makes reach the
// server, with default settings: a tight loop (`await job.update(...)` and
// nothing else), a tight loop that yields to the event loop every 1,000
// updates, and one update per 10 ms.
//
// Usage: node bench/clients_js.mjs BASE_URL TOKEN SECONDS; one JSON line per loop.
// The PATCHes are counted by the server (/metrics, http_requests_total).
import { randomUUID } from 'node:crypto';
import { Client } from '../clients/js/dist/esm/index.js';

const [baseUrl, token, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function patchesSeen() {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith('http_requests_total{')) continue;
    const labels = Object.fromEntries([...line.slice(0, line.lastIndexOf(' ')).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (labels.method === 'PATCH' && labels.route === '/progress/{id}') total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

async function measure(loop) {
  const client = new Client({ baseUrl, token }); // the defaults: minIntervalMs 500
  const id = `bench-js-${randomUUID().slice(0, 8)}`;
  const job = client.job(id);
  await job.start();
  await job.flush();
  const before = await patchesSeen();
  let updates = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  if (loop === 'sleep 10 ms') {
    while (performance.now() < deadline) {
      await job.update({ current: updates++ });
      await sleep(10);
    }
  } else {
    for (;;) {
      for (let i = 0; i < 1000; i++) await job.update({ current: updates++ });
      if (loop === 'tight, yielding every 1,000') await new Promise((resolve) => setImmediate(resolve));
      if (performance.now() >= deadline) break;
    }
  }
  const elapsed = (performance.now() - started) / 1000;
  const during = (await patchesSeen()) - before;
  await job.flush();
  const afterFlush = (await patchesSeen()) - before;
  const record = await client.get(id);
  if (record.current !== updates - 1) throw new Error(`final value ${record.current}, expected ${updates - 1}`);
  await job.complete();
  return {
    client: 'node',
    loop,
    seconds: Number(elapsed.toFixed(3)),
    updates,
    updates_per_second: Math.round(updates / elapsed),
    patches_during_loop: during,
    patches_per_second: Number((during / elapsed).toFixed(2)),
    patches_with_final_flush: afterFlush,
    final_current_on_server: record.current,
  };
}

for (const loop of ['tight', 'tight, yielding every 1,000', 'sleep 10 ms']) console.log(JSON.stringify(await measure(loop)));
