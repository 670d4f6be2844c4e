// Hand-rolled SVG line charts for the dashboard (no library, no CDN).
// LoradCharts.line(container, options) draws series of [x, y] points with
// axes, ticks and a legend; LoradCharts.smooth is the loss smoothing of
// `loractl plot` and the sweep table (core/planner/loss_stats.cc: an EMA with
// TensorBoard's debiasing, non-finite values skipped), so the curves drawn
// here match the numbers the daemon reports.
"use strict";

const LoradCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3056d3", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#2e86ab", "#c0392b", "#27ae60",
                   "#d35400", "#7f8c8d"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function smooth(points, s) {
    const w = Math.min(Math.max(s, 0), 0.999);
    if (w === 0) return points.slice();
    const out = [];
    let ema = 0;
    let n = 0;
    for (const [x, y] of points) {
      if (!Number.isFinite(y)) continue;
      ema = w * ema + (1 - w) * y;
      n += 1;
      out.push([x, ema / (1 - Math.pow(w, n))]);
    }
    return out;
  }

  // "Nice" tick values covering [lo, hi].
  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }

  function label(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
    return String(Number(v.toPrecision(3)));
  }

  // options: {series: [{label, points, color?, width?, opacity?, dashed?}],
  //           xLabel, yLabel, height?, legend? (default true)}
  function line(container, options) {
    container.textContent = "";
    const width = Math.max(280, container.clientWidth || 600);
    const height = options.height || 260;
    const m = {left: 56, right: 12, top: 10, bottom: 34};
    const series = options.series.filter((s) => s.points && s.points.length);
    const svg = el("svg", {viewBox: `0 0 ${width} ${height}`, width: "100%", height, class: "chart",
                           role: "img", "aria-label": options.yLabel || "chart"});
    svg.dataset.points = String(options.series.reduce((n, s) => n + (s.raw ? s.points.length : 0), 0));
    container.appendChild(svg);
    if (!series.length) {
      el("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty"}, svg).textContent =
          options.empty || "no data yet";
      return svg;
    }
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of series) {
      for (const [x, y] of s.points) {
        if (!Number.isFinite(y)) continue;
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    const px = (x) => m.left + (x - x0) / (x1 - x0) * (width - m.left - m.right);
    const py = (y) => height - m.bottom - (y - y0) / (y1 - y0) * (height - m.top - m.bottom);
    const axes = el("g", {class: "axes"}, svg);
    for (const t of ticks(y0, y1, 5)) {
      el("line", {x1: m.left, x2: width - m.right, y1: py(t), y2: py(t), class: "grid"}, axes);
      el("text", {x: m.left - 6, y: py(t) + 4, "text-anchor": "end"}, axes).textContent = label(t);
    }
    for (const t of ticks(x0, x1, Math.max(2, Math.floor(width / 90)))) {
      el("line", {x1: px(t), x2: px(t), y1: height - m.bottom, y2: height - m.bottom + 4, class: "tick"}, axes);
      el("text", {x: px(t), y: height - m.bottom + 16, "text-anchor": "middle"}, axes).textContent = label(t);
    }
    el("line", {x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom, class: "axis"}, axes);
    el("line", {x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom, class: "axis"}, axes);
    if (options.xLabel) {
      el("text", {x: width - m.right, y: height - 4, "text-anchor": "end", class: "axis-label"}, axes).textContent =
          options.xLabel;
    }
    if (options.yLabel) {
      el("text", {x: 4, y: m.top + 10, class: "axis-label"}, axes).textContent = options.yLabel;
    }
    series.forEach((s, i) => {
      const color = s.color || PALETTE[i % PALETTE.length];
      const d = s.points.filter(([, y]) => Number.isFinite(y))
                    .map(([x, y], j) => `${j ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
      const path = el("path", {d, fill: "none", stroke: color, "stroke-width": s.width || 1.6,
                               "stroke-opacity": s.opacity == null ? 1 : s.opacity,
                               "stroke-linejoin": "round"}, svg);
      if (s.dashed) path.setAttribute("stroke-dasharray", "4 3");
      if (s.label) el("title", {}, path).textContent = s.label;
    });
    if (options.legend !== false) {
      const legend = document.createElement("div");
      legend.className = "legend";
      series.forEach((s, i) => {
        if (!s.label || s.hideInLegend) return;
        const item = document.createElement("span");
        const swatch = document.createElement("i");
        swatch.style.background = s.color || PALETTE[i % PALETTE.length];
        item.append(swatch, document.createTextNode(s.label));
        legend.appendChild(item);
      });
      container.appendChild(legend);
    }
    return svg;
  }

  return {line, smooth, PALETTE};
})();
