/**
 * progressd worker client: coalesced progress updates that never break the job.
 *
 * A worker's `update` calls only merge fields into the job's pending merge
 * patch; it goes out at most once per `minIntervalMs`. Terminal writes
 * (`complete`, `fail`), `start` and `flush` skip the interval and wait for
 * their answer. 503, 429 (and 408, 502, 504) are retried honouring
 * `Retry-After`, network errors with backoff, for up to `retryForMs`; what
 * still fails is logged and dropped in favour of the next update (`strict`:
 * thrown from the job's next call). Other 4xx are programming errors and
 * are thrown from the job's next call; a 409 (the record has finished) is
 * reported, not retried.
 */

export type Status = 'pending' | 'running' | 'completed' | 'failed' | 'cancelled';

export interface ChildFields {
  title?: string | null;
  status?: Status | null;
  progress?: number | null;
  current?: number | null;
  total?: number | null;
  message?: string | null;
  weight?: number | null;
}

/** The client fields of a record; `null` removes a field (JSON merge patch). */
export interface Fields {
  status?: Status;
  progress?: number | null;
  current?: number | null;
  total?: number | null;
  stage?: string | null;
  message?: string | null;
  result?: unknown;
  error?: string | Record<string, unknown> | null;
  metadata?: Record<string, unknown> | null;
  children?: Record<string, ChildFields | null> | null;
  ttl_seconds?: number | null;
}

/** A record as the server answers it. */
export interface ProgressRecord extends Omit<Fields, 'children'> {
  id: string;
  version: number;
  status: Status;
  progress: number;
  children?: Record<string, ChildFields>;
  created_at: string;
  updated_at: string;
  cancel_requested_at?: string | null;
  cancel_reason?: string | null;
  [field: string]: unknown;
}

export interface Logger {
  warn(message: string): void;
  error(message: string): void;
  debug?(message: string): void;
}

export interface ClientOptions {
  /** The server, e.g. `http://localhost:8080`. */
  baseUrl: string;
  /** A write token (`PROGRESS_WRITE_TOKENS`). */
  token?: string;
  /** Bound on each request (default 5000). */
  timeoutMs?: number;
  /** Each job's updates go out at most this often (default 500). */
  minIntervalMs?: number;
  /** How long a write is retried before it is logged and dropped (default 30000). */
  retryForMs?: number;
  /** Throw what still fails (from the job's next call) instead of logging it. */
  strict?: boolean;
  /** Where warnings go (default `console`). */
  logger?: Logger;
}

export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'cancelled']);
const RETRYABLE = new Set([408, 429, 502, 503, 504]);
const ERROR_MAX_CHARS = 8000;

/** A write the server refused, or that could not be made. */
export class ProgressError extends Error {
  readonly status: number | undefined;
  readonly code: string | undefined;
  readonly problem: Record<string, unknown>;
  readonly jobId: string | undefined;
  readonly method: string | undefined;

  constructor(
    message: string,
    details: { status?: number; problem?: Record<string, unknown>; jobId?: string; method?: string } = {},
  ) {
    super(message);
    this.name = 'ProgressError';
    this.status = details.status;
    this.problem = details.problem ?? {};
    this.code = typeof this.problem.code === 'string' ? this.problem.code : undefined;
    this.jobId = details.jobId;
    this.method = details.method;
  }
}

/** 409: the record has already finished (`conflict_terminal`). */
export class ConflictError extends ProgressError {
  constructor(message: string, details: ConstructorParameters<typeof ProgressError>[1] = {}) {
    super(message, details);
    this.name = 'ConflictError';
  }
}

type Patch = Record<string, unknown>;

function isObject(value: unknown): value is Patch {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Composes merge patch `patch` after `target`, in place, keeping nulls. */
function mergeInto(target: Patch, patch: Patch): Patch {
  for (const [key, value] of Object.entries(patch)) {
    if (value === undefined) continue;
    if (isObject(value)) {
      let current = target[key];
      if (!isObject(current)) current = target[key] = {};
      mergeInto(current as Patch, value);
    } else {
      target[key] = value;
    }
  }
  return target;
}

/** What `fail` sends as `error`: an `Error` becomes `{type, message}`. */
export function errorValue(error: unknown): string | Record<string, unknown> | null {
  if (error === undefined || error === null) return null;
  if (error instanceof Error) return { type: error.name, message: error.message.slice(0, ERROR_MAX_CHARS) };
  if (typeof error === 'string') return error.slice(0, ERROR_MAX_CHARS);
  if (isObject(error)) return { ...error };
  return String(error).slice(0, ERROR_MAX_CHARS);
}

function retryAfterMs(value: string | null): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value.trim());
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const when = Date.parse(value);
  return Number.isNaN(when) ? undefined : Math.max(0, when - Date.now());
}

interface Outcome {
  status?: number;
  record?: ProgressRecord;
  problem?: Record<string, unknown>;
  retryAfterMs?: number;
  networkError?: unknown;
}

export class Client {
  readonly baseUrl: string;
  readonly token: string | undefined;
  readonly timeoutMs: number;
  readonly minIntervalMs: number;
  readonly retryForMs: number;
  readonly strict: boolean;
  readonly logger: Logger;
  /** @internal */ readonly jobs = new Set<Job>();

  constructor(options: ClientOptions) {
    if (!options || typeof options.baseUrl !== 'string' || !/^https?:\/\/[^/]/.test(options.baseUrl)) {
      throw new TypeError('new Client({ baseUrl }): baseUrl must be an http(s) URL');
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.minIntervalMs = options.minIntervalMs ?? 500;
    this.retryForMs = options.retryForMs ?? 30000;
    this.strict = options.strict ?? false;
    this.logger = options.logger ?? console;
  }

  /** A handle on job `id`; `fields` are what `start` (and `run`) PUT. */
  job(id: string, fields: Fields = {}): Job {
    return new Job(this, id, fields);
  }

  /**
   * PUTs the record as `running` (with `fields`), awaits `fn(job)`, then
   * completes the job, or fails it with the error `fn` threw and rethrows
   * it. A job `fn` completed or failed itself is left as it is.
   */
  async run<T>(id: string, fn: (job: Job) => T | Promise<T>, fields: Fields = {}): Promise<T> {
    const job = this.job(id, fields);
    await job.start();
    let result: T;
    try {
      result = await fn(job);
    } catch (error) {
      if (!job.finished) {
        try {
          await job.fail(error);
        } catch (progressError) {
          this.logger.error(`progressd: could not mark job ${id} failed: ${String(progressError)}`);
        }
      }
      throw error;
    }
    if (!job.finished) await job.complete();
    return result;
  }

  /** The record as the server holds it now (null for 404 and 410). */
  async get(id: string): Promise<ProgressRecord | null> {
    const res = await fetch(this.url(id), {
      headers: this.headers(false),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (res.status === 404 || res.status === 410) {
      await res.body?.cancel();
      return null;
    }
    if (!res.ok) throw new ProgressError(`GET ${id}: ${res.status} ${await res.text()}`, { status: res.status, jobId: id, method: 'GET' });
    return (await res.json()) as ProgressRecord;
  }

  /** Sends what every job has pending, and waits for it. */
  async close(): Promise<void> {
    await Promise.all([...this.jobs].map((job) => job.flush().catch(() => false)));
  }

  /** @internal */
  url(id: string): string {
    return `${this.baseUrl}/progress/${encodeURIComponent(id)}`;
  }

  /** @internal */
  headers(body: boolean): Record<string, string> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (body) headers['Content-Type'] = 'application/json';
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  /** @internal One attempt at a write. */
  async attempt(method: string, id: string, body: Patch): Promise<Outcome> {
    let res: Response;
    try {
      res = await fetch(this.url(id), {
        method,
        headers: this.headers(true),
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (networkError) {
      return { networkError };
    }
    let parsed: unknown;
    try {
      const text = await res.text();
      parsed = text ? JSON.parse(text) : undefined;
    } catch (networkError) {
      if (res.ok) return { networkError };
    }
    const object = isObject(parsed) ? parsed : undefined;
    if (res.ok) return { status: res.status, record: object as ProgressRecord | undefined };
    return { status: res.status, problem: object, retryAfterMs: retryAfterMs(res.headers.get('Retry-After')) };
  }
}

interface Waiter {
  target: number;
  resolve: () => void;
}

export class Job {
  readonly client: Client;
  readonly id: string;
  private readonly initial: Fields;
  private pending: Patch | null = null;
  private create = false;
  private createBody: Patch | null = null;
  private urgent = false;
  private nextAt = 0;
  private retryAt = 0;
  private failingSince: number | null = null;
  private attempts = 0;
  private inflight = false;
  private queued = 0;
  private settled = 0;
  private error: ProgressError | null = null;
  private done = false;
  private last: ProgressRecord | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private timerAt = 0;
  private waiters: Waiter[] = [];

  constructor(client: Client, id: string, fields: Fields = {}) {
    this.client = client;
    this.id = id;
    this.initial = { ...fields };
  }

  /**
   * PUTs the record as `running` with `fields` (PUT replaces the client fields).
   * Like `update`, it does not wait for the network: `flush()` does.
   */
  async start(fields: Fields = {}): Promise<void> {
    this.throwStored();
    this.done = false;
    this.pending = mergeInto(mergeInto({ status: 'running' }, this.initial as Patch), fields as Patch);
    this.create = true;
    this.createBody = null;
    this.urgent = true;
    this.queued++;
    this.schedule();
  }

  /** Merges `fields` into the next PATCH (sent within `minIntervalMs`); does not wait for the network. */
  async update(fields: Fields): Promise<void> {
    this.enqueue(fields as Patch);
  }

  /** Child `id`: its updates go into this job's PATCH as `children.<id>`. */
  child(id: string): Child {
    return new Child(this, id);
  }

  /** Sends what is pending, then PATCHes `status: completed` with `fields`; the record it answered. */
  async complete(fields: Fields = {}): Promise<ProgressRecord | null> {
    return this.finish({ ...fields, status: 'completed' });
  }

  /** PATCHes `status: failed` with `error` (an `Error` becomes `{type, message}`). */
  async fail(error?: unknown, fields: Fields = {}): Promise<ProgressRecord | null> {
    const body: Patch = { ...fields, status: 'failed' };
    const value = errorValue(error);
    if (value !== null) body.error = value;
    return this.finish(body);
  }

  /** Sends what is pending now, and resolves once it was sent or given up on. */
  async flush(): Promise<void> {
    const target = this.queued;
    if (this.settled < target) {
      this.urgent = true;
      await new Promise<void>((resolve) => {
        this.waiters.push({ target, resolve });
        this.schedule();
      });
    }
    this.throwStored();
  }

  /** The record from the last successful write's response. */
  get record(): ProgressRecord | null {
    return this.last;
  }

  /** Whether the last write's response had a non-null `cancel_requested_at`. */
  get cancelRequested(): boolean {
    return this.last?.cancel_requested_at != null;
  }

  /** A terminal status was accepted, or the server answered 409 (the record had finished). */
  get finished(): boolean {
    return this.done;
  }

  /** @internal */
  enqueue(fields: Patch, urgent = false): void {
    this.throwStored();
    if (this.done) {
      this.client.logger.debug?.(`progressd: job ${this.id} has finished; update dropped`);
      return;
    }
    const fresh = this.pending === null;
    this.pending = mergeInto(this.pending ?? {}, fields);
    this.queued++;
    if (urgent) this.urgent = true;
    if (fresh || urgent) this.schedule();
  }

  private async finish(body: Patch): Promise<ProgressRecord | null> {
    await this.flush(); // what was pending goes first, in its own PATCH
    this.enqueue(body, true);
    await this.flush();
    return this.last;
  }

  private throwStored(): void {
    const error = this.error;
    if (error) {
      this.error = null;
      throw error;
    }
  }

  private schedule(): void {
    if (this.inflight || this.pending === null) return;
    const now = Date.now();
    const due = this.urgent ? this.retryAt : Math.max(this.nextAt, this.retryAt);
    if (due <= now) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      void this.send();
      return;
    }
    if (this.timer && this.timerAt <= due) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = due;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.schedule();
    }, due - now);
  }

  private async send(): Promise<void> {
    let body = this.pending as Patch;
    const method = this.create ? 'PUT' : 'PATCH';
    if (this.create && this.createBody) body = mergeInto(structuredClone(this.createBody), body);
    const seq = this.queued;
    this.pending = null;
    this.inflight = true;
    this.client.jobs.add(this);
    const outcome = await this.client.attempt(method, this.id, body);
    this.settle(method, body, seq, outcome);
    if (this.pending === null) this.client.jobs.delete(this);
    this.waiters = this.waiters.filter((w) => {
      if (w.target <= this.settled) w.resolve();
      return w.target > this.settled;
    });
    this.schedule();
  }

  private settle(method: string, body: Patch, seq: number, outcome: Outcome): void {
    const client = this.client;
    const now = Date.now();
    this.inflight = false;
    const status = outcome.status;
    if (status !== undefined && status >= 200 && status < 300) {
      this.last = outcome.record ?? null;
      this.create = false;
      this.createBody = null;
      this.failingSince = null;
      this.attempts = 0;
      this.settled = seq;
      this.nextAt = now + client.minIntervalMs;
      if (this.pending === null) this.urgent = false;
      if (typeof body.status === 'string' && TERMINAL_STATUSES.has(body.status)) this.done = true;
      return;
    }
    const retryable = status === undefined || RETRYABLE.has(status);
    if (retryable) {
      if (this.failingSince === null) this.failingSince = now;
      this.attempts++;
      const delay =
        outcome.retryAfterMs ?? Math.min(5000, 100 * 2 ** (this.attempts - 1)) * (0.5 + Math.random() / 2);
      if (now + delay - this.failingSince <= client.retryForMs) {
        this.pending = this.pending === null ? body : mergeInto(body, this.pending);
        this.retryAt = now + delay;
        return;
      }
    }
    const what = `${method} ${this.id}`;
    const detail =
      status === undefined
        ? String((outcome.networkError as { cause?: unknown })?.cause ?? outcome.networkError)
        : `${status} ${outcome.problem?.code ?? ''} ${outcome.problem?.detail ?? ''}`.trim();
    const details = { status, problem: outcome.problem, jobId: this.id, method };
    this.failingSince = null;
    this.attempts = 0;
    this.settled = seq;
    if (method === 'PUT' && retryable) {
      // The record may not exist: the next write is a PUT with this body under it.
      this.create = true;
      this.createBody = body;
    }
    if (status === 409) {
      this.done = true;
      client.logger.warn(`progressd: ${what}: the record has already finished (${detail}); not retried`);
      if (client.strict) this.error = new ConflictError(`${what}: ${detail}`, details);
      return;
    }
    if (retryable) {
      const message = `${what} still failing after ${client.retryForMs} ms: ${detail}`;
      if (client.strict) this.error = new ProgressError(message, details);
      else client.logger.warn(`progressd: ${message}; dropped in favour of the next update`);
      return;
    }
    // Any other 4xx (and 500): a programming error, thrown from the job's next call.
    this.error = new ProgressError(`${what}: ${detail}`, details);
    client.logger.error(`progressd: ${this.error.message}`);
  }
}

/** A child of a job; its fields go into the parent's PATCH as `children.<id>`. */
export class Child {
  readonly job: Job;
  readonly id: string;

  constructor(job: Job, id: string) {
    this.job = job;
    this.id = id;
  }

  /** Merges `fields` into this child in the parent's next PATCH. */
  async update(fields: ChildFields): Promise<void> {
    this.job.enqueue({ children: { [this.id]: fields } });
  }

  /** `update({status: 'completed', ...})`: the child's status; the parent keeps running. */
  async complete(fields: ChildFields = {}): Promise<void> {
    await this.update({ ...fields, status: 'completed' });
  }

  /** `update({status: 'failed', message})`: children have no `error` field, so the message says it. */
  async fail(error?: unknown, fields: ChildFields = {}): Promise<void> {
    const value = errorValue(error);
    const message =
      fields.message ?? (value === null ? undefined : typeof value === 'string' ? value : `${value.type}: ${value.message}`);
    await this.update({ ...fields, status: 'failed', ...(message === undefined ? {} : { message: String(message).slice(0, 2000) }) });
  }
}
