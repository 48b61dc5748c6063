// The lanmesh dashboard: one page per view, fed by /api/ and kept live by /api/events.
"use strict";

const STATES = ["queued", "processing", "done", "error", "killed"];
const main = document.getElementById("main");
let view = null;          // the current view: {render(), onEvent(ev)}
let lastEvent = null;     // the newest server-sent event
let jobsVersion = -1;
let filesVersion = -1;
let lastSeries = null;    // the newest per-node series (jobs finished, workers busy)

// ---- small helpers ----

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;  // CSSOM: allowed by the page's CSP
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

async function api(path, options) {
  const resp = await fetch(path, options);
  if (resp.status === 401) { location.href = "/login"; throw new Error("login needed"); }
  const data = await resp.json();
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

// Replace an element's children; arrays are flattened, null and false left out.
function fill(el, ...children) {
  el.replaceChildren(...children.flat(2).filter((c) => c !== null && c !== undefined && c !== false));
}

function badge(status) { return h("span", {class: "badge s-" + status}, status); }

function fmtTime(t) {
  if (!t) return "";
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], {hour12: false});
  return today ? time : d.toLocaleDateString() + " " + time;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 120) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m < 120 ? m + " min " + Math.round(s % 60) + " s" : (s / 3600).toFixed(1) + " h";
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}

function duration(job) {
  if (!job.started) return "";
  const end = job.finished || Date.now() / 1000;
  return fmtSeconds(Math.max(0, end - job.started));
}

// A job's record lives on a node: links name it by id (names are for people, ids unique).
function onNode(nodeId) { return nodeId ? "?node=" + encodeURIComponent(nodeId) : ""; }

async function kill(jid, button, nodeId) {
  if (button) { button.disabled = true; button.textContent = "killing…"; }
  try {
    await api("/api/jobs/" + encodeURIComponent(jid) + "/kill" + onNode(nodeId),
              {method: "POST", headers: {"X-Mesh": "1"}});
  } catch (err) {
    alert("kill " + jid + ": " + err.message);
  }
  if (view) view.refresh();
}

function killButton(job) {
  if (job.status !== "queued" && job.status !== "processing") return null;
  return h("button", {class: "kill", "data-jid": job.jid, title: "kill this job",
                      onclick: (e) => { e.preventDefault(); kill(job.jid, e.target, job.node_id); }}, "Kill");
}

// Run a failed or killed job again (on the node that kept its arguments) as a new job,
// and open the new job's page.
async function retry(jid, button, nodeId) {
  if (button) { button.disabled = true; button.textContent = "retrying…"; }
  let out;
  try {
    out = await api("/api/jobs/" + encodeURIComponent(jid) + "/retry" + onNode(nodeId),
                    {method: "POST", headers: {"X-Mesh": "1"}});
  } catch (err) {
    alert("retry " + jid + ": " + err.message);
    if (view) view.refresh();
    return;
  }
  history.pushState(null, "", "/job/" + encodeURIComponent(out.jid) + onNode(out.node_id));
  route();
}

function retryButton(job) {
  if (job.status !== "error" && job.status !== "killed") return null;
  if (job.retry_refused) return h("span", {id: "retry-absent", class: "muted"}, "no retry: " + job.retry_refused);
  return h("button", {class: "retry", id: "retry", title: "run this job again as a new job",
                      onclick: (e) => { e.preventDefault(); retry(job.jid, e.target, job.node_id); }}, "Retry");
}

function attemptsTable(j) {
  const list = j.attempts_by_node || [];
  if (!list.length) return null;
  const rows = list.map((a) => h("tr", {},
    h("td", {}, a.node), h("td", {}, badge(a.status)), h("td", {}, fmtTime(a.started)),
    h("td", {}, fmtTime(a.finished)), h("td", {}, a.runs), h("td", {}, a.error || "")));
  const missing = (j.attempts_missing || []).length
    ? h("p", {class: "muted"}, "no answer from " + j.attempts_missing.join(", ")) : null;
  return [h("h2", {}, "Attempts"),
          h("table", {id: "attempts"}, h("thead", {}, h("tr", {},
            ...["Node", "Status", "Started", "Ended", "Runs", "Error"].map((t) => h("th", {}, t)))),
            h("tbody", {}, rows)), missing];
}

// Refetch at most once at a time; a change during a fetch fetches again after it.
function refresher(load) {
  let busy = false, again = false;
  const run = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try { await load(); } catch (err) { console.error(err); }
    busy = false;
    if (again) { again = false; run(); }
  };
  return run;
}

// ---- views ----

function meshView() {
  const summary = h("div", {class: "summary"});
  const tbody = h("tbody");
  const counts = h("div", {class: "summary"});
  main.replaceChildren(
    h("h1", {}, "Mesh"),
    summary,
    h("table", {id: "nodes"},
      h("thead", {}, h("tr", {},
        h("th", {}, "Node"), h("th", {}, "Address"), h("th", {class: "num"}, "Workers"),
        h("th", {class: "num"}, "Running"), h("th", {class: "num"}, "Queued"),
        h("th", {}, "Load"), h("th", {class: "num"}, "Files held"), h("th", {}, "Last heartbeat"))),
      tbody),
    h("p", {class: "note"}, "Files held: the blobs of the mesh file store on each node's disk, as this node's catalog knows them."),
    h("h2", {}, "Jobs held by this node"),
    counts,
    h("div", {class: "charts"},
      h("div", {class: "card chart-card"}, h("h2", {}, "Jobs finished per second"),
        h("div", {id: "chart-throughput"}, h("p", {class: "muted"}, "waiting for the first figures…"))),
      h("div", {class: "card chart-card"}, h("h2", {}, "Workers busy"),
        h("div", {id: "chart-busy"}, h("p", {class: "muted"}, "waiting for the first figures…")))),
    h("p", {class: "note"}, "The last five minutes, a point a second: each node's line, and the whole mesh's (total)."));

  function draw(nodes, jobCounts) {
    const live = nodes.filter((n) => n.connected);
    const sum = (k) => live.reduce((a, n) => a + (n[k] || 0), 0);
    summary.replaceChildren(
      card(live.length, "nodes"), card(sum("workers"), "workers"),
      card(sum("running"), "running"), card(sum("queued"), "queued"));
    tbody.replaceChildren(...nodes.map((n) => h("tr", {"data-node": n.name, "data-node-id": n.node_id},
      h("td", {}, n.self ? h("strong", {}, n.name) : n.name, n.self ? h("span", {class: "muted"}, " (this node)") : null),
      h("td", {class: "mono"}, n.address),
      h("td", {class: "num"}, n.workers),
      h("td", {class: "num"}, n.running),
      h("td", {class: "num"}, n.queued),
      h("td", {}, n.load === null ? "" : [
        h("span", {class: "loadbar"}, h("span", {style: "width:" + Math.min(100, n.load * 100) + "%"})),
        Math.round(n.load * 100) + " %"]),
      h("td", {class: "num files-held"}, n.files === null ? h("span", {class: "muted"}, "—")
        : [n.files.toLocaleString(), h("span", {class: "muted"}, " · " + fmtBytes(n.files_bytes))]),
      h("td", {}, n.self ? "this node" : !n.connected ? badge("off") :
        n.heartbeat_s === null ? "" : fmtSeconds(n.heartbeat_s) + " ago"))));
    if (jobCounts) {
      counts.replaceChildren(...STATES.map((s) =>
        h("a", {href: "/jobs?status=" + s, "data-link": true, class: "card", style: "text-decoration:none"},
          h("div", {class: "big"}, jobCounts[s] || 0), badge(s))));
    }
  }
  function card(n, what) { return h("div", {class: "card"}, h("div", {class: "big"}, n), h("div", {class: "muted"}, what)); }

  const refresh = refresher(async () => {
    const data = await api("/api/nodes");
    draw(data.nodes, lastEvent && lastEvent.counts);
  });
  if (lastEvent) draw(lastEvent.nodes, lastEvent.counts); else refresh();
  const charts = () => drawSeries(lastSeries);
  if (lastSeries) charts(); else api("/api/stats").then((data) => { lastSeries = lastSeries || data; charts(); }, console.error);
  return {refresh, onEvent: (ev) => { draw(ev.nodes, ev.counts); if (ev.series) charts(); }, onJobs: () => {}};
}

// The mesh page's two charts from /api/stats (or an event's "series").
function drawSeries(data) {
  const now = data.t;
  const names = Object.keys(data.nodes).sort();
  const lines = (k) => names.map((name) => {
    const s = data.nodes[name];
    return {name, points: s[k].map((v, i) => [s.start_s + i * s.step_s - now, v])};
  });
  const total = (series) => {
    const sum = new Map();
    for (const s of series) for (const [x, y] of s.points) {
      const k = Math.round(x);
      sum.set(k, (sum.get(k) || 0) + y);
    }
    return {name: "total", total: true, color: "#1d2430", points: [...sum.entries()].sort((a, b) => a[0] - b[0])};
  };
  const ago = (x) => x >= -1 ? "now" : Math.round(-x / 60 * 10) / 10 + " min ago";
  const done = lines("finished");
  const doneAll = [total(done), ...done];  // the total underneath, nodes on top
  fill(document.getElementById("chart-throughput") || h("div"),
    lineChart(doneAll, {xmax: 0, xfmt: ago, yfmt: (y) => String(Math.round(y * 10) / 10), title: "jobs finished per second"}),
    legend(doneAll));
  const busy = lines("busy");
  const workers = names.reduce((a, n) => a + data.nodes[n].workers, 0);
  const busyAll = [total(busy), ...busy];
  fill(document.getElementById("chart-busy") || h("div"),
    lineChart(busyAll, {xmax: 0, xfmt: ago, ymax: 1, yfmt: (y) => String(Math.round(y * 10) / 10), title: "workers busy"}),
    legend(busyAll), h("p", {class: "muted"}, workers + " workers in all"));
}

function jobRow(j, cls) {
  return h("tr", {"data-jid": j.jid, "data-status": j.status, class: cls || null},
    h("td", {class: "mono"}, h("a", {href: "/job/" + encodeURIComponent(j.jid) + onNode(j.node_id), "data-link": true}, j.jid)),
    h("td", {class: "status"}, badge(j.status)),
    h("td", {class: "node", "data-node-id": j.node_id, title: "node id " + j.node_id}, j.node),
    h("td", {class: "mono"}, j.function),
    h("td", {}, j.label),
    h("td", {}, j.client),
    h("td", {}, fmtTime(j.submitted)),
    h("td", {class: "num"}, duration(j)),
    h("td", {class: "num"}, j.finished ? fmtSeconds(j.cpu_s) : ""),
    h("td", {class: "num"}, j.attempts),
    h("td", {}, killButton(j)));
}

// The table of job rows (jobRow) that the Jobs and map pages share.
function jobsTable(tbody) {
  return h("table", {id: "jobs"},
    h("thead", {}, h("tr", {},
      h("th", {}, "Job"), h("th", {}, "Status"), h("th", {}, "Node"), h("th", {}, "Function"), h("th", {}, "Label"),
      h("th", {}, "Client"), h("th", {}, "Submitted"), h("th", {class: "num"}, "Run time"),
      h("th", {class: "num"}, "CPU"), h("th", {class: "num"}, "Attempts"), h("th", {}, ""))),
    tbody);
}

function mapLink(key) { return "/map?key=" + encodeURIComponent(key); }

function progressBar(m) {
  const c = m.counts, n = m.jobs || 1;
  const part = (k) => h("span", {class: "p-" + k, style: "width:" + (100 * c[k] / n).toFixed(2) + "%"});
  return h("span", {class: "progress", title: Math.round(m.progress * 100) + " % finished"},
    part("done"), part("error"), part("killed"), part("processing"));
}

function mapStatus(m) {
  const c = m.counts;
  return c.processing ? "processing" : c.queued ? "queued" : c.error ? "error" : c.killed ? "killed" : "done";
}

function countsCell(m) {
  return STATES.filter((s) => m.counts[s]).map((s) =>
    h("span", {class: "count", "data-state": s}, badge(s), " " + m.counts[s].toLocaleString()));
}

function rateText(m) {
  const rate = m.rate_per_s === null ? "" : (m.rate_per_s >= 10 ? Math.round(m.rate_per_s) : m.rate_per_s.toFixed(2)) + " jobs/s";
  const eta = m.eta_s === null ? "" : m.eta_s === 0 ? "" : " · ETA " + fmtSeconds(m.eta_s);
  return rate + eta;
}

async function killMap(key, button) {
  if (button) { button.disabled = true; button.textContent = "killing…"; }
  let out = null;
  try {
    out = await api("/api/map/kill?key=" + encodeURIComponent(key), {method: "POST", headers: {"X-Mesh": "1"}});
  } catch (err) {
    alert("kill map: " + err.message);
  }
  if (button) { button.disabled = false; button.textContent = "Kill map"; }  // the map page keeps it
  if (view) view.refresh();
  return out;
}

function mapRow(m, expand) {
  const pending = m.counts.queued + m.counts.processing;
  const toggle = h("button", {class: "expand", title: "show its jobs", "aria-expanded": "false"}, "▸");
  const row = h("tr", {class: "map", "data-map": m.key, "data-status": mapStatus(m), "data-jobs": m.jobs},
    h("td", {class: "mono"}, toggle, " ", h("a", {href: mapLink(m.key), "data-link": true, class: "map-link"},
      m.first_jid + (m.jobs > 1 ? " … " + m.last_jid : ""))),
    h("td", {class: "status"}, h("span", {class: "badge s-map"}, "map × " + m.jobs.toLocaleString())),
    h("td", {class: "node"}, m.nodes.join(", ")),
    h("td", {class: "mono"}, m.function),
    h("td", {}, m.label),
    h("td", {}, m.client),
    h("td", {}, fmtTime(m.submitted)),
    h("td", {colspan: 3, class: "map-progress"}, progressBar(m), " ", countsCell(m),
      h("div", {class: "muted rate"}, rateText(m))),
    h("td", {}, pending ? h("button", {class: "kill kill-map", "data-map": m.key, title: "kill every job of this map",
      onclick: (e) => { e.preventDefault(); killMap(m.key, e.target); }}, "Kill map") : null));
  toggle.addEventListener("click", (e) => { e.preventDefault(); expand(m, row, toggle); });
  return row;
}

function jobsView() {
  const params = new URLSearchParams(location.search);
  const state = {
    status: params.get("status") || "", label: params.get("label") || "",
    client: params.get("client") || "", function: params.get("function") || "", node: params.get("node") || "",
    group: params.get("group") !== "0",
    page: Math.max(0, parseInt(params.get("page") || "0", 10) || 0),
  };
  const limit = 50;
  const expanded = new Set();
  const statusSel = h("select", {name: "status", id: "f-status"},
    h("option", {value: ""}, "all"), ...STATES.map((s) => h("option", {value: s}, s)));
  statusSel.value = state.status;
  const label = h("input", {name: "label", id: "f-label", placeholder: "any", value: state.label});
  const client = h("input", {name: "client", id: "f-client", placeholder: "any", value: state.client});
  const func = h("input", {name: "function", id: "f-function", placeholder: "any", value: state.function});
  const node = h("input", {name: "node", id: "f-node", placeholder: "any", value: state.node});
  const group = h("input", {type: "checkbox", id: "f-group", checked: state.group});
  const tbody = h("tbody");
  const info = h("span", {id: "page-info"});
  const missing = h("p", {id: "missing", class: "problem", hidden: true});
  const prev = h("button", {id: "prev", onclick: () => { state.page--; changed(); }}, "← Newer");
  const next = h("button", {id: "next", onclick: () => { state.page++; changed(); }}, "Older →");
  main.replaceChildren(
    h("h1", {}, "Jobs"),
    h("form", {class: "filters", onsubmit: (e) => e.preventDefault()},
      h("label", {}, "Status", statusSel), h("label", {}, "Label", label),
      h("label", {}, "Function", func), h("label", {}, "Client", client), h("label", {}, "Node", node),
      h("label", {class: "check"}, h("span", {}, group, " maps as one row"))),
    missing,
    jobsTable(tbody),
    h("div", {class: "pager"}, prev, info, next),
    h("p", {class: "note"}, "The whole mesh's jobs (this node asks each peer for its newest matches and merges them), newest first. " +
      "A map is one row: the jobs of one client running one function under one label."));

  let timer = null;
  const typed = () => { clearTimeout(timer); timer = setTimeout(() => { state.page = 0; changed(); }, 250); };
  for (const input of [label, client, func, node]) input.addEventListener("input", typed);
  statusSel.addEventListener("change", () => { state.page = 0; changed(); });
  group.addEventListener("change", () => { state.page = 0; changed(); });

  function query() {
    const q = new URLSearchParams();
    for (const k of ["status", "label", "client", "function", "node"]) if (state[k]) q.set(k, state[k]);
    return q;
  }
  function changed() {
    state.status = statusSel.value; state.label = label.value.trim(); state.client = client.value.trim();
    state.function = func.value.trim(); state.node = node.value.trim(); state.group = group.checked;
    const q = query();
    if (!state.group) q.set("group", "0");
    if (state.page) q.set("page", state.page);
    history.replaceState(null, "", "/jobs" + (q.toString() ? "?" + q : ""));
    refresh();
  }
  // A map's newest jobs, as rows to show below its row.
  async function subRows(m) {
    const q = query();
    q.set("map", m.key); q.set("limit", 20);
    const data = await api("/api/jobs?" + q);
    const rows = data.jobs.map((j) => jobRow(j, "sub"));
    if (data.total > data.jobs.length) {
      rows.push(h("tr", {class: "sub"}, h("td", {colspan: 11, class: "muted"},
        "the newest " + data.jobs.length + " of " + data.total.toLocaleString() + ": ",
        h("a", {href: mapLink(m.key), "data-link": true}, "all of them on the map's page"))));
    }
    return rows;
  }
  function opened(toggle, open) {
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    toggle.textContent = open ? "▾" : "▸";
  }
  async function expand(m, row, toggle) {
    let sib = row.nextElementSibling;
    while (sib && sib.classList.contains("sub")) { const n = sib.nextElementSibling; sib.remove(); sib = n; }
    if (expanded.has(m.key)) { expanded.delete(m.key); opened(toggle, false); return; }
    expanded.add(m.key);
    opened(toggle, true);
    row.after(...await subRows(m));
  }
  const refresh = refresher(async () => {
    const q = query();
    q.set("offset", state.page * limit);
    q.set("limit", limit);
    if (state.group) q.set("group", "1");
    const data = await api("/api/jobs?" + q);
    if (data.total && state.page * limit >= data.total) {  // the page emptied: go back
      state.page = Math.max(0, Math.ceil(data.total / limit) - 1);
      return changed();
    }
    const rows = [];
    for (const j of data.jobs) {
      if (j.kind !== "map") { rows.push(jobRow(j)); continue; }
      const row = mapRow(j, expand);
      rows.push(row);
      if (expanded.has(j.key)) {  // opened before: stays open, its rows fetched first
        opened(row.querySelector("button.expand"), true);
        rows.push(...await subRows(j));
      }
    }
    tbody.replaceChildren(...rows);  // at once: no moment without the open maps' rows
    if (!data.jobs.length) {
      tbody.append(h("tr", {}, h("td", {colspan: 11, class: "empty-state"},
        data.total ? "" : "No jobs" + (query().toString() ? " match these filters." : " in the mesh yet."))));
    }
    const gone = data.missing || [];
    missing.hidden = !gone.length;
    missing.textContent = gone.length ? "No answer from " + gone.join(", ") + ": their jobs are not listed." : "";
    const first = data.total ? data.offset + 1 : 0;
    info.textContent = first.toLocaleString() + "–" + (data.offset + data.jobs.length).toLocaleString() +
      " of " + data.total.toLocaleString() + (state.group ? " rows" : "");
    prev.disabled = state.page === 0;
    next.disabled = data.offset + data.jobs.length >= data.total;
  });
  refresh();
  return {refresh, onEvent: () => {}, onJobs: refresh};
}

function mapView(key) {
  const head = h("h1", {}, "Map");
  const killMapButton = h("button", {class: "kill", id: "kill-map", hidden: true,
                                     onclick: (e) => { e.preventDefault(); killMap(key, e.target); }}, "Kill map");
  const body = h("div", {});
  const progress = h("div", {id: "chart-progress"});
  const runtimes = h("div", {id: "chart-runtimes"});
  const tbody = h("tbody");
  const info = h("span", {id: "page-info"});
  main.replaceChildren(head, body,
    h("div", {class: "charts"},
      h("div", {class: "card chart-card"}, h("h2", {}, "Progress"), progress),
      h("div", {class: "card chart-card"}, h("h2", {}, "Run times"), runtimes)),
    h("h2", {}, "Its jobs, newest first"),
    jobsTable(tbody),
    h("div", {class: "pager"}, info));
  let poll = null;
  const refresh = refresher(async () => {
    let m;
    try {
      m = await api("/api/map?key=" + encodeURIComponent(key));
    } catch (err) {
      body.replaceChildren(h("p", {class: "empty-state"}, err.message));
      return;
    }
    const pending = m.counts.queued + m.counts.processing;
    // The head is built once and updated in place: a button replaced every second
    // would slip from under the pointer.
    if (!head.dataset.built) {
      head.dataset.built = "1";
      fill(head, h("span", {class: "mono", id: "map-function"}), h("span", {class: "muted", id: "map-size"}),
        h("span", {id: "map-status"}), killMapButton);
    }
    head.querySelector("#map-function").textContent = m.function;
    head.querySelector("#map-size").textContent = " × " + m.jobs.toLocaleString();
    const status = mapStatus(m);
    const shown = head.querySelector("#map-status");
    if (shown.dataset.status !== status) { shown.dataset.status = status; fill(shown, badge(status)); }
    killMapButton.hidden = !pending;
    fill(body,
      h("div", {class: "summary", id: "map-counts"}, ...STATES.map((s) =>
        h("div", {class: "card", "data-state": s}, h("div", {class: "big"}, m.counts[s].toLocaleString()), badge(s)))),
      h("div", {class: "card map-card"}, progressBar(m), h("dl", {class: "fields"},
        h("dt", {}, "Jobs"), h("dd", {}, m.first_jid + " … " + m.last_jid),
        h("dt", {}, "Client"), h("dd", {}, m.client || "—"),
        h("dt", {}, "Label"), h("dd", {}, m.label || "—"),
        h("dt", {}, "Nodes"), h("dd", {}, m.nodes.join(", ")),
        h("dt", {}, "Rate"), h("dd", {id: "map-rate"}, rateText(m) || "—"),
        h("dt", {}, "Mean run time"), h("dd", {}, m.mean_run_s === null ? "—" : fmtSeconds(m.mean_run_s)))),
      m.missing.length ? h("p", {class: "problem"}, "No answer from " + m.missing.join(", ") + ": their jobs are not counted.") : null);
    const t0 = m.started || (m.curve.length ? m.curve[0][0] : 0);
    const curve = m.curve.length ? [[0, 0], ...m.curve.map(([t, n]) => [t - t0, n])] : [];
    fill(progress, lineChart([{name: "finished", points: curve}],
      {ymax: m.jobs, xfmt: (x) => fmtSeconds(x), yfmt: (y) => String(Math.round(y)), title: "jobs finished over time"}),
      h("p", {class: "muted"}, "jobs finished since the map's first start, of " + m.jobs.toLocaleString()));
    fill(runtimes, barChart(m.runtimes.edges, m.runtimes.counts, {xfmt: (x) => fmtSeconds(x), title: "run time distribution"}),
      h("p", {class: "muted"}, m.runtimes.counts.length ? "finished jobs by run time (a straggler is a lone bar on the right)" +
        (m.sampled ? "; the newest 20,000 per node" : "") : "no job finished yet"));
    const data = await api("/api/jobs?limit=50&map=" + encodeURIComponent(key));
    tbody.replaceChildren(...data.jobs.map((j) => jobRow(j)));
    info.textContent = "the newest " + data.jobs.length + " of " + data.total.toLocaleString();
    clearTimeout(poll);
    if (pending) poll = setTimeout(() => { if (view && view.key === key) refresh(); }, 1000);
  });
  refresh();
  return {key, refresh, onEvent: () => {}, onJobs: refresh};
}

function jobView(jid) {
  const head = h("h1", {}, h("span", {class: "mono"}, jid));
  const body = h("div", {});
  main.replaceChildren(head, body);
  const refresh = refresher(async () => {
    let j;
    try {
      j = await api("/api/jobs/" + encodeURIComponent(jid) + onNode(new URLSearchParams(location.search).get("node")));
    } catch (err) {
      body.replaceChildren(h("p", {class: "empty-state"}, err.message));
      return;
    }
    if (head.dataset.status !== j.status) {  // rebuilt on a change only: its button stays put
      head.dataset.status = j.status;
      fill(head, h("span", {class: "mono"}, j.jid), h("span", {id: "job-status"}, badge(j.status)), killButton(j), retryButton(j));
    }
    const args = j.args_preview === null ? h("span", {class: "muted"}, "not kept: a node frees a job's arguments when it finishes")
      : h("code", {id: "args"}, j.args_preview.startsWith("(")
        ? j.function.split(".").pop() + j.args_preview.replace(/,\)$/, ")") : j.args_preview);
    const field = (k, v) => [h("dt", {}, k), h("dd", {}, v === "" || v === null ? h("span", {class: "muted"}, "—") : v)];
    const pre = (id, text, empty) => text ? h("pre", {id}, text) : h("pre", {id, class: "empty"}, empty);
    const err = j.error;
    fill(body,
      h("div", {class: "card"}, h("dl", {class: "fields"},
        field("Function", h("code", {}, j.function)),
        field("Arguments", args),
        field("Node", j.node),
        field("Client", j.client),
        field("Label", j.label),
        field("Submitted", fmtTime(j.submitted)),
        field("Started", fmtTime(j.started)),
        field("Finished", fmtTime(j.finished)),
        field("Run time", duration(j)),
        field("CPU seconds", j.finished ? j.cpu_s.toFixed(3) : ""),
        field("Attempts", j.attempts ? j.attempts + " on " + j.node : ""),
        field("Retry of", j.retry_of ? h("a", {href: "/job/" + encodeURIComponent(j.retry_of) + onNode(j.node_id),
                                                "data-link": true, id: "retry-of"}, j.retry_of) : ""),
        field("Cores", j.cores),
        field("Max runtime", j.max_runtime ? fmtSeconds(j.max_runtime) : ""))),
      attemptsTable(j),
      h("h2", {}, "stdout" + (j.status === "processing" ? " (so far)" : "")), pre("stdout", j.stdout, "(nothing printed)"),
      h("h2", {}, "stderr"), pre("stderr", j.stderr, "(nothing printed)"),
      err ? [h("h2", {}, "Error"), h("p", {id: "error"}, h("strong", {}, err.type), ": ", err.message),
             pre("traceback", err.traceback, "(no traceback)")] : null);
    for (const id of ["stdout", "stderr"]) {  // a running job's tail: keep its end in view
      const el = document.getElementById(id);
      if (j.status === "processing" && el) el.scrollTop = el.scrollHeight;
    }
    clearTimeout(poll);  // while it runs, its output grows without a state change: ask again
    if (j.status === "processing" || j.status === "queued") {
      poll = setTimeout(() => { if (view && view.jid === jid) refresh(); }, 1000);
    }
  });
  let poll = null;
  refresh();
  return {jid, refresh, onEvent: () => {}, onJobs: refresh};
}

function filesView() {
  const params = new URLSearchParams(location.search);
  const state = {prefix: params.get("prefix") || "",
                 page: Math.max(0, parseInt(params.get("page") || "0", 10) || 0)};
  const limit = 50;
  const prefix = h("input", {name: "prefix", id: "f-prefix", placeholder: "any", value: state.prefix});
  const summary = h("span", {id: "files-summary", class: "muted"});
  const tbody = h("tbody");
  const info = h("span", {id: "files-page-info"});
  const prev = h("button", {id: "files-prev", onclick: () => { state.page--; changed(); }}, "← Previous");
  const next = h("button", {id: "files-next", onclick: () => { state.page++; changed(); }}, "Next →");
  main.replaceChildren(
    h("h1", {}, "Files", summary),
    h("form", {class: "filters", onsubmit: (e) => e.preventDefault()}, h("label", {}, "Name starts with", prefix)),
    h("table", {id: "files"},
      h("thead", {}, h("tr", {},
        h("th", {}, "Name"), h("th", {class: "num"}, "Size"), h("th", {}, "Version"),
        h("th", {}, "Stored"), h("th", {}, "Held by"), h("th", {class: "num"}, "Copies"), h("th", {}, ""))),
      tbody),
    h("div", {class: "pager"}, prev, info, next),
    h("p", {class: "note"}, "The mesh file store (mesh.files) as this node's catalog knows it: every name's current version and the live nodes holding a copy. Store files with ",
      h("code", {}, "mesh.files.put(path)"), " or ", h("code", {}, "mesh files put PATH"), "."));

  let timer = null;
  prefix.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { state.page = 0; changed(); }, 250); });
  function changed() {
    state.prefix = prefix.value;
    const q = new URLSearchParams();
    if (state.prefix) q.set("prefix", state.prefix);
    if (state.page) q.set("page", state.page);
    history.replaceState(null, "", "/files" + (q.toString() ? "?" + q : ""));
    refresh();
  }
  const refresh = refresher(async () => {
    const q = new URLSearchParams({offset: state.page * limit, limit});
    if (state.prefix) q.set("prefix", state.prefix);
    const data = await api("/api/files?" + q);
    if (data.total && state.page * limit >= data.total) {  // the page emptied: go back
      state.page = Math.max(0, Math.ceil(data.total / limit) - 1);
      return changed();
    }
    summary.textContent = data.total.toLocaleString() + (data.total === 1 ? " file, " : " files, ") + fmtBytes(data.bytes);
    tbody.replaceChildren(...data.files.map((f) => h("tr", {"data-name": f.name},
      h("td", {class: "mono wrap name"}, f.name),
      h("td", {class: "num size", title: f.size.toLocaleString() + " bytes"}, fmtBytes(f.size)),
      h("td", {class: "mono version", title: "SHA-256 " + f.hash}, f.hash.slice(0, 12)),
      h("td", {class: "time"}, fmtTime(f.time)),
      h("td", {class: "holders"}, f.holders.length ? f.holders.join(", ") : h("span", {class: "muted"}, "no live node")),
      h("td", {class: "num copies" + (f.holders.length < f.wanted ? " under" : ""),
               title: f.holders.length < f.wanted ? "fewer live copies than the " + f.wanted + " it was put with" : "as many copies as it was put with"},
        f.holders.length + " / " + f.wanted),
      h("td", {}, f.here ? h("a", {class: "download", href: "/api/files/download?name=" + encodeURIComponent(f.name), download: ""}, "Download")
        : h("span", {class: "muted", title: "this node holds no copy: download from a holder's dashboard"}, "elsewhere")))));
    if (!data.files.length) {
      tbody.append(h("tr", {}, h("td", {colspan: 7, class: "empty-state", id: "files-empty"},
        data.total ? "" : state.prefix ? "No file names start with this." : "No files in the mesh file store yet.")));
    }
    const first = data.total ? data.offset + 1 : 0;
    info.textContent = first.toLocaleString() + "–" + (data.offset + data.files.length).toLocaleString() +
      " of " + data.total.toLocaleString();
    prev.disabled = state.page === 0;
    next.disabled = data.offset + data.files.length >= data.total;
  });
  refresh();
  return {refresh, onEvent: () => {}, onJobs: () => {}, onFiles: refresh};
}

// ---- routing and live updates ----

function route() {
  const path = location.pathname;
  let nav = "mesh";
  if (path === "/jobs") { nav = "jobs"; view = jobsView(); }
  else if (path.startsWith("/job/")) { nav = "jobs"; view = jobView(decodeURIComponent(path.slice(5))); }
  else if (path === "/files") { nav = "files"; view = filesView(); }
  else if (path === "/map") { nav = "jobs"; view = mapView(new URLSearchParams(location.search).get("key") || ""); }
  else view = meshView();
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link]");
  if (!a || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  history.pushState(null, "", a.getAttribute("href"));
  route();
});
window.addEventListener("popstate", route);

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.onopen = () => { live.className = "live on"; live.title = "live updates: on"; };
  events.onerror = () => { live.className = "live off"; live.title = "live updates: reconnecting"; };
  events.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    lastEvent = ev;
    if (ev.series) lastSeries = ev.series;
    document.getElementById("node-name").textContent = "node " + ev.node;
    document.title = "lanmesh · " + ev.node;
    if (view) view.onEvent(ev);
    if (ev.jobs_version !== jobsVersion) {
      const first = jobsVersion === -1;
      jobsVersion = ev.jobs_version;
      if (!first && view) view.onJobs();
    }
    if (ev.files_version !== filesVersion) {  // the first one too: a put may precede it
      filesVersion = ev.files_version;
      if (view && view.onFiles) view.onFiles();
    }
  };
}

route();
connect();
