/*
 * Stride & Summit (the intently demo shop): the cart cookie, and the "why am I seeing
 * this?" panel. Loaded in <head> before the tag, so that it hears every decision the
 * tag renders (`intently:render` events, whose detail is the decision) or falls back
 * from (`intently:fallback`). It never touches the tag's work, only reads it.
 *
 * The cart is the cookie `demo_cart`: `id:quantity` pairs joined by `|` (read by the
 * server, web/demo/cart.py).
 */
(function () {
  'use strict';
  var CART = 'demo_cart';
  var decisions = [];  // [{decision, element}] in the order they were shown
  var fallbacks = [];  // [{placement, reason}]

  function readCart() {
    var found = document.cookie.split('; ').filter(function (c) { return c.indexOf(CART + '=') === 0; })[0];
    var lines = [];
    if (!found) return lines;
    found.slice(CART.length + 1).split('|').forEach(function (part) {
      var bits = part.split(':');
      var quantity = parseInt(bits[1], 10);
      if (bits[0] && quantity > 0) lines.push({ id: bits[0], quantity: quantity });
    });
    return lines;
  }
  function writeCart(lines) {
    var value = lines.map(function (l) { return l.id + ':' + l.quantity; }).join('|');
    document.cookie = CART + '=' + value + '; path=/demo; max-age=' + (value ? 604800 : 0) + '; samesite=lax';
    var count = lines.reduce(function (n, l) { return n + l.quantity; }, 0);
    document.querySelectorAll('[data-cart-count]').forEach(function (el) { el.textContent = String(count); });
  }
  function addToCart(id) {
    var lines = readCart();
    var held = lines.filter(function (l) { return l.id === id; })[0];
    if (held) held.quantity = Math.min(99, held.quantity + 1);
    else lines.push({ id: id, quantity: 1 });
    writeCart(lines.slice(0, 30));
  }
  function removeFromCart(id) {
    writeCart(readCart().filter(function (l) { return l.id !== id; }));
  }

  // -- "why am I seeing this?" ------------------------------------------------------------
  function text(tag, content, className) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    el.textContent = content;
    return el;
  }
  function percent(p) {
    return typeof p === 'number' ? Math.round(p * 1000) / 10 + '%' : '?';
  }
  function describe(d) {
    var box = document.createElement('section');
    box.className = 'why-decision';
    box.setAttribute('data-why-decision', d.placement || '');
    box.appendChild(text('h3', d.placement || 'placement'));
    var policy = d.policy && d.policy.name ? d.policy.name + (d.policy.version ? ' (version ' + d.policy.version + ')' : '') : 'unknown';
    var meta = ['policy: ' + policy];
    meta.push('arm: ' + (d.arm || 'none'));
    meta.push(d.personalized ? 'personalized' : 'not personalized');
    if (d.degraded) meta.push('fallback: ' + d.degraded);
    if (d.edge) meta.push('first paint (edge rule)');
    box.appendChild(text('p', meta.join(' · '), 'why-meta'));
    if (Array.isArray(d.reasons) && d.reasons.length) {
      var reasons = document.createElement('ul');
      d.reasons.forEach(function (r) { reasons.appendChild(text('li', String(r))); });
      box.appendChild(reasons);
    }
    var items = document.createElement('ol');
    (Array.isArray(d.items) ? d.items : []).slice(0, 12).forEach(function (item) {
      var li = text('li', (item.title || item.id) + ' ', 'why-item');
      var why = (Array.isArray(item.reasons) ? item.reasons : []).join('; ');
      li.appendChild(text('small', '(' + percent(item.propensity) + ') ' + why));
      items.appendChild(li);
    });
    if (Array.isArray(d.items) && d.items.length > 12) {
      items.appendChild(text('li', '... and ' + (d.items.length - 12) + ' more', 'why-item'));
    }
    box.appendChild(items);
    return box;
  }
  function refreshPanel() {
    var list = document.querySelector('[data-why-list]');
    if (!list) return;
    list.replaceChildren();
    decisions.forEach(function (entry) { list.appendChild(describe(entry.decision)); });
    fallbacks.forEach(function (f) {
      var box = document.createElement('section');
      box.className = 'why-decision';
      box.setAttribute('data-why-decision', f.placement || '');
      box.appendChild(text('h3', f.placement || 'placement'));
      box.appendChild(text('p', 'default content shown: ' + (f.reason || 'no decision'), 'why-meta'));
      list.appendChild(box);
    });
    if (!decisions.length && !fallbacks.length) list.appendChild(text('p', 'No decision on this page yet.', 'why-empty'));
  }
  function setWhy(on) {
    var panel = document.getElementById('why-panel');
    var toggle = document.querySelector('[data-why-toggle]');
    if (!panel || !toggle) return;
    panel.hidden = !on;
    toggle.setAttribute('aria-expanded', on ? 'true' : 'false');
    document.body.classList.toggle('why-on', on);
    try { sessionStorage.setItem('demo_why', on ? '1' : ''); } catch (e) { /* private mode */ }
    if (on) refreshPanel();
  }

  document.addEventListener('intently:render', function (e) {
    var d = e.detail;
    if (!d || typeof d !== 'object') return;
    decisions = decisions.filter(function (x) { return x.decision.placement !== d.placement; });
    decisions.push({ decision: d, element: e.target });
    fallbacks = fallbacks.filter(function (f) { return f.placement !== d.placement; });
    refreshPanel();
  });
  document.addEventListener('intently:fallback', function (e) {
    var f = e.detail || {};
    if (decisions.some(function (x) { return x.decision.placement === f.placement; })) return;
    fallbacks = fallbacks.filter(function (x) { return x.placement !== f.placement; });
    fallbacks.push({ placement: f.placement, reason: f.reason });
    refreshPanel();
  });

  function start() {
    document.addEventListener('click', function (e) {
      var t = e.target;
      if (!t || !t.closest) return;
      var add = t.closest('[data-add-to-cart]');
      if (add) {
        addToCart(add.getAttribute('data-add-to-cart'));
        var note = document.querySelector('[data-added]');
        if (note) note.hidden = false;
      }
      var remove = t.closest('[data-remove-from-cart]');
      if (remove) {
        removeFromCart(remove.getAttribute('data-remove-from-cart'));
        location.reload();
      }
      if (t.closest('[data-why-toggle]')) {
        setWhy(document.getElementById('why-panel').hidden);
      }
    });
    if (document.body.classList.contains('page-checkout') && window.intently && window.intently.track) {
      var lines = readCart();
      window.intently.track('Checkout Started', {
        products: lines.map(function (l) { return { product_id: l.id, quantity: l.quantity }; }),
      });
    }
    var on = false;
    try { on = sessionStorage.getItem('demo_why') === '1'; } catch (e) { /* private mode */ }
    setWhy(on);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
  window.demoShop = { decisions: function () { return decisions.map(function (x) { return x.decision; }); } };
})();
