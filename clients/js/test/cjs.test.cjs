// The CommonJS build, required by name (the package's own "exports"), writes a real record.
const assert = require('node:assert/strict');
const { test } = require('node:test');

test('require("progressd-client") works and writes a record', async () => {
  const { Client, ProgressError } = require('progressd-client');
  assert.equal(typeof Client, 'function');
  assert.equal(typeof ProgressError, 'function');
  const { Server, WRITE_TOKEN, uniqueId } = await import('./harness.mjs');
  const server = await Server.start('memory');
  try {
    const id = uniqueId('cjs');
    const client = new Client({ baseUrl: server.baseUrl, token: WRITE_TOKEN });
    await client.run(id, async (job) => { await job.update({ current: 2, total: 2 }); }, { stage: 'CJS' });
    const record = await server.record(id);
    assert.equal(record.status, 'completed');
    assert.equal(record.current, 2);
    assert.equal(record.stage, 'CJS');
  } finally {
    server.stop();
  }
});
