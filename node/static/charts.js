// Small SVG charts drawn by the page itself (no library, no CDN: the dashboard works on a
// LAN without internet). Elements are made with createElementNS, never from HTML text.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fde", "#1a7f37", "#c2410c", "#6d4c9f", "#0e7490", "#b91c1c", "#a16207", "#475569"];

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// A line chart: series [{name, points: [[x, y], ...], color?, total?}]; opts {width,
// height, xfmt, yfmt, xmin, xmax, ymax, title}. Each line is a <path class="series">
// with data-name and data-points (how many points it has), so tests can read it.
function lineChart(series, opts) {
  const W = opts.width || 560, H = opts.height || 200, L = 44, R = 10, T = 10, B = 24;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const xmin = opts.xmin !== undefined ? opts.xmin : Math.min(...xs, 0);
  const xmax = opts.xmax !== undefined ? opts.xmax : Math.max(...xs, xmin + 1);
  const ymax = niceMax(opts.ymax !== undefined ? Math.max(opts.ymax, ...ys) : Math.max(...ys, 0));
  const sx = (x) => L + (x - xmin) / Math.max(xmax - xmin, 1e-9) * (W - L - R);
  const sy = (y) => H - B - y / ymax * (H - T - B);
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                          "aria-label": opts.title || "chart", "data-ymax": ymax});
  for (const f of [0, 0.5, 1]) {
    const y = sy(f * ymax);
    root.append(svg("line", {x1: L, x2: W - R, y1: y, y2: y, class: "grid"}),
                svg("text", {x: L - 4, y: y + 4, class: "tick", "text-anchor": "end"},
                    (opts.yfmt || String)(f * ymax)));
  }
  root.append(svg("text", {x: L, y: H - 6, class: "tick"}, (opts.xfmt || String)(xmin)),
              svg("text", {x: W - R, y: H - 6, class: "tick", "text-anchor": "end"}, (opts.xfmt || String)(xmax)));
  series.forEach((s, i) => {
    const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
    root.append(svg("path", {d: d || "M0 0", class: "series" + (s.total ? " total" : ""),
                             stroke: s.color || PALETTE[i % PALETTE.length], fill: "none",
                             "data-name": s.name, "data-points": s.points.length,
                             "data-max": s.points.reduce((m, p) => Math.max(m, p[1]), 0)}));
  });
  return root;
}

// A histogram: edges (bins + 1) and counts; each bar a <rect class="bar" data-count>.
function barChart(edges, counts, opts) {
  const W = opts.width || 560, H = opts.height || 200, L = 44, R = 10, T = 10, B = 24;
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title || "histogram"});
  if (!counts.length) return root;
  const ymax = niceMax(Math.max(...counts));
  const bw = (W - L - R) / counts.length;
  for (const f of [0, 0.5, 1]) {
    const y = H - B - f * (H - T - B);
    root.append(svg("line", {x1: L, x2: W - R, y1: y, y2: y, class: "grid"}),
                svg("text", {x: L - 4, y: y + 4, class: "tick", "text-anchor": "end"}, String(f * ymax)));
  }
  counts.forEach((c, i) => {
    const h = c / ymax * (H - T - B);
    root.append(svg("rect", {x: L + i * bw + 1, y: H - B - h, width: Math.max(bw - 2, 1), height: h,
                             class: "bar", "data-count": c},
                    svg("title", {}, `${(opts.xfmt || String)(edges[i])}–${(opts.xfmt || String)(edges[i + 1])}: ${c} jobs`)));
  });
  root.append(svg("text", {x: L, y: H - 6, class: "tick"}, (opts.xfmt || String)(edges[0])),
              svg("text", {x: W - R, y: H - 6, class: "tick", "text-anchor": "end"}, (opts.xfmt || String)(edges[edges.length - 1])));
  return root;
}

function legend(series) {
  const el = document.createElement("div");
  el.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.background = s.color || PALETTE[i % PALETTE.length];  // CSSOM: allowed by the CSP
    item.append(dot, s.name);
    el.append(item);
  });
  return el;
}
