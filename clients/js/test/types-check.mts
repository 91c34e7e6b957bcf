// Compiled (not run) by `npm test`: the ESM type declarations, as a
// TypeScript consumer sees them through the package's "exports".
import { Client, ConflictError, ProgressError, type Job, type ProgressRecord } from 'progressd-client';

const client = new Client({ baseUrl: 'http://localhost:8080', token: 'secret', minIntervalMs: 250 });
const value: number = await client.run('book-42', async (job: Job) => {
  await job.update({ current: 1, total: 10, stage: 'A', metadata: { bookId: 42 }, message: null });
  await job.child('ch1').update({ title: 'Chapter 1', progress: 50 });
  // @ts-expect-error: not a client field (the server would answer 422)
  await job.update({ colour: 'red' });
  // @ts-expect-error: children take child fields only
  await job.child('ch1').update({ stage: 'X' });
  const cancelled: boolean = job.cancelRequested;
  return cancelled ? 0 : 1;
}, { total: 10 });
const record: ProgressRecord | null = await client.job('book-42').complete({ result: { url: 'x' } });
const error = new ConflictError('x', { status: 409 });
const base: ProgressError = error;
export { value, record, base };
