// The README worker examples (main README and this client's), run against the
// binary: each ```js block right after a `<!-- example: run -->` line, as an
// ES module inside this package (so `import ... from 'progressd-client'`
// resolves to this build).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { REPO, Server, WRITE_TOKEN } from './harness.mjs';

const READMES = ['README.md', 'clients/js/README.md'];
const examples = (file) => [...readFileSync(path.join(REPO, file), 'utf8').matchAll(/<!-- example: run -->\n```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const scratch = path.join(REPO, 'clients/js/.examples');

let server;
before(async () => { server = await Server.start('memory'); mkdirSync(scratch, { recursive: true }); });
after(() => { server?.stop(); rmSync(scratch, { recursive: true, force: true }); });

for (const file of READMES) {
  test(`${file} has a js example that runs`, () => assert.ok(examples(file).length > 0, `${file}: no \`\`\`js block after <!-- example: run -->`));
  examples(file).forEach((code, i) => {
    test(`${file} example ${i + 1}`, async () => {
      assert.ok(code.includes('http://localhost:8080'), 'the example should talk to http://localhost:8080');
      const script = path.join(scratch, `example-${path.basename(path.dirname(path.join(REPO, file)))}-${i}.mjs`);
      writeFileSync(script, code.replaceAll('http://localhost:8080', server.baseUrl));
      await promisify(execFile)(process.execPath, [script], { env: { ...process.env, PROGRESS_WRITE_TOKEN: WRITE_TOKEN }, timeout: 60000 });
      const ids = [...code.matchAll(/\.(?:run|job)\(\s*['"]([^'"]+)['"]/g)].map((m) => m[1]);
      assert.ok(ids.length > 0, 'no client.run(\'...\') or client.job(\'...\') in the example');
      for (const id of ids) {
        const record = await server.record(id);
        assert.equal(record.status, 'completed', JSON.stringify(record));
        if ('total' in record) assert.equal(record.current, record.total);
      }
    });
  });
}
