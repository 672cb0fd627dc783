/*
 * intently.js: the browser tag of intently, served at /sdk/intently.js (docs/tag.md).
 *
 *   <script src="https://ENGINE/sdk/intently.js" data-write-key="wk_..."></script>
 *
 * In <head>, synchronously: it must run before the body is painted, so that placements
 * (<div data-intently-placement="home_hero">default</div>) are hidden from the first
 * paint until their decision (or the timeout) says what they show.
 *
 * Plain ES2017, no dependency, no build step: the server minifies it (rjsmin, which
 * strips comments and spaces but renames nothing: short local names keep the tag small)
 * and replaces "__INTENTLY_EDGE__" below with the edge rules (web/sdk.py).
 *
 * Rules kept everywhere in this file:
 * - Never throw into the page: every entry point (listeners, timers, promises, the
 *   public API) goes through `safe`. Any failure shows the page's default content.
 * - Values from the server are text: set with textContent / setAttribute, never parsed
 *   as HTML. Only the operator's template is parsed, inside an inert <template>.
 * - Nothing is sent, or stored, before consent when consent is required.
 */
(() => {
  'use strict';
  const W = window, D = document, N = navigator, L = location;
  const now = () => performance.now();
  const T0 = now();
  // Loaded twice (two tags, or a tag manager adding it again): the first copy owns the page.
  if (W.intently && W.intently.version) return;
  const VERSION = '1.0.0';
  const EDGE = "__INTENTLY_EDGE__";
  const errors = [];
  const safe = (f) => function () {
    try {
      return f.apply(this, arguments);
    } catch (e) {
      if (errors.length < 20) errors.push(String((e && e.stack) || e));
    }
  };
  const timing = { start: T0 };
  const style = D.createElement('style');
  const main = () => {
    const script = D.currentScript;
    const attr = (n, d) => (script && script.getAttribute('data-' + n)) || d;
    const KEY = attr('write-key', '');
    const ENDPOINT = attr('endpoint', script && script.src ? new URL(script.src, L.href).origin : L.origin)
      .replace(/\/+$/, '');
    const TIMEOUT = +attr('timeout', 300) || 300;
    const AUTO = attr('autocapture') !== 'false';
    const REQUIRED = attr('consent') === 'required';
    const GPC = N.globalPrivacyControl === true;
    const P = '[data-intently-placement]';
    const EXIT = '[data-intently-trigger="exit-intent"]';
    const READY = 'data-intently-ready';
    const MAX = 100;

    // The guard: placements stay hidden (visibility: the layout is kept) until decided.
    // If this script dies, `html[data-intently-off]` shows them; if its timers never run
    // (a blocked main thread), the animation shows them a little after the timeout.
    style.textContent =
      `html:not([data-intently-off]) ${P}:not([${READY}]){visibility:hidden;` +
      `animation:intently-failsafe 0s ${TIMEOUT + 1500}ms forwards}` +
      `@keyframes intently-failsafe{to{visibility:visible}}${EXIT}{display:none!important}` +
      '.intently-overlay{position:fixed;inset:0;z-index:2147483647;background:#0008;display:grid;' +
      'place-items:center}.intently-dialog{position:relative;background:#fff;padding:24px}' +
      '.intently-close{position:absolute;top:0;right:0}';
    (D.head || D.documentElement).appendChild(style);

    // -- storage: localStorage and a first-party cookie, each a copy of the other, so
    // either can be cleared; memory when both throw (private modes, sandboxed frames).
    // store(k) reads, store(k, v) writes, store(k, null) removes.
    const ls = (k, v) => {
      try {
        if (v === undefined) return localStorage.getItem(k);
        if (v === null) localStorage.removeItem(k);
        else localStorage.setItem(k, v);
      } catch (e) { /* unavailable */ }
    };
    const cookie = (k, v) => {
      try {
        if (v === undefined) {
          const m = D.cookie.match(new RegExp('(?:^|; )' + k + '=([^;]*)'));
          return m && decodeURIComponent(m[1]);
        }
        D.cookie = `${k}=${encodeURIComponent(v || '')};path=/;SameSite=Lax;max-age=${v === null ? 0 : 31536000}`;
      } catch (e) { /* unavailable */ }
    };
    const store = (k, v) => (v === undefined ? ls(k) || cookie(k) : (ls(k, v), cookie(k, v)));
    const json = (s) => {
      try {
        return JSON.parse(s);
      } catch (e) {
        return null;
      }
    };
    const arr = Array.isArray, int = Number.isInteger;
    // Consent: null (nothing said), or the purposes granted ([] after a revoke).
    let granted = json(store('intently_consent'));
    if (!arr(granted)) granted = null;
    const canSend = () => (granted ? granted.length > 0 : !(REQUIRED || GPC));
    // Identifiers: before consent (when needed) they live in memory only.
    const mem = {};
    const get = (k) => (k in mem ? mem[k] : store(k));
    const set = (k, v) => {
      mem[k] = v;
      if (canSend()) store(k, v);
    };

    const uuid = () => {
      let b = new Uint8Array(16);
      try {
        crypto.getRandomValues(b);
      } catch (e) {
        b = b.map(() => Math.random() * 256);
      }
      b[6] = (b[6] & 15) | 64;
      b[8] = (b[8] & 63) | 128;
      const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join('');
      return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join('-');
    };
    let aid = get('intently_aid') || uuid();
    let uid = get('intently_uid') || null;
    set('intently_aid', aid); // both copies again: one of them may have been cleared
    // The session, "id.lastActivity.pages": a new one after 30 minutes without activity.
    let sid, pages;
    const touch = (page) => {
      const s = (get('intently_sid') || '').split('.'), t = Date.now();
      const fresh = !s[0] || !(t - s[1] < 18e5);
      sid = fresh ? uuid() : s[0];
      pages = (fresh ? 0 : +s[2] || 0) + (page ? 1 : 0);
      set('intently_sid', `${sid}.${t}.${pages}`);
    };
    touch(1);
    const firstPage = pages === 1;

    // -- events ----------------------------------------------------------------------
    const params = new URLSearchParams(L.search);
    const campaign = {};
    ['source', 'medium', 'campaign', 'term', 'content'].forEach((k) => {
      const v = params.get('utm_' + k);
      if (v) campaign[k === 'campaign' ? 'name' : k] = v;
    });
    const hasCampaign = Object.keys(campaign).length > 0;
    const pageInfo = () => ({ url: L.href, path: L.pathname, referrer: D.referrer, title: D.title, search: L.search });
    const has = (p) => granted.includes(p);
    const purposes = () => ({ analytics: has('analytics'), personalization: has('personalization'), marketing: has('marketing') });
    // The time zone, for the server's local-hour features, as the IANA name of the
    // current UTC offset ("Etc/GMT-2" is UTC+2): Intl's zone name would cost a 20-60 ms
    // task on a page's first use of Intl. Offsets that are not whole hours are left out
    // (the server uses the GeoIP zone).
    let dropped = 0;
    const hours = new Date().getTimezoneOffset() / 60;
    const zone = int(hours) && 'Etc/GMT' + (hours > 0 ? '+' + hours : hours < 0 ? hours : '');
    const make = (type, fields) => {
      const c = {
        page: pageInfo(), library: { name: 'intently.js', version: VERSION } };
      if (zone) c.timezone = zone;
      if (hasCampaign) c.campaign = campaign;
      if (granted) c.consent = { categoryPreferences: purposes() };
      if (dropped) c.library.dropped = dropped;
      const e = Object.assign({ type, messageId: uuid(), anonymousId: aid, timestamp: new Date().toISOString(), context: c }, fields);
      if (uid) e.userId = uid;
      return e;
    };

    // The queue: in memory, and persisted (when consent allows) so that a page that goes
    // away, or a network that is down, loses nothing; at most MAX events, the oldest
    // dropped and counted (context.library.dropped). Each event has a messageId: a retry
    // that the server had already received is deduplicated there.
    let q = (canSend() && json(ls('intently_q'))) || [];
    if (!arr(q)) q = [];
    let inflight = [], timer = 0, busy = 0, fails = 0, retryAt = 0;
    let held = 1; // until the page's /v1/context call takes the queue with it
    const save = () => {
      if (q.length > MAX) dropped += q.splice(0, q.length - MAX).length;
      if (canSend()) ls('intently_q', JSON.stringify(inflight.concat(q).slice(-MAX)));
    };
    const release = (list) => {
      inflight = inflight.filter((e) => !list.includes(e));
    };
    // Bodies go as text/plain with the key inside: a "simple" request, so no CORS
    // preflight (one round trip, not two), and the same body works for sendBeacon.
    const encode = (body) => JSON.stringify(Object.assign(body, { writeKey: KEY, sentAt: new Date().toISOString() }));
    // keepalive (the request outlives the page) only for events: Chromium hands such
    // requests to its browser process, which made the decide's answer 30-150 ms later.
    const post = (path, body) => {
      const data = encode(body);
      return fetch(ENDPOINT + path, {
        method: 'POST', body: data, keepalive: path === '/v1/events' && data.length < 6e4, credentials: 'omit',
        headers: { 'Content-Type': 'text/plain' },
      });
    };
    // sendBeacon: delivered even when the page goes away; false when the browser refused it.
    const beacon = (body) => {
      try {
        return N.sendBeacon(ENDPOINT + '/v1/events', new Blob([encode(body)], { type: 'text/plain' }));
      } catch (e) {
        return false;
      }
    };
    const schedule = () => {
      if (timer || !q.length) return;
      timer = setTimeout(safe(() => {
        timer = 0;
        flush();
      }), Math.max(q.length < 20 ? 1000 : 0, retryAt - Date.now()));
    };
    // Send what is queued: batches of 20 by fetch (keepalive), each second or at once
    // when 20 are waiting; or all of it by sendBeacon when the page is going away.
    // Failures are retried with exponential backoff and jitter; a 4xx other than 408/429
    // will not get better and is dropped (and counted).
    const flush = (leaving) => {
      if (leaving) {
        // Events still in flight go too: the page's end may cut their request off, and
        // the server drops a copy it already has (messageId). What the browser refuses
        // stays queued (and stored) for the next page.
        const all = inflight.concat(q);
        let n = 0;
        while (n < all.length && canSend() && beacon({ batch: all.slice(n, n + 30) })) n += 30;
        const gone = all.slice(0, n), kept = (e) => !gone.includes(e);
        q = q.filter(kept);
        inflight = inflight.filter(kept);
        return save();
      }
      if (!q.length || !canSend() || held) return;
      if (busy || Date.now() < retryAt) return schedule();
      busy = 1;
      const batch = q.splice(0, 20);
      inflight = inflight.concat(batch);
      Promise.resolve()
        .then(() => post('/v1/events', { batch }))
        .then((r) => {
          const s = r.status;
          if (s >= 500 || s === 408 || s === 429) throw s;
          if (!r.ok) dropped += batch.length;
          fails = retryAt = 0;
        })
        .catch(() => {
          q = batch.concat(q);
          retryAt = Date.now() + Math.min(6e4, 1000 * 2 ** ++fails) * (0.5 + Math.random() / 2);
        })
        .then(safe(() => {
          busy = 0;
          release(batch);
          save();
          schedule();
        }));
    };
    const enqueue = (e, urgent) => {
      q.push(e);
      save();
      touch();
      if (urgent) flush(1);
      else schedule();
    };
    const track = (event, properties, urgent) =>
      enqueue(make('track', { event: String(event), properties: properties || {} }), urgent);

    // -- templates: act/templates.py is the contract (same rules, same output) -------------
    const PH = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}/g;
    const URLS = ['href', 'src', 'action', 'srcset', 'poster', 'xlink:href'];
    const SAFE_URL = /^(?:https?:\/\/|\/|\.\/|\.\.\/|[^:/?#]*(?:[/?#]|$))/i;
    const BAD_TAG = /^(script|style|iframe|object|embed|base|meta|link|frame|form|template)$/i;
    const isObject = (o) => o && typeof o === 'object' && !arr(o);
    const lookup = (scope, path) => path.split('.')
      .reduce((v, k) => (isObject(v) && Object.prototype.hasOwnProperty.call(v, k) ? v[k] : undefined), scope);
    const format = (v) => {
      if (typeof v === 'string') return v;
      if (typeof v !== 'number' || !isFinite(v)) return '';
      if (int(v)) return String(v);
      // A tie at the third decimal (k/8): Python rounds half to even, toFixed away from zero.
      if (int(v * 8) && !int(v * 4)) {
        const n = Math.floor(Math.abs(v) * 100);
        return (v < 0 ? '-' : '') + ((n + (n % 2)) / 100).toFixed(2);
      }
      return v.toFixed(2);
    };
    const fill = (s, scope) => s.replace(PH, (m, path) => format(lookup(scope, path)));
    const element = (n, scope, items, top, root, item) => {
      const e = n.cloneNode(false);
      for (const a of Array.from(n.attributes)) {
        const name = a.name, v = fill(a.value, scope), s = v.trim();
        e.removeAttribute(name);
        // data-each is the template's own mark; on* and placeholder names are refused
        // by the server already (defence in depth); unsafe addresses are left out.
        if (name === 'data-each' || /^on|\{/i.test(name)) continue;
        if (URLS.includes(name) && !(s && SAFE_URL.test(s))) continue;
        e.setAttribute(name, v);
      }
      if (root) e.setAttribute('data-intently-decision', top.decision_id);
      if (item !== null) e.setAttribute('data-intently-item', item);
      walk(n, e, scope, items, top);
      return e;
    };
    const walk = (from, to, scope, items, top, root) => {
      for (const n of Array.from(from.childNodes)) {
        if (n.nodeType === 3) to.appendChild(D.createTextNode(fill(n.nodeValue, scope)));
        else if (n.nodeType !== 1 || BAD_TAG.test(n.localName));
        else if (!n.hasAttribute('data-each')) to.appendChild(element(n, scope, items, top, root, null));
        else {
          items.forEach((it) => to.appendChild(
            element(n, Object.assign({}, it, top), [], top, root, it.id == null ? '' : String(it.id))));
        }
      }
    };
    // A decision as DOM nodes: the template parsed inert (a <template> runs nothing),
    // then copied node by node, each placeholder filled as text.
    const render = (source, d) => {
      const t = D.createElement('template'), out = D.createDocumentFragment();
      const items = arr(d.items) ? d.items : [];
      const top = { decision_id: String(d.decision_id), placement: d.placement };
      t.innerHTML = source;
      walk(t.content, out, Object.assign({}, items[0], top), items, top, 1);
      return out;
    };

    // -- delivery ----------------------------------------------------------------------
    const $$ = (s) => Array.from(D.querySelectorAll(s));
    const pid = (el) => el.getAttribute('data-intently-placement');
    const data = (el, n) => el && json(el.getAttribute('data-intently-' + n));
    const isExit = (el) => el.matches(EXIT);
    const shown = [], byId = {}, viewed = {};
    const emit = (el, name, detail) => el.dispatchEvent(new CustomEvent('intently:' + name, { bubbles: true, detail }));
    // Exposure: half of the decided content visible for one second without a break.
    const timers = new Map(), seen = new WeakMap();
    const io = W.IntersectionObserver && new IntersectionObserver(safe((entries) => entries.forEach((en) => {
      const x = en.target, d = seen.get(x);
      clearTimeout(timers.get(x));
      if (en.intersectionRatio < 0.5) return;
      timers.set(x, setTimeout(safe(() => {
        io.unobserve(x);
        if (viewed[d.decision_id]) return;
        viewed[d.decision_id] = 1;
        track('Decision Viewed', { decision_id: d.decision_id, placement: d.placement });
      }), 1000));
    })), { threshold: [0, 0.5] });
    const valid = (d) => typeof d.decision_id === 'string' &&
      typeof d.template === 'string' && arr(d.items) && d.items.length > 0 &&
      d.items.every((it) => isObject(it) && typeof it.id === 'string');

    // An exit-intent placement shows as a dialog: a close button, Escape, or a click
    // outside closes it; focus goes to it and comes back after.
    const overlay = (content, el) => {
      const make = (tag, cls) => {
        const x = D.createElement(tag);
        x.className = 'intently-' + cls;
        return x;
      };
      const box = make('div', 'overlay'), dialog = make('div', 'dialog'), close = make('button', 'close');
      const before = D.activeElement;
      dialog.setAttribute('role', 'dialog');
      dialog.setAttribute('aria-modal', 'true');
      dialog.setAttribute('aria-label', el.getAttribute('aria-label') || 'Offer');
      close.type = 'button';
      close.setAttribute('aria-label', 'Close');
      close.textContent = '\u00d7';
      dialog.append(close, content);
      box.appendChild(dialog);
      D.body.appendChild(box);
      const shut = safe(() => {
        box.remove();
        D.removeEventListener('keydown', key, true);
        if (before && before.focus) before.focus();
      });
      const key = safe((e) => {
        if (e.key === 'Escape') shut();
      });
      close.onclick = shut;
      box.onclick = (e) => e.target === box && shut();
      D.addEventListener('keydown', key, true);
      close.focus();
      return dialog;
    };
    // Show a decision in its placement (or, for exit intent, in a dialog).
    const show = (el, d) => {
      const nodes = render(d.template, d);
      el.setAttribute(READY, '');
      const target = isExit(el) ? overlay(nodes, el) : el;
      if (target === el) el.replaceChildren(nodes);
      byId[d.decision_id] = d;
      shown.push(d);
      timing.rendered = timing.rendered || now();
      seen.set(target, d);
      if (io) io.observe(target);
      emit(el, 'render', d);
    };
    // Keep (reveal) the default content; for exit intent, show it in the dialog.
    const fallback = (el, reason) => {
      if (el.hasAttribute(READY)) return;
      el.setAttribute(READY, '');
      if (isExit(el) && el.childNodes.length) {
        const copy = D.createDocumentFragment();
        el.childNodes.forEach((c) => copy.appendChild(c.cloneNode(true)));
        overlay(copy, el);
      }
      emit(el, 'fallback', { placement: pid(el), reason });
    };

    // What the page says of itself in data attributes: the product shown (the first one
    // outside placements, unless marked data-intently-view="false"), the cart, the order.
    const product = () => {
      for (const el of $$('[data-intently-product]')) {
        const p = !el.closest(P) && el.getAttribute('data-intently-view') !== 'false' && data(el, 'product');
        if (isObject(p)) return p;
      }
    };
    const cart = () => data(D.querySelector('[data-intently-cart]'), 'cart');
    const order = () => data(D.querySelector('[data-intently-order]'), 'order');
    // Cart and order lines as the decide body takes them (one wrong line would refuse it).
    const lines = (list) => (arr(list) ? list : [])
      .filter((l) => l && typeof l.product_id === 'string' && l.product_id)
      .slice(0, 200)
      .map((l) => ({
        product_id: l.product_id,
        quantity: int(l.quantity) && l.quantity > 0 ? l.quantity : undefined,
        price: typeof l.price === 'number' && l.price >= 0 ? l.price : undefined,
      }));
    const pageContext = () => {
      const c = { page: pageInfo() }, p = product(), o = order();
      if (hasCampaign) c.campaign = { source: campaign.source, medium: campaign.medium, name: campaign.name };
      if (p && p.product_id) c.product_id = String(p.product_id);
      if (arr(cart())) c.cart = lines(cart());
      if (isObject(o)) {
        c.order = {
          products: lines(o.products), revenue: o.revenue >= 0 ? +o.revenue : undefined,
          order_id: typeof o.order_id === 'string' && o.order_id ? o.order_id : undefined,
        };
      }
      return c;
    };

    // One /v1/context call: the queued events (plus `extra`) and the placements of `els`.
    // Each placement shows its decision, or its default content on the timeout or any
    // failure; a decision that arrives after the default content was shown is dropped
    // (never a flash). Placements shown already (refresh()) change when the answer comes.
    const decide = (els, extra) => {
      const shownBefore = els.filter((el) => el.hasAttribute(READY));
      const ids = Array.from(new Set(els.map(pid))).filter(Boolean).slice(0, 20);
      const events = q.splice(0).concat(extra || []);
      held = 0;
      if (!ids.length || !canSend()) {
        q = events.concat(q);
        save();
        els.forEach((el) => fallback(el, 'consent'));
        return schedule();
      }
      inflight = inflight.concat(events);
      save();
      const placements = ids.map((id) => {
        const el = els.find((x) => pid(x) === id), ask = { id };
        const count = +el.getAttribute('data-intently-count'), items = el.getAttribute('data-intently-items');
        // (within the engine's bounds: one bad attribute must not cost the page its answer)
        if (count > 0) ask.count = Math.min(50, Math.floor(count));
        if (items) ask.items = items.split(',').map((s) => s.trim()).filter(Boolean).slice(0, 500);
        return ask;
      });
      const body = { placements, anonymousId: aid, context: pageContext(), templates: true, events };
      if (uid) body.userId = uid;
      const clock = setTimeout(safe(() => els.forEach((el) => fallback(el, 'timeout'))), TIMEOUT);
      // The events were sent with the decide: queued again unless the server stored them.
      const done = (requeue) => {
        clearTimeout(clock);
        release(events);
        if (requeue) q = events.concat(q);
        save();
        schedule();
      };
      timing.request = now();
      Promise.resolve()
        .then(() => post('/v1/context', body))
        .then((r) => {
          if (!r.ok) throw r.status;
          return r.json();
        })
        .then(safe((answer) => {
          timing.response = now();
          done(!answer || answer.events_error);
          const list = answer && arr(answer.decisions) ? answer.decisions : [];
          els.forEach((el) => {
            // Too late: the default content was shown, and stays.
            if (el.hasAttribute(READY) && !shownBefore.includes(el)) return;
            const d = list.find((x) => x && x.placement === pid(el));
            const why = !d ? 'missing' : d.degraded ? 'degraded' : valid(d) ? '' : 'malformed';
            try {
              if (why) fallback(el, why);
              else show(el, d);
            } catch (e) {
              fallback(el, 'malformed');
            }
          });
        }))
        .catch(safe(() => {
          done(1);
          els.forEach((el) => fallback(el, 'error'));
        }));
    };

    // -- edge rules: on a session's first page, a matching rule shows its offer at once --
    const ua = (re) => re.test(N.userAgent);
    const device = () => (ua(/iPad|Tablet/i) ? 'tablet' : ua(/Mobi|iPhone|Android/i) ? 'mobile' : 'desktop');
    const matches = (w) => {
      const low = (s) => String(s || '').toLowerCase();
      const any = (list, v) => !list || !list.length || list.some((x) => low(x) === low(v));
      const h = new Date().getHours(), hours = w.hours, host = D.referrer && new URL(D.referrer).hostname;
      return any(w.campaign, campaign.name) && any(w.source, campaign.source) &&
        any(w.medium, campaign.medium) && any(w.device, device()) &&
        (!w.referrer || w.referrer.some((s) => host && (host === low(s) || host.endsWith('.' + low(s))))) &&
        (!w.path || w.path.some((p) => L.pathname.startsWith(p))) &&
        (!hours || (hours[0] <= hours[1] ? h >= hours[0] && h < hours[1] : h >= hours[0] || h < hours[1]));
    };
    // The placements that still need a decision (the others were shown by a rule).
    const edge = (els) => els.filter((el) => {
      const rule = firstPage && arr(EDGE) && EDGE.find((r) => r.placement === pid(el) && matches(r.when || {}));
      try {
        show(el, {
          placement: rule.placement, decision_id: 'edge:' + rule.offer.id, items: [rule.offer],
          template: rule.template, reasons: [rule.description], edge: true,
        });
      } catch (e) {
        return true; // decided by the server instead
      }
    });

    // -- exit intent: once per page; with exit-intent placements, it is their decide -----
    let exited = 0;
    const exitIntent = (trigger) => {
      if (exited++) return;
      const e = make('track', { event: 'Exit Intent', properties: { trigger } });
      const els = $$(EXIT).filter((el) => !el.hasAttribute(READY));
      if (els.length) decide(els, [e]);
      else enqueue(e, 1);
    };

    // -- automatic capture -----------------------------------------------------------------
    const on = (target, type, f, options) => target.addEventListener(type, safe(f), options || true);
    // A short selector of the clicked element and its parent (the server groups rage
    // clicks by it): tag#id, or tag.class.class.
    const name = (n) => n.localName + (n.id ? '#' + n.id : typeof n.className === 'string' && n.className.trim()
      ? '.' + n.className.trim().split(/\s+/).slice(0, 2).join('.') : '');
    const selector = (el) => (el.parentElement && !el.id ? name(el.parentElement) + ' > ' : '') + name(el);
    let clicks = [];
    on(D, 'click', (e) => {
      const t = e.target;
      if (!t || !t.closest) return;
      // A click in decided content is credited to its decision, and sent at once (by
      // beacon: the click may be navigating away).
      const root = t.closest('[data-intently-decision]');
      const d = root && byId[root.getAttribute('data-intently-decision')];
      if (d) {
        const item = t.closest('[data-intently-item]');
        const id = item ? item.getAttribute('data-intently-item') : d.items[0].id;
        const offer = Boolean(d.items[0].kind);
        track(offer ? 'Promotion Clicked' : 'Product Clicked', {
          [offer ? 'promotion_id' : 'product_id']: id, decision_id: d.decision_id, placement: d.placement,
        }, 1);
      }
      const add = t.closest('[data-intently-add-to-cart]');
      const p = add && (data(add, 'add-to-cart') || data(add.closest('[data-intently-product]'), 'product'));
      if (isObject(p)) track('Product Added', Object.assign({ quantity: 1 }, p));
      if (!AUTO) return;
      const el = t.closest('a,button,[role="button"],input[type="submit"],input[type="button"]');
      if (el) {
        track('Element Clicked', {
          target: selector(el), tag: el.localName, href: el.href ? String(el.href) : undefined,
          text: (el.innerText || el.value || '').trim().slice(0, 100),
        });
      }
      // Rage clicks: 3 clicks within a second, each within 30 px of the last.
      const at = Date.now(), last = clicks[clicks.length - 1];
      if (last && (at - last.t > 1000 || Math.hypot(e.clientX - last.x, e.clientY - last.y) > 30)) clicks = [];
      clicks.push({ t: at, x: e.clientX, y: e.clientY });
      if (clicks.length === 3) track('Rage Click', { target: selector(t), clicks: 3 });
    });
    // Searches: a submitted form with a search field (or one named q).
    on(D, 'submit', (e) => {
      const input = e.target.querySelector('input[type="search"],input[name="q"]');
      const query = input && input.value.trim();
      if (!query) return;
      if (canSend()) ls('intently_search', query); // the results page will not count it again
      track('Products Searched', { query });
    });
    // Going away: the time on the page (visible only), then everything, by beacon.
    let since = D.visibilityState === 'hidden' ? 0 : now(), visible = 0, reported = 0;
    const hide = () => {
      if (since) visible += now() - since;
      since = 0;
      if (AUTO && visible - reported >= 100) {
        track('Time On Page', { seconds: Math.round((visible - reported) / 100) / 10 });
        reported = visible;
      }
      flush(1);
    };
    on(D, 'visibilitychange', () => (D.visibilityState === 'hidden' ? hide() : (since = now())));
    on(W, 'pagehide', hide);
    on(W, 'online', () => {
      retryAt = 0;
      flush();
    });
    // The CSS failsafe showed a placement's default content: no decision may replace it.
    on(D, 'animationend', (e) => e.animationName === 'intently-failsafe' && fallback(e.target, 'failsafe'));
    const mobile = N.maxTouchPoints > 0;
    if (AUTO) {
      const depths = [25, 50, 75, 100];
      let frame = 0, markY = 0, markT = 0;
      on(W, 'scroll', () => {
        frame = frame || requestAnimationFrame(safe(() => {
          const y = W.scrollY, t = now(), reached = ((y + innerHeight) / D.documentElement.scrollHeight) * 100;
          frame = 0;
          while (depths[0] <= reached + 0.5) track('Scroll Depth', { depth: depths.shift() });
          // Mobile exit intent: a fast scroll back up (a third of a screen in 300 ms).
          if (t - markT > 300 || y > markY) {
            markY = y;
            markT = t;
          } else if (mobile && markY - y > innerHeight / 3) exitIntent('scroll-up');
        }));
      }, { passive: true });
      // Mobile: going back through the page's own history (a single-page app, #anchors).
      // The tag adds no history entry of its own.
      on(W, 'popstate', () => mobile && exitIntent('back'));
      // Desktop exit intent: the pointer leaves the page through its top edge.
      on(D, 'mouseout', (e) => !e.relatedTarget && e.clientY <= 0 && exitIntent('pointer'));
    }

    // -- start, once the page is parsed: what it holds is known ----------------------------
    const start = () => {
      timing.dom = now();
      const p = product(), c = cart(), o = order();
      const search = D.querySelector('[data-intently-search]');
      const query = search && search.getAttribute('data-intently-search').trim();
      if (p) track('Product Viewed', p);
      if (arr(c)) track('Cart Viewed', { products: c });
      if (isObject(o) && o.order_id) {
        // Once per order: a reload of the confirmation page is not a second order.
        const done = (get('intently_orders') || '').split(',');
        if (!done.includes(String(o.order_id))) {
          track('Order Completed', o);
          set('intently_orders', done.concat(o.order_id).slice(-20).join(','));
        }
      }
      if (query && ls('intently_search') !== query) track('Products Searched', { query });
      ls('intently_search', null);
      // (a placement the CSS failsafe already revealed keeps its default content)
      const els = edge($$(P).filter((el) => !isExit(el) && !el.hasAttribute(READY)));
      if (els.length) decide(els);
      else {
        held = 0;
        schedule();
      }
    };

    // -- the public API (Segment-like) --------------------------------------------------------
    const all = ['analytics', 'personalization', 'marketing'];
    const keep = (list) => {
      granted = list;
      store('intently_consent', JSON.stringify(list));
    };
    const api = {
      version: VERSION,
      track: (event, properties) => track(event, properties),
      page: (name, properties) => enqueue(make('page', { name, properties: Object.assign(pageInfo(), properties) })),
      identify: (userId, traits) => {
        if (userId) set('intently_uid', (uid = String(userId)));
        enqueue(make('identify', { traits: traits || {} }));
      },
      alias: (userId) => {
        const previousId = uid || aid;
        set('intently_uid', (uid = String(userId)));
        enqueue(make('alias', { previousId }));
      },
      // A new visitor: new anonymous id and session, no user id.
      reset: () => {
        uid = null;
        delete mem.intently_uid;
        store('intently_uid', null);
        set('intently_aid', (aid = uuid()));
        set('intently_sid', '');
        touch(1);
      },
      consent: {
        // grant(['analytics', 'personalization']). Without a list: all three purposes,
        // except marketing when the browser sends Global Privacy Control.
        grant: (list) => {
          keep(all.filter((x) => (arr(list) ? list.includes(x) : !GPC || x !== 'marketing')));
          if (!canSend()) return;
          Object.keys(mem).forEach((k) => set(k, mem[k])); // identifiers may now be kept
          // What waited for consent is sent with it.
          q.forEach((e) => {
            e.context.consent = { categoryPreferences: purposes() };
          });
          track('Consent Updated', purposes());
        },
        // Stops sending, forgets the queue and the identifiers; the refusal itself is
        // sent (if sending was allowed: otherwise the server holds nothing to stop using).
        revoke: () => {
          const was = canSend();
          keep([]);
          q = [];
          inflight = [];
          ['intently_q', 'intently_aid', 'intently_sid', 'intently_uid'].forEach((k) => store(k, null));
          if (was) beacon({ batch: [make('track', { event: 'Consent Updated', properties: purposes() })] });
        },
        status: () => ({ gpc: GPC, granted, sending: canSend() }),
      },
      // Decide the page's placements again (a single-page app's new view): placements
      // new to the page are hidden until their decision or the timeout, as on load;
      // the others change when the decision arrives.
      refresh: () => decide($$(P).filter((el) => !isExit(el))),
      flush: () => {
        held = 0;
        flush();
      },
      anonymousId: () => aid,
      decisions: () => shown.slice(),
      _render: (source, d) => {
        const div = D.createElement('div');
        div.appendChild(render(source, d));
        return div.innerHTML;
      },
      _timing: timing,
      _errors: errors,
    };
    Object.keys(api).forEach((k) => {
      if (typeof api[k] === 'function' && k !== '_render') api[k] = safe(api[k]);
    });
    Object.keys(api.consent).forEach((k) => {
      api.consent[k] = safe(api.consent[k]);
    });
    W.intently = api;
    if (AUTO) api.page();
    if (D.readyState === 'loading') on(D, 'DOMContentLoaded', start);
    else safe(start)();
  };
  try {
    main();
  } catch (e) {
    errors.push(String(e));
    // Whatever failed, the page shows its default content.
    D.documentElement.setAttribute('data-intently-off', '');
  }
})();
