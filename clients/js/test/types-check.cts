// Compiled (not run) by `npm test`: the CommonJS type declarations.
import progressd = require('progressd-client');

const client = new progressd.Client({ baseUrl: 'http://localhost:8080' });
const job: progressd.Job = client.job('resize-7');
void job.update({ current: 1 });
// @ts-expect-error: baseUrl is required
void new progressd.Client({ token: 'x' });
export = job;
