// The dashboard page: an overview pushed by the server (server-sent events), lists fetched a
// page at a time, and buttons that change state sending the token the page was opened with.
// Plain modules, no build step: what is served is what runs.

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";
const PAGE = 50;

// The token arrives once in the URL (?token=...), is kept for the tab, and leaves the address bar.
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("interlink-token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : ""));
}
const token = () => sessionStorage.getItem("interlink-token") || "";

async function getJSON(url) {
  const answer = await fetch(url);
  if (!answer.ok) throw new Error(`${url}: ${answer.status}`);
  return answer.json();
}

async function post(url, body) {
  const answer = await fetch(url, {
    method: "POST",
    headers: { "authorization": `Bearer ${token()}`, "content-type": "application/json" },
    body: body === undefined ? "" : JSON.stringify(body),
  });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(data.error || `${answer.status}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

const badge = (text) => el("span", { class: `badge ${text}` }, String(text).replace("_", "-"));
const ms = (ns) => `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 1)} ms`;
const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString();
const fromNs = (ns) => clock(ns / 1e9);

// -- overview: topology, breakers, counts -----------------------------------------------------

function layout(services, edges) {
  // columns by distance from the callers nobody calls, so calls read left to right
  const names = services.map((s) => s.name);
  const incoming = new Map(names.map((n) => [n, 0]));
  for (const e of edges) incoming.set(e.target, (incoming.get(e.target) || 0) + 1);
  const depth = new Map();
  // roots: services nobody calls; in a graph of cycles (replies flow back), the busiest caller
  let queue = names.filter((n) => !incoming.get(n));
  if (!queue.length && names.length) {
    const out = (n) => edges.filter((e) => e.source === n).length;
    queue = [names.reduce((best, n) => (out(n) > out(best) ? n : best), names[0])];
  }
  for (const n of queue) depth.set(n, 0);
  while (queue.length) {
    const n = queue.shift();
    for (const e of edges.filter((x) => x.source === n)) {
      if (!depth.has(e.target)) { depth.set(e.target, depth.get(n) + 1); queue.push(e.target); }
    }
  }
  for (const n of names) if (!depth.has(n)) depth.set(n, 0);
  const columns = new Map();
  for (const n of names) {
    const d = depth.get(n);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n);
  }
  return { depth, columns };
}

function drawTopology(overview) {
  const svg = $("#topology");
  svg.replaceChildren();
  const { services, edges } = overview;
  if (!services.length) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", 20); t.setAttribute("y", 40);
    t.textContent = "No services seen yet: traces, a registry or metrics URLs draw them here.";
    svg.append(t);
    return;
  }
  const { columns } = layout(services, edges);
  const width = svg.clientWidth || 900, height = svg.clientHeight || 280;
  const ncol = Math.max(...columns.keys()) + 1;
  const pos = new Map();
  for (const [d, col] of columns) {
    col.sort();
    col.forEach((n, i) => pos.set(n, {
      x: (width / ncol) * (d + 0.5),
      y: (height / (col.length + 1)) * (i + 1),
    }));
  }
  const defs = document.createElementNS(SVG, "defs");
  defs.innerHTML = '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7385"/></marker>';
  svg.append(defs);
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const state = e.breaker || "none";
    const path = document.createElementNS(SVG, "path");
    const bend = e.kind === "async" ? 30 : 0;
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2 - bend;
    path.setAttribute("d", `M ${a.x + 60} ${a.y} Q ${mx} ${my} ${b.x - 62} ${b.y}`);
    path.setAttribute("class", `edge ${e.kind} ${state}`);
    path.setAttribute("marker-end", "url(#arrow)");
    path.dataset.source = e.source; path.dataset.target = e.target;
    path.dataset.kind = e.kind; path.dataset.state = state;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${e.source} → ${e.target} (${e.kind}): ${e.calls} calls, ${e.errors} errors, breaker ${state}`;
    path.append(title);
    svg.append(path);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("class", "edge-label");
    label.setAttribute("x", mx); label.setAttribute("y", my - 6);
    label.textContent = `${e.calls}${e.errors ? ` · ${e.errors} err` : ""}`;
    svg.append(label);
  }
  for (const s of services) {
    const p = pos.get(s.name);
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", `node${s.breakers_open ? " degraded" : ""}`);
    g.dataset.service = s.name;
    g.innerHTML = `<rect x="${p.x - 60}" y="${p.y - 20}" width="120" height="40"></rect>`;
    const name = document.createElementNS(SVG, "text");
    name.setAttribute("x", p.x); name.setAttribute("y", p.y - 4); name.textContent = s.name;
    const sub = document.createElementNS(SVG, "text");
    sub.setAttribute("class", "sub"); sub.setAttribute("x", p.x); sub.setAttribute("y", p.y + 11);
    sub.textContent = s.instances.length ? `${s.instances.length} instance${s.instances.length > 1 ? "s" : ""}` : "";
    g.append(name, sub);
    svg.append(g);
  }
}

function drawBreakers(breakers) {
  const body = $("#breakers tbody");
  body.replaceChildren(...breakers.map((b) => el("tr", { "data-breaker": `${b.service}/${b.name}` },
    el("td", {}, b.service), el("td", {}, b.name), el("td", {}, badge(b.state)),
    el("td", {}, b.failure_rate == null ? "–" : `${(b.failure_rate * 100).toFixed(0)} %`),
    el("td", {}, b.state === "open" && b.half_open_in ? `${b.half_open_in.toFixed(1)} s` : "–"))));
  $("#breakers-panel .empty").hidden = breakers.length > 0;
}

function showOverview(o) {
  $("#count-services").textContent = o.services.length;
  $("#count-open").textContent = o.breakers.filter((b) => b.state !== "closed").length;
  $("#count-attention").textContent = o.sagas ? o.sagas.NEEDS_ATTENTION ?? 0 : "–";
  $("#count-traces").textContent = o.traces ?? "–";
  drawTopology(o);
  drawBreakers(o.breakers);
  const select = $("#trace-filters select[name=service]");
  const known = new Set([...select.options].map((x) => x.value));
  for (const s of o.services) if (!known.has(s.name)) select.append(el("option", { value: s.name }, s.name));
}

function connect() {
  const live = $("#live");
  const source = new EventSource("/api/stream");
  source.addEventListener("overview", (event) => {
    live.className = "live on"; live.textContent = "live";
    showOverview(JSON.parse(event.data));
  });
  source.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
}

// -- traces -------------------------------------------------------------------------------------

let traceOffset = 0;

async function loadTraces() {
  const form = new FormData($("#trace-filters"));
  const q = new URLSearchParams({ limit: PAGE, offset: traceOffset, order: form.get("order") });
  if (form.get("service")) q.set("service", form.get("service"));
  if (form.get("correlation_id")) q.set("correlation_id", form.get("correlation_id").trim());
  if (form.get("errors")) q.set("errors", "1");
  let data;
  try { data = await getJSON(`/api/traces?${q}`); } catch { $("#traces-panel").hidden = true; return; }
  $("#trace-rows").replaceChildren(...data.traces.map(traceRow));
  pager(data.traces.length);
}

// one row of the list (the server draws the first page's rows the same way, with the page)
const traceRow = (t) => el("tr", { class: "clickable", "data-trace": t.trace_id },
  el("td", { "data-ns": t.start_ns }, fromNs(t.start_ns)), el("td", {}, `${t.root_service}: ${t.root_name}`),
  el("td", {}, t.services.join(", ")), el("td", {}, ms(t.duration_ns)), el("td", {}, t.spans),
  el("td", { class: t.errors ? "err" : "" }, t.errors || ""), el("td", {}, el("code", {}, t.correlation_id || "")));

function pager(count) {
  $("#traces-page").textContent = count ? `${traceOffset + 1}–${traceOffset + count}` : "no traces match";
  $("#traces-prev").disabled = traceOffset === 0;
  $("#traces-next").disabled = count < PAGE;
}

const palette = ["#3b6fd8", "#8a5cd0", "#2f9e5b", "#d99a1e", "#1d9bb0", "#c2549b", "#7a8a2e"];

async function showTrace(traceId) {
  const data = await getJSON(`/api/traces/${traceId}`);
  for (const row of document.querySelectorAll("#traces tr.selected")) row.classList.remove("selected");
  document.querySelector(`#traces tr[data-trace="${traceId}"]`)?.classList.add("selected");
  const spans = data.spans;
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const depth = (s) => { let d = 0; let p = s; while (p.parent_id && byId.has(p.parent_id) && d < 50) { p = byId.get(p.parent_id); d++; } return d; };
  const start = Math.min(...spans.map((s) => s.start_ns));
  const total = Math.max(...spans.map((s) => s.end_ns)) - start || 1;
  const services = [...new Set(spans.map((s) => s.service))];
  // children right under their parent: a depth-first walk from the roots
  const children = new Map();
  for (const s of spans) {
    const key = s.parent_id && byId.has(s.parent_id) ? s.parent_id : "root";
    if (!children.has(key)) children.set(key, []);
    children.get(key).push(s);
  }
  const ordered = [];
  const walk = (key) => { for (const s of children.get(key) || []) { ordered.push(s); walk(s.span_id); } };
  walk("root");
  $("#waterfall-id").textContent = traceId;
  $("#waterfall-rows").replaceChildren(...ordered.map((s) => {
    const bar = el("div", {
      class: `wf-bar${s.status === "error" ? " error" : ""}`,
      title: `${s.service} ${s.kind} ${s.name}${s.status_message ? ` — ${s.status_message}` : ""}`,
    });
    bar.style.left = `${((s.start_ns - start) / total) * 100}%`;
    bar.style.width = `${Math.max(((s.end_ns - s.start_ns) / total) * 100, 0.3)}%`;
    bar.style.background = palette[services.indexOf(s.service) % palette.length];
    const name = el("div", { class: "wf-name" }, `${s.service} · ${s.name}`);
    name.style.paddingLeft = `${depth(s) * 14}px`;
    return el("div", {
      class: "wf-row", "data-span": s.span_id, "data-parent": s.parent_id || "", "data-service": s.service,
    }, name, el("div", { class: "wf-track" }, bar), el("div", { class: "wf-ms" }, ms(s.end_ns - s.start_ns)));
  }));
  $("#waterfall").hidden = false;
}

// -- sagas --------------------------------------------------------------------------------------

let sagaStatus = "";

async function loadSagas() {
  let data;
  try { data = await getJSON(`/api/sagas?limit=100${sagaStatus ? `&status=${sagaStatus}` : ""}`); }
  catch { $("#sagas-panel").hidden = true; return; }
  for (const b of document.querySelectorAll("#saga-tabs button")) b.classList.toggle("active", b.dataset.status === sagaStatus);
  $("#sagas tbody").replaceChildren(...data.sagas.map((s) => {
    const actions = el("td");
    if (s.status === "NEEDS_ATTENTION") {
      actions.append(el("button", { class: "resume", onclick: (e) => { e.stopPropagation(); resume(s.id); } }, "Resume"));
    }
    return el("tr", { class: "clickable", "data-saga": s.id, onclick: () => showSteps(s) },
      el("td", {}, el("code", {}, s.id)), el("td", {}, s.saga), el("td", {}, badge(s.status)),
      el("td", {}, s.step), el("td", {}, clock(s.updated_at)), el("td", { class: "err" }, s.error || ""), actions);
  }));
}

function showSteps(saga) {
  $("#saga-steps-id").textContent = saga.id;
  $("#saga-timeline").replaceChildren(...saga.steps.map((st) => el("li", {},
    el("b", {}, st.step), " ", badge(st.state),
    st.started_at ? ` started ${clock(st.started_at)}` : "",
    st.finished_at ? `, finished ${clock(st.finished_at)}` : "",
    st.compensated_at ? `, undone ${clock(st.compensated_at)}` : "",
    st.attempts > 1 ? ` · ${st.attempts} attempts` : "",
    st.error ? el("span", { class: "err" }, ` · ${st.error}`) : "")));
  $("#saga-steps").hidden = false;
}

async function resume(id) {
  if (!confirm(`Resume saga ${id}? Its current step runs again.`)) return;
  try { await post(`/api/sagas/${encodeURIComponent(id)}/resume`); }
  catch (e) { alert(`Could not resume ${id}: ${e.message}`); }
  await loadSagas();
}

// -- queues -------------------------------------------------------------------------------------

let dlqOpen = null;

// one line per consumer group: "payment: 12 waiting, oldest 3.4 s"
function lagLines(groups) {
  if (!groups.length) return ["-"];
  return groups.map((g) => el("div", { "data-group": g.group, class: g.pending ? "warn" : "" },
    `${g.group}: ${g.pending} waiting` + (g.oldest_age == null ? "" : `, oldest ${g.oldest_age.toFixed(1)} s`)));
}

async function loadQueues() {
  const data = await getJSON("/api/queues");
  let letters = 0;
  const rows = [];
  for (const b of data.brokers) {
    if (b.error) rows.push(el("tr", {}, el("td", {}, b.broker), el("td", { class: "err", colspan: 4 }, b.error)));
    for (const t of b.topics) {
      letters += t.dlq;
      rows.push(el("tr", { "data-topic": t.topic },
        el("td", {}, b.broker), el("td", {}, t.topic),
        el("td", { class: "lag" }, ...lagLines(t.groups || [])),
        el("td", { class: t.dlq ? "err" : "" }, t.dlq),
        el("td", {}, t.dlq ? el("button", { class: "open-dlq", onclick: () => openDlq(b.index, t.topic) }, "Open") : "")));
    }
  }
  $("#queues tbody").replaceChildren(...rows);
  $("#count-dlq").textContent = letters;
  if (!data.brokers.length) $("#queues-panel").hidden = true;
}

async function openDlq(broker, topic, keepResult = false) {
  dlqOpen = { broker, topic };
  const data = await getJSON(`/api/dlq/${encodeURIComponent(topic)}?broker=${broker}`);
  $("#dlq-topic").textContent = topic;
  if (!keepResult) $("#dlq-result").textContent = "";
  $("#letters tbody").replaceChildren(...data.letters.map((l) => el("tr", { "data-letter": l.id },
    el("td", {}, el("code", {}, l.id)), el("td", {}, l.group || ""), el("td", {}, l.attempts),
    el("td", {}, l.error_type || ""), el("td", {}, l.reason), el("td", {}, clock(l.dead_at)))));
  $("#dlq").hidden = false;
}

async function dlqAction(action) {
  if (!dlqOpen) return;
  const { broker, topic } = dlqOpen;
  const question = action === "replay"
    ? `Re-publish every dead letter of ${topic} to ${topic}?`
    : `Delete every dead letter of ${topic}? This cannot be undone.`;
  if (!confirm(question)) return;
  try {
    const data = await post(`/api/dlq/${encodeURIComponent(topic)}/${action}?broker=${broker}`);
    $("#dlq-result").textContent = action === "replay" ? `replayed ${data.replayed}` : `purged ${data.purged}`;
  } catch (e) {
    $("#dlq-result").textContent = `failed: ${e.message}`;
  }
  await loadQueues();
  await openDlq(broker, topic, true);
}

// -- wiring -------------------------------------------------------------------------------------

$("#trace-filters").addEventListener("submit", (e) => { e.preventDefault(); traceOffset = 0; loadTraces(); });
$("#traces-prev").addEventListener("click", () => { traceOffset = Math.max(0, traceOffset - PAGE); loadTraces(); });
$("#traces-next").addEventListener("click", () => { traceOffset += PAGE; loadTraces(); });
$("#trace-rows").addEventListener("click", (e) => {
  const row = e.target.closest("tr[data-trace]");
  if (row) showTrace(row.dataset.trace);
});
for (const b of document.querySelectorAll("#saga-tabs button")) {
  b.addEventListener("click", () => { sagaStatus = b.dataset.status; loadSagas(); });
}
$("#dlq-replay").addEventListener("click", () => dlqAction("replay"));
$("#dlq-purge").addEventListener("click", () => dlqAction("purge"));

// the first page of traces first (it usually came with the page, its start times in UTC: they
// are shown in the browser's time zone here): the overview stream and the other lists follow it,
// once the page has painted it and is idle (within half a second)
const served = $("#trace-rows").dataset.first;
if (served !== undefined) {
  for (const td of document.querySelectorAll("#trace-rows td[data-ns]")) td.textContent = fromNs(Number(td.dataset.ns));
  pager(Number(served));
}
const rest = () => { connect(); loadSagas(); loadQueues(); };
if (served === undefined) loadTraces().finally(rest);
else if (window.requestIdleCallback) requestIdleCallback(rest, { timeout: 500 });
else setTimeout(rest, 0);
// the lists refresh themselves while they show the newest page: older pages hold still
setInterval(() => { loadSagas(); loadQueues(); if (traceOffset === 0) loadTraces(); }, 5000);
