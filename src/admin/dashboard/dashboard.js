// Strata's live dashboard: reads the /events stream (one JSON snapshot per
// second) and draws it with uPlot. Hit ratio everywhere is the README's one
// formula, computed by Strata: (hit + stale) / (hit + stale + revalidated + miss).
"use strict";
(function () {
  const KEEP = 300; // points of history (5 minutes)
  const OUTCOMES = ["hit", "stale", "revalidated", "miss", "bypass", "error"];
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const COLORS = {
    hit: css("--hit"), stale: css("--stale"), revalidated: css("--reval"), miss: css("--miss"),
    bypass: css("--bypass"), error: css("--error"),
  };
  const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#db61a2", "#a371f7", "#39c5cf", "#f0883e", "#8b96a3"];
  const $ = (id) => document.getElementById(id);

  // === formatting ===
  const num = (v, digits) => (v == null || !isFinite(v) ? "–" : v.toFixed(digits));
  function rate(v) {
    if (v == null) return "–";
    if (v >= 10000) return (v / 1000).toFixed(1) + "k";
    if (v >= 100) return v.toFixed(0);
    return v.toFixed(1);
  }
  const pct = (v) => (v == null ? "–" : (v * 100).toFixed(1) + "<small>%</small>");
  function ms(v) {
    if (v == null) return "–";
    if (v < 1) return (v * 1000).toFixed(0) + "<small>µs</small>";
    if (v < 1000) return v.toFixed(v < 10 ? 2 : 1) + "<small>ms</small>";
    return (v / 1000).toFixed(2) + "<small>s</small>";
  }
  const plain = (s) => s.replace(/<[^>]+>/g, "");
  // Axis ticks: short, no decimals that a log axis does not need.
  function tickMs(v) {
    if (v == null) return "";
    if (v < 1) return +(v * 1000).toPrecision(2) + "µs";
    if (v < 1000) return +v.toPrecision(2) + "ms";
    return +(v / 1000).toPrecision(2) + "s";
  }
  function bytes(v) {
    if (v == null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(i === 0 ? 0 : 1) + " " + units[i];
  }
  function text(el, s) { if (el.textContent !== s) el.textContent = s; }
  function html(el, s) { if (el.innerHTML !== s) el.innerHTML = s; }
  function el(tag, cls, content) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content != null) e.textContent = content;
    return e;
  }

  // === charts ===
  const axis = {
    stroke: css("--dim"),
    grid: { stroke: "rgba(255,255,255,0.06)", width: 1 },
    ticks: { stroke: "rgba(255,255,255,0.06)", width: 1 },
    font: "11px system-ui, sans-serif",
  };
  function chart(id, series, extra) {
    const box = $(id);
    const opts = Object.assign({
      width: Math.max(200, box.clientWidth),
      height: box.clientHeight - 30,
      cursor: { drag: { x: false, y: false } },
      legend: { live: false },
      series: [{}].concat(series),
      axes: [Object.assign({}, axis), Object.assign({ size: 56 }, axis, extra && extra.yAxis)],
      scales: Object.assign({ x: { time: true } }, extra && extra.scales),
    }, extra && extra.opts);
    const data = [[]].concat(series.map(() => []));
    const u = new uPlot(opts, data, box);
    return { u, data, box };
  }
  function line(label, color, fmt, opts) {
    return Object.assign({
      label, stroke: color, width: 2, points: { show: false },
      value: (u, v) => (v == null ? "–" : fmt(v)),
    }, opts);
  }
  function fill(color) { return color + "22"; }

  const charts = {};
  charts.rps = chart("c-rps", OUTCOMES.map((o) =>
    line(o, COLORS[o], (v) => rate(v), o === "hit" ? { fill: fill(COLORS.hit) } : {})), {
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
  });
  charts.ratio = chart("c-ratio", [
    line("hit ratio", COLORS.hit, (v) => v.toFixed(1) + "%", { fill: fill(COLORS.hit) }),
    line("byte hit ratio", css("--bytes"), (v) => v.toFixed(1) + "%"),
    line("memory tier", css("--mem"), (v) => v.toFixed(1) + "%", { dash: [4, 4], width: 1.5 }),
    line("redis tier", css("--redis"), (v) => v.toFixed(1) + "%", { dash: [4, 4], width: 1.5 }),
  ], {
    scales: { y: { range: [0, 100] } },
    yAxis: { values: (u, ticks) => ticks.map((t) => t + "%") },
  });
  charts.lat = chart("c-lat", [
    line("hit p50", COLORS.hit, (v) => plain(ms(v))),
    line("hit p99", COLORS.hit, (v) => plain(ms(v)), { dash: [5, 4] }),
    line("miss p50", COLORS.miss, (v) => plain(ms(v))),
    line("miss p99", COLORS.miss, (v) => plain(ms(v)), { dash: [5, 4] }),
  ], {
    scales: { y: { distr: 3, log: 10 } },
    yAxis: { values: (u, ticks) => ticks.map(tickMs) },
  });
  charts.up = null; // rebuilt when the set of upstream servers changes
  let upServers = "";

  function ensureUpstreamChart(servers) {
    const key = servers.join(" ");
    if (key === upServers) return;
    upServers = key;
    if (charts.up) { charts.up.u.destroy(); }
    $("c-up").textContent = "";
    charts.up = chart("c-up", servers.map((s, i) =>
      line(s, PALETTE[i % PALETTE.length], (v) => rate(v) + "/s")), {
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    });
  }

  function push(c, t, values) {
    c.data[0].push(t);
    values.forEach((v, i) => c.data[i + 1].push(v));
    if (c.data[0].length > KEEP) c.data.forEach((col) => col.shift());
    c.u.setData(c.data);
  }

  function resize() {
    for (const c of Object.values(charts)) {
      if (c) c.u.setSize({ width: Math.max(200, c.box.clientWidth), height: c.box.clientHeight - 30 });
    }
  }
  window.addEventListener("resize", resize);

  // === panels ===
  function renderRules(rules) {
    const box = $("rules");
    if (!rules.length) { html(box, '<div class="empty">No [[rules]] configured.</div>'); return; }
    box.textContent = "";
    for (const r of rules) {
      const row = el("div", "bar");
      const top = el("div", "top");
      top.append(el("span", "name", r.rule),
        el("span", "num", (r.hit_ratio == null ? "idle" : (r.hit_ratio * 100).toFixed(1) + "%") +
          " · " + r.hits + " hits / " + r.misses + " misses"));
      const track = el("div", "track");
      const f = el("div", "fill");
      f.style.width = ((r.hit_ratio || 0) * 100).toFixed(1) + "%";
      track.append(f);
      row.append(top, track);
      box.append(row);
    }
  }

  function renderUpstreams(ups) {
    const box = $("upstreams");
    box.textContent = "";
    for (const u of ups) {
      const row = el("div", "up");
      const dot = el("span", "dot " + (!u.healthy ? "bad" : u.draining ? "warn" : "ok"));
      dot.title = !u.healthy ? "unhealthy" : u.draining ? "draining" : "healthy";
      row.append(dot, el("span", "name", u.server),
        el("span", "num", (u.draining ? "draining · " : "") + rate(u.per_s) + "/s · " +
          u.responses + " resp · " + u.errors + " err"));
      box.append(row);
    }
    const healthy = ups.filter((u) => u.healthy).length;
    const pill = $("p-upstreams");
    pill.firstElementChild.className = "dot " + (healthy === ups.length ? "ok" : healthy ? "warn" : "bad");
    text(pill.lastElementChild, healthy + "/" + ups.length + " upstreams healthy");
  }

  function state(box, rows) {
    box.textContent = "";
    for (const [k, v] of rows) box.append(el("span", "k", k), el("span", "v", v));
  }

  function renderRedis(r) {
    const pill = $("p-redis");
    if (!r) {
      pill.firstElementChild.className = "dot";
      text(pill.lastElementChild, "redis: off");
      state($("redis"), [["tier", "not configured"]]);
      return;
    }
    const ok = r.connected && !r.breaker_open;
    pill.firstElementChild.className = "dot " + (ok ? "ok" : "bad");
    text(pill.lastElementChild, "redis: " + (r.breaker_open ? "breaker open" : r.connected ? "connected" : "disconnected"));
    state($("redis"), [["connection", r.connected ? "connected" : "disconnected"],
      ["breaker", r.breaker_open ? "open (skipped)" : "closed"]]);
  }

  function renderActivity(items) {
    const feed = $("feed");
    if (!items.length) { html(feed, '<li class="empty">Nothing yet: purges, reloads and alerts show here.</li>'); return; }
    const key = items.map((i) => i.seq).join(",");
    if (feed.dataset.key === key) return;
    feed.dataset.key = key;
    feed.textContent = "";
    for (const a of items) {
      const li = el("li");
      const t = new Date(a.at_ms);
      li.append(el("span", "t", t.toLocaleTimeString([], { hour12: false })),
        el("span", "tag " + a.kind, a.kind.replace("_", " ")), el("span", "m", a.message));
      feed.append(li);
    }
  }

  // === the stream ===
  let count = 0, firstRequests = null, lastAt = 0;
  function onSnapshot(s) {
    count++;
    lastAt = Date.now();
    const t = s.at_ms / 1000;
    text($("version"), "v" + s.version);
    html($("k-rps"), rate(s.requests_per_s));
    html($("k-ratio"), pct(s.hit_ratio));
    html($("k-bratio"), pct(s.byte_hit_ratio));
    html($("k-hit"), ms(s.latency_ms.hit.p50));
    text($("k-hit99"), "p99 " + plain(ms(s.latency_ms.hit.p99)));
    html($("k-miss"), ms(s.latency_ms.miss.p50));
    text($("k-miss99"), "p99 " + plain(ms(s.latency_ms.miss.p99)));
    html($("k-out"), s.bytes_per_s == null ? "–" : bytes(s.bytes_per_s).replace(" ", "<small>") + "</small>");
    text($("k-total"), "· " + s.requests + " requests");

    push(charts.rps, t, OUTCOMES.map((o) => s.outcomes[o].per_s));
    const p = (v) => (v == null ? null : v * 100);
    push(charts.ratio, t, [p(s.hit_ratio), p(s.byte_hit_ratio), p(s.tiers.memory.ratio), p(s.tiers.redis.ratio)]);
    const l = s.latency_ms;
    push(charts.lat, t, [l.hit.p50, l.hit.p99, l.miss.p50, l.miss.p99]);
    ensureUpstreamChart(s.upstreams.map((u) => u.server));
    push(charts.up, t, s.upstreams.map((u) => u.per_s));

    renderRules(s.rules);
    renderUpstreams(s.upstreams);
    state($("tiers"), [
      ["memory", bytes(s.memory.bytes) + " · " + s.memory.entries + " entries"],
      ["memory hits", String(s.tiers.memory.hits)],
      ["redis hits", String(s.tiers.redis.hits)],
    ]);
    renderRedis(s.redis);
    const pr = s.process;
    state($("process"), pr ? [
      ["CPU", pr.cpu_cores == null ? "–" : (pr.cpu_cores * 100).toFixed(1) + "% of a core"],
      ["resident memory", bytes(pr.resident_bytes)],
      ["open fds", String(pr.open_fds)],
      ["CPU time", num(pr.cpu_seconds, 1) + " s"],
    ] : [["process", "figures unavailable on this OS"]]);
    renderActivity(s.activity);

    // For the browser test and for humans: are the figures moving?
    if (firstRequests == null) firstRequests = s.requests;
    const root = document.documentElement;
    root.dataset.snapshots = String(count);
    root.dataset.requests = String(s.requests);
    if (count >= 3 && s.requests > firstRequests) root.dataset.live = "moving";
  }

  function setLive(cls, label) {
    const pill = $("p-live");
    pill.firstElementChild.className = "dot " + cls;
    text(pill.lastElementChild, label);
  }

  // A dropped stream is reconnected by the browser itself; one refused
  // (503 while too many streams are open, 401 after the read token was
  // rotated) is closed for good, so the page reconnects by itself, every
  // 5 s doubling up to 60 s, until a stream opens again.
  let retryDelay = 5000;
  function connect() {
    const source = new EventSource("events");
    source.onopen = () => { retryDelay = 5000; setLive("ok", "live"); };
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return setLive("bad", "reconnecting…");
      source.close();
      setLive("bad", "refused: retrying in " + Math.round(retryDelay / 1000) + " s");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 60000);
    };
    source.onmessage = (e) => {
      let s;
      try { s = JSON.parse(e.data); } catch (err) { return showError("bad snapshot: " + err); }
      onSnapshot(s);
      setLive("ok", "live");
    };
  }
  connect();
  setInterval(() => { if (lastAt && Date.now() - lastAt > 3500) setLive("warn", "stale"); }, 1000);

  function showError(msg) {
    const b = $("banner");
    b.style.display = "block";
    b.textContent = msg;
    document.documentElement.dataset.errors = String(Number(document.documentElement.dataset.errors || 0) + 1);
  }
  window.addEventListener("error", (e) => showError("script error: " + e.message));
})();
