// The Node client against the real binary: every check reads the record the
// server holds (or its /metrics), not the client's own idea of it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Client, ConflictError, ProgressError } from '../dist/esm/index.js';
import { FaultProxy, READ_TOKEN, Server, WRITE_TOKEN, freePort, memoryLogger, redisUp, sleep, uniqueId } from './harness.mjs';

const stores = ['memory', 'redis'];
const redis = await redisUp();

for (const store of stores) {
  const skip =
    store === 'redis' && !redis
      ? process.env.PROGRESSD_REQUIRE_REDIS
        ? false
        : 'Redis is not answering on 127.0.0.1:6379: the Redis-backed runs are skipped'
      : false;

  describe(`progressd-client against progressd (${store})`, { skip }, () => {
    let server;
    let proxy;
    const client = (options = {}) => new Client({ baseUrl: server.baseUrl, token: WRITE_TOKEN, ...options });

    before(async () => {
      if (store === 'redis' && !redis) throw new Error('Redis is not answering on 127.0.0.1:6379 and PROGRESSD_REQUIRE_REDIS is set');
      server = await Server.start(store);
    });
    after(() => server?.stop());

    test('run() creates a running record, then completes it', async (t) => {
      const id = uniqueId(t.name);
      const c = client();
      const value = await c.run(id, async (job) => {
        await job.flush();
        const started = await server.record(id);
        assert.equal(started.status, 'running');
        assert.equal(started.total, 10);
        for (let i = 1; i <= 10; i++) await job.update({ current: i, message: `chunk ${i}` });
        return 'done';
      }, { total: 10, stage: 'IMPORT' });
      assert.equal(value, 'done');
      const record = await server.record(id);
      assert.equal(record.status, 'completed');
      assert.equal(record.current, 10);
      assert.equal(record.message, 'chunk 10');
      assert.equal(record.stage, 'IMPORT');
      assert.equal(record.progress, 100);
    });

    test('a tight loop is coalesced and ends with the last value', async (t) => {
      const id = uniqueId(t.name);
      const job = client().job(id, { total: 100000 });
      await job.start();
      await job.flush();
      const before = await server.requestsSeen('PATCH');
      const started = Date.now();
      for (let i = 0; i < 100000; i++) await job.update({ current: i });
      await job.flush();
      const elapsed = (Date.now() - started) / 1000;
      const patches = (await server.requestsSeen('PATCH')) - before;
      assert.ok(patches >= 1 && patches <= 2 + elapsed / 0.5, `${patches} PATCHes in ${elapsed} s`);
      assert.equal((await server.record(id)).current, 99999);
      await job.complete();
      const record = await server.record(id);
      assert.equal(record.status, 'completed');
      assert.equal(record.current, 99999);
    });

    test('one update per 10 ms goes out at most once per interval', async (t) => {
      const id = uniqueId(t.name);
      const job = client({ minIntervalMs: 200 }).job(id, { total: 100 });
      await job.start();
      await job.flush();
      const before = await server.requestsSeen('PATCH');
      const started = Date.now();
      for (let i = 1; i <= 100; i++) {
        await job.update({ current: i });
        await sleep(10);
      }
      await job.flush();
      const elapsed = (Date.now() - started) / 1000;
      const patches = (await server.requestsSeen('PATCH')) - before;
      assert.ok(patches >= 2 && patches <= 2 + elapsed / 0.2, `${patches} PATCHes in ${elapsed} s`);
      assert.equal((await server.record(id)).current, 100);
    });

    test('updates within the interval merge into one PATCH', async (t) => {
      const id = uniqueId(t.name);
      const job = client().job(id);
      await job.start({ metadata: { kept: true } });
      await job.flush();
      const before = await server.requestsSeen('PATCH');
      await job.update({ stage: 'A' });
      await job.update({ message: 'first', metadata: { a: 1 } });
      await job.update({ stage: 'B', metadata: { b: 2 } });
      await job.update({ metadata: { kept: null } });
      await job.flush();
      assert.equal((await server.requestsSeen('PATCH')) - before, 1);
      const record = await server.record(id);
      assert.equal(record.stage, 'B');
      assert.equal(record.message, 'first');
      assert.deepEqual(record.metadata, { a: 1, b: 2 });
    });

    test('an exception fails the job and is rethrown', async (t) => {
      const id = uniqueId(t.name);
      await assert.rejects(
        client().run(id, async (job) => {
          await job.update({ current: 3 });
          throw new TypeError('bad chunk 3');
        }, { total: 5 }),
        { name: 'TypeError', message: 'bad chunk 3' },
      );
      const record = await server.record(id);
      assert.equal(record.status, 'failed');
      assert.deepEqual(record.error, { type: 'TypeError', message: 'bad chunk 3' });
      assert.equal(record.current, 3);
    });

    test('503 with Retry-After is retried and nothing throws', async (t) => {
      const id = uniqueId(t.name);
      proxy = await FaultProxy.start(server);
      try {
        const job = new Client({ baseUrl: proxy.baseUrl, token: WRITE_TOKEN, minIntervalMs: 100 }).job(id, { total: 20 });
        await job.start();
        await job.flush();
        proxy.retryAfter = '1';
        proxy.failUntil = Date.now() + 2200;
        for (let i = 1; i <= 20; i++) {
          await job.update({ current: i });
          await sleep(50);
        }
        const answered = await job.complete({ result: { ok: true } });
        assert.equal(answered.status, 'completed');
        const record = await server.record(id);
        assert.equal(record.status, 'completed');
        assert.equal(record.current, 20);
        assert.deepEqual(record.result, { ok: true });
        const refused = proxy.answered(503);
        assert.ok(refused.length >= 2 && refused.length <= 4, `${refused.length} refusals`);
        for (let i = 1; i < refused.length; i++) assert.ok(refused[i] - refused[i - 1] >= 900, `gap ${refused[i] - refused[i - 1]} ms`);
      } finally {
        await proxy.close();
      }
    });

    test('429 with Retry-After is retried', async (t) => {
      const id = uniqueId(t.name);
      proxy = await FaultProxy.start(server);
      try {
        const job = new Client({ baseUrl: proxy.baseUrl, token: WRITE_TOKEN, minIntervalMs: 100 }).job(id);
        await job.start();
        await job.flush();
        proxy.status = 429;
        proxy.retryAfter = '0.3';
        proxy.failUntil = Date.now() + 500;
        await job.update({ current: 7 });
        await job.flush();
        const refused = proxy.answered(429);
        assert.ok(refused.length >= 1 && refused.length <= 3, `${refused.length} refusals`);
        for (let i = 1; i < refused.length; i++) assert.ok(refused[i] - refused[i - 1] >= 250, `gap ${refused[i] - refused[i - 1]} ms`);
        assert.equal((await server.record(id)).current, 7);
      } finally {
        await proxy.close();
      }
    });

    test('what still fails is logged and dropped; strict throws it', async (t) => {
      const id = uniqueId(t.name);
      proxy = await FaultProxy.start(server);
      try {
        const logger = memoryLogger();
        const job = new Client({ baseUrl: proxy.baseUrl, token: WRITE_TOKEN, minIntervalMs: 100, retryForMs: 800, logger }).job(id);
        await job.start();
        await job.flush();
        proxy.retryAfter = '0.3';
        proxy.failUntil = Date.now() + 60000;
        await job.update({ current: 1 });
        await job.flush(); // given up on, not thrown
        assert.ok(logger.lines.some((l) => l.includes('dropped in favour of the next update')), logger.lines.join('\n'));
        assert.equal((await server.record(id)).current ?? null, null);

        const strict = new Client({ baseUrl: proxy.baseUrl, token: WRITE_TOKEN, retryForMs: 500, strict: true, logger }).job(id);
        await strict.update({ current: 1 });
        await assert.rejects(strict.flush(), (e) => e instanceof ProgressError && e.status === 503 && e.code === 'storage_unavailable');

        proxy.failUntil = 0;
        await job.update({ current: 2 });
        await job.flush();
        assert.equal((await server.record(id)).current, 2);
      } finally {
        await proxy.close();
      }
    });

    test('network errors never reach the job', async () => {
      const logger = memoryLogger();
      const c = new Client({ baseUrl: `http://127.0.0.1:${await freePort()}`, retryForMs: 500, logger });
      const value = await c.run('js-nobody-listens', async (job) => {
        for (let i = 1; i <= 3; i++) await job.update({ current: i });
        return 42;
      });
      assert.equal(value, 42);
      assert.ok(logger.lines.some((l) => l.includes('still failing')), logger.lines.join('\n'));
    });

    test('409 on a finished job is reported, not retried', async (t) => {
      const id = uniqueId(t.name);
      const logger = memoryLogger();
      const c = client({ logger });
      await c.run(id, (job) => job.update({ current: 1 }), { total: 1 });
      const before = await server.requestsSeen('PATCH');
      const late = c.job(id);
      await late.update({ message: 'too late' });
      await late.flush();
      assert.equal((await server.requestsSeen('PATCH')) - before, 1);
      assert.equal(late.finished, true);
      assert.ok(logger.lines.some((l) => l.includes('already finished')), logger.lines.join('\n'));
      await late.update({ message: 'dropped without a request' });
      await late.flush();
      assert.equal((await server.requestsSeen('PATCH')) - before, 1);
      const record = await server.record(id);
      assert.equal(record.status, 'completed');
      assert.equal(record.message ?? null, null);

      const strict = client({ strict: true, logger }).job(id);
      await strict.update({ message: 'too late' });
      await assert.rejects(strict.flush(), (e) => e instanceof ConflictError && e.status === 409 && e.code === 'conflict_terminal');
    });

    test('tokens', async (t) => {
      const id = uniqueId(t.name);
      for (const token of [undefined, 'wrong', READ_TOKEN]) {
        const c = new Client({ baseUrl: server.baseUrl, token, logger: memoryLogger() });
        await assert.rejects(
          c.run(id, (job) => job.update({ current: 1 }), { total: 1 }),
          (e) => e instanceof ProgressError && e.status === 401 && e.code === 'unauthorized',
        );
      }
      assert.equal((await server.request('GET', id, undefined, READ_TOKEN)).status, 404);
      await client().run(id, (job) => job.update({ current: 1 }), { total: 1 });
      assert.equal((await server.record(id)).status, 'completed');
    });

    test('other 4xx are programming errors and throw', async (t) => {
      const id = uniqueId(t.name);
      const c = client({ logger: memoryLogger() });
      const job = c.job(id);
      await job.start();
      await job.flush();
      await job.update({ colour: 'red' });
      await assert.rejects(job.flush(), (e) => e instanceof ProgressError && e.status === 422 && e.problem.field === 'colour');
      const missing = c.job(`${id}-never-created`);
      await missing.update({ current: 1 });
      await assert.rejects(missing.flush(), (e) => e instanceof ProgressError && e.status === 404);
    });

    test('children coalesce into the parent PATCH', async (t) => {
      const id = uniqueId(t.name);
      const job = client().job(id);
      await job.start();
      await job.flush();
      const before = await server.requestsSeen('PATCH');
      await job.child('ch1').update({ title: 'Chapter 1', progress: 50 });
      await job.child('ch2').update({ title: 'Chapter 2', current: 1, total: 4 });
      await job.child('ch1').update({ message: 'half way' });
      await job.update({ stage: 'CHAPTERS' });
      await job.flush();
      assert.equal((await server.requestsSeen('PATCH')) - before, 1);
      let record = await server.record(id);
      assert.equal(record.stage, 'CHAPTERS');
      assert.deepEqual(
        { title: record.children.ch1.title, progress: record.children.ch1.progress, message: record.children.ch1.message },
        { title: 'Chapter 1', progress: 50, message: 'half way' },
      );
      assert.equal(record.children.ch2.current, 1);
      assert.equal(record.progress, 37.5);
      await job.child('ch1').complete({ progress: 100 });
      await job.child('ch2').update({ current: 4 });
      await job.complete();
      record = await server.record(id);
      assert.equal(record.children.ch1.status, 'completed');
      assert.equal(record.children.ch1.title, 'Chapter 1');
      assert.equal(record.children.ch2.current, 4);
      assert.equal(record.status, 'completed');
    });

    test('cancelRequested against this binary', async (t) => {
      const id = uniqueId(t.name);
      const job = client().job(id);
      await job.start();
      await job.flush();
      if (!('cancel_requested_at' in job.record)) {
        t.skip('this progressd binary has no cancel_requested_at in its records (cancellation has not landed)');
        return;
      }
      assert.equal(job.cancelRequested, false);
      const asked = await fetch(`${server.baseUrl}/progress/${id}/cancel`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${WRITE_TOKEN}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ reason: 'the user asked' }),
      });
      assert.equal(asked.status, 202);
      await job.update({ current: 1 });
      await job.flush();
      assert.equal(job.cancelRequested, true, "the next write's response carries the request");
      await job.update({ status: 'cancelled', message: 'stopped on request' });
      await job.flush();
      const record = await server.record(id);
      assert.equal(record.status, 'cancelled');
      assert.equal(record.cancel_reason, 'the user asked');
    });

    test('cancelRequested reads the last response', async (t) => {
      const id = uniqueId(t.name);
      proxy = await FaultProxy.start(server);
      try {
        const job = new Client({ baseUrl: proxy.baseUrl, token: WRITE_TOKEN }).job(id);
        await job.start();
        await job.flush();
        assert.equal(job.cancelRequested, false);
        proxy.inject = { cancel_requested_at: '2026-12-06T12:00:00.000Z', cancel_reason: 'user' };
        await job.update({ current: 1 });
        await job.flush();
        assert.equal(job.cancelRequested, true);
        proxy.inject = { cancel_requested_at: null };
        await job.update({ current: 2 });
        await job.flush();
        assert.equal(job.cancelRequested, false);
      } finally {
        await proxy.close();
      }
    });
  });
}
