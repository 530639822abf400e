/*
 * Bolt dashboard: plain browser JavaScript, no build step, no framework. One page with hash routes
 * (#/runs, #/runs/<id>, #/hosts, #/plugins) over the sink's /api/ui/* views, live through
 * EventSource('api/live'). The same code draws a one-file report: when the document carries a
 * JSON script element with id "bolt-report", it draws that run from the embedded data and loads
 * nothing.
 *
 * Updates are applied to a model at once and drawn in the next animation frame, touching only what
 * changed (grid cells, task nodes, skew histograms, charts). window.__bolt exposes what the
 * browser tests measure (see the plugin's README).
 */
(function () {
  'use strict';

  var reportEl = document.getElementById('bolt-report');
  var REPORT = reportEl ? JSON.parse(reportEl.textContent) : null;
  var UPLOT = window.uPlot;

  var bolt = (window.__bolt = { runId: null, charts: {}, updates: 0, lastUpdateLagMs: 0, frameMs: [] });

  // ------------------------------------------------------------------------------------------
  // Small helpers

  /** h('div', { class: 'x', dataset: {...}, onclick }, children...) */
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k === 'dataset') for (var d in v) el.dataset[d] = v[d];
        else if (k.slice(0, 2) === 'on') el.addEventListener(k.slice(2), v);
        else if (k === 'style') el.style.cssText = v;
        else el.setAttribute(k, v === true ? '' : v);
      }
    }
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function append(el, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(el, c); });
    else el.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function pill(state, text) { return h('span', { class: 'pill', dataset: { state: state } }, text || state); }
  /** A plugin's state in the colour of what it means: running is fine, not busy. */
  var PLUGIN_COLOUR = { running: 'ok', loading: 'pending', stopping: 'cancelled', stopped: 'cancelled', crashed: 'failed', failed: 'failed', invalid: 'failed' };
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }

  function fmtDate(ms) {
    if (ms === null || ms === undefined) return '–';
    var d = new Date(ms);
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function fmtClock(ms) {
    if (ms === null || ms === undefined) return '–';
    var d = new Date(ms);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }
  function fmtDuration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '–';
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    var s = Math.round(ms / 1000);
    if (s < 3600) return Math.floor(s / 60) + 'm ' + pad(s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + pad(Math.floor((s % 3600) / 60)) + 'm';
  }
  function fmtAgo(ms) {
    if (ms === null || ms === undefined) return '–';
    return fmtDuration(Date.now() - ms) + ' ago';
  }
  /** A start offset: µs below 1 ms, signed. */
  function fmtOffset(ms) {
    if (ms === null || ms === undefined) return '–';
    var sign = ms < 0 ? '−' : '+';
    var a = Math.abs(ms);
    if (a < 1) return sign + Math.round(a * 1000) + ' µs';
    if (a < 1000) return sign + a.toFixed(a < 10 ? 2 : 1) + ' ms';
    return sign + (a / 1000).toFixed(2) + ' s';
  }
  function fmtSpan(ms) { return ms === null || ms === undefined ? '–' : fmtOffset(ms).slice(1); }
  function fmtBytes(b) {
    if (b === null || b === undefined || !isFinite(b)) return '–';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    var v = Math.abs(b);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (b < 0 ? '-' : '') + (v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }
  function fmtNumber(v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    if (a >= 100) return v.toFixed(0);
    return String(Math.round(v * 100) / 100);
  }
  /** How a metric's values read, from its name (units as collector-system documents them). */
  function unitOf(metric) {
    if (/^cpu\.|\.util$|_percent$|_pct$/.test(metric)) return 'percent';
    if (/^(net|disk)\..*_bytes$/.test(metric)) return 'bytes/s';
    if (/^mem\.|_bytes$/.test(metric)) return 'bytes';
    return 'number';
  }
  /** Axis labels: as many decimals as the tick step needs, in the unit of the largest tick. */
  function axisValues(metric, vals) {
    var unit = unitOf(metric);
    var finite = vals.filter(function (v) { return v !== null && isFinite(v); });
    if (!finite.length) return vals.map(function () { return ''; });
    var step = finite.length > 1 ? Math.abs(finite[1] - finite[0]) : Math.abs(finite[0]) || 1;
    var big = Math.max.apply(null, finite.map(Math.abs));
    var div = 1, suffix = '';
    if (unit === 'bytes' || unit === 'bytes/s') {
      var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
      var i = 0;
      while (big / div >= 1024 && i < units.length - 1) { div *= 1024; i++; }
      suffix = ' ' + units[i] + (unit === 'bytes/s' ? '/s' : '');
    } else if (unit === 'percent') {
      suffix = ' %';
    } else if (big >= 1e6) {
      div = big >= 1e9 ? 1e9 : 1e6;
      suffix = big >= 1e9 ? 'G' : 'M';
    }
    var decimals = Math.max(0, Math.min(4, Math.ceil(-Math.log10(step / div) + 0.0001)));
    return vals.map(function (v) { return v === null || !isFinite(v) ? '' : (v / div).toFixed(decimals) + suffix; });
  }
  function fmtValue(metric, v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    switch (unitOf(metric)) {
      case 'percent': return (Math.round(v * 10) / 10) + ' %';
      case 'bytes': return fmtBytes(v);
      case 'bytes/s': return fmtBytes(v) + '/s';
      default: return fmtNumber(v);
    }
  }
  /** The present: the clock, or in a report the instant it was made (a run still going then stays as it was). */
  function now() { return REPORT ? REPORT.generatedAt : Date.now(); }
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  // ------------------------------------------------------------------------------------------
  // Server access (the page only; a report loads nothing)

  function ApiError(status, code, message) { this.status = status; this.code = code; this.message = message; }
  ApiError.prototype = Object.create(Error.prototype);

  function getJson(path) {
    return fetch(path, { headers: { accept: 'application/json' }, credentials: 'same-origin' }).then(function (res) {
      if (res.status === 404) return null;
      if (res.ok) return res.json();
      return res.json().then(
        function (body) { throw new ApiError(res.status, body && body.error && body.error.code, (body && body.error && body.error.message) || res.statusText); },
        function () { throw new ApiError(res.status, null, res.status + ' ' + res.statusText); },
      );
    });
  }
  function query(params) {
    var parts = [];
    for (var k in params) if (params[k] !== undefined && params[k] !== null && params[k] !== '') parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(params[k]));
    return parts.length ? '?' + parts.join('&') : '';
  }
  function ui(name, params) { return getJson('api/ui/' + name + query(params || {})); }
  function errorBox(err) {
    var text = err && err.status === 401
      ? 'Not signed in (or the session ended). Open the dashboard with the URL that carries ?token= (bolt-core demo --keep prints it; the token is in <data>/plugins/transport-ws/api-token).'
      : 'Could not load: ' + ((err && err.code ? err.code + ': ' : '') + ((err && err.message) || String(err)));
    return h('div', { class: 'error-box' }, text);
  }

  // ------------------------------------------------------------------------------------------
  // Theme

  function initTheme() {
    var saved = null;
    try { saved = localStorage.getItem('bolt.theme'); } catch (e) { /* storage off: follow the system */ }
    var dark = saved ? saved === 'dark' : window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
    document.documentElement.dataset.theme = dark ? 'dark' : 'light';
  }
  function toggleTheme() {
    var next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem('bolt.theme', next); } catch (e) { /* not kept */ }
    if (current && current.themeChanged) current.themeChanged();
  }

  // ------------------------------------------------------------------------------------------
  // Shell: header, routing, the live connection

  var app = document.getElementById('app');
  var main;
  var liveEl;
  var navLinks = {};
  var current = null; // the mounted page: { live(kind, msg, receivedAt), reconnected(), unmount(), themeChanged() }

  function shell() {
    clear(app);
    liveEl = h('span', { class: 'live', dataset: { status: 'off' }, title: 'live updates' }, h('i'), h('span', { text: REPORT ? 'report' : 'connecting' }));
    var nav = h('nav', { class: 'nav' });
    [['runs', 'Runs'], ['hosts', 'Hosts'], ['plugins', 'Plugins']].forEach(function (p) {
      navLinks[p[0]] = h('a', { href: '#/' + p[0] }, p[1]);
      nav.appendChild(navLinks[p[0]]);
    });
    app.appendChild(h('header', { class: 'top' },
      h('div', { class: 'brand' }, h('span', { class: 'bolt', text: '⚡' }), 'Bolt', REPORT ? h('span', { class: 'muted', style: 'font-weight:400', text: ' · run report' }) : null),
      REPORT ? null : nav,
      h('div', { class: 'spacer' }),
      REPORT ? h('span', { class: 'report-note', text: 'generated ' + fmtDate(REPORT.generatedAt) }) : liveEl,
      h('button', { title: 'light / dark', onclick: toggleTheme, text: '◐' }),
    ));
    main = h('main');
    app.appendChild(main);
  }

  var source = null;
  var sourceRun = null;
  /** Pages other than a run's listen with a run id no run has: they get only the messages of no run. */
  var NO_RUN = '-';
  var sourceFailed = false;
  function setLive(status, text) {
    liveEl.dataset.status = status;
    liveEl.lastChild.textContent = text;
  }
  /** One EventSource at a time: `?run=ID` on a run page, else every message without a run. */
  function connectLive(runId) {
    if (REPORT) return;
    runId = runId || null;
    if (source && sourceRun === runId) return;
    if (source) source.close();
    sourceRun = runId;
    sourceFailed = false;
    source = new EventSource('api/live' + (runId ? '?run=' + encodeURIComponent(runId) : ''));
    source.onopen = function () {
      setLive('open', 'live');
      // Messages may have been missed while the connection was down.
      if (sourceFailed && current && current.reconnected) current.reconnected();
      sourceFailed = false;
    };
    source.onerror = function () {
      sourceFailed = true;
      setLive('error', 'reconnecting');
    };
    ['run', 'runs', 'hosts', 'plugins'].forEach(function (kind) {
      source.addEventListener(kind, function (ev) {
        var receivedAt = performance.now();
        var msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        if (current && current.live) current.live(kind, msg, receivedAt);
      });
    });
  }

  function route() {
    if (current && current.unmount) current.unmount();
    current = null;
    clear(main);
    window.scrollTo(0, 0);
    if (REPORT) {
      current = runPage(REPORT.view.run.id);
      return;
    }
    var hash = location.hash.replace(/^#\/?/, '');
    var parts = hash.split('/').map(decodeURIComponent);
    var page = parts[0] || 'runs';
    for (var k in navLinks) navLinks[k].classList.toggle('active', k === page);
    if (page === 'runs' && parts[1]) current = runPage(parts[1]);
    else if (page === 'hosts') current = hostsPage();
    else if (page === 'plugins') current = pluginsPage();
    else current = runsPage();
  }

  // ------------------------------------------------------------------------------------------
  // Runs list

  var RUN_STATES = ['running', 'succeeded', 'failed', 'cancelled'];

  function runsPage() {
    connectLive(NO_RUN);
    bolt.runId = null;
    document.title = 'Runs · Bolt';
    var rows = new Map();
    var order = [];
    var stateSel = h('select', { 'data-testid': 'filter-state' }, h('option', { value: '' }, 'all states'), RUN_STATES.map(function (s) { return h('option', { value: s }, s); }));
    var jobInput = h('input', { type: 'search', 'data-testid': 'filter-job', placeholder: 'job name', size: 22 });
    var count = h('span', { class: 'count' });
    var tbody = h('tbody');
    var table = h('table', { class: 'list' },
      h('thead', null, h('tr', null, h('th', null, 'Run'), h('th', null, 'Job'), h('th', null, 'State'), h('th', null, 'Started'), h('th', { class: 'num' }, 'Duration'), h('th', { class: 'num' }, 'Hosts'), h('th', { class: 'num' }, 'Tasks failed'))),
      tbody);
    var status = h('div');
    main.appendChild(h('section', { class: 'panel' }, h('div', { class: 'toolbar' }, stateSel, jobInput, count), status, table));

    function matches(r) {
      var s = stateSel.value;
      var j = jobInput.value.trim().toLowerCase();
      return (!s || r.state === s) && (!j || (r.jobName || '').toLowerCase().indexOf(j) >= 0);
    }
    function rowOf(r) {
      var tr = h('tr', { class: 'link', 'data-testid': 'run-row', dataset: { runId: r.id, state: r.state }, onclick: function () { location.hash = '#/runs/' + encodeURIComponent(r.id); } },
        h('td', null, h('a', { href: '#/runs/' + encodeURIComponent(r.id), class: 'mono' }, r.id)),
        h('td', null, r.jobName || h('span', { class: 'muted' }, '–')),
        h('td', null, pill(r.state)),
        h('td', { class: 'muted' }, fmtDate(r.startedAt || r.createdAt)),
        h('td', { class: 'num dur' }, durationOf(r)),
        h('td', { class: 'num' }, r.hosts === null ? '…' : r.hosts),
        h('td', { class: 'num' }, r.tasksFailed === null ? '…' : r.tasksFailed ? h('span', { style: 'color:var(--s-failed);font-weight:600' }, r.tasksFailed) : '0'));
      tr._run = r;
      return tr;
    }
    function durationOf(r) {
      if (!r.startedAt) return '–';
      return fmtDuration((r.finishedAt || (r.state === 'running' ? Date.now() : null) || r.startedAt) - r.startedAt);
    }
    function draw() {
      clear(tbody);
      var shown = 0;
      order.forEach(function (id) {
        var r = rows.get(id);
        if (!matches(r)) return;
        tbody.appendChild(rowOf(r));
        shown++;
      });
      count.textContent = shown + ' run' + (shown === 1 ? '' : 's');
      clear(status);
      if (shown === 0) status.appendChild(h('div', { class: 'empty' }, rows.size === 0 ? 'No runs yet. Start one with bolt-core run JOB (or bolt-core demo).' : 'No run matches the filter.'));
    }
    function put(list) {
      list.forEach(function (r) { rows.set(r.id, r); });
      order = Array.from(rows.keys()).sort(function (a, b) { return rows.get(b).createdAt - rows.get(a).createdAt; });
    }
    var retries = 0;
    var timer = null;
    var gone = false;
    function load() {
      ui('runs', { state: stateSel.value, job: jobInput.value.trim() }).then(function (answer) {
        if (gone) return;
        rows.clear();
        put((answer && answer.runs) || []);
        draw();
        // Rows of older runs are computed a few at a time: ask again until all are there.
        if (answer && answer.partial && retries++ < 60) timer = setTimeout(load, 1000);
      }, function (err) {
        if (gone) return;
        clear(status).appendChild(errorBox(err));
      });
    }
    var debounce = null;
    function refilter() {
      draw();
      clearTimeout(debounce);
      retries = 0;
      debounce = setTimeout(load, 300);
    }
    stateSel.addEventListener('change', refilter);
    jobInput.addEventListener('input', refilter);
    load();
    var tick = setInterval(function () {
      Array.prototype.forEach.call(tbody.children, function (tr) {
        if (tr._run && tr._run.state === 'running') tr.querySelector('.dur').textContent = durationOf(tr._run);
      });
    }, 1000);
    return {
      live: function (kind, msg, receivedAt) {
        if (kind !== 'runs') return;
        put(msg.runs);
        draw();
        countUpdate(msg, receivedAt, performance.now());
      },
      reconnected: load,
      unmount: function () { gone = true; clearInterval(tick); clearTimeout(timer); clearTimeout(debounce); },
    };
  }

  /** Records one applied live update in window.__bolt. */
  function countUpdate(msg, receivedAt, drawnAt) {
    bolt.updates++;
    if (typeof msg.at === 'number') bolt.lastUpdateLagMs = Date.now() - msg.at;
    bolt.frameMs.push(drawnAt - receivedAt);
    if (bolt.frameMs.length > 120) bolt.frameMs.splice(0, bolt.frameMs.length - 120);
  }

  // ------------------------------------------------------------------------------------------
  // A run

  var FINAL_TASK = { succeeded: 1, failed: 1, cancelled: 1 };
  /** How far back from its newest bucket a chart asks again as the run goes on (late samples). */
  var LOOKBACK_MS = 10000;
  /** After a watched run ends, its charts are read whole once more this much later. */
  var FINAL_CHARTS_MS = 3000;
  /** Hosts up to this many are drawn as a table with names; more as bands of small squares. */
  var TABLE_MAX_HOSTS = 60;

  function runPage(runId) {
    connectLive(runId);
    bolt.runId = runId;
    bolt.charts = {};
    document.title = 'Run ' + runId + ' · Bolt';
    var gone = false;
    var M = null; // the model, once the view is loaded
    var buffered = []; // live messages that arrived before the view
    var els = {};
    var frame = 0;
    var drawQueue = []; // [msg, receivedAt] applied to the model, waiting to be drawn
    var timers = [];
    var resyncTimer = null;
    var charts = new Map();
    var hostPlot = null;
    var observer = null;
    var ticking = false;
    var missing = 0;
    var sawRunning = false;
    var finalResync = false;

    var status = h('div');
    main.appendChild(status);
    status.appendChild(h('div', { class: 'empty' }, 'Loading run ' + runId + '…'));

    function load(initial) {
      var got = REPORT ? Promise.resolve(REPORT.view) : ui('run', { runId: runId });
      return got.then(function (view) {
        if (gone) return;
        if (view === null) {
          clear(status).appendChild(h('div', { class: 'error-box' }, 'The sink has no run ' + runId + ' (yet).'));
          // A run just submitted may reach the sink a moment later.
          if (!REPORT && missing++ < 30) timers.push(setTimeout(function () { load(initial); }, 2000));
          return;
        }
        clear(status);
        if (initial || !M) {
          M = model(view);
          build();
          var pending = buffered;
          buffered = [];
          pending.forEach(function (p) { if (p[0].seq > M.seq) applyMessage(p[0], p[1]); });
          if (!REPORT) startCharts();
        } else {
          resync(view);
        }
      }, function (err) {
        if (gone) return;
        clear(status).appendChild(errorBox(err));
      });
    }

    // --- the model ---------------------------------------------------------------------------

    function model(view) {
      var m = {
        seq: view.seq,
        run: Object.assign({}, view.run),
        tasks: view.tasks.map(function (t) { return Object.assign({}, t); }),
        taskIndex: new Map(),
        codes: view.grid.codes,
        codeOf: {},
        hosts: view.grid.hosts.slice(),
        hostIndex: new Map(),
        cells: [],
        counts: [],
        skew: new Map(),
        metrics: view.metrics.slice(),
        charts: view.charts.slice(),
        dirtyCells: new Set(),
        dirtyTasks: new Set(),
        dirtySkew: new Set(),
        dirtyRun: false,
        gridRebuild: false,
      };
      m.codes.forEach(function (c, i) { m.codeOf[c] = i; });
      m.tasks.forEach(function (t, i) { m.taskIndex.set(t.id, i); });
      m.hosts.forEach(function (name, i) { m.hostIndex.set(name, i); });
      view.grid.tasks.forEach(function (id, ti) {
        var str = view.grid.cells[ti];
        var arr = new Array(m.hosts.length);
        var counts = emptyCounts();
        for (var i = 0; i < arr.length; i++) {
          arr[i] = str.charCodeAt(i) - 48;
          counts[m.codes[arr[i]]]++;
        }
        m.cells[m.taskIndex.get(id)] = arr;
        m.counts[m.taskIndex.get(id)] = counts;
      });
      view.skew.forEach(function (s) {
        var offsets = new Map();
        s.offsets.forEach(function (o, i) { offsets.set(m.hosts[s.hosts[i]], o); });
        m.skew.set(s.taskId, { startAt: s.startAt, offsets: offsets });
      });
      return m;
    }
    function emptyCounts() { return { none: 0, pending: 0, running: 0, ok: 0, failed: 0, timedout: 0, cancelled: 0, lost: 0 }; }

    function addHost(name) {
      var i = M.hosts.length;
      M.hosts.push(name);
      M.hostIndex.set(name, i);
      M.cells.forEach(function (arr, t) { arr.push(0); M.counts[t].none++; });
      M.gridRebuild = true;
      return i;
    }
    function setCell(t, name, state, onlyFromNone) {
      var h0 = M.hostIndex.get(name);
      if (h0 === undefined) h0 = addHost(name);
      var code = M.codeOf[state];
      if (code === undefined) return;
      var old = M.cells[t][h0];
      if (old === code || (onlyFromNone && old !== 0)) return;
      M.cells[t][h0] = code;
      M.counts[t][M.codes[old]]--;
      M.counts[t][state]++;
      M.dirtyCells.add(t * 1048576 + h0);
      M.dirtyTasks.add(t);
    }

    /** Applies one `run` message to the model; the next frame draws it. */
    function applyMessage(msg, receivedAt) {
      var needResync = !!msg.resync;
      if (msg.run) {
        for (var k in msg.run) if (msg.run[k] !== undefined) M.run[k] = msg.run[k];
        M.dirtyRun = true;
      }
      (msg.dispatched || []).forEach(function (d) {
        var t = M.taskIndex.get(d.taskId);
        if (t === undefined) { needResync = true; return; }
        // A retry sends failed hosts again: they are pending once more. A first dispatch only fills empty cells.
        d.hosts.forEach(function (name) { setCell(t, name, 'pending', d.attempt < 2); });
        if (d.startAt !== null && d.startAt !== undefined) {
          var s = M.skew.get(d.taskId);
          if (!s) { M.skew.set(d.taskId, { startAt: d.startAt, offsets: new Map() }); M.gridRebuild = true; }
        }
      });
      if (msg.cells) {
        for (var task in msg.cells) {
          var t = M.taskIndex.get(task);
          if (t === undefined) { needResync = true; continue; }
          var byState = msg.cells[task];
          for (var state in byState) byState[state].forEach(function (name) { setCell(t, name, state, false); });
        }
      }
      if (msg.tasks) {
        for (var id in msg.tasks) {
          var ti = M.taskIndex.get(id);
          if (ti === undefined) { needResync = true; continue; }
          Object.assign(M.tasks[ti], msg.tasks[id]);
          M.dirtyTasks.add(ti);
        }
      }
      if (msg.starts) {
        for (var st in msg.starts) {
          var entry = M.skew.get(st);
          if (!entry) { entry = { startAt: msg.starts[st].startAt, offsets: new Map() }; M.skew.set(st, entry); M.gridRebuild = true; }
          var s0 = msg.starts[st];
          for (var i = 0; i < s0.hosts.length; i++) entry.offsets.set(s0.hosts[i], s0.offsets[i]);
          M.dirtySkew.add(st);
        }
      }
      if (msg.metrics) {
        (msg.metrics.names || []).forEach(function (n) { if (M.metrics.indexOf(n) < 0) { M.metrics.push(n); M.metricsChanged = true; } });
        // Metrics the page would chart that just appeared get their chart.
        if (M.metricsChanged) chosenMetrics().forEach(function (m) { if (!charts.has(m) && (charts.size === 0 || wantedMetrics().indexOf(m) >= 0)) addChart(m); });
        charts.forEach(function (c) { fetchChart(c); });
        if (hostPlot) charts.forEach(function (c) { fetchHost(c); });
      }
      if (msg.seq > M.seq) M.seq = msg.seq;
      if (needResync) scheduleResync(300);
      drawQueue.push([msg, receivedAt]);
      if (!frame) frame = requestAnimationFrame(drawFrame);
    }

    function scheduleResync(ms) {
      if (REPORT || resyncTimer) return;
      resyncTimer = setTimeout(function () { resyncTimer = null; load(false); }, ms);
    }

    /** A fresh view replaces the model; the grid is rebuilt only when its hosts or tasks changed. */
    function resync(view) {
      var old = M;
      var m = model(view);
      var sameShape = old.hosts.length === m.hosts.length && old.tasks.length === m.tasks.length &&
        m.hosts.every(function (x, i) { return old.hosts[i] === x; }) && m.tasks.every(function (x, i) { return old.tasks[i].id === x.id; }) &&
        m.skew.size === old.skew.size;
      M = m;
      if (!sameShape) { build(); return; }
      M.dirtyRun = true;
      M.tasks.forEach(function (_, t) {
        M.dirtyTasks.add(t);
        for (var i = 0; i < M.hosts.length; i++) if (M.cells[t][i] !== old.cells[t][i]) M.dirtyCells.add(t * 1048576 + i);
      });
      M.skew.forEach(function (_, k) { M.dirtySkew.add(k); });
      if (!frame) frame = requestAnimationFrame(drawFrame);
    }

    // --- building the page -------------------------------------------------------------------

    function build() {
      var kept = els.chartsSection ? { chartsSection: els.chartsSection, metricPick: els.metricPick, charts: els.charts, hostInput: els.hostInput, hostList: els.hostList } : null;
      clear(status);
      if (els.root) els.root.remove();
      els = Object.assign({ root: h('div') }, kept);
      els.root.appendChild(header());
      els.root.appendChild(dagSection());
      els.root.appendChild(gridSection());
      var skew = skewSection();
      if (skew) els.root.appendChild(skew);
      if (REPORT) els.root.appendChild(failuresSection());
      if (!kept) els.chartsSection = chartsSection();
      els.root.appendChild(els.chartsSection);
      main.appendChild(els.root);
      M.dirtyCells.clear();
      M.dirtyTasks.clear();
      M.dirtySkew.clear();
      M.gridRebuild = false;
      drawRun();
      M.tasks.forEach(function (_, t) { drawTask(t); });
      M.skew.forEach(function (_, k) { drawSkew(k); });
      if (REPORT) startCharts();
    }

    function header() {
      els.runState = h('span', { class: 'pill', 'data-testid': 'run-state' });
      els.facts = h('div', { class: 'facts' });
      var actions = h('div', { class: 'actions' },
        REPORT ? null : h('a', { href: 'api/runs/' + encodeURIComponent(runId) + '/report.html', download: 'bolt-' + runId + '.html' }, h('button', null, 'Download report')),
        REPORT ? null : h('a', { href: '#/runs' }, h('button', null, 'All runs')));
      var sec = h('section', { class: 'panel' },
        h('div', { class: 'run-head' }, h('h1', null, h('span', { class: 'mono', style: 'font-size:15px' }, runId), els.runState), els.facts, actions));
      if (M.run.description) sec.appendChild(h('div', { class: 'run-desc' }, M.run.description));
      return sec;
    }
    function drawRun() {
      var r = M.run;
      els.runState.dataset.state = r.state;
      els.runState.textContent = r.state;
      var failed = M.tasks.filter(function (t) { return t.state === 'failed'; }).length;
      var done = M.tasks.filter(function (t) { return FINAL_TASK[t.state]; }).length;
      var end = r.finishedAt || (r.state === 'running' && r.startedAt ? now() : null);
      clear(els.facts);
      [['job', r.jobName || '–'], ['started', fmtDate(r.startedAt || r.createdAt)], ['duration', r.startedAt && end ? fmtDuration(end - r.startedAt) : '–'],
        ['hosts', String(M.hosts.length)], ['tasks', done + '/' + M.tasks.length + ' done' + (failed ? ', ' + failed + ' failed' : '')]].forEach(function (f) {
        els.facts.appendChild(h('span', null, f[0] + ' ', h('b', null, f[1])));
      });
      if (!FINAL_TASK[r.state] && !ticking && !REPORT) {
        ticking = true;
        sawRunning = true;
        timers.push(setInterval(function () { if (!FINAL_TASK[M.run.state]) { drawRun(); M.tasks.forEach(function (t, i) { if (t.state === 'running') drawTask(i); }); } }, 1000));
      }
      if (FINAL_TASK[r.state] && sawRunning && !finalResync && !REPORT) {
        // The run ended while watched: fetch the final view once (hosts decided without events, final numbers).
        finalResync = true;
        scheduleResync(800);
        // The last samples arrive after the final events: read every bucket again once they are in.
        timers.push(setTimeout(function () { charts.forEach(function (c) { fetchChart(c, true); }); }, FINAL_CHARTS_MS));
      }
    }

    // --- DAG ---------------------------------------------------------------------------------

    var NODE_W = 236, NODE_H = 88, GAP_X = 56, GAP_Y = 14;

    function dagSection() {
      var tasks = M.tasks;
      var index = M.taskIndex;
      var hasEdges = tasks.some(function (t) { return t.needs.some(function (n) { return index.has(n); }); });
      var depth = new Map();
      function depthOf(id, seen) {
        if (depth.has(id)) return depth.get(id);
        if (seen[id]) return 0;
        seen[id] = true;
        var d = 0;
        tasks[index.get(id)].needs.forEach(function (n) { if (index.has(n)) d = Math.max(d, depthOf(n, seen) + 1); });
        depth.set(id, d);
        return d;
      }
      tasks.forEach(function (t, i) { if (hasEdges) depthOf(t.id, {}); else depth.set(t.id, i); });
      var rowsInCol = new Map();
      var pos = new Map();
      tasks.forEach(function (t) {
        var col = depth.get(t.id);
        var row = rowsInCol.get(col) || 0;
        rowsInCol.set(col, row + 1);
        pos.set(t.id, { x: col * (NODE_W + GAP_X), y: row * (NODE_H + GAP_Y) });
      });
      var width = 0, height = 0;
      pos.forEach(function (p) { width = Math.max(width, p.x + NODE_W); height = Math.max(height, p.y + NODE_H); });
      var canvas = h('div', { class: 'dag-canvas', style: 'width:' + width + 'px;height:' + height + 'px' });
      var paths = [];
      tasks.forEach(function (t) {
        t.needs.forEach(function (n) {
          if (!index.has(n)) return;
          var a = pos.get(n), b = pos.get(t.id);
          var x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mx = (x1 + x2) / 2;
          paths.push('<path data-from="' + index.get(n) + '" d="M' + x1 + ' ' + y1 + ' C' + mx + ' ' + y1 + ' ' + mx + ' ' + y2 + ' ' + x2 + ' ' + y2 + '"/>');
        });
      });
      // Only numbers go into this markup; the HTML parser gives the svg its namespace.
      var edges = h('div');
      edges.innerHTML = '<svg class="dag-edges" width="' + width + '" height="' + height + '">' + paths.join('') + '</svg>';
      els.edges = edges.firstChild;
      canvas.appendChild(els.edges);
      els.tasks = [];
      tasks.forEach(function (t, i) {
        var p = pos.get(t.id);
        var node = {
          el: h('div', { class: 'task', 'data-testid': 'task', dataset: { taskId: t.id }, style: 'left:' + p.x + 'px;top:' + p.y + 'px', title: t.description || '' }),
          bar: h('div', { class: 'bar' }),
          state: h('span', { class: 'state' }),
          hosts: h('span'),
          time: h('span'),
        };
        node.el.appendChild(h('div', { class: 'head' }, h('span', { class: 'id', text: t.id }), t.action ? h('span', { class: 'action', text: t.action }) : null,
          t.start === 'together' ? h('span', { class: 'together', title: 'every host starts at the same instant', text: 'together' }) : null));
        node.el.appendChild(node.bar);
        node.el.appendChild(h('div', { class: 'meta' }, node.state, node.time));
        node.el.appendChild(h('div', { class: 'meta hosts' }, node.hosts));
        canvas.appendChild(node.el);
        els.tasks[i] = node;
      });
      return h('section', { class: 'panel' }, h('h2', null, 'Tasks', h('span', { class: 'extra', text: tasks.length + ' task' + (tasks.length === 1 ? '' : 's') })),
        h('div', { class: 'dag', 'data-testid': 'dag' }, canvas));
    }

    function drawTask(i) {
      var t = M.tasks[i];
      var node = els.tasks[i];
      if (!node) return;
      var c = M.counts[i] || emptyCounts();
      node.el.dataset.state = t.state;
      node.state.textContent = t.state + (t.attempts > 1 ? ' (' + t.attempts + ' attempts)' : '');
      var total = c.pending + c.running + c.ok + c.failed + c.timedout + c.cancelled + c.lost;
      var bad = c.failed + c.lost;
      node.hosts.textContent = total ? c.ok + '/' + total + ' ok' + (bad ? ', ' + bad + ' failed' : '') : 'no hosts yet';
      clear(node.bar);
      if (total) {
        [['ok', c.ok], ['failed', c.failed + c.lost], ['other', c.timedout + c.cancelled], ['running', c.running]].forEach(function (seg) {
          if (seg[1]) node.bar.appendChild(h('i', { class: seg[0], style: 'width:' + (100 * seg[1]) / total + '%' }));
        });
      }
      var start = t.startedAt || t.dispatchedAt;
      node.time.textContent = t.state === 'running' && start ? fmtDuration(now() - start)
        : start && t.finishedAt ? fmtDuration(t.finishedAt - start)
          : t.state === 'pending' ? 'waiting' : t.reason ? t.reason.slice(0, 40) : '–';
      node.time.title = start ? 'started ' + fmtClock(start) + (t.finishedAt ? ', ended ' + fmtClock(t.finishedAt) : '') : '';
      Array.prototype.forEach.call(els.edges.querySelectorAll('path[data-from="' + i + '"]'), function (p) { p.setAttribute('data-state', t.state); });
    }

    // --- grid --------------------------------------------------------------------------------

    function gridSection() {
      var tableMode = M.hosts.length <= TABLE_MAX_HOSTS;
      els.tableMode = tableMode;
      els.cells = M.tasks.map(function () { return new Array(M.hosts.length); });
      els.bandCounts = [];
      var grid = h('div', { class: 'grid' + (tableMode ? ' table' : ''), 'data-testid': 'grid' });
      if (tableMode) {
        grid.style.gridTemplateColumns = 'minmax(110px, max-content) repeat(' + M.tasks.length + ', minmax(70px, 180px))';
        grid.appendChild(h('div', { class: 'th', text: 'host' }));
        M.tasks.forEach(function (t) { grid.appendChild(h('div', { class: 'th', text: t.id, title: t.id })); });
        M.hosts.forEach(function (name, hi) {
          grid.appendChild(h('div', { class: 'hn', text: name, title: name }));
          M.tasks.forEach(function (t, ti) { grid.appendChild(cellEl(ti, hi, true)); });
        });
      } else {
        M.tasks.forEach(function (t, ti) {
          var cells = h('div', { class: 'cells' });
          var counts = h('span', { class: 'muted' });
          els.bandCounts[ti] = counts;
          for (var hi = 0; hi < M.hosts.length; hi++) cells.appendChild(cellEl(ti, hi, false));
          grid.appendChild(h('div', { class: 'band' }, h('div', { class: 'bh' }, h('b', { text: t.id }), counts), cells));
          drawBandCounts(ti);
        });
      }
      els.hover = h('div', { class: 'hover-line' }, tableMode ? '' : 'Point at a square for its host; click it for the result.');
      els.result = h('div');
      var filter = h('input', { type: 'search', placeholder: 'filter hosts', size: 16 });
      filter.addEventListener('input', function () {
        var q = filter.value.trim().toLowerCase();
        M.hosts.forEach(function (name, hi) {
          var dim = q !== '' && name.toLowerCase().indexOf(q) < 0;
          els.cells.forEach(function (row) { if (row[hi]) row[hi].classList.toggle('dim', dim); });
        });
      });
      grid.addEventListener('click', function (ev) {
        var cell = ev.target.closest('[data-testid="cell"]');
        if (cell) openResult(cell);
      });
      if (!tableMode) {
        grid.addEventListener('mouseover', function (ev) {
          var cell = ev.target.closest('.c');
          if (cell) els.hover.textContent = cell.dataset.host + ' · ' + cell.dataset.task + ' · ' + cell.dataset.state;
        });
      }
      els.legend = h('div', { class: 'legend' });
      drawLegend();
      return h('section', { class: 'panel' },
        h('h2', null, 'Hosts × tasks', h('span', { class: 'extra' }, els.legend, filter)),
        els.hover, grid, els.result);
    }
    /** A grid position; it is a [data-testid=cell] only while its host is a target of its task (state not 'none'). */
    function cellEl(ti, hi, withText) {
      var el = h('i', { class: 'c', dataset: { host: M.hosts[hi], task: M.tasks[ti].id }, title: withText ? null : M.hosts[hi] });
      els.cells[ti][hi] = el;
      paintCell(el, M.codes[M.cells[ti][hi]]);
      return el;
    }
    function paintCell(el, state) {
      el.dataset.state = state;
      if (state === 'none') el.removeAttribute('data-testid');
      else el.setAttribute('data-testid', 'cell');
      if (els.tableMode) el.textContent = state === 'none' ? '' : state;
    }
    function drawCell(key) {
      var ti = Math.floor(key / 1048576), hi = key % 1048576;
      var el = els.cells[ti] && els.cells[ti][hi];
      if (el) paintCell(el, M.codes[M.cells[ti][hi]]);
    }
    function drawBandCounts(ti) {
      var el = els.bandCounts[ti];
      if (!el) return;
      var c = M.counts[ti];
      var parts = [];
      ['ok', 'running', 'pending', 'failed', 'timedout', 'cancelled', 'lost'].forEach(function (s) { if (c[s]) parts.push(c[s] + ' ' + s); });
      el.textContent = parts.join(' · ');
    }
    function drawLegend() {
      var totals = emptyCounts();
      M.counts.forEach(function (c) { for (var k in c) totals[k] += c[k]; });
      clear(els.legend);
      ['ok', 'running', 'pending', 'failed', 'timedout', 'cancelled', 'lost'].forEach(function (s) {
        if (totals[s] || s === 'ok' || s === 'failed') els.legend.appendChild(h('span', { dataset: { state: s } }, h('i'), s + ' ' + totals[s]));
      });
    }

    // --- result panel -------------------------------------------------------------------------

    function openResult(cell) {
      var host = cell.dataset.host, task = cell.dataset.task;
      if (els.picked) els.picked.classList.remove('picked');
      els.picked = cell;
      cell.classList.add('picked');
      var panel = h('div', { class: 'result', 'data-testid': 'result', dataset: { host: host, task: task } });
      clear(els.result).appendChild(panel);
      panel.appendChild(h('div', { class: 'rh' }, h('b', { class: 'mono', text: host }), h('span', { class: 'muted', text: 'task ' + task }), 'loading…'));
      var got;
      if (REPORT) {
        var r = REPORT.results[task + '\n' + host];
        got = Promise.resolve(r || { taskId: task, host: host, state: cell.dataset.state, attempt: null, exitCode: null, startedAt: null, durationMs: null, stdoutTail: null, stderrTail: null, earlier: [], notIncluded: true });
      } else {
        got = ui('result', { runId: runId, taskId: task, host: host });
      }
      got.then(function (r) {
        if (els.picked !== cell) return;
        clear(panel);
        if (r === null) { panel.appendChild(h('div', { class: 'empty' }, 'No result of ' + host + ' in ' + task + '.')); return; }
        panel.appendChild(h('div', { class: 'rh' },
          h('b', { class: 'mono', text: host }), h('span', { class: 'muted', text: 'task ' + task + (r.attempt > 1 ? ' · attempt ' + r.attempt : '') }), pill(r.state),
          h('span', null, 'exit code ', h('b', { 'data-testid': 'result-exit-code', class: 'mono', text: r.exitCode === null ? '–' : String(r.exitCode) })),
          h('span', { class: 'muted', text: 'started ' + fmtClock(r.startedAt) + ' · took ' + fmtDuration(r.durationMs) }),
          REPORT ? null : h('button', { onclick: function () { setHostPlot(host); } }, 'Chart this host'),
          h('button', { class: 'close', onclick: function () { clear(els.result); cell.classList.remove('picked'); els.picked = null; } }, 'Close')));
        var out = r.stdoutTail, err = r.stderrTail;
        var missing = r.notIncluded ? 'not in this report (it keeps the output of hosts that did not succeed)' : '(none)';
        panel.appendChild(h('div', { class: 'rb' },
          h('div', null, h('h4', null, 'stdout (tail)'), h('pre', { 'data-testid': 'stdout-tail', class: out ? '' : 'none', text: out || missing })),
          h('div', null, h('h4', null, 'stderr (tail)'), h('pre', { 'data-testid': 'stderr-tail', class: err ? '' : 'none', text: err || missing }))));
        if (r.earlier && r.earlier.length) {
          panel.appendChild(h('div', { class: 'earlier' }, 'Earlier attempts: ' + r.earlier.map(function (e) { return '#' + e.attempt + ' ' + e.state + (e.exitCode !== null ? ' (exit ' + e.exitCode + ')' : ''); }).join(', ')));
        }
      }, function (e) {
        if (els.picked === cell) clear(panel).appendChild(errorBox(e));
      });
    }

    // --- start skew ---------------------------------------------------------------------------

    function skewSection() {
      if (M.skew.size === 0) return null;
      els.skew = new Map();
      var box = h('div', { class: 'skews' });
      M.skew.forEach(function (_, taskId) {
        var canvas = h('canvas');
        var stats = h('div', { class: 'stats' });
        var el = h('div', { class: 'skew', 'data-testid': 'skew', dataset: { taskId: taskId, count: '0' } }, h('h3', null, taskId), stats, canvas);
        els.skew.set(taskId, { el: el, canvas: canvas, stats: stats });
        box.appendChild(el);
      });
      return h('section', { class: 'panel' }, h('h2', null, 'Start skew', h('span', { class: 'extra', text: 'when each host started, after the instant the server set' })), box);
    }
    function drawSkew(taskId) {
      var s = M.skew.get(taskId);
      var e = els.skew && els.skew.get(taskId);
      if (!s || !e) return;
      var values = Array.from(s.offsets.values()).sort(function (a, b) { return a - b; });
      var n = values.length;
      e.el.dataset.count = String(n);
      var q = function (p) { return n ? values[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))] : null; };
      clear(e.stats);
      [['starts', String(n)], ['spread', n ? fmtSpan(values[n - 1] - values[0]) : '–'], ['first', fmtOffset(n ? values[0] : null)], ['p50', fmtOffset(q(0.5))], ['p95', fmtOffset(q(0.95))], ['last', fmtOffset(n ? values[n - 1] : null)]]
        .forEach(function (f) { e.stats.appendChild(h('span', null, f[0] + ' ', h('b', null, f[1]))); });
      histogram(e.canvas, values);
    }
    function histogram(canvas, values) {
      var dpr = window.devicePixelRatio || 1;
      var w = canvas.clientWidth || 360, hgt = canvas.clientHeight || 130;
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
      var g = canvas.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, hgt);
      var text = cssVar('--muted'), bar = cssVar('--s-running'), line = cssVar('--border');
      g.font = '11px ' + cssVar('--sans');
      var left = 4, right = w - 4, top = 6, bottom = hgt - 18;
      g.strokeStyle = line;
      g.beginPath(); g.moveTo(left, bottom + 0.5); g.lineTo(right, bottom + 0.5); g.stroke();
      if (values.length === 0) {
        g.fillStyle = text;
        g.fillText('no start reported yet', left + 4, top + 14);
        return;
      }
      // The range of the starts, stretched to the instant the server set (0) unless that is far off.
      var first = values[0], last = values[values.length - 1];
      var spread = Math.max(last - first, 0.001);
      var lo = first > 0 && first <= 2 * spread ? 0 : first;
      var hi = last < 0 && -last <= 2 * spread ? 0 : Math.max(last, lo + 0.001);
      var bins = Math.max(8, Math.min(48, Math.ceil(Math.sqrt(values.length) * 2)));
      var width = (hi - lo) / bins;
      var counts = new Array(bins).fill(0);
      values.forEach(function (v) { counts[Math.min(bins - 1, Math.floor((v - lo) / width))]++; });
      var most = Math.max.apply(null, counts);
      var bw = (right - left) / bins;
      g.fillStyle = bar;
      counts.forEach(function (c, i) {
        if (!c) return;
        var bh = Math.max(2, ((bottom - top) * c) / most);
        g.fillRect(left + i * bw + 1, bottom - bh, Math.max(1, bw - 2), bh);
      });
      // The instant the server set (0), when it is inside the range.
      if (lo <= 0 && hi >= 0) {
        var x0 = left + ((0 - lo) / (hi - lo)) * (right - left);
        g.strokeStyle = cssVar('--c-max');
        g.setLineDash([3, 3]);
        g.beginPath(); g.moveTo(x0 + 0.5, top); g.lineTo(x0 + 0.5, bottom); g.stroke();
        g.setLineDash([]);
      }
      g.fillStyle = text;
      g.textBaseline = 'top';
      g.textAlign = 'left';
      g.fillText(fmtOffset(lo), left, bottom + 4);
      g.textAlign = 'right';
      g.fillText(fmtOffset(hi), right, bottom + 4);
      g.textAlign = 'center';
      g.fillText('max ' + most + ' per bin of ' + fmtSpan(width), (left + right) / 2, bottom + 4);
    }

    // --- failures (report) --------------------------------------------------------------------

    function failuresSection() {
      var keys = Object.keys(REPORT.results);
      var sec = h('section', { class: 'panel' }, h('h2', null, 'Failures', h('span', { class: 'extra', text: keys.length ? keys.length + ' host result' + (keys.length === 1 ? '' : 's') + ' that did not succeed' : '' })));
      if (!keys.length) { sec.appendChild(h('div', { class: 'empty' }, 'Every host that ran a task succeeded.')); return sec; }
      var lastTask = null;
      keys.forEach(function (k) {
        var r = REPORT.results[k];
        if (r.taskId !== lastTask) {
          lastTask = r.taskId;
          var n = keys.filter(function (x) { return REPORT.results[x].taskId === r.taskId; }).length + (REPORT.resultsLeftOut[r.taskId] || 0);
          sec.appendChild(h('h3', { class: 'failure-task' }, 'task ' + r.taskId, h('span', { class: 'muted', text: ' · ' + n + ' host' + (n === 1 ? '' : 's') })));
        }
        sec.appendChild(h('details', { class: 'failure' },
          h('summary', null, pill(r.state), h('b', { class: 'mono', text: r.host }), h('span', { class: 'muted', text: 'exit ' + (r.exitCode === null ? '–' : r.exitCode) + ' · ' + fmtDuration(r.durationMs) + (r.attempt > 1 ? ' · attempt ' + r.attempt : '') })),
          h('div', { class: 'result' }, h('div', { class: 'rb' },
            h('div', null, h('h4', null, 'stdout (tail)'), h('pre', { class: r.stdoutTail ? '' : 'none', text: r.stdoutTail || '(none)' })),
            h('div', null, h('h4', null, 'stderr (tail)'), h('pre', { class: r.stderrTail ? '' : 'none', text: r.stderrTail || '(none)' }))))));
      });
      for (var task in REPORT.resultsLeftOut) sec.appendChild(h('div', { class: 'empty' }, REPORT.resultsLeftOut[task] + ' more hosts of ' + task + ' did not succeed; their output is not in the report.'));
      return sec;
    }

    // --- charts -------------------------------------------------------------------------------

    /** The metrics the user charted last (kept in this browser), else the plugin's `charts` setting. */
    function wantedMetrics() {
      var saved = null;
      try { saved = JSON.parse(localStorage.getItem('bolt.charts') || 'null'); } catch (e) { saved = null; }
      return Array.isArray(saved) && saved.length ? saved : M.charts;
    }
    /** Those of them the run has; without any, its first two metrics. */
    function chosenMetrics() {
      var list = wantedMetrics().filter(function (m) { return M.metrics.indexOf(m) >= 0; });
      return list.length ? list : M.metrics.slice().sort().slice(0, 2);
    }
    function saveChosen() {
      try { localStorage.setItem('bolt.charts', JSON.stringify(Array.from(charts.keys()))); } catch (e) { /* not kept */ }
    }

    function chartsSection() {
      els.metricPick = h('div', { class: 'metric-pick' });
      els.charts = h('div', { class: 'charts' });
      els.hostInput = h('input', { type: 'search', placeholder: 'host name', list: 'bolt-hosts', size: 16 });
      var hostList = h('datalist', { id: 'bolt-hosts' });
      els.hostList = hostList;
      var controls = h('div', { class: 'chart-controls' }, els.metricPick);
      if (!REPORT) {
        controls.appendChild(h('span', { style: 'margin-left:auto', class: 'muted' }, 'a host: '));
        controls.appendChild(els.hostInput);
        controls.appendChild(hostList);
        controls.appendChild(h('button', { onclick: function () { setHostPlot(els.hostInput.value.trim() || null); } }, 'Show'));
        controls.appendChild(h('button', { onclick: function () { els.hostInput.value = ''; setHostPlot(null); } }, 'Clear'));
      }
      var note = REPORT ? 'p50, p95 and max across hosts' : 'p50, p95 and max across hosts, following the run';
      return h('section', { class: 'panel' }, h('h2', null, 'Metrics', h('span', { class: 'extra', text: note })), controls, els.charts);
    }
    function drawMetricPick() {
      clear(els.metricPick);
      if (M.metrics.length === 0) {
        els.metricPick.appendChild(h('span', { class: 'muted' }, REPORT ? 'No metrics in this report.' : 'No metrics yet (the job\'s metrics: setting decides what hosts collect).'));
        return;
      }
      M.metrics.slice().sort().forEach(function (m) {
        var on = charts.has(m);
        els.metricPick.appendChild(h('button', { 'aria-pressed': on ? 'true' : 'false', onclick: function () {
          if (charts.has(m)) removeChart(m); else addChart(m);
          saveChosen();
          drawMetricPick();
        } }, m));
      });
      if (els.hostList) {
        clear(els.hostList);
        M.hosts.slice(0, 2000).forEach(function (name) { els.hostList.appendChild(h('option', { value: name })); });
      }
    }
    function startCharts() {
      var available = REPORT ? Object.keys(REPORT.metrics) : M.metrics;
      M.metrics = available.slice();
      chosenMetrics().forEach(addChart);
      drawMetricPick();
      if (!observer && window.ResizeObserver) {
        observer = new ResizeObserver(function () { charts.forEach(function (c) { if (c.plot) c.plot.setSize(sizeOf(c)); }); });
        observer.observe(els.charts);
      }
    }

    function addChart(metric) {
      if (charts.has(metric)) return;
      var plotEl = h('div', { class: 'plot' });
      var el = h('div', { class: 'chart', 'data-testid': 'chart', dataset: { metric: metric } },
        h('h3', null, metric, h('span', { class: 'muted tags' })), plotEl);
      els.charts.appendChild(el);
      var c = { metric: metric, el: el, plotEl: plotEl, plot: null, key: null, bucketMs: null, points: new Map(), lastT: null, inflight: false, again: false, host: null };
      charts.set(metric, c);
      if (REPORT) {
        mergeSeries(c, REPORT.metrics[metric] || []);
        drawChart(c);
      } else {
        fetchChart(c);
        if (hostPlot) fetchHost(c);
      }
    }
    function removeChart(metric) {
      var c = charts.get(metric);
      if (!c) return;
      if (c.plot) c.plot.destroy();
      c.el.remove();
      charts.delete(metric);
      delete bolt.charts[metric];
    }

    /**
     * Folds aggregate series (sink.metrics agg=fleet: one per task and tag set) into the chart's
     * points: the untagged series (the total) when there is one, else the first tag set in JSON
     * order (report.ts picks the same); a bucket present in two tasks keeps the one with more samples.
     */
    function mergeSeries(c, list, from) {
      // The answer holds every bucket from `from` on: what the chart had there is replaced.
      if (from !== undefined) c.points.forEach(function (_, t) { if (t >= from) c.points.delete(t); });
      if (!list.length) return;
      if (c.key === null) {
        var keys = list.map(function (s) { return JSON.stringify(s.tags); });
        c.key = keys.indexOf('{}') >= 0 ? '{}' : keys.slice().sort()[0];
        if (c.key !== '{}') c.el.querySelector('.tags').textContent = c.key.replace(/[{}"]/g, '').replace(/:/g, '=');
      }
      list.forEach(function (s) {
        if (JSON.stringify(s.tags) !== c.key) return;
        c.bucketMs = s.bucketMs;
        for (var i = 0; i < s.t.length; i++) {
          var old = c.points.get(s.t[i]);
          if (old && old.count > s.count[i]) continue;
          c.points.set(s.t[i], { count: s.count[i], p50: s.p50[i], p95: s.p95[i], max: s.max[i] });
          if (c.lastT === null || s.t[i] > c.lastT) c.lastT = s.t[i];
        }
      });
    }

    /**
     * Asks for the chart's buckets: all of them (`full`, or the first time), else those of the last
     * LOOKBACK_MS before the newest one, since hosts send samples in batches and late ones still
     * change recent buckets.
     */
    function fetchChart(c, full) {
      if (REPORT) return;
      if (c.inflight) { c.again = true; c.againFull = c.againFull || !!full; return; }
      c.inflight = true;
      var params = { metric: c.metric, agg: 'fleet' };
      var from;
      if (!full && c.lastT !== null) {
        var width = c.bucketMs || 1000;
        from = Math.floor((c.lastT - LOOKBACK_MS) / width) * width;
        params.from = from;
      }
      getJson('api/runs/' + encodeURIComponent(runId) + '/metrics' + query(params)).then(function (list) {
        c.inflight = false;
        if (gone || !charts.has(c.metric)) return;
        if (from === undefined) { c.points.clear(); c.lastT = null; }
        mergeSeries(c, list || [], from);
        drawChart(c);
        if (c.again) { var f = c.againFull; c.again = false; c.againFull = false; fetchChart(c, f); }
      }, function () { c.inflight = false; });
    }

    function setHostPlot(name) {
      hostPlot = name;
      if (els.hostInput) els.hostInput.value = name || '';
      charts.forEach(function (c) {
        c.host = null;
        if (name) fetchHost(c); else drawChart(c);
      });
    }
    /** One host's raw samples of the chart's tag set, averaged into the chart's buckets. */
    function fetchHost(c) {
      if (REPORT || !hostPlot) return;
      var name = hostPlot;
      if (!c.host || c.host.name !== name) c.host = { name: name, sums: new Map(), lastT: null, inflight: false };
      var hp = c.host;
      if (hp.inflight) return;
      hp.inflight = true;
      var params = { metric: c.metric, host: name, agg: 'raw' };
      var width = c.bucketMs || 1000;
      var from;
      if (hp.lastT !== null) {
        from = Math.floor((hp.lastT - LOOKBACK_MS) / width) * width;
        params.from = from;
      }
      getJson('api/runs/' + encodeURIComponent(runId) + '/metrics' + query(params)).then(function (list) {
        hp.inflight = false;
        if (gone || c.host !== hp) return;
        if (from !== undefined) hp.sums.forEach(function (_, b) { if (b >= from) hp.sums.delete(b); });
        (list || []).forEach(function (s) {
          if (c.key !== null && JSON.stringify(s.tags) !== c.key) return;
          for (var i = 0; i < s.t.length; i++) {
            var b = Math.floor(s.t[i] / width) * width;
            var acc = hp.sums.get(b) || { sum: 0, n: 0 };
            acc.sum += s.values[i];
            acc.n++;
            hp.sums.set(b, acc);
            if (hp.lastT === null || s.t[i] > hp.lastT) hp.lastT = s.t[i];
          }
        });
        drawChart(c);
      }, function () { hp.inflight = false; });
    }

    function sizeOf(c) { return { width: Math.max(280, c.plotEl.clientWidth || 520), height: 220 }; }

    function drawChart(c) {
      var ts = Array.from(c.points.keys()).sort(function (a, b) { return a - b; });
      var p50 = [], p95 = [], max = [], host = [];
      ts.forEach(function (t) {
        var p = c.points.get(t);
        p50.push(p.p50); p95.push(p.p95); max.push(p.max);
        if (c.host) { var acc = c.host.sums.get(t); host.push(acc ? acc.sum / acc.n : null); }
      });
      var exported = { t: ts, p50: p50, p95: p95, max: max };
      if (c.host) exported.host = { name: c.host.name, values: host };
      bolt.charts[c.metric] = exported;
      var xs = ts.map(function (t) { return t / 1000; });
      var data = [xs, max, p95, p50];
      var withHost = !!c.host;
      if (withHost) data.push(host);
      if (c.plot && c.plot._withHost !== withHost) { c.plot.destroy(); c.plot = null; clear(c.plotEl); }
      if (!c.plot) {
        if (!ts.length) {
          if (!c.plotEl.firstChild) c.plotEl.appendChild(h('div', { class: 'empty' }, 'No samples yet.'));
          return;
        }
        clear(c.plotEl);
        c.plot = new UPLOT(chartOptions(c, withHost), data, c.plotEl);
        c.plot._withHost = withHost;
      } else {
        c.plot.setData(data);
      }
    }

    function chartOptions(c, withHost) {
      var fmt = function (u, v) { return fmtValue(c.metric, v); };
      var axis = { stroke: cssVar('--muted'), grid: { stroke: cssVar('--grid-line'), width: 1 }, ticks: { stroke: cssVar('--grid-line'), width: 1 } };
      var series = [
        {},
        { label: 'max', stroke: cssVar('--c-max'), width: 1, value: fmt },
        { label: 'p95', stroke: cssVar('--c-p95'), width: 1, value: fmt },
        { label: 'p50', stroke: cssVar('--c-p50'), width: 2, value: fmt },
      ];
      if (withHost) series.push({ label: c.host.name, stroke: cssVar('--c-host'), width: 1.5, dash: [5, 3], value: fmt, spanGaps: true });
      var size = sizeOf(c);
      return {
        width: size.width,
        height: size.height,
        series: series,
        bands: [{ series: [1, 2], fill: cssVar('--band-hi') }, { series: [2, 3], fill: cssVar('--band-lo') }],
        scales: { x: { time: true } },
        axes: [Object.assign({}, axis), Object.assign({ size: 72, values: function (u, vals) { return axisValues(c.metric, vals); } }, axis)],
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
      };
    }

    // --- frames --------------------------------------------------------------------------------

    function drawFrame() {
      frame = 0;
      if (!M || gone) return;
      if (M.gridRebuild) {
        build();
      } else {
        M.dirtyCells.forEach(drawCell);
        M.dirtyTasks.forEach(function (t) { drawTask(t); drawBandCounts(t); });
        if (M.dirtyTasks.size) { drawLegend(); M.dirtyRun = true; }
        if (M.dirtyRun) drawRun();
        M.dirtySkew.forEach(drawSkew);
        M.dirtyCells.clear();
        M.dirtyTasks.clear();
        M.dirtySkew.clear();
        M.dirtyRun = false;
      }
      if (M.metricsChanged) { M.metricsChanged = false; drawMetricPick(); }
      var drawnAt = performance.now();
      var queue = drawQueue;
      drawQueue = [];
      queue.forEach(function (q) { countUpdate(q[0], q[1], drawnAt); });
    }

    // The live connection opened before the view loads: messages in between are kept and applied after.
    load(true);

    return {
      live: function (kind, msg, receivedAt) {
        if (kind !== 'run' || msg.runId !== runId) return;
        if (!M) {
          // Kept until the view loads; the oldest go first (the view, read later, has them).
          buffered.push([msg, receivedAt]);
          if (buffered.length > 500) buffered.shift();
          return;
        }
        if (msg.seq <= M.seq) return;
        applyMessage(msg, receivedAt);
      },
      reconnected: function () {
        scheduleResync(0);
        charts.forEach(function (c) { fetchChart(c, true); });
      },
      themeChanged: function () {
        if (!M) return;
        charts.forEach(function (c) { if (c.plot) { c.plot.destroy(); c.plot = null; clear(c.plotEl); } drawChart(c); });
        M.skew.forEach(function (_, k) { drawSkew(k); });
      },
      unmount: function () {
        gone = true;
        if (frame) cancelAnimationFrame(frame);
        timers.forEach(clearInterval);
        clearTimeout(resyncTimer);
        if (observer) observer.disconnect();
        charts.forEach(function (c) { if (c.plot) c.plot.destroy(); });
      },
    };
  }

  // ------------------------------------------------------------------------------------------
  // Hosts

  function hostsPage() {
    connectLive(NO_RUN);
    bolt.runId = null;
    document.title = 'Hosts · Bolt';
    var rows = new Map();
    var tbody = h('tbody');
    var note = h('span', { class: 'count' });
    var status = h('div');
    var open = null;
    main.appendChild(h('section', { class: 'panel' },
      h('div', { class: 'toolbar' }, h('b', null, 'Hosts'), note), status,
      h('table', { class: 'list' },
        h('thead', null, h('tr', null, ['Host', 'State', 'Since', 'Labels', 'Facts', 'Clock offset', 'Last heartbeat', 'Reason'].map(function (t) { return h('th', null, t); }))),
        tbody)));

    function factsOf(f) {
      if (!f || typeof f !== 'object') return '–';
      var parts = [];
      if (f.os) parts.push([f.os.distro || f.os.platform, f.os.release].filter(Boolean).join(' '));
      if (f.cpu) parts.push(f.cpu.cores + ' cores');
      if (f.memory && f.memory.totalBytes) parts.push(fmtBytes(f.memory.totalBytes));
      if (f.node) parts.push('node ' + f.node);
      return parts.join(' · ') || '–';
    }
    function rowOf(x) {
      var labels = x.labels ? Object.keys(x.labels).map(function (k) { return h('span', { class: 'chip', text: k + '=' + x.labels[k] }); }) : [];
      var tr = h('tr', { class: 'link', 'data-testid': 'host-row', dataset: { host: x.name, state: x.state }, onclick: function () { toggle(x); } },
        h('td', { class: 'mono' }, x.name, x.address ? h('div', { class: 'muted', text: x.address }) : null),
        h('td', null, pill(x.state)),
        h('td', { class: 'muted', title: fmtDate(x.since) }, fmtAgo(x.since)),
        h('td', null, h('div', { class: 'chips' }, labels.length ? labels : h('span', { class: 'muted' }, '–'))),
        h('td', { class: 'muted' }, factsOf(x.facts)),
        h('td', { class: 'num' }, x.clockOffsetMs === null || x.clockOffsetMs === undefined ? '–' : fmtOffset(x.clockOffsetMs)),
        h('td', { class: 'muted' }, x.lastHeartbeatAt ? fmtAgo(x.lastHeartbeatAt) : '–'),
        h('td', { class: 'muted' }, x.reason || ''));
      return tr;
    }
    function toggle(x) {
      open = open === x.id ? null : x.id;
      draw();
      if (open === null) return;
      ui('host', { id: x.id }).then(function (detail) {
        if (open !== x.id || !detail) return;
        var row = tbody.querySelector('tr.detail');
        if (!row) return;
        var list = h('ul', { class: 'history' });
        (detail.history || []).slice().reverse().forEach(function (e) {
          list.appendChild(h('li', null, h('span', { class: 'mono muted', text: fmtDate(e.at) }), e.from ? pill(e.from) : h('span', { class: 'muted' }, 'new'), '→', pill(e.to), h('span', { class: 'muted', text: e.reason || '' })));
        });
        clear(row.firstChild).appendChild(h('div', null, h('b', null, 'State history'), list.children.length ? list : h('div', { class: 'muted' }, 'No transitions recorded.')));
      });
    }
    function draw() {
      clear(tbody);
      var list = Array.from(rows.values()).sort(function (a, b) { return String(a.name).localeCompare(String(b.name), undefined, { numeric: true }); });
      list.forEach(function (x) {
        tbody.appendChild(rowOf(x));
        if (open === x.id) tbody.appendChild(h('tr', { class: 'detail' }, h('td', { colspan: '8' }, 'loading history…')));
      });
      var byState = {};
      list.forEach(function (x) { byState[x.state] = (byState[x.state] || 0) + 1; });
      note.textContent = list.length + ' host' + (list.length === 1 ? '' : 's') + (list.length ? ': ' + Object.keys(byState).map(function (s) { return byState[s] + ' ' + s; }).join(', ') : '');
      clear(status);
      if (!list.length) status.appendChild(h('div', { class: 'empty' }, 'No hosts known yet.'));
    }
    var gone = false;
    function load() {
      ui('hosts').then(function (answer) {
        if (gone) return;
        rows.clear();
        ((answer && answer.hosts) || []).forEach(function (x) { rows.set(x.id, x); });
        draw();
      }, function (err) { if (!gone) clear(status).appendChild(errorBox(err)); });
    }
    load();
    // Heartbeats carry no live message: the table's ages and figures are read again now and then.
    var refresh = setInterval(load, 10000);
    return {
      live: function (kind, msg, receivedAt) {
        if (kind !== 'hosts') return;
        msg.hosts.forEach(function (x) { rows.set(x.id, Object.assign({}, rows.get(x.id) || {}, x)); });
        draw();
        countUpdate(msg, receivedAt, performance.now());
      },
      reconnected: load,
      unmount: function () { gone = true; clearInterval(refresh); },
    };
  }

  // ------------------------------------------------------------------------------------------
  // Plugins

  function pluginsPage() {
    connectLive(NO_RUN);
    bolt.runId = null;
    document.title = 'Plugins · Bolt';
    var rows = new Map();
    var tbody = h('tbody');
    var note = h('span', { class: 'count' });
    var status = h('div');
    var hostBody = h('tbody');
    var hostNote = h('span', { class: 'count' });
    main.appendChild(h('section', { class: 'panel' },
      h('div', { class: 'toolbar' }, h('b', null, 'Plugins of this process'), note), status,
      h('table', { class: 'list' },
        h('thead', null, h('tr', null, ['Plugin', 'Kind', 'Isolation', 'Version', 'State', 'Since', 'Restarts', 'Last error'].map(function (t) { return h('th', null, t); }))),
        tbody)));
    main.appendChild(h('section', { class: 'panel' },
      h('div', { class: 'toolbar' }, h('b', null, 'Plugins on the hosts'), hostNote),
      h('table', { class: 'list' },
        h('thead', null, h('tr', null, ['Host', 'Running', 'Not running', 'Restarts', 'Last error'].map(function (t) { return h('th', null, t); }))),
        hostBody)));
    // Each client reports its plugin table in its heartbeats; hosts with a plugin down come first.
    function drawHosts(hosts) {
      clear(hostBody);
      var reported = hosts.filter(function (x) { return Array.isArray(x.plugins); });
      var down = function (x) { return x.plugins.filter(function (p) { return p.state !== 'running'; }); };
      reported.sort(function (a, b) { return down(b).length - down(a).length || a.name.localeCompare(b.name, undefined, { numeric: true }); });
      hostNote.textContent = reported.length + ' of ' + hosts.length + ' hosts reported';
      reported.forEach(function (x) {
        var off = down(x);
        var restarts = x.plugins.reduce(function (n, p) { return n + (p.restarts || 0); }, 0);
        var errored = x.plugins.filter(function (p) { return p.error; })[0];
        hostBody.appendChild(h('tr', { 'data-testid': 'host-plugins-row', dataset: { host: x.name, state: off.length ? 'problem' : 'ok' } },
          h('td', { class: 'mono' }, x.name),
          h('td', { class: 'num' }, (x.plugins.length - off.length) + '/' + x.plugins.length),
          h('td', null, off.length ? off.map(function (p) { return h('span', { class: 'chip', dataset: { plugin: p.name, state: p.state } }, p.name + ': ', pill(PLUGIN_COLOUR[p.state] || 'pending', p.state)); }) : h('span', { class: 'muted' }, '–')),
          h('td', { class: 'num' }, restarts ? h('b', { style: 'color:var(--s-timedout)' }, String(restarts)) : '0'),
          h('td', null, errored ? h('span', null, h('span', { class: 'mono', style: 'color:var(--s-failed)', text: errored.name + ' ' + errored.error.code }), ' ', h('span', { class: 'muted', text: errored.error.message })) : h('span', { class: 'muted' }, '–'))));
      });
    }
    function draw() {
      clear(tbody);
      Array.from(rows.values()).sort(function (a, b) { return a.name.localeCompare(b.name); }).forEach(function (p) {
        var err = p.lastError;
        tbody.appendChild(h('tr', { 'data-testid': 'plugin-row', dataset: { plugin: p.name, state: p.state } },
          h('td', { class: 'mono' }, p.name),
          h('td', null, p.kind || '–'),
          h('td', { class: 'muted' }, p.isolation || '–'),
          h('td', { class: 'muted' }, p.version || '–'),
          h('td', null, pill(PLUGIN_COLOUR[p.state] || 'pending', p.state)),
          h('td', { class: 'muted', title: p.since || '' }, p.since ? fmtAgo(Date.parse(p.since)) : '–'),
          h('td', { class: 'num' }, p.restarts ? h('b', { style: 'color:var(--s-timedout)' }, String(p.restarts)) : '0'),
          h('td', null, err ? h('span', null, h('span', { class: 'mono', style: 'color:var(--s-failed)', text: err.code }), ' ', h('span', { class: 'muted', text: err.message })) : h('span', { class: 'muted' }, '–'))));
      });
    }
    var gone = false;
    function load() {
      ui('plugins').then(function (answer) {
        if (gone || !answer) return;
        rows.clear();
        (answer.plugins || []).forEach(function (p) { rows.set(p.name, p); });
        note.textContent = 'roles: ' + (answer.roles || []).join(', ');
        draw();
      }, function (err) { if (!gone) clear(status).appendChild(errorBox(err)); });
      ui('hosts').then(function (answer) {
        if (!gone && answer) drawHosts(answer.hosts || []);
      }, function () {});
    }
    load();
    var refresh = setInterval(function () {
      ui('hosts').then(function (answer) { if (!gone && answer) drawHosts(answer.hosts || []); }, function () {});
    }, 10000);
    return {
      live: function (kind, msg, receivedAt) {
        if (kind !== 'plugins') return;
        msg.plugins.forEach(function (p) { rows.set(p.name, p); });
        draw();
        countUpdate(msg, receivedAt, performance.now());
      },
      reconnected: load,
      unmount: function () { gone = true; clearInterval(refresh); },
    };
  }

  // ------------------------------------------------------------------------------------------

  initTheme();
  shell();
  if (REPORT) document.body.classList.add('report');
  window.addEventListener('hashchange', route);
  route();
})();
