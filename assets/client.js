/*! progressd client — watch a progress record from a browser. No dependencies.
 *
 *   <script src="https://progressd.example/client.js"></script>
 *   <script>
 *     const handle = progressd.watch('book-42', record => render(record), { token: 'ui-secret' });
 *     // later: handle.cancel();
 *   </script>
 *
 * watch(id, onUpdate, options) calls onUpdate(record) once for every new
 * version of the record, oldest first, and stops by itself after delivering
 * a terminal status (completed, failed, cancelled) or when the record is
 * gone: deleted or expired (410 Gone, or the stream's `gone` event). A 404
 * means "not yet": a page may start watching before the worker's first PUT,
 * so by default it keeps waiting for the record to appear. It reads GET /progress/{id}/events with fetch() (so it can send
 * `Authorization`, and `Last-Event-ID` when it reconnects) and falls back to
 * ETag polling (`If-None-Match`, `?wait=` long-polls) when the event stream
 * is unavailable or keeps failing. Errors back off exponentially.
 *
 * Options (all optional):
 *   baseUrl     where progressd answers; default: the origin this script was loaded from
 *   token       bearer token: a string, or a function returning one or a Promise of one.
 *               A function is called again shortly before a JWT's `exp` (when the token
 *               is one) and after a 401 (once per failure), so a page can fetch a fresh
 *               scoped token from its own backend; a token that is not a JWT is asked
 *               for before every request.
 *   onError     (error) => …  every failure; error.status, error.code, error.problem,
 *               error.fatal (true when watching has stopped because of it)
 *   onDeleted   (id) => …  the record was deleted; watching has stopped
 *   onGone      ({id, reason, at}) => …  the record was deleted or expired (reason
 *               'deleted' or 'expired', at: when, an ISO time, when the server says);
 *               watching has stopped
 *   onEnd       (reason) => …  watching stopped: 'terminal', 'deleted', 'expired',
 *               'cancelled' or 'error'
 *   transport   'auto' (default), 'sse' (never poll) or 'poll' (never stream)
 *   wait        long-poll seconds for the polling fallback, 0–60; default 25
 *   interval    least milliseconds between two polls that found no change; default 2000
 *   maxBackoff  longest wait in milliseconds between retries after errors; default 30000
 *   retryNotFound  keep waiting while the record does not exist yet (404); default true
 *               (false: a 404 before the record was seen ends the watch with an error)
 *   idleTimeout reconnect when the stream sends nothing (not even a heartbeat) for this
 *               many milliseconds; default 75000 (the server's heartbeat is every 15 s)
 *
 * The handle: { cancel(), requestCancel(reason), done (a Promise of the end reason),
 * transport, lastVersion }. cancel() stops watching; requestCancel(reason) asks the job
 * itself to stop (POST /progress/{id}/cancel, with the handle's baseUrl and token: a
 * write token, or a scoped token with the claim "cancel": true) and returns a Promise of
 * the record (cancel_requested_at set), rejected with an error like onError's (status,
 * code, problem) when refused; the watch goes on and delivers the worker's answer.
 * progressd.requestCancel(id, reason, {baseUrl, token}) does the same without a watch.
 *
 * watchAll({prefix, status}, onUpdate, options) follows every record whose id
 * starts with `prefix` (and whose status is one of `status`, e.g. 'running' or
 * 'pending,running'; both optional) on one connection: GET /progress with
 * `Accept: text/event-stream`. onUpdate(record) is called for each record of
 * the snapshot, then for each created or updated one; it reconnects with
 * `Last-Event-ID` and loses nothing that still exists. With a prefix token
 * and no prefix, the token's prefix is used. Options: baseUrl, token,
 * onError, onEnd, maxBackoff, idleTimeout as for watch(), and
 *   onReady     (count) => …  the snapshot is complete (after each (re)connect)
 *   onDeleted   (id) => …  a record was deleted
 *   onRemoved   (id, status) => …  a record moved to a status outside `status`
 *   interval    milliseconds between listings when the server has no stream
 *               (then the listing is polled); default 5000
 * The handle: { cancel(), done, transport, lastEventId }.
 */
(function (root) {
  'use strict';

  var TERMINAL = { completed: true, failed: true, cancelled: true };

  // The origin this script came from: the natural default for baseUrl when
  // the page includes <script src="https://progressd.example/client.js">.
  var scriptOrigin = '';
  try {
    var current = root.document && root.document.currentScript;
    if (current && current.src) scriptOrigin = new URL(current.src, root.location.href).origin;
  } catch (e) { /* not in a browser page: baseUrl must be given */ }

  function isTerminal(record) {
    return !!record && TERMINAL[record.status] === true;
  }

  function WatchError(message, fields) {
    var error = new Error(message);
    error.name = 'ProgressdError';
    for (var key in fields) if (Object.prototype.hasOwnProperty.call(fields, key)) error[key] = fields[key];
    return error;
  }

  // A problem+json body (or whatever came) as an Error with status and code.
  function httpError(response, text) {
    var problem = null;
    try { problem = JSON.parse(text); } catch (e) { /* not JSON */ }
    var detail = problem && (problem.detail || problem.title);
    return WatchError(
      'progressd answered ' + response.status + (detail ? ': ' + detail : ''),
      { status: response.status, code: problem && problem.code, problem: problem, retryAfter: retryAfter(response) }
    );
  }

  function retryAfter(response) {
    var value = response.headers.get('Retry-After');
    var seconds = value == null ? NaN : Number(value);
    return isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null;
  }

  // Statuses that retrying cannot fix (410 Gone ends the watch as 'deleted'
  // or 'expired' before it gets here).
  function isFatalStatus(status) {
    return status === 400 || status === 401 || status === 403 || status === 410;
  }

  // How a 410's problem document says the record went: 'deleted' or 'expired'.
  function goneReason(problem) {
    return problem && problem.reason === 'expired' ? 'expired' : 'deleted';
  }

  // The `exp` of a JWT, in milliseconds; null when the token is not one.
  function jwtExpiry(token) {
    if (typeof token !== 'string') return null;
    var parts = token.split('.');
    if (parts.length !== 3 || parts[0].slice(0, 3) !== 'eyJ') return null;
    try {
      var json = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      while (json.length % 4) json += '=';
      var claims = JSON.parse(root.atob(json));
      return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
    } catch (e) { return null; }
  }

  // The `token` option as { get() → Promise of a token or null, refresh() }.
  // A function's JWT is kept until shortly before it expires (a tenth of its
  // remaining life, at least 5 s and at most 60 s early), then asked for again,
  // ahead of time by a timer too, so a reconnect never waits on an expired one.
  function tokenSource(option) {
    if (typeof option !== 'function') {
      return { get: function () { return Promise.resolve(option || null); }, refresh: function () {}, stop: function () {}, dynamic: false };
    }
    var current = null, renewAt = 0, pending = null, timer = null, stopped = false;
    function ask() {
      if (pending) return pending;
      pending = Promise.resolve().then(function () { return option(); }).then(function (token) {
        pending = null;
        var exp = jwtExpiry(token);
        if (exp === null) { current = null; return token || null; }   // not a JWT: asked for every time
        var early = Math.max(5000, Math.min(60000, (exp - Date.now()) / 10));
        current = token;
        renewAt = exp - early;
        if (timer !== null) clearTimeout(timer);
        // Renewed ahead of time; one that has already expired is left to the 401.
        if (!stopped && renewAt > Date.now()) {
          timer = setTimeout(function () { timer = null; if (!stopped) ask().catch(function () {}); }, renewAt - Date.now());
        }
        return token;
      }, function (error) {
        pending = null;
        if (error && error.status === undefined) error.status = 0;
        throw error;
      });
      return pending;
    }
    return {
      get: function () { return current !== null && Date.now() < renewAt ? Promise.resolve(current) : ask(); },
      refresh: function () { current = null; },
      stop: function () { stopped = true; if (timer !== null) { clearTimeout(timer); timer = null; } },
      dynamic: true
    };
  }

  // POST /progress/{id}/cancel: a Promise of the record; a refusal rejects
  // with its problem (status, code). A token function that gets a 401 is
  // asked once more, as the watch does.
  function sendCancel(baseUrl, id, reason, tokens) {
    var body = JSON.stringify(reason == null ? {} : { reason: String(reason) });
    function attempt(retried) {
      return tokens.get().then(function (token) {
        var h = { Accept: 'application/json', 'Content-Type': 'application/json' };
        if (token) h.Authorization = 'Bearer ' + token;
        var url = baseUrl + '/progress/' + encodeURIComponent(id) + '/cancel';
        return fetch(url, { method: 'POST', headers: h, body: body, cache: 'no-store' });
      }).then(function (response) {
        return response.text().then(function (text) {
          if (response.ok) return JSON.parse(text);
          if (response.status === 401 && tokens.dynamic && !retried) { tokens.refresh(); return attempt(true); }
          throw httpError(response, text);
        });
      }, function (error) {
        if (error && error.status === undefined) error.status = 0;
        throw error;
      });
    }
    return attempt(false);
  }

  function requestCancel(id, reason, options) {
    if (typeof id !== 'string' || id === '') return Promise.reject(new TypeError('progressd.requestCancel: id must be a non-empty string'));
    var opts = options || {};
    var tokens = tokenSource(opts.token);
    var done = function () { tokens.stop(); };
    var baseUrl = String(opts.baseUrl != null ? opts.baseUrl : scriptOrigin).replace(/\/+$/, '');
    return sendCancel(baseUrl, id, reason, tokens).then(function (r) { done(); return r; }, function (e) { done(); throw e; });
  }

  function watch(id, onUpdate, options) {
    if (typeof id !== 'string' || id === '') throw new TypeError('progressd.watch: id must be a non-empty string');
    if (typeof onUpdate !== 'function') throw new TypeError('progressd.watch: onUpdate must be a function');
    var opts = options || {};
    var baseUrl = String(opts.baseUrl != null ? opts.baseUrl : scriptOrigin).replace(/\/+$/, '');
    var recordUrl = baseUrl + '/progress/' + encodeURIComponent(id);
    var mode = opts.transport || 'auto';
    var waitSeconds = Math.max(0, Math.min(60, opts.wait != null ? Number(opts.wait) : 25));
    var interval = opts.interval != null ? Number(opts.interval) : 2000;
    var maxBackoff = opts.maxBackoff != null ? Number(opts.maxBackoff) : 30000;
    var idleTimeout = opts.idleTimeout != null ? Number(opts.idleTimeout) : 75000;
    var retryNotFound = opts.retryNotFound !== false;
    var streamFailuresBeforePolling = 3;

    var stopped = false;
    var lastVersion = null;      // version of the last record delivered
    var lastCreatedAt = null;    // to tell a re-created record from an old one
    var etag = null;             // ETag of the last record delivered
    var failures = 0;            // consecutive failures, for the backoff
    var streamFailures = 0;      // consecutive event streams that delivered nothing
    var controller = null;       // aborts the request in flight
    var timer = null;            // the pending retry or poll
    var goneInfo = null;         // what the server said when the record went
    var resolveDone;
    var handle = {
      transport: mode === 'poll' ? 'poll' : 'sse',
      lastVersion: null,
      done: new Promise(function (resolve) { resolveDone = resolve; }),
      cancel: function () { finish('cancelled'); },
      requestCancel: function (reason) { return sendCancel(baseUrl, id, reason, tokens); }
    };

    var tokens = tokenSource(opts.token);
    var refreshed = false;       // a 401 already made the token function run again

    // The request's headers, once the token is known (a Promise).
    function headers(extra) {
      return tokens.get().then(function (token) {
        var h = { Accept: extra && extra.accept || 'application/json' };
        if (token) h.Authorization = 'Bearer ' + token;
        if (extra && extra.lastEventId != null) h['Last-Event-ID'] = String(extra.lastEventId);
        if (extra && extra.ifNoneMatch) h['If-None-Match'] = extra.ifNoneMatch;
        return h;
      });
    }

    // A 401 with a token function: ask it again and retry once, at once.
    function retryWithNewToken(error, retry) {
      if (!error || error.status !== 401 || !tokens.dynamic || refreshed) return false;
      refreshed = true;
      tokens.refresh();
      call(opts.onError, error);
      later(retry, 0);
      return true;
    }

    function call(callback, value) {
      if (typeof callback !== 'function') return;
      try { callback(value); } catch (e) {
        // A bug in the page's callback must not stop the watch loop silently.
        if (root.console) root.console.error('progressd.watch callback failed', e);
      }
    }

    function finish(reason, error) {
      if (stopped) return;
      stopped = true;
      tokens.stop();
      if (timer !== null) { clearTimeout(timer); timer = null; }
      if (controller) { controller.abort(); controller = null; }
      if (error) { error.fatal = true; call(opts.onError, error); }
      if (reason === 'deleted') call(opts.onDeleted, id);
      if (reason === 'deleted' || reason === 'expired') call(opts.onGone, goneInfo || { id: id, reason: reason, at: null });
      call(opts.onEnd, reason);
      resolveDone(reason);
    }

    // Hands a record to the page if it is newer than the last one; true when watching is over.
    function deliver(record, tag) {
      if (!record || typeof record.version !== 'number') return false;
      var recreated = lastCreatedAt !== null && record.created_at !== lastCreatedAt;
      if (lastVersion === null || record.version > lastVersion || recreated) {
        lastVersion = record.version;
        lastCreatedAt = record.created_at;
        etag = tag || '"' + record.version + '"';
        handle.lastVersion = lastVersion;
        call(onUpdate, record);
      }
      if (isTerminal(record)) { finish('terminal'); return true; }
      return false;
    }

    function backoff(error) {
      failures += 1;
      var delay = Math.min(maxBackoff, 1000 * Math.pow(2, failures - 1));
      delay = delay / 2 + Math.random() * delay / 2;          // jitter: many tabs do not retry in step
      if (error && error.retryAfter != null) delay = Math.max(delay, error.retryAfter);
      return delay;
    }

    function later(fn, delay) {
      if (stopped) return;
      timer = setTimeout(function () { timer = null; if (!stopped) fn(); }, delay);
    }

    // The record is gone (410, or the stream's `gone` event): watching is over.
    function gone(reason, at) {
      goneInfo = { id: id, reason: reason, at: at || null };
      finish(reason);
    }

    function failed(error, retry) {
      if (stopped) return;
      if (error && error.name === 'AbortError') return;
      if (error && error.status === 410) { gone(goneReason(error.problem), error.problem && error.problem.gone_at); return; }
      if (retryWithNewToken(error, retry)) return;
      if (error && isFatalStatus(error.status)) { finish('error', error); return; }
      call(opts.onError, error);
      later(retry, backoff(error));
    }

    function notFound(error, retry) {
      // After the record was seen, a 404 means it went longer ago than the
      // server keeps tombstones (or an older server that never says 410).
      if (lastVersion !== null) { finish('deleted'); return; }
      // Not yet: the worker has not written it. Wait for it, quietly.
      if (retryNotFound) { later(retry || poll, Math.max(interval, backoff(error))); failures = Math.min(failures, 2); return; }
      finish('error', error);
    }

    // ---- the event stream, read with fetch() --------------------------------

    function stream() {
      if (stopped) return;
      var ctrl = new AbortController();
      controller = ctrl;
      var delivered = false;
      var idle = null;
      function touch() {
        if (idle !== null) clearTimeout(idle);
        // No byte (not even a heartbeat) for this long: the connection is dead.
        idle = setTimeout(function () { ctrl.abort(); }, idleTimeout);
      }
      function done() { if (idle !== null) { clearTimeout(idle); idle = null; } }

      headers({ accept: 'text/event-stream', lastEventId: lastVersion }).then(function (h) {
        return fetch(baseUrl + '/progress/' + encodeURIComponent(id) + '/events', {
          headers: h,
          cache: 'no-store',
          signal: ctrl.signal
        });
      }).then(function (response) {
        if (stopped) return null;
        var type = response.headers.get('Content-Type') || '';
        if (response.status === 204) {
          // Nothing will follow the version we hold: it was terminal.
          done();
          finish('terminal');
          return null;
        }
        if (response.status === 404 && (response.headers.get('Content-Type') || '').indexOf('problem+json') >= 0) {
          // progressd's own 404: no such record (yet). A 404 from anything
          // else (a proxy, an older server without /events) falls through
          // to polling below.
          done();
          return response.text().then(function (text) {
            var error = httpError(response, text);
            if (error.code === 'not_found') { notFound(error, stream); return null; }
            return switchToPolling();
          });
        }
        if (response.status === 404 || response.status === 405 || response.status === 501 ||
            (response.ok && type.indexOf('text/event-stream') !== 0) || (response.ok && !response.body)) {
          // No event stream here (an older server, a proxy, no ReadableStream):
          // polling says whether the record exists.
          done();
          if (response.body) response.body.cancel().catch(function () {});
          return switchToPolling();
        }
        if (!response.ok) {
          return response.text().then(function (text) { throw httpError(response, text); });
        }
        touch();
        var reader = response.body.getReader();
        var parser = sseParser(function (event) {
          if (stopped) return;
          if (event.type === 'deleted') { gone('deleted'); return; }   // servers before 410
          if (event.type === 'gone') {
            var info = null;
            try { info = JSON.parse(event.data); } catch (e) { /* no details */ }
            gone(info && info.reason === 'expired' ? 'expired' : 'deleted', info && info.at);
            return;
          }
          if (event.type !== 'progress' && event.type !== 'message') return;
          var record;
          try { record = JSON.parse(event.data); } catch (e) { return; }
          delivered = true;
          streamFailures = 0;
          failures = 0;
          refreshed = false;
          deliver(record, event.id ? '"' + event.id + '"' : null);
        });
        function pump() {
          return reader.read().then(function (chunk) {
            if (stopped) { reader.cancel().catch(function () {}); return null; }
            if (chunk.done) {
              done();
              // The server closed the stream without a terminal event: reconnect
              // with Last-Event-ID (at once if it was a healthy stream).
              if (!delivered) streamFailures += 1;
              return reconnect(delivered ? 0 : null);
            }
            touch();
            parser(chunk.value);
            return pump();
          });
        }
        return pump();
      }).catch(function (error) {
        done();
        if (stopped || (error && error.name === 'AbortError' && controller !== ctrl)) return;
        if (error && error.name === 'AbortError') error = WatchError('the event stream went quiet', { status: 0 });
        if (error && error.status === 410) { gone(goneReason(error.problem), error.problem && error.problem.gone_at); return; }
        if (retryWithNewToken(error, stream)) return;
        if (error && isFatalStatus(error.status)) { finish('error', error); return; }
        if (error && error.status === undefined) error.status = 0;
        if (!delivered) streamFailures += 1;
        call(opts.onError, error);
        reconnect(null, error);
      });
    }

    function reconnect(delay, error) {
      if (stopped) return null;
      if (mode === 'auto' && streamFailures >= streamFailuresBeforePolling) return switchToPolling();
      later(stream, delay === 0 ? 0 : backoff(error));
      return null;
    }

    function switchToPolling() {
      if (mode === 'sse') {
        finish('error', WatchError('progressd has no event stream for ' + id, { status: 404 }));
        return null;
      }
      handle.transport = 'poll';
      failures = 0;
      poll();
      return null;
    }

    // ---- ETag polling with long-polls -------------------------------------

    function poll() {
      if (stopped) return;
      var ctrl = new AbortController();
      controller = ctrl;
      var started = Date.now();
      var url = recordUrl + (etag && waitSeconds > 0 ? '?wait=' + waitSeconds : '');
      headers({ ifNoneMatch: etag })
        .then(function (h) { return fetch(url, { headers: h, cache: 'no-store', signal: ctrl.signal }); })
        .then(function (response) {
          if (stopped) return null;
          if (response.status === 304) {
            failures = 0;
            // A server that ignores ?wait answers at once: keep to the interval.
            later(poll, Math.max(0, interval - (Date.now() - started)));
            return null;
          }
          return response.text().then(function (text) {
            if (stopped) return;
            if (response.status === 404) { notFound(httpError(response, text), poll); return; }
            if (!response.ok) throw httpError(response, text);
            failures = 0;
            refreshed = false;
            var before = lastVersion;
            var record = JSON.parse(text);
            if (!deliver(record, response.headers.get('ETag'))) {
              // Long-poll again at once after a change; an unchanged 200 (a
              // proxy that drops If-None-Match) waits like a 304 would.
              var moved = lastVersion !== before && waitSeconds > 0;
              later(poll, moved ? 0 : Math.max(0, interval - (Date.now() - started)));
            }
          });
        })
        .catch(function (error) {
          if (error && error.status === undefined) error.status = 0;
          failed(error, poll);
        });
    }

    if (mode === 'poll') poll(); else stream();
    return handle;
  }

  // ---- many records on one stream ---------------------------------------------

  function watchAll(filter, onUpdate, options) {
    if (typeof onUpdate !== 'function') throw new TypeError('progressd.watchAll: onUpdate must be a function');
    var f = filter || {};
    var opts = options || {};
    var baseUrl = String(opts.baseUrl != null ? opts.baseUrl : scriptOrigin).replace(/\/+$/, '');
    var maxBackoff = opts.maxBackoff != null ? Number(opts.maxBackoff) : 30000;
    var idleTimeout = opts.idleTimeout != null ? Number(opts.idleTimeout) : 75000;
    var interval = opts.interval != null ? Number(opts.interval) : 5000;
    var query = new URLSearchParams();
    if (f.status) query.set('status', Array.isArray(f.status) ? f.status.join(',') : String(f.status));
    if (f.prefix) query.set('prefix', String(f.prefix));
    var listUrl = baseUrl + '/progress' + (query.toString() ? '?' + query.toString() : '');
    var tokens = tokenSource(opts.token);
    var refreshed = false;
    var stopped = false;
    var failures = 0;
    var controller = null;
    var timer = null;
    var polled = null;            // id -> version, when polling the listing
    var resolveDone;
    var handle = {
      transport: 'sse',
      lastEventId: null,
      done: new Promise(function (resolve) { resolveDone = resolve; }),
      cancel: function () { finish('cancelled'); }
    };

    function call(callback, a, b) {
      if (typeof callback !== 'function') return;
      try { callback(a, b); } catch (e) {
        if (root.console) root.console.error('progressd.watchAll callback failed', e);
      }
    }

    function finish(reason, error) {
      if (stopped) return;
      stopped = true;
      tokens.stop();
      if (timer !== null) { clearTimeout(timer); timer = null; }
      if (controller) { controller.abort(); controller = null; }
      if (error) { error.fatal = true; call(opts.onError, error); }
      call(opts.onEnd, reason);
      resolveDone(reason);
    }

    function later(fn, delay) {
      if (stopped) return;
      timer = setTimeout(function () { timer = null; if (!stopped) fn(); }, delay);
    }

    function backoff(error) {
      failures += 1;
      var delay = Math.min(maxBackoff, 1000 * Math.pow(2, failures - 1));
      delay = delay / 2 + Math.random() * delay / 2;
      if (error && error.retryAfter != null) delay = Math.max(delay, error.retryAfter);
      return delay;
    }

    function failed(error, retry) {
      if (stopped || (error && error.name === 'AbortError')) return;
      if (error && error.status === undefined) error.status = 0;
      if (error && error.status === 401 && tokens.dynamic && !refreshed) {
        refreshed = true;
        tokens.refresh();
        call(opts.onError, error);
        later(retry, 0);
        return;
      }
      if (error && isFatalStatus(error.status)) { finish('error', error); return; }
      call(opts.onError, error);
      later(retry, backoff(error));
    }

    function request(accept, url, signal) {
      return tokens.get().then(function (token) {
        var h = { Accept: accept };
        if (token) h.Authorization = 'Bearer ' + token;
        if (accept === 'text/event-stream' && handle.lastEventId) h['Last-Event-ID'] = handle.lastEventId;
        return fetch(url, { headers: h, cache: 'no-store', signal: signal });
      });
    }

    function stream() {
      if (stopped) return;
      var ctrl = new AbortController();
      controller = ctrl;
      var idle = null;
      function touch() {
        if (idle !== null) clearTimeout(idle);
        idle = setTimeout(function () { ctrl.abort(); }, idleTimeout);
      }
      function done() { if (idle !== null) { clearTimeout(idle); idle = null; } }
      request('text/event-stream', listUrl, ctrl.signal).then(function (response) {
        if (stopped) return null;
        var type = response.headers.get('Content-Type') || '';
        if (response.ok && (type.indexOf('text/event-stream') !== 0 || !response.body)) {
          // A server without the stream answers the JSON listing: poll it.
          if (response.body) response.body.cancel().catch(function () {});
          handle.transport = 'poll';
          polled = new Map();
          return poll();
        }
        if (!response.ok) return response.text().then(function (text) { throw httpError(response, text); });
        touch();
        var reader = response.body.getReader();
        var parser = sseParser(function (event) {
          if (stopped) return;
          var data;
          try { data = JSON.parse(event.data); } catch (e) { return; }
          failures = 0;
          refreshed = false;
          // Snapshot events carry no id of their own: the last one stands.
          if (event.id) handle.lastEventId = event.id;
          if (event.type === 'progress') call(onUpdate, data);
          else if (event.type === 'ready') call(opts.onReady, data.records);
          else if (event.type === 'deleted') call(opts.onDeleted, data.id);
          else if (event.type === 'removed') call(opts.onRemoved, data.id, data.status);
        });
        function pump() {
          return reader.read().then(function (chunk) {
            if (stopped) { reader.cancel().catch(function () {}); return null; }
            if (chunk.done) { done(); later(stream, backoff(null)); return null; }
            touch();
            parser(chunk.value);
            return pump();
          });
        }
        return pump();
      }).catch(function (error) {
        done();
        if (stopped || (error && error.name === 'AbortError' && controller !== ctrl)) return;
        if (error && error.name === 'AbortError') error = WatchError('the event stream went quiet', { status: 0 });
        failed(error, stream);
      });
    }

    // The fallback: the whole listing every `interval`, reporting what changed.
    function poll() {
      if (stopped) return;
      var ctrl = new AbortController();
      controller = ctrl;
      var seen = new Map();
      function page(cursor) {
        var url = listUrl + (listUrl.indexOf('?') < 0 ? '?' : '&') + 'limit=500' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : '');
        return request('application/json', url, ctrl.signal).then(function (response) {
          return response.text().then(function (text) {
            if (!response.ok) throw httpError(response, text);
            var body = JSON.parse(text);
            (body.items || []).forEach(function (record) {
              seen.set(record.id, record.version);
              if (polled.get(record.id) !== record.version) call(onUpdate, record);
            });
            return body.next_cursor ? page(body.next_cursor) : null;
          });
        });
      }
      page(null).then(function () {
        if (stopped) return;
        polled.forEach(function (version, id) { if (!seen.has(id)) call(opts.onDeleted, id); });
        polled = seen;
        failures = 0;
        refreshed = false;
        call(opts.onReady, seen.size);
        later(poll, interval);
      }).catch(function (error) { failed(error, poll); });
      return null;
    }

    stream();
    return handle;
  }

  // Server-Sent Events framing (the WHATWG parsing rules): feed it bytes,
  // it calls onEvent({type, data, id}) for each complete event.
  function sseParser(onEvent) {
    var decoder = new TextDecoder();
    var buffer = '';
    var data = [];
    var type = '';
    var lastId = '';
    var sawCR = false;
    function line(text) {
      if (text === '') {
        if (data.length) onEvent({ type: type || 'message', data: data.join('\n'), id: lastId });
        data = [];
        type = '';
        return;
      }
      if (text.charCodeAt(0) === 58) return;               // ':' a comment (heartbeat)
      var colon = text.indexOf(':');
      var field = colon < 0 ? text : text.slice(0, colon);
      var value = colon < 0 ? '' : text.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') type = value;
      else if (field === 'id' && value.indexOf('\0') < 0) lastId = value;
    }
    return function (bytes) {
      buffer += decoder.decode(bytes, { stream: true });
      var start = 0;
      for (var i = 0; i < buffer.length; i++) {
        var c = buffer.charCodeAt(i);
        if (c === 10 && sawCR) { sawCR = false; start = i + 1; continue; }   // the \n of \r\n
        sawCR = false;
        if (c === 10 || c === 13) {
          line(buffer.slice(start, i));
          sawCR = c === 13;
          start = i + 1;
        }
      }
      buffer = buffer.slice(start);
    };
  }

  var api = { watch: watch, watchAll: watchAll, requestCancel: requestCancel, isTerminal: isTerminal, version: '1' };
  if (typeof module === 'object' && module && module.exports) module.exports = api;
  root.progressd = Object.assign(root.progressd || {}, api);
})(typeof window !== 'undefined' ? window : globalThis);
