// tally dashboard: plain JavaScript, no build step, no framework.
// Holds no secret: the API key goes to POST /session once; afterwards the
// browser sends an HttpOnly session cookie this script cannot read.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var state = { view: 'overview', drill: [], sort: { key: 'conversions', desc: true }, channelSort: { key: 'conversions', desc: true }, shown: [], goals: [], es: null };
  // The drill-down's levels, broadest first: a channel (GA4's default
  // channel group) holds sources, a source mediums, and so on.
  var LEVELS = ['channel', 'source', 'medium', 'campaign', 'ad'];
  var COLORS = ['#2456d8', '#e8743b', '#19a979', '#945ecf', '#ed4a7b', '#13a4b4', '#bf9b30', '#525df4'];

  function api(method, path, body) {
    var opts = { method: method, headers: {}, credentials: 'same-origin' };
    if (body !== undefined) { opts.headers['content-type'] = 'application/json'; opts.body = JSON.stringify(body); }
    return fetch(path, opts).then(function (res) {
      if (res.status === 401) { showSignIn('Your session ended. Sign in again.'); throw new Error('signed out'); }
      if (res.status === 204) return null;
      return res.json().then(function (json) {
        if (!res.ok) throw new Error(json && json.error || res.statusText);
        return json;
      });
    });
  }

  function text(el, s) { el.textContent = s; return el; }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') e.textContent = attrs[k]; else if (k === 'onclick') e.addEventListener('click', attrs[k]); else e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (k) { if (k != null) e.appendChild(typeof k === 'string' ? document.createTextNode(k) : k); });
    return e;
  }
  function num(x, digits) { return (x == null || !isFinite(x)) ? '–' : Number(x).toLocaleString('en', { maximumFractionDigits: digits == null ? 2 : digits }); }
  // Money always with two decimals, so the figures of a column line up.
  function money(x) { return (x == null || !isFinite(x)) ? '–' : Number(x).toLocaleString('en', { minimumFractionDigits: 2, maximumFractionDigits: 2 }); }
  // Money in a currency ("€1,234.00", "CHF 5.00"); without one, the plain
  // figure. Values of two currencies are never added: `moneyIn` shows a
  // { currency: value } map (a report's `total.values`, "" for none) as
  // each currency's figure, side by side.
  function moneyOf(x, currency) {
    if (x == null || !isFinite(x)) return '–';
    if (!currency) return money(x);
    try { return Number(x).toLocaleString('en', { style: 'currency', currency: currency, minimumFractionDigits: 2, maximumFractionDigits: 2 }); }
    catch (e) { return money(x) + ' ' + currency; }
  }
  function moneyIn(values) {
    var cs = Object.keys(values || {}).sort();
    if (!cs.length) return money(0);
    return cs.map(function (c) { return moneyOf(values[c], c) + (!c && cs.length > 1 ? ' (no currency)' : ''); }).join(' · ');
  }
  // A { currency: value } map divided by `by` (value per click), or null.
  function perEach(values, by) {
    if (!(by > 0)) return null;
    var out = {};
    Object.keys(values || {}).forEach(function (c) { out[c] = values[c] / by; });
    return out;
  }
  // Axis labels: compact at any magnitude (250k, 9.1M), so they fit the axis.
  var COMPACT = new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 1 });
  function compact(x) { return (x == null || !isFinite(x)) ? '' : COMPACT.format(x).replace('K', 'k'); }
  function pct(x) { return (x == null || !isFinite(x)) ? '–' : (x * 100).toLocaleString('en', { maximumFractionDigits: 1 }) + '%'; }
  function ratio(a, b) { return b > 0 ? a / b : null; }
  function iso(d) { return d.toISOString().slice(0, 10); }
  function label(v) { return v == null ? '(not set)' : v; }

  // ---- sign-in ----------------------------------------------------------
  function showSignIn(msg) {
    if (state.es) { state.es.close(); state.es = null; }
    $('app').hidden = true; $('signin').hidden = false;
    text($('signin-error'), msg || '');
    $('api-key').focus();
  }
  function showApp(who) {
    $('signin').hidden = true; $('app').hidden = false;
    text($('site-name'), (who.name || 'Site') + ' · ' + who.site);
    $('api-key').value = '';
    connectLive();
    show(state.view);
  }
  $('signin-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var key = $('api-key').value.trim();
    fetch('/session', { method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ api_key: key }) })
      .then(function (res) {
        if (res.status === 401) throw new Error('That API key is not valid (or was revoked).');
        if (!res.ok) return res.json().then(function (j) { throw new Error(j.error); });
        return res.json();
      })
      .then(showApp, function (e) { text($('signin-error'), e.message); });
  });
  $('signout').addEventListener('click', function () {
    fetch('/session', { method: 'DELETE', credentials: 'same-origin' }).then(function () { showSignIn('Signed out.'); });
  });

  // ---- navigation and range ---------------------------------------------
  function show(view) {
    state.view = view;
    Array.prototype.forEach.call(document.querySelectorAll('.top nav button'), function (b) {
      if (b.dataset.view === view) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
    });
    Array.prototype.forEach.call(document.querySelectorAll('.view'), function (s) { s.hidden = s.id !== 'view-' + view; });
    $('range-controls').querySelector('label').hidden = (view === 'goals' || view === 'explain' || view === 'live');
    ({ overview: loadOverview, channels: loadChannels, sources: loadSources, models: loadModels, goals: loadGoals, explain: loadExplain, live: function () {} })[view]();
  }
  Array.prototype.forEach.call(document.querySelectorAll('.top nav button'), function (b) {
    b.addEventListener('click', function () { show(b.dataset.view); $('main').focus(); });
  });
  function range() {
    var v = $('range').value, to = new Date(), from = new Date();
    if (v === 'custom') return { from: $('from').value || iso(from), to: $('to').value || iso(to) };
    from.setUTCDate(from.getUTCDate() - Math.max(0, Number(v) - 1));
    return { from: iso(from), to: iso(to) };
  }
  function rangeQuery() { var r = range(); return 'from=' + r.from + '&to=' + r.to; }
  $('range').addEventListener('change', function () {
    $('custom-range').hidden = $('range').value !== 'custom';
    if ($('range').value === 'custom' && !$('from').value) { var r = range(); $('from').value = r.from; $('to').value = r.to; }
    show(state.view);
  });
  $('from').addEventListener('change', function () { show(state.view); });
  $('to').addEventListener('change', function () { show(state.view); });
  $('split').addEventListener('change', loadOverview);

  // ---- overview -----------------------------------------------------------
  var charts = {};
  function loadOverview() {
    var q = rangeQuery(), split = $('split').value;
    Promise.all([
      api('GET', '/api/v1/conversions?' + q),
      api('GET', '/api/v1/conversions?' + q + '&group_by=day,' + split),
      split === 'goal' ? api('GET', '/api/v1/goals') : Promise.resolve(null)
    ]).then(function (r) {
      var t = r[0].total;
      text($('t-clicks'), num(t.clicks, 0));
      text($('t-conversions'), num(t.conversions));
      text($('t-value'), moneyIn(t.values));
      text($('t-rate'), pct(ratio(t.conversions, t.clicks)));
      var vpc = perEach(t.values, t.clicks);
      text($('t-vpc'), vpc ? moneyIn(vpc) : '–');
      var names = {};
      (r[2] || []).forEach(function (g) { names[g.id] = g.name; });
      drawCharts(r[1].rows, split, names);
    }).catch(function () {});
  }
  function drawCharts(rows, split, names) {
    var rg = range(), days = [], d = new Date(rg.from + 'T00:00:00Z'), end = new Date(rg.to + 'T00:00:00Z');
    while (d <= end && days.length < 400) { days.push(iso(d)); d.setUTCDate(d.getUTCDate() + 1); }
    // Rows split by currency: conversions of one group add up across its
    // currencies, values never do (one value series per group and
    // currency, named with the currency when the range holds several).
    var currencies = {};
    rows.forEach(function (row) { if (row.conversions) currencies[row.currency || ''] = true; });
    var several = Object.keys(currencies).length > 1;
    var series = { conversions: {}, value: {} }, totals = { conversions: 0, value: {} };
    rows.forEach(function (row) {
      var g = row[split] == null ? '(not set)' : row[split];
      if (split === 'goal' && row.conversions === 0) return;
      var c = row.currency || '';
      [['conversions', g], ['value', several && c ? g + ' (' + c + ')' : g]].forEach(function (s) {
        var by = series[s[0]][s[1]] = series[s[0]][s[1]] || { group: g, days: {} };
        by.days[row.day] = (by.days[row.day] || 0) + (row[s[0]] || 0);
      });
      totals.conversions += row.conversions || 0;
      if (row.conversions || row.value) totals.value[c] = (totals.value[c] || 0) + (row.value || 0);
    });
    ['conversions', 'value'].forEach(function (measure) {
      var box = $('chart-' + measure), groups = series[measure];
      var keys = Object.keys(groups).sort();
      if (charts[measure]) { charts[measure].destroy(); charts[measure] = null; }
      box.textContent = '';
      var groupCount = Object.keys(series.conversions).length;
      box.setAttribute('aria-label', (measure === 'value' ? 'Value' : 'Conversions') + ' per day from ' + rg.from + ' to ' + rg.to + ': ' + (measure === 'value' ? moneyIn(totals.value) : num(totals.conversions)) + ' in all, across ' + groupCount + ' ' + split + (groupCount === 1 ? '' : 's') + '.');
      if (!keys.length || typeof uPlot === 'undefined') { box.appendChild(el('p', { 'class': 'empty', text: 'No conversions in this range yet.' })); return; }
      var data = [days.map(function (day) { return Date.parse(day + 'T00:00:00Z') / 1000; })];
      var lines = [{}];
      keys.forEach(function (k, i) {
        var s = groups[k];
        data.push(days.map(function (day) { return s.days[day] || 0; }));
        var name = split === 'goal' ? (names[s.group] || s.group.slice(0, 8)) + k.slice(s.group.length) : k;
        lines.push({ label: name, stroke: COLORS[i % COLORS.length], width: 2, points: { show: days.length < 40 } });
      });
      var width = Math.max(280, box.clientWidth || box.parentNode.clientWidth - 16);
      charts[measure] = new uPlot({ width: width, height: 220, series: lines, scales: { x: { time: true } },
        axes: [{}, {
          values: function (u, vals) { return vals.map(compact); },
          // Wide enough for the longest label drawn (uPlot's default is a
          // fixed 50 px), in the axis font's average digit width.
          size: function (u, vals) { return 18 + 8 * Math.max(3, Math.max.apply(null, (vals || []).map(function (v) { return String(v).length; }))); }
        }],
        cursor: { drag: { x: false, y: false } } }, data, box);
    });
  }
  window.addEventListener('resize', function () {
    Object.keys(charts).forEach(function (m) {
      var c = charts[m]; if (c) c.setSize({ width: Math.max(280, $('chart-' + m).clientWidth), height: 220 });
    });
  });

  // ---- report tables (channels, sources) -----------------------------------
  // Sums report rows by the label `key` gives each: one line per name,
  // its value kept per currency (`values`, never added across them). A
  // group in two currencies is two rows carrying the same clicks, so a
  // group's clicks count once. `value` and `vpc` are what the columns sort
  // by: the one currency's figure, or the largest of several.
  var MEASURES = ['currency', 'clicks', 'conversions', 'value'];
  function aggregate(rows, key) {
    var agg = {};
    rows.forEach(function (row) {
      var k = key(row);
      var a = agg[k] = agg[k] || { name: k, clicks: 0, conversions: 0, values: {}, seen: {} };
      var group = Object.keys(row).filter(function (f) { return MEASURES.indexOf(f) < 0; }).sort().map(function (f) { return f + '=' + row[f]; }).join('&');
      if (!a.seen[group]) { a.seen[group] = true; a.clicks += row.clicks || 0; }
      a.conversions += row.conversions;
      if (row.conversions || row.value) { var c = row.currency || ''; a.values[c] = (a.values[c] || 0) + row.value; }
    });
    return Object.keys(agg).map(function (k) {
      var a = agg[k], vs = Object.keys(a.values).map(function (c) { return a.values[c]; });
      delete a.seen;
      a.value = vs.length ? Math.max.apply(null, vs) : 0;
      a.rate = ratio(a.conversions, a.clicks); a.vpcs = perEach(a.values, a.clicks); a.vpc = ratio(a.value, a.clicks);
      return a;
    });
  }
  // Draws `list` into `table` sorted by `sort`; a column header re-sorts
  // through `resort(newSort)`; `nameCell(a)` is the row's first cell.
  function reportTable(table, list, nameHeader, sort, resort, nameCell) {
    var s = sort;
    list.sort(function (x, y) {
      var a = x[s.key], b = y[s.key];
      if (s.key === 'name') return s.desc ? String(b).localeCompare(a) : String(a).localeCompare(b);
      a = a == null ? -1 : a; b = b == null ? -1 : b;
      return s.desc ? b - a : a - b;
    });
    var cols = [['name', nameHeader], ['clicks', 'Clicks'], ['conversions', 'Conversions'], ['rate', 'Conversion rate'], ['value', 'Value'], ['vpc', 'Value per click']];
    table.textContent = '';
    table.appendChild(el('caption', { 'class': 'hint', text: 'Sorted by ' + cols.filter(function (c) { return c[0] === s.key; })[0][1].toLowerCase() + (s.desc ? ', highest first' : ', lowest first') + '.' }));
    var head = el('tr');
    cols.forEach(function (c) {
      var sorted = s.key === c[0];
      head.appendChild(el('th', { scope: 'col', 'aria-sort': sorted ? (s.desc ? 'descending' : 'ascending') : 'none' }, [
        el('button', { type: 'button', text: c[1] + (sorted ? (s.desc ? ' ▼' : ' ▲') : ''), onclick: function () {
          resort({ key: c[0], desc: sorted ? !s.desc : c[0] !== 'name' });
        } })
      ]));
    });
    table.appendChild(el('thead', {}, [head]));
    var body = el('tbody');
    if (!list.length) body.appendChild(el('tr', {}, [el('td', { colspan: '6', text: 'Nothing in this range yet.' })]));
    list.forEach(function (a) {
      body.appendChild(el('tr', {}, [el('th', { scope: 'row' }, [nameCell(a)]), el('td', { text: num(a.clicks, 0) }), el('td', { text: num(a.conversions) }), el('td', { text: pct(a.rate) }), el('td', { text: moneyIn(a.values) }), el('td', { text: a.vpcs ? moneyIn(a.vpcs) : '–' })]));
    });
    table.appendChild(body);
  }

  // ---- channels ------------------------------------------------------------
  function loadChannels() {
    var goal = $('channels-goal').value, model = $('channels-model').value;
    $('channels-data-driven').hidden = model !== 'data_driven';
    Promise.all([
      api('GET', '/api/v1/conversions?' + rangeQuery() + (goal ? '&goal=' + encodeURIComponent(goal) : '') + (model ? '&model=' + model : '') + '&group_by=channel'),
      api('GET', '/api/v1/goals')
    ]).then(function (r) {
      fillGoalFilter(r[1]);
      state.channelRows = r[0].rows; renderChannels();
    }).catch(function () {});
  }
  // The goal filter lists the site's goals, keeping the one chosen.
  function fillGoalFilter(goals) {
    var select = $('channels-goal'), chosen = select.value;
    select.textContent = '';
    select.appendChild(el('option', { value: '', text: 'All goals' }));
    goals.forEach(function (g) { select.appendChild(el('option', { value: g.id, text: g.name || '(unnamed)' })); });
    select.value = goals.some(function (g) { return g.id === chosen; }) ? chosen : '';
  }
  function renderChannels() {
    var list = aggregate(state.channelRows || [], function (row) { return label(row.channel); });
    reportTable($('channels-table'), list, 'Channel', state.channelSort,
      function (sort) { state.channelSort = sort; renderChannels(); },
      function (a) { return document.createTextNode(a.name); });
  }
  $('channels-goal').addEventListener('change', loadChannels);
  $('channels-model').addEventListener('change', loadChannels);

  // ---- sources (drill-down table) --------------------------------------
  function loadSources() {
    api('GET', '/api/v1/conversions?' + rangeQuery() + '&group_by=' + LEVELS.join(',')).then(function (r) {
      state.rows = r.rows; renderSources();
    }).catch(function () {});
  }
  function renderSources() {
    var level = LEVELS[state.drill.length] || LEVELS[LEVELS.length - 1];
    var rows = (state.rows || []).filter(function (row) {
      for (var i = 0; i < state.drill.length; i++) if (label(row[LEVELS[i]]) !== state.drill[i]) return false;
      return true;
    });
    var list = aggregate(rows, function (row) { return label(row[level]); });
    // breadcrumbs
    var crumbs = $('crumbs'); crumbs.textContent = '';
    crumbs.appendChild(state.drill.length ? el('button', { type: 'button', 'class': 'link', text: 'All channels', onclick: function () { state.drill = []; renderSources(); } }) : el('span', { 'aria-current': 'page', text: 'All channels' }));
    state.drill.forEach(function (d, i) {
      crumbs.appendChild(document.createTextNode(' › '));
      var last = i === state.drill.length - 1;
      crumbs.appendChild(last ? el('span', { 'aria-current': 'page', text: LEVELS[i] + ': ' + d }) :
        el('button', { type: 'button', 'class': 'link', text: LEVELS[i] + ': ' + d, onclick: function () { state.drill = state.drill.slice(0, i + 1); renderSources(); } }));
    });
    reportTable($('sources-table'), list, level.charAt(0).toUpperCase() + level.slice(1), state.sort,
      function (sort) { state.sort = sort; renderSources(); },
      function (a) {
        return state.drill.length < LEVELS.length - 1
          ? el('button', { type: 'button', 'class': 'link', text: a.name, title: 'Show the ' + LEVELS[state.drill.length + 1] + 's of ' + a.name, onclick: function () { state.drill.push(a.name); renderSources(); } })
          : document.createTextNode(a.name);
      });
    state.shown = list; state.level = level;
  }
  // The server writes the CSV (formula-safe, RFC 4180): the report grouped
  // down to the level shown, so the rows on screen are among its lines.
  $('csv').addEventListener('click', function () {
    var r = range(), by = LEVELS.slice(0, state.drill.length + 1).join(',');
    fetch('/api/v1/conversions.csv?' + rangeQuery() + '&group_by=' + by, { credentials: 'same-origin' }).then(function (res) {
      if (res.status === 401) { showSignIn('Your session ended. Sign in again.'); throw new Error('signed out'); }
      if (!res.ok) throw new Error(res.statusText);
      return res.blob();
    }).then(function (blob) {
      var link = el('a', { href: URL.createObjectURL(blob), download: 'tally-' + by.replace(/,/g, '-') + '-' + r.from + '-' + r.to + '.csv' });
      document.body.appendChild(link); link.click(); link.remove();
    }).catch(function () {});
  });

  // ---- model comparison --------------------------------------------------
  function loadModels() {
    var by = $('models-by').value, measure = $('models-measure').value;
    api('GET', '/api/v1/models?' + rangeQuery() + '&group_by=' + by).then(function (r) {
      // Rows split by currency; with several in the range each row names
      // its own, and the total shows each currency's sum.
      var several = Object.keys(r.total.values || {}).length > 1;
      var table = $('models-table'); table.textContent = '';
      var head = el('tr', {}, [el('th', { scope: 'col', text: $('models-by').selectedOptions[0].textContent })]);
      r.models.forEach(function (m) { head.appendChild(el('th', { scope: 'col', text: m.replace('_', ' ') })); });
      table.appendChild(el('thead', {}, [head]));
      var body = el('tbody');
      if (!r.rows.length) body.appendChild(el('tr', {}, [el('td', { colspan: String(r.models.length + 1), text: 'No conversions in this range yet.' })]));
      r.rows.forEach(function (row) {
        var tr = el('tr', {}, [el('th', { scope: 'row', text: label(row[by]) + (several ? ' (' + (row.currency || 'no currency') + ')' : '') })]);
        r.models.forEach(function (m) { tr.appendChild(el('td', { text: measure === 'value' ? moneyOf(row[measure][m], row.currency) : num(row[measure][m]) })); });
        body.appendChild(tr);
      });
      table.appendChild(body);
      var foot = el('tr', {}, [el('td', { text: 'Total (' + r.conversions + ' conversions' + (r.truncated ? ', first ones only' : '') + ')' })]);
      r.models.forEach(function (m) {
        var each = {};
        Object.keys(r.total.values || {}).forEach(function (c) { each[c] = r.total.values[c][m]; });
        foot.appendChild(el('td', { text: measure === 'value' ? moneyIn(each) : num(r.total[measure][m]) }));
      });
      table.appendChild(el('tfoot', {}, [foot]));
    }).catch(function () {});
  }
  $('models-by').addEventListener('change', loadModels);
  $('models-measure').addEventListener('change', loadModels);

  // ---- goals --------------------------------------------------------------
  function loadGoals() {
    api('GET', '/api/v1/goals').then(function (goals) {
      state.goals = goals;
      var table = $('goals-table'); table.textContent = '';
      table.appendChild(el('thead', {}, [el('tr', {}, ['Name', 'Matches', 'Value', 'Model', 'Window', 'Count', 'Actions'].map(function (h) { return el('th', { scope: 'col', text: h }); }))]));
      var body = el('tbody');
      if (!goals.length) body.appendChild(el('tr', {}, [el('td', { colspan: '7', text: 'No goals yet: create one below.' })]));
      goals.forEach(function (g) {
        var m = g.match.event ? 'event ' + g.match.event : (g.match.op || 'exact') + ' ' + g.match.url;
        body.appendChild(el('tr', {}, [
          el('th', { scope: 'row', text: g.name || '(unnamed)' }), el('td', { text: m }), el('td', { text: g.value == null ? '–' : moneyOf(g.value, g.currency) }),
          el('td', { text: g.model.replace('_', ' ') }), el('td', { text: g.window_days + ' d' }), el('td', { text: g.count.replace(/_/g, ' ') }),
          el('td', {}, [
            el('button', { type: 'button', 'class': 'quiet', text: 'Edit', 'aria-label': 'Edit ' + g.name, onclick: function () { editGoal(g); } }), ' ',
            el('button', { type: 'button', 'class': 'quiet', text: 'Delete', 'aria-label': 'Delete ' + g.name, onclick: function () {
              if (!window.confirm('Delete the goal “' + g.name + '”? It leaves every report.')) return;
              api('DELETE', '/api/v1/goals/' + g.id).then(loadGoals).catch(function (e) { text($('goal-error'), e.message); });
            } })
          ])
        ]));
      });
      table.appendChild(body);
    }).catch(function () {});
  }
  function goalKind() { var url = $('goal-kind').value === 'url'; $('goal-url-fields').hidden = !url; $('goal-event-label').hidden = url; }
  $('goal-kind').addEventListener('change', goalKind);
  function draft() {
    var g = { name: $('goal-name').value.trim(), model: $('goal-model').value, window_days: Number($('goal-window').value || 30), count: $('goal-count').value };
    g.match = $('goal-kind').value === 'url' ? { url: $('goal-url').value.trim(), op: $('goal-op').value } : { event: $('goal-event').value.trim() };
    if ($('goal-value').value !== '') g.value = Number($('goal-value').value);
    if ($('goal-currency').value.trim() !== '') g.currency = $('goal-currency').value.trim().toUpperCase();
    return g;
  }
  function editGoal(g) {
    $('goal-id').value = g ? g.id : '';
    text($('goal-form-title'), g ? 'Edit goal' : 'New goal');
    $('goal-name').value = g ? g.name : '';
    $('goal-kind').value = g && g.match.url ? 'url' : 'event';
    $('goal-event').value = g && g.match.event || '';
    $('goal-url').value = g && g.match.url || '';
    $('goal-op').value = g && g.match.op || 'exact';
    $('goal-value').value = g && g.value != null ? g.value : '';
    $('goal-currency').value = g && g.currency || '';
    $('goal-model').value = g ? g.model : 'last_click';
    $('goal-window').value = g ? g.window_days : 30;
    $('goal-count').value = g ? g.count : 'every';
    $('goal-cancel').hidden = !g;
    text($('goal-preview'), ''); text($('goal-error'), '');
    goalKind();
    if (g) $('goal-name').focus();
  }
  $('goal-cancel').addEventListener('click', function () { editGoal(null); });
  $('goal-preview-btn').addEventListener('click', function () {
    text($('goal-error'), '');
    api('POST', '/api/v1/goals/preview', draft()).then(function (p) {
      text($('goal-preview'), p.of ? 'Would match ' + p.matched + ' of the last ' + p.of + ' hits seen.' : 'No recent hits to try it on yet.');
    }, function (e) { text($('goal-error'), e.message); });
  });
  $('goal-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    text($('goal-error'), '');
    var id = $('goal-id').value;
    api(id ? 'PUT' : 'POST', id ? '/api/v1/goals/' + id : '/api/v1/goals', draft()).then(function (g) {
      editGoal(null); text($('goal-preview'), 'Saved “' + g.name + '”.'); loadGoals();
    }, function (e) { text($('goal-error'), e.message); });
  });

  // ---- explain -----------------------------------------------------------
  function loadExplain() {
    loadAdjustments();
    api('GET', '/api/v1/conversions/recent?limit=30').then(function (r) {
      var list = $('explain-list'); list.textContent = '';
      if (!r.conversions.length) list.appendChild(el('p', { 'class': 'hint', text: 'No conversions in the last 30 days yet.' }));
      r.conversions.forEach(function (c) {
        var rows = c.touchpoints.map(function (t) {
          return el('tr', {}, [el('th', { scope: 'row', text: t.at ? new Date(t.at).toLocaleString() : '–' }), el('td', { text: t.channel || '(not set)' }), el('td', { text: t.source }), el('td', { text: label(t.medium) }), el('td', { text: label(t.campaign) }), el('td', { text: label(t.ad) }), el('td', { text: pct(t.credit) }), el('td', { text: moneyOf(t.credit * c.value, c.currency) })]);
        });
        var adjusted = (c.adjustments || []).length
          ? (c.adjusted_value === null ? ' · retracted' : ' · restated to ' + moneyOf(c.adjusted_value, c.currency))
          : '';
        var parts = [
          el('summary', { text: (c.goal_name || 'Goal') + ' · ' + moneyOf(c.value, c.currency) + adjusted + ' · ' + new Date(c.at).toLocaleString() + ' · ' + c.model.replace('_', ' ') + ' · ' + c.touchpoints.map(function (t) { return t.source; }).join(' → ') }),
          el('div', { 'class': 'table-wrap' }, [el('table', { 'class': 'data left' }, [
            el('thead', {}, [el('tr', {}, ['Clicked', 'Channel', 'Source', 'Medium', 'Campaign', 'Ad', 'Credit', 'Value'].map(function (h) { return el('th', { scope: 'col', text: h }); }))]),
            el('tbody', {}, rows)
          ])])
        ];
        if ((c.adjustments || []).length) parts.push(adjustmentsTable(c.adjustments, c.currency, false));
        list.appendChild(el('details', { 'class': 'conv' }, parts));
      });
    }).catch(function () {});
  }

  // A table of adjustments: when, type, value before and after, reason
  // (and the order id when listing several orders).
  function adjustmentsTable(items, currency, withOrder) {
    var head = ['When', 'Type', 'Before', 'After', 'Reason'];
    if (withOrder) head.splice(1, 0, 'Order');
    var value = function (v) { return v === null || v === undefined ? 'not counted' : moneyOf(v, currency); };
    return el('div', { 'class': 'table-wrap' }, [el('table', { 'class': 'data left adjustments' }, [
      el('thead', {}, [el('tr', {}, head.map(function (h) { return el('th', { scope: 'col', text: h }); }))]),
      el('tbody', {}, items.map(function (a) {
        var cells = [el('th', { scope: 'row', text: new Date(a.at).toLocaleString() })];
        if (withOrder) cells.push(el('td', { text: a.order_id }));
        cells.push(el('td', { text: a.type }), el('td', { text: value(a.old_value) }), el('td', { text: value(a.new_value) }), el('td', { text: a.reason || '' }));
        return el('tr', {}, cells);
      }))
    ])]);
  }
  function loadAdjustments() {
    api('GET', '/api/v1/adjustments?' + rangeQuery()).then(function (r) {
      var table = $('adjustments-table'); table.textContent = '';
      if (!r.adjustments.length) {
        table.appendChild(el('tbody', {}, [el('tr', {}, [el('td', { text: 'No refunds or corrections in this range.' })])]));
        return;
      }
      var inner = adjustmentsTable(r.adjustments, null, true).firstChild;
      while (inner.firstChild) table.appendChild(inner.firstChild);
    }).catch(function () {});
  }

  // ---- live ----------------------------------------------------------------
  var today = { hits: 0, clicks: 0, conversions: 0 };
  function tick() {
    text($('today-hits'), num(today.hits, 0)); text($('today-clicks'), num(today.clicks, 0)); text($('today-conversions'), num(today.conversions));
  }
  function seedToday() {
    var d = iso(new Date());
    api('GET', '/api/v1/conversions?from=' + d + '&to=' + d).then(function (r) {
      today.clicks = r.total.clicks; today.conversions = r.total.conversions; tick();
    }).catch(function () {});
  }
  function connectLive() {
    if (state.es) state.es.close();
    seedToday();
    var es = state.es = new EventSource('/api/v1/live');
    es.onopen = function () { text($('live-state'), 'Connected.'); };
    es.onerror = function () { text($('live-state'), 'Reconnecting…'); };
    es.addEventListener('signed_out', function () { es.close(); showSignIn('Your session ended. Sign in again.'); });
    function add(kind, e) {
      var list = $('live-list');
      var what = kind === 'hit'
        ? (e.type === 'event' ? 'event ' + (e.name || '') : 'page view ' + (e.path || '')) + (e.source ? ' · ' + (e.channel || 'visit') + ' from ' + e.source : '')
        : 'conversion worth ' + moneyOf(e.value, e.currency) + ' · credited mostly to ' + e.source;
      list.insertBefore(el('li', { 'class': kind }, [el('time', { datetime: e.at, text: new Date(e.at).toLocaleTimeString() }), el('span', { text: what })]), list.firstChild);
      while (list.children.length > 200) list.removeChild(list.lastChild);
    }
    es.addEventListener('hit', function (m) {
      var e = JSON.parse(m.data); today.hits += 1; if (e.source) today.clicks += 1; tick(); add('hit', e);
    });
    es.addEventListener('conversion', function (m) {
      var e = JSON.parse(m.data); today.conversions += 1; tick(); add('conversion', e);
    });
  }

  // ---- start -----------------------------------------------------------------
  fetch('/session', { credentials: 'same-origin' }).then(function (res) {
    if (!res.ok) return showSignIn('');
    return res.json().then(showApp);
  }, function () { showSignIn('The server cannot be reached.'); });
})();
