// The intently dashboard: polls the JSON API with the secret key and draws what it reads.
// Every value from the server is put in the page as text (textContent), never as markup.
(function () {
  "use strict";

  var KEY_STORAGE = "intently.admin.key";
  var LIVE_EVERY_MS = 1000;
  var TABLES_EVERY_MS = 2000;
  var EXPERIMENTS_EVERY_MS = 5000;
  var timers = [];
  var key = null;

  function $(id) { return document.getElementById(id); }

  function storedKey() {
    try { return window.sessionStorage.getItem(KEY_STORAGE); } catch (e) { return null; }
  }
  function storeKey(value) {
    try {
      if (value === null) window.sessionStorage.removeItem(KEY_STORAGE);
      else window.sessionStorage.setItem(KEY_STORAGE, value);
    } catch (e) { /* storage unavailable: the key lives as long as the page */ }
  }

  // -- the API ----------------------------------------------------------------------------

  function ApiError(status, detail) { this.status = status; this.detail = detail; }

  function api(path, options) {
    options = options || {};
    var headers = { "Authorization": "Bearer " + key, "Accept": "application/json" };
    return fetch(path, { method: options.method || "GET", headers: headers, cache: "no-store" })
      .then(function (response) {
        if (response.ok) return response.status === 204 ? null : response.json();
        return response.json().catch(function () { return {}; }).then(function (problem) {
          throw new ApiError(response.status, problem.detail || response.statusText);
        });
      });
  }

  // -- formatting -------------------------------------------------------------------------

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (digits === undefined) digits = Math.abs(value) >= 100 ? 0 : (Math.abs(value) >= 10 ? 1 : 2);
    return value.toLocaleString(undefined, { minimumFractionDigits: 0, maximumFractionDigits: digits });
  }
  function pct(value) { return value === null || value === undefined ? "–" : fmt(100 * value, 1) + "%"; }
  function when(ms) {
    if (ms === null || ms === undefined) return "–";
    return new Date(ms).toLocaleString();
  }
  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }
  function row(cells, numeric) {
    var tr = document.createElement("tr");
    cells.forEach(function (cell, i) {
      var td = el("td", cell);
      if (numeric && numeric.indexOf(i) >= 0) td.className = "num";
      tr.appendChild(td);
    });
    return tr;
  }
  function setTile(id, text) {
    var value = $(id).querySelector(".value");
    if (value.textContent !== text) value.textContent = text;
  }
  function status(text) { $("status").textContent = text; }

  // -- charts -----------------------------------------------------------------------------

  var CHART_CONFIG = { displayModeBar: false, responsive: true };
  function layout(yTitle) {
    return {
      margin: { l: 48, r: 12, t: 8, b: 32 }, height: 240, showlegend: true,
      legend: { orientation: "h", y: 1.12 }, xaxis: { type: "date" },
      yaxis: { title: { text: yTitle }, rangemode: "tozero" },
      paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    };
  }
  function draw(id, traces, yTitle) {
    if (!window.Plotly) return;  // still loading: the next poll draws
    window.Plotly.react($(id), traces, layout(yTitle), CHART_CONFIG);
  }
  function line(name, x, y, color) {
    // (markers too: a point between two empty ones is not a line, and must still show)
    return { type: "scatter", mode: "lines+markers", name: name, x: x, y: y,
             line: { color: color, width: 2 }, marker: { size: 5, color: color }, connectgaps: false };
  }

  // -- live tiles and series --------------------------------------------------------------

  function showLive(live) {
    var tiles = live.tiles;
    setTile("tile-events", fmt(tiles.events_per_s));
    setTile("tile-decisions", fmt(tiles.decisions_per_s));
    $("tile-decisions-note").textContent = "mean of the last 10 s · degraded " + fmt(tiles.degraded_per_s) + "/s";
    setTile("tile-p50", fmt(tiles.latency_p50_ms, 3));
    setTile("tile-p99", fmt(tiles.latency_p99_ms, 3));
    setTile("tile-sessions", fmt(tiles.live_sessions, 0));
    setTile("tile-totals", fmt(live.totals.events, 0) + " · " + fmt(live.totals.decisions, 0) +
      " · " + fmt(live.totals.degraded, 0));
    var s = live.series;
    var x = s.t.map(function (ms) { return new Date(ms); });
    draw("chart-rates", [
      line("events/s", x, s.events_per_s, "#3457d5"),
      line("decisions/s", x, s.decisions_per_s, "#e67e22"),
      line("degraded/s", x, s.degraded_per_s, "#c0392b"),
    ], "per second");
    draw("chart-latency", [
      line("p50", x, s.latency_p50_ms, "#1e8449"),
      line("p99", x, s.latency_p99_ms, "#8e44ad"),
    ], "ms");
    draw("chart-sessions", [line("live sessions", x, s.live_sessions, "#16a085")], "sessions");
    status("updated " + new Date(live.now_ms).toLocaleTimeString());
  }

  // -- placements, segments, experiments --------------------------------------------------

  function showPlacements(body) {
    var tbody = $("placements").querySelector("tbody");
    var rows = body.placements.map(function (p) {
      var policy = p.defined ? p.policy + " · " + p.version : "(deleted) " + (p.last_policy || "");
      var tr = row([
        p.id, policy, fmt(p.decisions, 0),
        fmt(p.exposures, 0), fmt(p.rewards, 0) + (p.reward ? " (" + p.reward + ")" : ""),
        fmt(p.rewards_per_exposure, 2), fmt(p.mean_reward, 3),
        pct(p.degraded_share) + " (" + fmt(p.degraded, 0) + ")",
        fmt(p.latency_p50_ms, 3) + " / " + fmt(p.latency_p99_ms, 3),
      ], [2, 3, 4, 5, 6, 7, 8]);
      tr.dataset.placement = p.id;
      return tr;
    });
    tbody.replaceChildren.apply(tbody, rows);
  }

  function showSegments(body) {
    var tbody = $("segments").querySelector("tbody");
    var rows = body.segments.map(function (s) {
      var tr = row([s.name, s.description || s.expression, fmt(s.members, 0),
        fmt(s.entries_last_minute, 0), fmt(s.entries_last_15_minutes, 0)], [2, 3, 4]);
      tr.dataset.segment = s.name;
      return tr;
    });
    if (!rows.length) {
      rows = [row(["No segment is defined yet."])];
      rows[0].firstChild.colSpan = 5;
    }
    tbody.replaceChildren.apply(tbody, rows);
  }

  function interval(estimate, relative) {
    if (!estimate || estimate.value === null || estimate.value === undefined) return "–";
    var f = relative ? pct : function (v) { return fmt(v, 4); };
    var text = f(estimate.value);
    if (estimate.lower !== null && estimate.lower !== undefined) {
      text += " [" + f(estimate.lower) + ", " + f(estimate.upper) + "]";
    }
    return text;
  }

  function showExperiment(container, experiment, results) {
    var box = el("div", null, "experiment");
    box.dataset.experiment = experiment.id;
    box.appendChild(el("h3", (experiment.name || experiment.id) + " · " + results.status));
    var units = results.variants.map(function (v) { return v.id + ": " + fmt(v.units, 0); }).join(" · ");
    var ratio = results.sample_ratio.mismatch ? " · sample ratio mismatch!" : "";
    box.appendChild(el("p", "Exposed visitors: " + units + ratio, "muted"));
    var table = el("table");
    var head = document.createElement("thead");
    head.appendChild(row(["Metric", "Variant", "Mean (control → variant)", "Lift", "Interval (relative)",
      "p (adjusted)", "P(better)"]));
    table.appendChild(head);
    var body = document.createElement("tbody");
    var chartX = [], chartY = [], chartLow = [], chartHigh = [];
    results.metrics.forEach(function (metric) {
      metric.comparisons.forEach(function (c) {
        var rel = c.frequentist.relative;
        var tr = row([metric.name, c.variant,
          fmt(c.control_mean, 4) + " → " + fmt(c.treatment_mean, 4),
          pct(rel.value), interval(rel, true),
          fmt(c.adjusted_p_value, 3), pct(c.bayesian && c.bayesian.chance_to_beat_control)]);
        if (c.significant) tr.className = "significant";
        body.appendChild(tr);
        if (rel.value !== null && rel.value !== undefined) {
          chartX.push(metric.name + " · " + c.variant);
          chartY.push(100 * rel.value);
          chartLow.push(rel.lower === null || rel.lower === undefined ? 0 : 100 * (rel.value - rel.lower));
          chartHigh.push(rel.upper === null || rel.upper === undefined ? 0 : 100 * (rel.upper - rel.value));
        }
      });
    });
    table.appendChild(body);
    box.appendChild(table);
    var chart = el("div", null, "chart");
    chart.id = "chart-experiment-" + experiment.id.replace(/[^A-Za-z0-9_-]/g, "_");
    box.appendChild(chart);
    container.appendChild(box);
    if (window.Plotly) {
      if (chartX.length) {
        window.Plotly.react(chart, [{
          type: "scatter", mode: "markers", x: chartX, y: chartY, name: "relative lift",
          error_y: { type: "data", symmetric: false, array: chartHigh, arrayminus: chartLow },
          marker: { size: 10, color: "#3457d5" },
        }], { margin: { l: 48, r: 12, t: 8, b: 60 }, height: 240, yaxis: { title: { text: "lift, %" },
          zeroline: true }, showlegend: false }, CHART_CONFIG);
      } else {
        chart.remove();
        box.appendChild(el("p", "No comparison yet: not enough exposed visitors.", "muted"));
      }
    }
  }

  function loadExperiments() {
    return api("/v1/experiments").then(function (body) {
      var list = body.experiments || [];
      return Promise.all(list.map(function (e) {
        return api("/v1/experiments/" + encodeURIComponent(e.id) + "/results")
          .then(function (r) { return [e, r]; }, function () { return [e, null]; });
      }));
    }).then(function (pairs) {
      var container = $("experiments");
      var scroll = window.scrollY;
      container.replaceChildren();
      if (!pairs.length) container.appendChild(el("p", "No experiment is defined.", "muted"));
      pairs.forEach(function (pair) {
        if (pair[1]) showExperiment(container, pair[0], pair[1]);
      });
      window.scrollTo(0, scroll);
    });
  }

  // -- the profile inspector --------------------------------------------------------------

  var shownProfile = null;

  function definitionList(target, entries) {
    target.replaceChildren();
    entries.forEach(function (entry) {
      target.appendChild(el("dt", entry[0]));
      var value = entry[1];
      if (value !== null && typeof value === "object") value = JSON.stringify(value);
      target.appendChild(el("dd", value === null || value === undefined || value === "" ? "–" : value));
    });
  }

  function showProfile(body) {
    var profile = body.profile;
    shownProfile = profile.id || $("profile-id").value;
    var consent = profile.consent || {};
    definitionList($("profile-identity"), [
      ["profile id", profile.id],
      ["first seen", when(profile.first_seen)],
      ["last seen", when(profile.last_seen)],
      ["sessions", profile.sessions],
      ["user ids", body.identities.user_ids.join(", ")],
      ["anonymous ids", body.identities.anonymous_ids.join(", ")],
      ["consent", Object.keys(consent).map(function (k) { return k + ": " + JSON.stringify(consent[k]); }).join(" · ")],
    ]);
    var segments = $("profile-segments");
    segments.replaceChildren();
    var current = (profile.segments && profile.segments.current) || {};
    Object.keys(current).forEach(function (name) {
      segments.appendChild(el("li", name + (current[name] ? " (since " + when(current[name]) + ")" : "")));
    });
    if (!segments.children.length) segments.appendChild(el("li", "in no segment", "muted"));
    var session = profile.session;
    if (session) {
      definitionList($("profile-session"), Object.keys(session).map(function (k) {
        return [k, k === "started" || k === "last_seen" ? when(session[k]) : session[k]];
      }));
    } else {
      definitionList($("profile-session"), [["session", "none live"]]);
    }
    var decisions = $("profile-decisions");
    decisions.replaceChildren();
    body.decisions.forEach(function (d) {
      var li = el("li", null, "decision" + (d.degraded ? " degraded" : ""));
      li.dataset.decision = d.decision_id;
      li.appendChild(el("span", when(d.at_ms), "when"));
      li.appendChild(el("strong", d.placement));
      li.appendChild(document.createTextNode(" → " + (d.items.join(", ") || "(nothing)") + " · " +
        d.policy + " " + d.policy_version + (d.arm ? " · arm " + d.arm : "") +
        " · reward " + (d.reward === null ? "pending" : fmt(d.reward, 3))));
      var reasons = el("ul", null, "reasons");
      d.reasons.forEach(function (r) { reasons.appendChild(el("li", r)); });
      d.items.forEach(function (item, i) {
        var why = (d.item_reasons[i] || []).join("; ");
        if (why) reasons.appendChild(el("li", item + ": " + why));
      });
      if (d.degraded) reasons.appendChild(el("li", "degraded: " + d.degraded));
      li.appendChild(reasons);
      decisions.appendChild(li);
    });
    if (!body.decisions.length) decisions.appendChild(el("li", "no decision logged", "muted"));
    var events = $("profile-events");
    events.replaceChildren();
    body.events.forEach(function (e) {
      var li = el("li");
      li.dataset.seq = e.seq;
      li.appendChild(el("span", when(e.at_ms || e.received_ms), "when"));
      li.appendChild(el("strong", e.type + (e.name ? ": " + e.name : "")));
      var props = JSON.stringify(e.properties || {});
      if (props !== "{}") li.appendChild(el("div", props.length > 300 ? props.slice(0, 300) + "…" : props, "mono muted"));
      events.appendChild(li);
    });
    if (!body.events.length) events.appendChild(el("li", "no event in the log", "muted"));
    $("profile-error").hidden = true;
    $("profile").hidden = false;
  }

  function findProfile(id) {
    $("profile-message").textContent = "";
    return api("/v1/admin/profiles/" + encodeURIComponent(id) + "/timeline").then(showProfile, function (error) {
      $("profile").hidden = true;
      shownProfile = null;
      var box = $("profile-error");
      box.textContent = error.status === 404 ? "No profile has the id, userId or anonymousId " + JSON.stringify(id) + "."
        : "Could not read the profile: " + (error.detail || error);
      box.hidden = false;
    });
  }

  function exportProfile() {
    if (!shownProfile) return;
    api("/v1/profiles/" + encodeURIComponent(shownProfile) + "/export").then(function (body) {
      var blob = new Blob([JSON.stringify(body, null, 2)], { type: "application/json" });
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "intently-profile-" + shownProfile + ".json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 10000);
      $("profile-message").textContent = "Exported " + (body.events || []).length + " events.";
    }, function (error) { $("profile-message").textContent = "Export failed: " + (error.detail || error); });
  }

  function deleteProfile() {
    if (!shownProfile) return;
    if (!window.confirm("Erase " + shownProfile + ": profile, identity links, events and decisions? This cannot be undone.")) return;
    var id = shownProfile;
    api("/v1/profiles/" + encodeURIComponent(id), { method: "DELETE" }).then(function (erased) {
      $("profile").hidden = true;
      shownProfile = null;
      var box = $("profile-error");
      box.textContent = "Erased " + erased.profile + ": " + erased.events + " events, " +
        erased.identities + " identities, " + erased.decisions + " decisions.";
      box.hidden = false;
      box.dataset.erased = erased.profile;
    }, function (error) { $("profile-message").textContent = "Delete failed: " + (error.detail || error); });
  }

  // -- polling and signing in -------------------------------------------------------------

  function every(ms, work) {
    var stopped = false;
    function run() {
      if (stopped) return;
      Promise.resolve().then(work).catch(function (error) {
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          signOut("The key was refused (" + error.status + "): " + error.detail);
          return;
        }
        status("could not reach the engine: " + (error.detail || error.message || error));
      }).then(function () { if (!stopped) timers.push(setTimeout(run, ms)); });
    }
    run();
    return function () { stopped = true; };
  }

  var stops = [];
  function start() {
    $("sign-in").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    stops.push(every(LIVE_EVERY_MS, function () { return api("/v1/admin/live?step=5").then(showLive); }));
    stops.push(every(TABLES_EVERY_MS, function () {
      return Promise.all([api("/v1/admin/placements").then(showPlacements),
                          api("/v1/admin/segments").then(showSegments)]);
    }));
    stops.push(every(EXPERIMENTS_EVERY_MS, loadExperiments));
  }

  function signOut(message) {
    stops.forEach(function (stop) { stop(); });
    stops = [];
    timers.forEach(clearTimeout);
    timers = [];
    key = null;
    storeKey(null);
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    var box = $("sign-in-error");
    box.textContent = message || "";
    box.hidden = !message;
    status("");
  }

  function signIn(candidate) {
    key = candidate;
    return api("/v1/admin/live?step=5").then(function () {
      storeKey(candidate);
      $("sign-in-error").hidden = true;
      start();
    }, function (error) {
      key = null;
      var box = $("sign-in-error");
      if (error.status === 401) box.textContent = "Wrong key: the engine does not know it.";
      else if (error.status === 403) box.textContent = "That is not the secret key (a write key cannot read the dashboard).";
      else box.textContent = "Could not sign in: " + (error.detail || error.message || error);
      box.hidden = false;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("sign-in-form").addEventListener("submit", function (event) {
      event.preventDefault();
      signIn($("key").value.trim());
    });
    $("sign-out").addEventListener("click", function () { signOut(""); });
    $("profile-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var id = $("profile-id").value.trim();
      if (id) findProfile(id);
    });
    $("profile-export").addEventListener("click", exportProfile);
    $("profile-delete").addEventListener("click", deleteProfile);
    var kept = storedKey();
    if (kept) signIn(kept);
  });
})();
