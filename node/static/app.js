// The lanmesh dashboard: one page per view, fed by /api/ and kept live by /api/events.
"use strict";

const STATES = ["queued", "processing", "done", "error", "killed"];
const main = document.getElementById("main");
let view = null;          // the current view: {render(), onEvent(ev)}
let lastEvent = null;     // the newest server-sent event
let jobsVersion = -1;
let filesVersion = -1;

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
    counts);

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
  return {refresh, onEvent: (ev) => draw(ev.nodes, ev.counts), onJobs: () => {}};
}

function jobsView() {
  const params = new URLSearchParams(location.search);
  const state = {
    status: params.get("status") || "", label: params.get("label") || "",
    client: params.get("client") || "", page: Math.max(0, parseInt(params.get("page") || "0", 10) || 0),
  };
  const limit = 50;
  const statusSel = h("select", {name: "status", id: "f-status"},
    h("option", {value: ""}, "all"), ...STATES.map((s) => h("option", {value: s}, s)));
  statusSel.value = state.status;
  const label = h("input", {name: "label", id: "f-label", placeholder: "any", value: state.label});
  const client = h("input", {name: "client", id: "f-client", placeholder: "any", value: state.client});
  const tbody = h("tbody");
  const info = h("span", {id: "page-info"});
  const missing = h("p", {id: "missing", class: "problem", hidden: true});
  const prev = h("button", {id: "prev", onclick: () => { state.page--; changed(); }}, "← Newer");
  const next = h("button", {id: "next", onclick: () => { state.page++; changed(); }}, "Older →");
  main.replaceChildren(
    h("h1", {}, "Jobs"),
    h("form", {class: "filters", onsubmit: (e) => e.preventDefault()},
      h("label", {}, "Status", statusSel), h("label", {}, "Label", label),
      h("label", {}, "Client", client)),
    missing,
    h("table", {id: "jobs"},
      h("thead", {}, h("tr", {},
        h("th", {}, "Job"), h("th", {}, "Status"), h("th", {}, "Node"), h("th", {}, "Function"), h("th", {}, "Label"),
        h("th", {}, "Client"), h("th", {}, "Submitted"), h("th", {class: "num"}, "Run time"),
        h("th", {class: "num"}, "CPU"), h("th", {class: "num"}, "Attempts"), h("th", {}, ""))),
      tbody),
    h("div", {class: "pager"}, prev, info, next),
    h("p", {class: "note"}, "The mesh's jobs as this node sees it (its own and those of the peers it is connected to), newest first."));

  let timer = null;
  const typed = () => { clearTimeout(timer); timer = setTimeout(() => { state.page = 0; changed(); }, 250); };
  label.addEventListener("input", typed);
  client.addEventListener("input", typed);
  statusSel.addEventListener("change", () => { state.page = 0; changed(); });

  function query() {
    const q = new URLSearchParams();
    for (const k of ["status", "label", "client"]) if (state[k]) q.set(k, state[k]);
    return q;
  }
  function changed() {
    state.status = statusSel.value; state.label = label.value.trim(); state.client = client.value.trim();
    const q = query();
    if (state.page) q.set("page", state.page);
    history.replaceState(null, "", "/jobs" + (q.toString() ? "?" + q : ""));
    refresh();
  }
  const refresh = refresher(async () => {
    const q = query();
    q.set("offset", state.page * limit);
    q.set("limit", limit);
    const data = await api("/api/jobs?" + q);
    if (data.total && state.page * limit >= data.total) {  // the page emptied: go back
      state.page = Math.max(0, Math.ceil(data.total / limit) - 1);
      return changed();
    }
    tbody.replaceChildren(...data.jobs.map((j) => h("tr", {"data-jid": j.jid, "data-status": j.status},
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
      h("td", {}, killButton(j)))));
    if (!data.jobs.length) {
      tbody.append(h("tr", {}, h("td", {colspan: 11, class: "empty-state"},
        data.total ? "" : "No jobs" + (query().toString() ? " match these filters." : " in the mesh yet."))));
    }
    const gone = data.missing || [];
    missing.hidden = !gone.length;
    missing.textContent = gone.length ? "No answer from " + gone.join(", ") + ": their jobs are not listed." : "";
    const first = data.total ? data.offset + 1 : 0;
    info.textContent = first.toLocaleString() + "–" + (data.offset + data.jobs.length).toLocaleString() +
      " of " + data.total.toLocaleString();
    prev.disabled = state.page === 0;
    next.disabled = data.offset + data.jobs.length >= data.total;
  });
  refresh();
  return {refresh, onEvent: () => {}, onJobs: refresh};
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
    fill(head, h("span", {class: "mono"}, j.jid), h("span", {id: "job-status"}, badge(j.status)), killButton(j));
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
        field("Attempts", j.attempts),
        field("Cores", j.cores),
        field("Max runtime", j.max_runtime ? fmtSeconds(j.max_runtime) : ""))),
      h("h2", {}, "stdout"), pre("stdout", j.stdout, "(nothing printed)"),
      h("h2", {}, "stderr"), pre("stderr", j.stderr, "(nothing printed)"),
      err ? [h("h2", {}, "Error"), h("p", {id: "error"}, h("strong", {}, err.type), ": ", err.message),
             pre("traceback", err.traceback, "(no traceback)")] : null);
  });
  refresh();
  return {refresh, onEvent: () => {}, onJobs: refresh};
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
        h("th", {}, "Stored"), h("th", {}, "Held by"))),
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
      h("td", {class: "holders"}, f.holders.length ? f.holders.join(", ") : h("span", {class: "muted"}, "no live node")))));
    if (!data.files.length) {
      tbody.append(h("tr", {}, h("td", {colspan: 5, class: "empty-state", id: "files-empty"},
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
