// Hyperpage portal: keeps the dashboard current without reloading the page.
// The server renders (and escapes) every fragment; this script only swaps it in.
// Served from /assets/portal.js so the Content-Security-Policy needs no 'unsafe-inline'.
'use strict';
(function () {
  var main = document.getElementById('dashboard');
  var live = document.getElementById('live');
  if (!main || !live) return;

  // The CSP requires Trusted Types for DOM sinks: this named policy is the only way in.
  var policy = window.trustedTypes
    ? window.trustedTypes.createPolicy('hyperpage', { createHTML: function (html) { return html; } })
    : { createHTML: function (html) { return html; } };

  var lastUpdate = Date.now();
  function show(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }
  function swap(html) {
    main.innerHTML = policy.createHTML(html);
    lastUpdate = Date.now();
    document.title = (main.querySelector('[data-title]') || {}).textContent + ' · Hyperpage';
    show('live', 'Live');
  }

  // Server-sent events: one fragment on connect, then one per change (and every 30 s, so
  // "3 min ago" and the stale marks stay true). EventSource reconnects on its own.
  if ('EventSource' in window) {
    var source = new EventSource('/events');
    source.addEventListener('dashboard', function (event) { swap(event.data); });
    source.addEventListener('open', function () { show('live', 'Live'); });
    source.addEventListener('error', function () {
      show('offline', 'Reconnecting… data shown is from ' + new Date(lastUpdate).toLocaleTimeString());
    });
  } else {
    // Old browsers: poll the same fragment.
    var poll = function () {
      fetch('/fragment', { cache: 'no-store' })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
        .then(swap)
        .catch(function () { show('offline', 'Offline; data shown is from ' + new Date(lastUpdate).toLocaleTimeString()); });
    };
    poll();
    setInterval(poll, 15000);
  }
})();
