/* insectarium lab console: the pages' behaviour.  Plain JavaScript, no build step.
   Every page asks the JSON API (/api/...) and redraws itself; text from the server is always
   inserted as text, never as HTML. */
"use strict";

const Console = (() => {
  const REFRESH_S = parseFloat(document.body.dataset.refresh || "2");

  async function api(url, options = {}) {
    const opts = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
    const response = await fetch(url, opts);
    if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("logged out"); }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    return body;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    seconds = Math.max(0, Math.round(seconds));
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
    if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
    return `${s} s`;
  }

  function utcDate(iso) { return new Date(iso.endsWith("Z") ? iso : iso + "Z"); }
  function clock() { return new Date().toISOString().slice(11, 19) + " UTC"; }

  function formatValue(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toPrecision(6));
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  /* ------------------------------------------------------------------ services */
  function services() {
    const tbody = document.querySelector("#services tbody");
    const status = document.getElementById("services-status");
    const errorsBox = document.getElementById("host-errors");
    const filters = ["filter-host", "filter-state", "filter-text"].map((id) => document.getElementById(id));
    let last = null, logTarget = null, logTimer = null, busy = new Set();

    function matches(p) {
      const [host, state, text] = filters.map((f) => f.value.trim());
      if (host && p.host !== host) return false;
      if (state === "!RUNNING" && p.state === "RUNNING") return false;
      if (state && state !== "!RUNNING" && p.state !== state) return false;
      if (text && !p.name.toLowerCase().includes(text.toLowerCase())) return false;
      return true;
    }

    function render() {
      if (!last) return;
      const rows = last.programs.filter(matches).map((p) => {
        const key = `${p.host}/${p.name}`;
        const act = (action, label, cls) => el("button", {
          class: `small ${cls || ""}`, "data-action": action, "data-program": p.name,
          disabled: !last.may_operate || busy.has(key) ||
            (action === "start" && ["RUNNING", "STARTING"].includes(p.state)) ||
            (action === "stop" && !["RUNNING", "STARTING", "BACKOFF"].includes(p.state)),
          title: last.may_operate ? `${label} ${p.name} on ${p.host}` : "operators only",
          onclick: () => control(p, action),
        }, label);
        return el("tr", { "data-program": p.name, "data-host": p.host },
          el("td", { text: p.host }),
          el("td", { class: "mono", text: p.name }),
          el("td", {}, el("span", { class: `badge state-${p.state}`, text: p.state })),
          el("td", { class: "num", text: p.uptime_s === null ? "—" : duration(p.uptime_s) }),
          el("td", { class: "num", text: p.pid || "—" }),
          el("td", { class: "muted", text: p.state === "RUNNING" ? "" : (p.spawnerr || p.description) }),
          el("td", {}, act("start", "Start"), " ", act("stop", "Stop", "danger"), " ",
             act("restart", "Restart"), " ",
             el("button", { class: "small", "data-action": "log", onclick: () => openLog(p) }, "Log")));
      });
      tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "muted", text: "no program matches" }))]));
      errorsBox.replaceChildren(...Object.entries(last.errors).map(([h, e]) => el("div", { class: "alert error", text: e })));
      const running = last.programs.filter((p) => p.state === "RUNNING").length;
      status.textContent = `${running} of ${last.programs.length} running · updated ${clock()}`;
    }

    async function refresh() {
      try { last = await api("/api/services"); render(); }
      catch (e) { status.textContent = `update failed: ${e.message}`; }
    }

    async function control(p, action) {
      const key = `${p.host}/${p.name}`;
      busy.add(key); render();
      status.textContent = `${action} ${p.name} on ${p.host}…`;
      try {
        await api(`/api/services/${encodeURIComponent(p.host)}/${encodeURIComponent(p.name)}/${action}`,
          { method: "POST", headers: { Accept: "application/json", "Content-Type": "application/json" }, body: "{}" });
      } catch (e) {
        errorsBox.replaceChildren(el("div", { class: "alert error", text: `${action} ${p.name}: ${e.message}` }));
      } finally { busy.delete(key); await refresh(); }
    }

    async function loadLog() {
      if (!logTarget) return;
      try {
        const r = await api(`/api/services/${encodeURIComponent(logTarget.host)}/${encodeURIComponent(logTarget.name)}/log?bytes=32768`);
        const pre = document.getElementById("log-text");
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
        pre.textContent = r.text || "(empty log)";
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      } catch (e) { document.getElementById("log-text").textContent = `cannot read the log: ${e.message}`; }
    }

    function openLog(p) {
      logTarget = p;
      document.getElementById("log-card").hidden = false;
      document.getElementById("log-title").textContent = `Log of ${p.name} on ${p.host} (last 32 kB)`;
      loadLog().then(() => { const pre = document.getElementById("log-text"); pre.scrollTop = pre.scrollHeight; });
      clearInterval(logTimer);
      logTimer = setInterval(() => { if (document.getElementById("log-follow").checked) loadLog(); }, Math.max(2000, REFRESH_S * 1000));
      document.getElementById("log-card").scrollIntoView({ behavior: "smooth" });
    }

    document.getElementById("log-close").onclick = () => { logTarget = null; clearInterval(logTimer); document.getElementById("log-card").hidden = true; };
    filters.forEach((f) => f.addEventListener("input", render));
    refresh();
    setInterval(refresh, REFRESH_S * 1000);
  }

  /* ------------------------------------------------------------------ plots */
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

  function traces(series) {
    const out = [];
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const x = s.t.map(utcDate);
      if (s.type === "numeric" && s.mode !== "raw") {
        out.push({ x, y: s.min, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, legendgroup: s.name, name: `${s.name} min` });
        out.push({ x, y: s.max, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: color + "33", hoverinfo: "skip", showlegend: false, legendgroup: s.name, name: `${s.name} max` });
        out.push({ x, y: s.value, mode: "lines", line: { color, width: 1.8 }, name: s.name, legendgroup: s.name,
                   customdata: s.n, hovertemplate: `${s.name}: %{y:.6g} (mean of %{customdata})<extra></extra>` });
      } else if (s.type === "numeric") {
        out.push({ x, y: s.value, mode: s.t.length > 400 ? "lines" : "lines+markers", marker: { size: 5 },
                   line: { color, width: 1.6 }, name: s.name, hovertemplate: `${s.name}: %{y:.6g}<extra></extra>` });
      } else if (s.type === "string") {
        out.push({ x, y: s.raw.map(formatValue), mode: "lines+markers", line: { shape: "hv", color, width: 1.4 },
                   name: s.name, yaxis: "y2", hovertemplate: `${s.name}: %{y}<extra></extra>` });
      }
    });
    return out;
  }

  function layout(series, start, end, field, height) {
    const numeric = series.filter((s) => s.type === "numeric");
    const strings = series.filter((s) => s.type === "string");
    const ytitle = numeric.length === 1 ? `${numeric[0].name} (${field === "raw" ? "value_raw" : "value_cal"})` : (field === "raw" ? "value_raw" : "value_cal");
    const l = {
      height: height || 440, margin: { l: 70, r: strings.length ? 90 : 20, t: 10, b: 50 },
      template: "plotly_white", hovermode: "x unified", showlegend: series.length > 1,
      legend: { orientation: "h", y: 1.02, yanchor: "bottom", x: 0 },
      xaxis: { title: { text: "time (UTC)" }, type: "date", range: [utcDate(start), utcDate(end)] },
      yaxis: { title: { text: numeric.length ? ytitle : "" }, zeroline: false, visible: numeric.length > 0 || !strings.length },
    };
    if (strings.length) {
      l.yaxis2 = { title: { text: "string value" }, type: "category", overlaying: numeric.length ? "y" : undefined, side: numeric.length ? "right" : "left" };
      if (!numeric.length) { l.yaxis2.side = "left"; }
    }
    return l;
  }

  function plotInto(div, data, field, height) {
    const series = data.series;
    const t = traces(series);
    const l = layout(series, data.start, data.end, field, height);
    if (!series.some((s) => s.type === "numeric")) { t.forEach((tr) => { if (tr.yaxis === "y2") delete tr.yaxis; }); l.yaxis = l.yaxis2 || l.yaxis; delete l.yaxis2; }
    Plotly.react(div, t, l, { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
    div.dataset.points = String(series.reduce((n, s) => n + s.t.length, 0));
  }

  function describe(series) {
    return series.map((s) => {
      const how = s.mode === "raw" ? `${s.t.length} values` :
        `${s.t.length} buckets of ${duration(s.bucket_s)} (${s.mode === "1h" ? "hourly rollup" : s.mode === "1m" ? "minute rollup" : "raw rows"}; line = mean, band = min–max)`;
      return `${s.name}: ${how}${s.truncated ? " — newest values only" : ""}`;
    }).join(" · ");
  }

  /* ------------------------------------------------------------------ values page */
  function values(maxPoints) {
    const tbody = document.querySelector("#endpoints tbody");
    const plot = document.getElementById("plot");
    const note = document.getElementById("plot-note");
    const params = new URLSearchParams(location.search);
    const selected = new Set(params.getAll("endpoint"));
    let last = parseInt(params.get("last") || "3600", 10), from = params.get("start"), to = params.get("end");
    let endpointsData = [], plotTimer = null, serverNow = null;
    const field = document.getElementById("field");
    if (params.get("field")) field.value = params.get("field");

    function ageClass(seconds) { return seconds < 60 ? "age-fresh" : seconds < 3600 ? "age-stale" : "age-old"; }

    function renderEndpoints() {
      const q = document.getElementById("endpoint-filter").value.trim().toLowerCase();
      const now = serverNow ? utcDate(serverNow) : new Date();
      tbody.replaceChildren(...endpointsData.filter((e) => !q || e.name.toLowerCase().includes(q)).map((e) => {
        const age = e.timestamp ? (now - utcDate(e.timestamp)) / 1000 : null;
        const v = e.value_cal !== null && e.value_cal !== undefined ? e.value_cal : e.value_raw;
        const box = el("input", { type: "checkbox", "data-endpoint": e.name, checked: selected.has(e.name),
          onchange: (ev) => { ev.target.checked ? selected.add(e.name) : selected.delete(e.name); drawPlot(true); } });
        return el("tr", { "data-endpoint": e.name },
          el("td", {}, box),
          el("td", {}, el("label", { text: e.name, title: e.type, onclick: () => { box.checked = !box.checked; box.dispatchEvent(new Event("change")); } }), " ", el("span", { class: "muted", text: e.type === "numeric" ? "" : e.type })),
          el("td", { class: "value mono", title: formatValue(v) + (e.value_cal !== null && e.value_raw !== null && e.type === "numeric" ? ` (raw ${formatValue(e.value_raw)})` : ""), text: formatValue(v) }),
          el("td", { class: age === null ? "muted" : ageClass(age), text: age === null ? "never" : duration(age) }));
      }));
    }

    async function loadEndpoints() {
      try {
        const r = await api("/api/endpoints");
        endpointsData = r.endpoints; serverNow = r.now;
        renderEndpoints();
        document.getElementById("endpoints-status").textContent = `${r.endpoints.length} endpoints · ${clock()}`;
      } catch (e) { document.getElementById("endpoints-status").textContent = `update failed: ${e.message}`; }
    }

    function query() {
      const q = new URLSearchParams();
      selected.forEach((n) => q.append("endpoint", n));
      q.set("field", field.value);
      q.set("points", String(maxPoints));
      if (from) { q.set("start", from); if (to) q.set("end", to); } else q.set("last", String(last));
      return q;
    }

    async function drawPlot(updateUrl) {
      clearTimeout(plotTimer);
      const q = query();
      if (updateUrl) { const u = new URLSearchParams(q); u.delete("points"); history.replaceState(null, "", "?" + u.toString()); }
      if (!selected.size) { Plotly.purge(plot); note.textContent = "Tick one or more endpoints on the left."; document.getElementById("text-values").hidden = true; return; }
      try {
        const data = await api("/api/series?" + q.toString());
        plotInto(plot, data, field.value);
        note.textContent = describe(data.series) + ` · ${clock()}`;
        renderText(data.series);
      } catch (e) { note.textContent = `cannot plot: ${e.message}`; }
      const live = document.getElementById("live").checked && !from && last <= 86400;
      if (live) plotTimer = setTimeout(() => drawPlot(false), Math.max(REFRESH_S * 1000, last / 120 * 1000));
    }

    function renderText(series) {
      const rows = [];
      series.filter((s) => s.type !== "numeric").forEach((s) => s.t.forEach((t, i) => rows.push([t, s.name, s.raw[i], s.cal[i]])));
      rows.sort((a, b) => (a[0] < b[0] ? 1 : -1));
      document.getElementById("text-values").hidden = rows.length === 0;
      document.querySelector("#text-table tbody").replaceChildren(...rows.slice(0, 300).map((r) =>
        el("tr", {}, el("td", { class: "mono", text: r[0].replace("T", " ").slice(0, 23) }), el("td", { text: r[1] }),
           el("td", { class: "mono", text: formatValue(r[2]) }), el("td", { class: "mono", text: formatValue(r[3]) }))));
    }

    document.querySelectorAll("#windows button").forEach((b) => {
      b.classList.toggle("on", !from && parseInt(b.dataset.last, 10) === last);
      b.onclick = () => {
        last = parseInt(b.dataset.last, 10); from = to = null;
        document.querySelectorAll("#windows button").forEach((x) => x.classList.toggle("on", x === b));
        drawPlot(true);
      };
    });
    document.getElementById("apply-range").onclick = () => {
      const f = document.getElementById("from").value, t = document.getElementById("to").value;
      if (!f) { note.textContent = "choose a start time (UTC)"; return; }
      from = f; to = t || null;
      document.querySelectorAll("#windows button").forEach((x) => x.classList.remove("on"));
      drawPlot(true);
    };
    if (from) document.getElementById("from").value = from.slice(0, 19);
    if (to) document.getElementById("to").value = to.slice(0, 19);
    field.onchange = () => drawPlot(true);
    document.getElementById("live").onchange = () => drawPlot(false);
    document.getElementById("endpoint-filter").addEventListener("input", renderEndpoints);
    loadEndpoints().then(() => drawPlot(false));
    setInterval(loadEndpoints, Math.max(5000, REFRESH_S * 1000));
  }

  /* ------------------------------------------------------------------ runs */
  function runs(anyRunning) {
    if (anyRunning) setTimeout(() => location.reload(), 10000);
  }

  function run(runId, start, end, names, running) {
    const box = document.getElementById("run-plots");
    async function draw() {
      for (const name of names) {
        let div = document.getElementById(`plot-${name}`);
        if (!div) { div = el("div", { id: `plot-${name}`, class: "plot small", "data-endpoint": name }); box.append(div); }
        const q = new URLSearchParams({ endpoint: name, start, end: running ? new Date().toISOString().slice(0, 23) : end, points: "800" });
        try {
          const data = await api("/api/series?" + q.toString());
          plotInto(div, data, "cal", 280);
          div.dataset.ready = "1";
        } catch (e) { div.textContent = `${name}: ${e.message}`; }
      }
      if (!names.length) box.append(el("p", { class: "muted", text: "No numeric endpoint logged during this run." }));
    }
    draw();
    if (running) setTimeout(() => location.reload(), 10000);
  }

  return { api, services, values, runs, run, duration };
})();
