// progressd dashboard: the Cancel buttons (POST /progress/{id}/cancel through
// client.js's requestCancel). Loaded before the dashboard's app.js, which
// calls window.progressdCancel(options) once and shows the buttons where
// `cancellable(record)` says so. The buttons show only when GET /access says
// the token may cancel; a first click arms a button ("Confirm?") for a few
// seconds, the second sends the request, so a stray click cancels nothing.
(function () {
  'use strict';

  var ARMED_MS = 4000;

  // options: api (the API's URL), token() (the token or null),
  // changed() (the answer of GET /access came: render again),
  // requested(record) (a request is on record), failed(id, error).
  function create(options) {
    var mayCancel = false;
    var asked = 0;            // which answer of GET /access is the latest

    // Asked again whenever the token changes.
    function askAccess() {
      var mine = ++asked;
      mayCancel = false;
      var headers = { Accept: 'application/json' };
      var token = options.token();
      if (token) headers.Authorization = 'Bearer ' + token;
      fetch(options.api + '/access', { headers: headers, cache: 'no-store' })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (access) {
          if (mine !== asked) return;
          mayCancel = !!(access && access.cancel === true);
          options.changed();
        })
        .catch(function () { /* an older server: no Cancel buttons */ });
    }

    function cancellable(record) {
      return mayCancel && (record.status === 'running' || record.status === 'pending') && !record.cancel_requested_at;
    }

    function disarm(button) {
      button.dataset.armed = '';
      if (button.dataset.label) button.textContent = button.dataset.label;
    }

    function request(id, button) {
      if (!button.dataset.label) button.dataset.label = button.textContent;
      if (button.dataset.armed !== 'yes') {
        button.dataset.armed = 'yes';
        button.textContent = 'Confirm?';
        setTimeout(function () { disarm(button); }, ARMED_MS);
        return;
      }
      disarm(button);
      button.disabled = true;
      window.progressd.requestCancel(id, 'cancelled from the dashboard', { baseUrl: options.api, token: options.token })
        .then(options.requested, function (error) {
          button.disabled = false;
          options.failed(id, error);
        });
    }

    // A row's button: its click is its own (the row's click opens the detail view).
    function button(id) {
      var b = document.createElement('button');
      b.type = 'button';
      b.className = 'cancel-job';
      b.textContent = 'Cancel';
      b.setAttribute('aria-label', 'Cancel job ' + id);
      b.addEventListener('click', function (event) { event.stopPropagation(); request(id, b); });
      b.addEventListener('keydown', function (event) { event.stopPropagation(); });
      return b;
    }

    return { askAccess: askAccess, cancellable: cancellable, request: request, button: button };
  }

  window.progressdCancel = create;
})();
