// The real progressd binary on a free port (memory store, or Redis) and a
// fault-injecting HTTP proxy in front of it.
//
// The binary is $PROGRESSD_BIN, else the repository's target/release/progressd
// when it exists, else target/debug/progressd.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const WRITE_TOKEN = 'test-write-token';
export const READ_TOKEN = 'test-read-token';
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function binary() {
  if (process.env.PROGRESSD_BIN) return process.env.PROGRESSD_BIN;
  const release = path.join(REPO, 'target/release/progressd');
  return existsSync(release) ? release : path.join(REPO, 'target/debug/progressd');
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export function redisUp() {
  return new Promise((resolve) => {
    const socket = net.connect(6379, '127.0.0.1');
    socket.setTimeout(1000);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => { socket.destroy(); resolve(data.toString().startsWith('+PONG')); });
    socket.on('error', () => resolve(false));
    socket.on('timeout', () => { socket.destroy(); resolve(false); });
  });
}

export class Server {
  static async start(store = 'memory') {
    const bin = binary();
    if (!existsSync(bin)) throw new Error(`no progressd binary at ${bin}: build it (cargo build --bin progressd) or set PROGRESSD_BIN`);
    const port = await freePort();
    const env = {
      PATH: process.env.PATH,
      PORT: String(port),
      PROGRESS_HOST: '127.0.0.1',
      PROGRESS_LOG_LEVEL: 'warn',
      PROGRESS_WRITE_TOKENS: WRITE_TOKEN,
      PROGRESS_READ_TOKENS: READ_TOKEN,
    };
    if (store === 'redis') {
      env.REDIS_URL = 'redis://127.0.0.1:6379';
      env.PROGRESS_KEY_PREFIX = `clients-js-${randomUUID().slice(0, 12)}:`;
    }
    const child = spawn(bin, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    const server = new Server(store, port, child);
    const deadline = Date.now() + 20000;
    for (;;) {
      try {
        const res = await fetch(`${server.baseUrl}/healthz`);
        if (res.ok) break;
      } catch { /* not yet */ }
      if (child.exitCode !== null || Date.now() > deadline) {
        server.stop();
        throw new Error(`progressd did not start (${store}): ${stderr}`);
      }
      await sleep(50);
    }
    return server;
  }

  constructor(store, port, child) {
    this.store = store;
    this.port = port;
    this.child = child;
    this.baseUrl = `http://127.0.0.1:${port}`;
  }

  async request(method, id, body, token = WRITE_TOKEN) {
    const res = await fetch(`${this.baseUrl}/progress/${id}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  async record(id) {
    const { status, body } = await this.request('GET', id, undefined, READ_TOKEN);
    if (status !== 200) throw new Error(`GET ${id}: ${status} ${JSON.stringify(body)}`);
    return body;
  }

  /** `http_requests_total` for `method` on /progress/{id}, every status, from /metrics. */
  async requestsSeen(method) {
    const text = await (await fetch(`${this.baseUrl}/metrics`)).text();
    let total = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith('http_requests_total{')) continue;
      const labels = Object.fromEntries([...line.slice(0, line.lastIndexOf(' ')).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      if (labels.method === method && labels.route === '/progress/{id}') total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return total;
  }

  stop() {
    if (this.child.exitCode === null) this.child.kill('SIGTERM');
  }
}

/** A proxy that forwards to `upstream`, or answers writes 503 with Retry-After while `failUntil` is ahead. */
export class FaultProxy {
  static async start(upstream) {
    const proxy = new FaultProxy(upstream);
    await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.baseUrl = `http://127.0.0.1:${proxy.server.address().port}`;
    return proxy;
  }

  constructor(upstream) {
    this.upstream = upstream;
    this.failUntil = 0;
    this.retryAfter = '1';
    this.status = 503;
    this.inject = null;
    this.log = []; // {at, method, status}
    this.server = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', async () => {
        const body = Buffer.concat(chunks);
        if (req.method !== 'GET' && Date.now() < this.failUntil) {
          const code = this.status === 429 ? 'rate_limited' : 'storage_unavailable';
          const payload = JSON.stringify({ type: `urn:progressd:problem:${code}`, status: this.status, code, title: 'injected', detail: 'injected by the test proxy' });
          res.writeHead(this.status, { 'Content-Type': 'application/problem+json', 'Retry-After': this.retryAfter });
          res.end(payload);
          this.log.push({ at: Date.now(), method: req.method, status: this.status });
          return;
        }
        const headers = { ...req.headers };
        delete headers.host;
        delete headers.connection;
        const up = await fetch(`${this.upstream.baseUrl}${req.url}`, { method: req.method, headers, body: body.length ? body : undefined });
        let text = await up.text();
        if (this.inject && up.ok && text) text = JSON.stringify({ ...JSON.parse(text), ...this.inject });
        const out = {};
        for (const [k, v] of up.headers) if (!['content-length', 'connection', 'transfer-encoding', 'content-encoding', 'keep-alive'].includes(k)) out[k] = v;
        res.writeHead(up.status, out);
        res.end(text);
        this.log.push({ at: Date.now(), method: req.method, status: up.status });
      });
    });
  }

  answered(status) {
    return this.log.filter((e) => e.status === status).map((e) => e.at);
  }

  close() {
    this.server.closeAllConnections?.();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

export function uniqueId(name) {
  return `js-${name.replace(/[^A-Za-z0-9]/g, '-').slice(0, 60)}-${randomUUID().slice(0, 8)}`;
}

/** A logger that keeps what it was told. */
export function memoryLogger() {
  const lines = [];
  return { lines, warn: (m) => lines.push(`warn ${m}`), error: (m) => lines.push(`error ${m}`), debug: () => {} };
}
