// Shared helpers of the browser scenarios. Each scenario is run by
// tests/browser.rs as `node tests/browser/<scenario>.mjs <base_url> <artifact_dir>`
// and talks to it over stdio: `STEP <name> [json]` on stdout asks the Rust
// test to do something to the server (`STEP write [...]`: PUT, PATCH,
// DELETE records); it answers with one line on stdin (`OK` or `OK <json>`). The last line is `PASS <scenario>`,
// or `FAIL <message>` with a non-zero exit.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const [base, artifactDir] = process.argv.slice(2);
if (!base || !artifactDir) {
  console.error('usage: node <scenario>.mjs <base_url> <artifact_dir>');
  process.exit(2);
}
mkdirSync(artifactDir, { recursive: true });

// Without the background-networking flags Chromium's own connections are
// refused on a closed network and can stall start-up.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export async function launch() {
  return chromium.launch({
    executablePath: process.env.PROGRESS_CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
}

// The Rust side's answers, one line each.
const answers = [];
const waiting = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  const next = waiting.shift();
  if (next) next(line); else answers.push(line);
});

/** Asks the Rust test to perform `name` and waits until it has. */
export async function step(name, data) {
  console.log(`STEP ${name}${data === undefined ? '' : ' ' + JSON.stringify(data)}`);
  const line = answers.length ? answers.shift() : await new Promise((resolve) => waiting.push(resolve));
  if (!line.startsWith('OK')) throw new Error(`step ${name}: the test answered ${line}`);
  const rest = line.slice(2).trim();
  return rest ? JSON.parse(rest) : undefined;
}

/**
 * Has the Rust test send these writes, in order: `[method, id, body?]`, or a
 * number for a pause in milliseconds. Each must succeed; returns the statuses.
 */
export async function write(...ops) {
  return step('write', ops.map((op) => (typeof op === 'number'
    ? { pause_ms: op }
    : { method: op[0], id: op[1], body: op[2] === undefined ? null : op[2] })));
}

export function log(...args) {
  console.log('#', ...args);
}

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

export function assertEqual(actual, expected, message) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${message}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

/** Polls `fn` (sync or async) until it returns a truthy value. */
export async function until(what, fn, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(100);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function screenshot(page, name) {
  const path = join(artifactDir, name);
  await page.screenshot({ path, fullPage: true });
  log('screenshot', path);
  return path;
}

/** Collects the page's console errors and uncaught exceptions (CSP violations show up here). */
export function watchConsole(page, label) {
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`${label} console: ${msg.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`${label} page error: ${error.message}`));
  return problems;
}

/** Runs a scenario: PASS/FAIL line, exit status, browser closed either way. */
export async function run(name, body) {
  let browser;
  const timer = setTimeout(() => {
    console.log(`FAIL ${name}: the scenario took longer than 150 s`);
    process.exit(1);
  }, 150_000);
  try {
    browser = await launch();
    log('chromium', browser.version());
    await body(browser);
    console.log(`PASS ${name}`);
    process.exitCode = 0;
  } catch (error) {
    console.log(`FAIL ${name}: ${error && error.stack || error}`);
    process.exitCode = 1;
  } finally {
    clearTimeout(timer);
    if (browser) await browser.close().catch(() => {});
    process.stdin.destroy();
  }
}

/** Whether the server streams events for `id` (GET /progress/{id}/events answers text/event-stream). */
export async function hasEventStream(id, token) {
  const controller = new AbortController();
  try {
    const response = await fetch(`${base}/progress/${encodeURIComponent(id)}/events`, {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      signal: controller.signal,
    });
    return response.ok && (response.headers.get('content-type') || '').startsWith('text/event-stream');
  } catch {
    return false;
  } finally {
    controller.abort();
  }
}
