// The tracking snippet served at GET /t.js. Readable source; the served file
// is static/t.min.js, made by scripts/minify-snippet.sh (keep both in step).
//
// Install:
//   <script defer src="https://HOST/t.js" data-site="SITE_KEY"></script>
// Options on the tag: data-api (collect endpoint, e.g. a first-party proxy
// path such as "/stats/collect"), data-respect-dnt (send nothing when Do Not
// Track or Global Privacy Control is on).
//
// It must never throw into the host page, never block it, and never send
// anything when the visitor asked not to be tracked and the site opted in to
// honour that.
(function (w, d) {
  try {
    var n = w.navigator;
    var loc = w.location;
    var s = d.currentScript || d.querySelector('script[data-site]');
    var attr = function (k) {
      return s && s.getAttribute('data-' + k);
    };
    var site = attr('site');
    // Default endpoint: "collect" beside the script, so a proxied
    // /stats/t.js posts to /stats/collect without configuration.
    var api = attr('api') || (s && s.src.split('?')[0].replace(/[^/]*$/, 'collect'));
    var queued = (w.tally && w.tally.q) || [];
    // Off: no site key, or the visitor opted out and the site honours it.
    var off =
      !site ||
      (s.hasAttribute('data-respect-dnt') &&
        (n.doNotTrack == '1' || w.doNotTrack == '1' || n.globalPrivacyControl));
    var lastPath;
    var lastUrl = d.referrer;

    // Reads a cookie, or sets it with max-age seconds. Cookies may be
    // blocked (sandboxed frames throw on access): then ids live per page.
    var cookie = function (k, v, age) {
      try {
        if (v) {
          d.cookie =
            k + '=' + v + ';path=/;max-age=' + age + ';SameSite=Lax' +
            (loc.protocol == 'https:' ? ';Secure' : '');
        }
        var m = d.cookie.match('(^|; )' + k + '=([^;]*)');
        return m ? m[2] : v;
      } catch (e) {
        return v;
      }
    };
    var rnd = function () {
      return Math.random().toString(36).slice(2) + Date.now().toString(36);
    };

    // Visitor id: about 13 months (~395 days), renewed on every hit.
    // Session id: its cookie lives 30 minutes and is renewed on every
    // hit, so it expires exactly after 30 minutes idle.
    var ids = function () {
      return [
        cookie('_tvid', cookie('_tvid') || rnd(), 34128000),
        cookie('_tsid', cookie('_tsid') || rnd(), 1800)
      ];
    };

    // sendBeacon with a text/plain body (no CORS preflight, survives
    // unload), then fetch keepalive, then a GET pixel.
    var pixel = function (h) {
      var q = [];
      for (var k in h) {
        if (h[k] != null) {
          q.push(k + '=' + encodeURIComponent(k == 'props' ? JSON.stringify(h[k]) : h[k]));
        }
      }
      new Image().src = api + '?' + q.join('&');
    };
    var send = function (h) {
      var id = ids();
      h.site = site;
      h.url = loc.href;
      h.vid = id[0];
      h.sid = id[1];
      h.ts = Date.now();
      var body = JSON.stringify(h);
      try {
        if (n.sendBeacon && n.sendBeacon(api, body)) return;
      } catch (e) {}
      try {
        w.fetch(api, { method: 'POST', body: body, keepalive: true, credentials: 'omit' })
          .catch(function () {
            pixel(h);
          });
      } catch (e) {
        pixel(h);
      }
    };

    var pageview = function () {
      try {
        // Same path (a query-only or hash change, a replaceState that
        // strips utm tags): not a new page.
        if (loc.pathname == lastPath) return;
        lastPath = loc.pathname;
        send({ type: 'pageview', referrer: lastUrl });
        lastUrl = loc.href;
      } catch (e) {}
    };

    var tally = function (cmd, name, o) {
      try {
        o = o || {};
        if (cmd == 'event' && name && !off) {
          send({
            type: 'event',
            name: name,
            value: o.value,
            currency: o.currency,
            order_id: o.order_id,
            props: o.props
          });
        }
      } catch (e) {}
    };
    w.tally = tally;
    if (off) return;

    var h = w.history;
    ['pushState', 'replaceState'].forEach(function (m) {
      var orig = h[m];
      h[m] = function () {
        var r = orig.apply(this, arguments);
        pageview();
        return r;
      };
    });
    w.addEventListener('popstate', pageview);
    pageview();
    // Calls made through the stub before this script loaded.
    for (var i = 0; i < queued.length; i++) tally.apply(w, queued[i]);
  } catch (e) {}
})(window, document);
