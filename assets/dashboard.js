// progressd dashboard: follows the records of GET /progress live (one event
// stream, client.js's watchAll), shows one in detail and follows it live with
// client.js's watch. Record data is untrusted: every piece of
// it reaches the page through textContent or a DOM property, never as markup.
(function () {
  'use strict';

  var TOKEN_KEY = 'progressd.token';
  var STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

  // The API lives next to the page (works behind a path prefix too).
  var API = new URL('.', location.href).href.replace(/\/$/, '');
  var params = new URLSearchParams(location.search);
  var refreshSeconds = Math.max(1, Number(params.get('refresh')) || 5);
  var pageSize = Math.min(200, Math.max(1, Math.floor(Number(params.get('limit'))) || 50));

  var state = {
    token: null,
    pages: 1,             // how many pages of the listing are shown
    nextCursor: null,
    rows: new Map(),      // id -> {tr, record}
    selected: null,       // id shown in the detail view
    watch: null,          // client.js handle of the detail view
    detailRecord: null,   // the newest record the detail view's watch delivered
    detailShown: null,    // the record the detail view shows
    listGeneration: 0,
    refreshTimer: null,   // the pending render
    lastRefresh: null,
    listWatch: null,      // client.js watchAll handle of the list
    records: new Map()    // id -> the newest record the stream delivered
  };

  // The Cancel buttons (dashboard/cancel.js).
  var cancels = window.progressdCancel({
    api: API,
    token: function () { return state.token; },
    changed: function () {
      state.rows.forEach(function (row) { if (row.record) updateRow(row, row.record); });
      if (state.detailShown) renderDetail(state.detailShown);
    },
    requested: function (record) {
      var held = state.records.get(record.id);
      if (!held || held.version <= record.version) state.records.set(record.id, record);
      scheduleRender(true);
      if (state.selected === record.id) renderDetail(record);
    },
    failed: function (id, error) {
      notice('error', 'Cancelling ' + id + ' failed. ' + explain(error.status || 0, error.problem || { detail: error.message }));
    }
  });

  function $(id) { return document.getElementById(id); }

  // ---- small DOM helpers (text only) ---------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = String(text);
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function progressBar(size) {
    var bar = el('div', 'bar' + (size ? ' bar-' + size : ''));
    bar.setAttribute('role', 'progressbar');
    bar.setAttribute('aria-valuemin', '0');
    bar.setAttribute('aria-valuemax', '100');
    bar.appendChild(el('div', 'bar-fill'));
    return bar;
  }

  function setBar(bar, percent, status, stalled) {
    var value = clampPercent(percent);
    bar.setAttribute('aria-valuenow', String(value));
    bar.setAttribute('aria-valuetext', formatPercent(value));
    bar.firstChild.style.width = value + '%';   // CSSOM, allowed by the CSP
    STATUSES.forEach(function (s) { bar.classList.toggle('is-' + s, s === status); });
    bar.classList.toggle('is-stalled', !!stalled);
  }

  function setBadge(node, status) {
    node.textContent = status || 'unknown';
    node.className = 'badge badge-' + (STATUSES.indexOf(status) >= 0 ? status : 'unknown');
  }

  // ---- formatting ------------------------------------------------------------

  function clampPercent(p) {
    var n = Number(p);
    if (!isFinite(n)) return 0;
    return Math.round(Math.min(100, Math.max(0, n)) * 100) / 100;
  }

  function formatPercent(p) {
    var n = clampPercent(p);
    return (n % 1 === 0 ? n.toFixed(0) : n.toFixed(1)) + ' %';
  }

  function formatDuration(ms) {
    if (ms == null || !isFinite(ms)) return '';
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + ' ms';
    var s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + ' s';
    var m = Math.floor(s / 60);
    if (m < 60) return m + ' m ' + String(Math.floor(s % 60)).padStart(2, '0') + ' s';
    var h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + String(m % 60).padStart(2, '0') + ' m';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }

  function parseTime(text) {
    var t = text ? Date.parse(text) : NaN;
    return isFinite(t) ? t : null;
  }

  function ago(text) {
    var t = parseTime(text);
    return t === null ? '' : formatDuration(Date.now() - t) + ' ago';
  }

  // A stalled job has no estimate (the server sends `eta: null` then; an
  // older server's stale one must not read "any moment" beside the badge).
  function formatEta(record) {
    var t = record.stalled ? null : parseTime(record.eta);
    if (t === null) return '';
    var left = t - Date.now();
    return left <= 0 ? 'any moment' : 'in ' + formatDuration(left);
  }

  function localTime(text) {
    var t = parseTime(text);
    return t === null ? '' : new Date(t).toLocaleString();
  }

  function childPercent(child) {
    if (child.progress != null) return child.progress;
    var current = Number(child.current), total = Number(child.total);
    if (isFinite(current) && isFinite(total) && total > 0) return current / total * 100;
    return child.status === 'completed' ? 100 : 0;
  }

  function pretty(value) {
    return typeof value === 'string' ? value : JSON.stringify(value, null, 2);
  }

  // ---- token ----------------------------------------------------------------

  function loadToken() {
    // A token in the fragment (#token=…) is taken once and removed from the
    // address bar; the fragment never reaches the server.
    var hash = new URLSearchParams(location.hash.replace(/^#/, ''));
    var fromHash = hash.get('token');
    if (fromHash) {
      sessionStorage.setItem(TOKEN_KEY, fromHash);
      hash.delete('token');
      var rest = hash.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    }
    state.token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || null;
    $('token-remember').checked = !!localStorage.getItem(TOKEN_KEY);
    showTokenState();
  }

  function setToken(token, remember) {
    state.token = token || null;
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    if (state.token) (remember ? localStorage : sessionStorage).setItem(TOKEN_KEY, state.token);
    showTokenState();
  }

  function showTokenState() {
    $('token-state').textContent = state.token ? 'token set' : 'no token';
    $('token-input').value = '';
    cancels.askAccess();
  }

  // ---- notices ----------------------------------------------------------------

  function notice(kind, text) {
    var box = $('notice');
    if (!text) { box.hidden = true; box.textContent = ''; return; }
    box.className = 'notice notice-' + kind;
    box.textContent = text;
    box.hidden = false;
  }

  function explain(status, problem) {
    var detail = problem && (problem.detail || problem.title);
    if (status === 401) {
      return state.token
        ? 'Unauthorized (401): the server did not accept this token. Enter a valid read token above.'
        : 'Unauthorized (401): this server needs a token. Enter a read token above to see the jobs.';
    }
    if (status === 403) return 'Forbidden (403): ' + (detail || 'this token may not list jobs.');
    if (status === 404 && problem && /no route/.test(problem.detail || '')) {
      return 'This server has no listing endpoint (GET /progress).';
    }
    if (status === 0) return 'Cannot reach the server: ' + (detail || 'network error') + '. Retrying.';
    return 'The server answered ' + status + (detail ? ': ' + detail : '') + '.';
  }

  // ---- the list ---------------------------------------------------------------

  function listUrl(cursor) {
    var q = new URLSearchParams();
    var status = $('filter-status').value;
    var prefix = $('filter-prefix').value.trim();
    if (status) q.set('status', status);
    if (prefix) q.set('prefix', prefix);
    q.set('limit', String(pageSize));
    if (cursor) q.set('cursor', cursor);
    return API + '/progress?' + q.toString();
  }

  // The list follows GET /progress as one event stream (client.js's
  // watchAll): the matching records, then every change, live. The records
  // are kept here and shown newest first, `pageSize` per shown page; renders
  // are batched to one per `RENDER_MS`.
  var RENDER_MS = 200;

  function refresh() {
    if (state.listWatch) state.listWatch.cancel();
    clearTimeout(state.refreshTimer);
    state.refreshTimer = null;
    var generation = ++state.listGeneration;
    var records = new Map();
    state.records = records;
    var filter = { status: $('filter-status').value || null, prefix: $('filter-prefix').value.trim() || null };
    function current() { return generation === state.listGeneration; }
    state.listWatch = window.progressd.watchAll(filter, function (record) {
      if (!current() || !record || typeof record.id !== 'string') return;
      var held = records.get(record.id);
      if (held && held.created_at === record.created_at && held.version >= record.version) return;
      records.set(record.id, record);
      scheduleRender();
    }, {
      baseUrl: API,
      token: function () { return state.token; },
      interval: refreshSeconds * 1000,
      onReady: function () {
        if (!current()) return;
        state.lastRefresh = Date.now();
        notice(null, null);
        scheduleRender(true);
      },
      onDeleted: function (id) { if (current() && records.delete(id)) scheduleRender(); },
      onRemoved: function (id) { if (current() && records.delete(id)) scheduleRender(); },
      onError: function (error) {
        if (!current()) return;
        var status = error.status || 0;
        notice(status === 401 || status === 403 ? 'auth' : 'error', explain(status, error.problem || { detail: error.message }));
        if (error.fatal && (status === 401 || status === 403)) {
          records.clear();
          renderList([]);
          $('summary').textContent = '';
          $('empty').hidden = true;
          $('token-input').focus();
        }
      }
    });
  }

  function scheduleRender(now) {
    if (now) { clearTimeout(state.refreshTimer); state.refreshTimer = null; render(); return; }
    if (state.refreshTimer !== null) return;
    state.refreshTimer = setTimeout(function () { state.refreshTimer = null; render(); }, RENDER_MS);
  }

  // Newest first by creation, as the listing orders them.
  function render() {
    var all = Array.from(state.records.values()).sort(function (a, b) {
      if (a.created_at !== b.created_at) return a.created_at < b.created_at ? 1 : -1;
      return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
    });
    var shown = all.slice(0, state.pages * pageSize);
    state.nextCursor = all.length > shown.length ? 'more' : null;
    renderList(shown);
  }

  function renderList(items) {
    var tbody = $('rows');
    var seen = new Set();
    var counts = { running: 0, failed: 0, stalled: 0 };
    items.forEach(function (record, index) {
      if (!record || typeof record.id !== 'string' || seen.has(record.id)) return;
      seen.add(record.id);
      var row = state.rows.get(record.id);
      if (!row) {
        row = createRow(record.id);
        state.rows.set(record.id, row);
      }
      // The detail view's live record may be newer than the listing's copy.
      var shown = state.selected === record.id && state.detailRecord && state.detailRecord.version > record.version
        ? state.detailRecord : record;
      updateRow(row, shown);
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
      if (shown.status === 'running') counts.running++;
      if (shown.status === 'failed') counts.failed++;
      if (shown.stalled) counts.stalled++;
    });
    state.rows.forEach(function (row, id) {
      if (!seen.has(id)) { row.tr.remove(); state.rows.delete(id); }
    });
    $('empty').hidden = seen.size > 0;
    $('more').hidden = !state.nextCursor;
    var parts = [seen.size + ' shown'];
    if (counts.running) parts.push(counts.running + ' running');
    if (counts.failed) parts.push(counts.failed + ' failed');
    if (counts.stalled) parts.push(counts.stalled + ' stalled');
    $('summary').textContent = parts.join(' · ');
  }

  function createRow(id) {
    var tr = el('tr');
    tr.tabIndex = 0;
    tr.dataset.id = id;                       // a DOM property: no markup is parsed
    var job = el('td');
    job.appendChild(el('div', 'job-id', id));
    var message = el('div', 'job-message');
    var children = el('div', 'job-children');
    job.appendChild(message);
    job.appendChild(children);
    var statusCell = el('td', 'nowrap');
    var badge = el('span', 'badge');
    var stalled = el('span', 'badge badge-stalled', 'stalled');
    var asked = el('span', 'badge badge-cancel-requested', 'cancel requested');
    var cancel = cancels.button(id);
    statusCell.appendChild(badge);
    statusCell.appendChild(document.createTextNode(' '));
    statusCell.appendChild(stalled);
    statusCell.appendChild(document.createTextNode(' '));
    statusCell.appendChild(asked);
    var actions = el('td', 'nowrap actions');
    actions.appendChild(cancel);
    var progressCell = el('td');
    var wrap = el('div', 'progress-cell');
    var bar = progressBar();
    var percent = el('span', 'percent');
    wrap.appendChild(bar);
    wrap.appendChild(percent);
    progressCell.appendChild(wrap);
    var stage = el('td');
    var eta = el('td', 'nowrap');
    var updated = el('td', 'muted nowrap');
    [job, statusCell, progressCell, stage, eta, updated, actions].forEach(function (td) { tr.appendChild(td); });
    tr.addEventListener('click', function () { select(id); });
    tr.addEventListener('keydown', function (event) {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); select(id); }
    });
    return { tr: tr, badge: badge, stalled: stalled, asked: asked, cancel: cancel, bar: bar, percent: percent, message: message,
             children: children, stage: stage, eta: eta, updated: updated, record: null };
  }

  function updateRow(row, record) {
    row.record = record;
    var tr = row.tr;
    STATUSES.forEach(function (s) { tr.classList.toggle('status-' + s, s === record.status); });
    tr.classList.toggle('is-failed', record.status === 'failed');
    tr.classList.toggle('is-stalled', !!record.stalled);
    tr.classList.toggle('selected', state.selected === record.id);
    setBadge(row.badge, record.status);
    row.stalled.hidden = !record.stalled;
    row.asked.hidden = !record.cancel_requested_at || record.status === 'cancelled';
    row.asked.title = record.cancel_reason || '';
    row.cancel.hidden = !cancels.cancellable(record);
    if (row.cancel.hidden) row.cancel.disabled = false;
    setBar(row.bar, record.progress, record.status, record.stalled);
    row.percent.textContent = formatPercent(record.progress);
    row.message.textContent = record.message || '';
    row.message.title = record.message || '';
    var kids = record.children ? Object.keys(record.children) : [];
    if (kids.length) {
      var done = kids.filter(function (k) { return record.children[k] && record.children[k].status === 'completed'; }).length;
      row.children.textContent = done + ' of ' + kids.length + ' parts done';
    } else {
      row.children.textContent = '';
    }
    row.stage.textContent = record.stage || '';
    row.eta.textContent = formatEta(record);
    row.updated.textContent = ago(record.updated_at);
    row.updated.title = localTime(record.updated_at);
  }

  // ---- the detail view --------------------------------------------------------

  function select(id) {
    if (state.selected === id && state.watch) return;
    closeDetail(true);
    state.selected = id;
    state.rows.forEach(function (row, rowId) { row.tr.classList.toggle('selected', rowId === id); });
    var known = state.rows.get(id);
    $('detail').hidden = false;
    $('d-id').textContent = id;
    $('d-live').textContent = 'connecting…';
    if (known && known.record) renderDetail(known.record);
    saveLocation();
    if (!window.progressd) { $('d-live').textContent = 'client.js did not load'; return; }
    var handle = window.progressd.watch(id, function (record) {
      if (state.selected !== id) return;
      state.detailRecord = record;
      renderDetail(record);
      var row = state.rows.get(id);
      if (row && (!row.record || row.record.version <= record.version)) updateRow(row, record);
      $('d-live').textContent = handle.transport === 'poll' ? 'live (polling)' : 'live';
    }, {
      baseUrl: API,
      token: function () { return state.token; },
      onError: function (error) {
        if (state.selected !== id) return;
        $('d-live').textContent = error.status === 401
          ? 'unauthorized: enter a read token'
          : 'reconnecting (' + (error.message || 'error') + ')';
      },
      onEnd: function (reason) {
        if (state.selected !== id) return;
        $('d-live').textContent = {
          terminal: 'finished', deleted: 'deleted', expired: 'expired',
          error: 'stopped: ' + ($('d-live').textContent || 'error')
        }[reason] || '';
        if (reason === 'deleted' || reason === 'expired') $('d-status').textContent = reason;
      }
    });
    state.watch = handle;
  }

  function closeDetail(keepLocation) {
    if (state.watch) state.watch.cancel();
    state.watch = null;
    state.detailRecord = null;
    state.detailShown = null;
    state.selected = null;
    $('detail').hidden = true;
    state.rows.forEach(function (row) { row.tr.classList.remove('selected'); });
    if (!keepLocation) saveLocation();
  }

  function renderDetail(record) {
    $('d-id').textContent = record.id;
    setBadge($('d-status'), record.status);
    $('d-stalled').hidden = !record.stalled;
    $('d-cancel').hidden = !cancels.cancellable(record);
    $('d-cancel').disabled = false;
    setBar($('d-bar'), record.progress, record.status, record.stalled);
    $('d-percent').textContent = formatPercent(record.progress);
    $('d-counts').textContent = record.current != null && record.total != null
      ? record.current + ' of ' + record.total
      : record.current != null ? String(record.current) : '';
    $('d-message').textContent = record.message || '';
    renderFacts(record);
    renderStages(record.stages || []);
    renderChildren(record.children || {});
    showJson('d-error', record.error);
    showJson('d-result', record.result);
    showJson('d-metadata', record.metadata);
  }

  // The times relative to now: rendered with the record, and again every second.
  function renderFacts(record) {
    state.detailShown = record;
    var facts = $('d-facts');
    clear(facts);
    function fact(name, value, title) {
      if (value === '' || value == null) return;
      facts.appendChild(el('dt', null, name));
      var dd = el('dd', null, value);
      if (title) dd.title = title;
      facts.appendChild(dd);
    }
    fact('Stage', record.stage);
    fact('ETA', formatEta(record), record.stalled ? '' : localTime(record.eta));
    fact('Created', ago(record.created_at), localTime(record.created_at));
    fact('Started', ago(record.started_at), localTime(record.started_at));
    fact('Updated', ago(record.updated_at), localTime(record.updated_at));
    fact('Finished', ago(record.completed_at), localTime(record.completed_at));
    if (record.cancel_requested_at) {
      fact('Cancel asked', ago(record.cancel_requested_at) + (record.cancel_reason ? ': ' + record.cancel_reason : ''),
        localTime(record.cancel_requested_at));
    }
    var started = parseTime(record.started_at), finished = parseTime(record.completed_at);
    if (started !== null) fact('Took', formatDuration((finished !== null ? finished : Date.now()) - started));
    fact('Expires', localTime(record.expires_at));
    fact('Version', record.version);
  }

  function tick() {
    var record = state.detailShown;
    if (!record || !state.selected || record.id !== state.selected) return;
    renderFacts(record);
    renderStages(record.stages || []);
  }

  function renderStages(stages) {
    var timeline = $('d-timeline');
    var list = $('d-stages');
    clear(timeline);
    clear(list);
    var now = Date.now();
    var spans = stages.map(function (stage) {
      var open = !stage.finished_at;
      var ms = stage.duration_ms != null ? stage.duration_ms : Math.max(0, now - (parseTime(stage.started_at) || now));
      return { name: stage.name, ms: ms, open: open, started: stage.started_at };
    });
    var total = spans.reduce(function (sum, s) { return sum + s.ms; }, 0);
    spans.forEach(function (s) {
      var seg = el('span', s.open ? 'open' : null);
      seg.style.flexGrow = String(total > 0 ? Math.max(s.ms, total / 200) : 1);
      seg.title = s.name + ': ' + formatDuration(s.ms);
      timeline.appendChild(seg);
      var li = el('li', s.open ? 'open' : null);
      li.appendChild(el('span', 'stage-name', s.name));
      li.appendChild(el('span', 'stage-time', formatDuration(s.ms) + (s.open ? ' so far' : '')));
      li.title = 'started ' + localTime(s.started);
      list.appendChild(li);
    });
    timeline.hidden = spans.length === 0;
    if (!spans.length) list.appendChild(el('li', 'muted', 'none'));
  }

  function renderChildren(children) {
    var list = $('d-children');
    clear(list);
    var ids = Object.keys(children);
    ids.forEach(function (childId) {
      var child = children[childId] || {};
      var li = el('li');
      li.dataset.child = childId;
      var head = el('div', 'child-head');
      head.appendChild(el('span', null, child.title || childId));
      var right = el('span', 'muted', formatPercent(childPercent(child)) + (child.status ? ' · ' + child.status : ''));
      head.appendChild(right);
      li.appendChild(head);
      var bar = progressBar('small');
      setBar(bar, childPercent(child), child.status, false);
      li.appendChild(bar);
      if (child.message) li.appendChild(el('div', 'child-message', child.message));
      list.appendChild(li);
    });
    if (!ids.length) list.appendChild(el('li', 'muted', 'none'));
  }

  function showJson(id, value) {
    var present = value !== undefined && value !== null;
    $(id + '-box').hidden = !present;
    $(id).textContent = present ? pretty(value) : '';
  }

  // ---- location (filters and selection survive a reload) -----------------------

  function saveLocation() {
    var q = new URLSearchParams();
    if ($('filter-status').value) q.set('status', $('filter-status').value);
    if ($('filter-prefix').value.trim()) q.set('prefix', $('filter-prefix').value.trim());
    if (state.selected) q.set('id', state.selected);
    ['refresh', 'limit'].forEach(function (name) { if (params.get(name)) q.set(name, params.get(name)); });
    var search = q.toString();
    history.replaceState(null, '', location.pathname + (search ? '?' + search : '') + location.hash);
  }

  // ---- wiring -------------------------------------------------------------------

  function start() {
    loadToken();
    var wanted = params.get('status');
    if ([].some.call($('filter-status').options, function (o) { return o.value === wanted; })) $('filter-status').value = wanted;
    if (params.get('prefix')) $('filter-prefix').value = params.get('prefix');

    $('token-form').addEventListener('submit', function (event) {
      event.preventDefault();
      var value = $('token-input').value.trim();
      if (!value) return;
      setToken(value, $('token-remember').checked);
      restartDetail();
      state.pages = 1;
      refresh();
    });
    $('token-forget').addEventListener('click', function () {
      setToken(null, false);
      restartDetail();
      refresh();
    });
    $('filter-status').addEventListener('change', function () { state.pages = 1; saveLocation(); refresh(); });
    var typing = null;
    $('filter-prefix').addEventListener('input', function () {
      clearTimeout(typing);
      typing = setTimeout(function () { state.pages = 1; saveLocation(); refresh(); }, 300);
    });
    $('refresh').addEventListener('click', function () { refresh(); });
    $('more').addEventListener('click', function () { state.pages += 1; render(); });
    $('d-close').addEventListener('click', function () { closeDetail(false); });
    $('d-cancel').addEventListener('click', function () { if (state.selected) cancels.request(state.selected, $('d-cancel')); });
    document.addEventListener('keydown', function (event) {
      if (event.key === 'Escape' && state.selected) closeDetail(false);
    });

    refresh();
    setInterval(tick, 1000);
    if (params.get('id')) select(params.get('id'));
  }

  // A new token: the detail view's watch starts again with it.
  function restartDetail() {
    var id = state.selected;
    if (id) { closeDetail(true); select(id); }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
