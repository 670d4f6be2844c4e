// The lorad dashboard: one script draws the page the address names, from the
// daemon's JSON API (/api/...) and, on a job's page, its live Server-Sent
// Events (/api/jobs/ID/stream, resumed by the browser with Last-Event-ID).
"use strict";

const main = document.getElementById("main");
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
let pageTimer = null;
let pageStream = null;

// ---------- helpers ----------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const num = (v) => (v == null || v === "" ? 0 : Number(v));
const stateName = (s) => String(s || "").replace("JOB_STATE_", "").toLowerCase();
const kindName = (k) => String(k || "").replace("ARTIFACT_KIND_", "").toLowerCase();
function fmtNum(v, digits = 4) {
  if (v == null || !Number.isFinite(Number(v))) return "–";
  const n = Number(v);
  if (n !== 0 && (Math.abs(n) < 1e-3 || Math.abs(n) >= 1e5)) return n.toExponential(2);
  return String(Number(n.toPrecision(digits)));
}
function fmtDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
function fmtBytes(b) {
  const n = num(b);
  if (n < 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtTime(ms) {
  const n = num(ms);
  return n ? new Date(n).toLocaleString() : "–";
}
function badge(state) {
  const s = stateName(state);
  return h("span", {class: `state state-${s}`, "data-state": s}, s);
}
// Seconds to the last step, from the attempt's own pace (resumed steps excluded).
function etaSeconds(job, nowMs) {
  const step = num(job.step), total = num(job.total_steps), from = num(job.resumed_from_step);
  const started = num(job.started_unix_ms);
  if (stateName(job.state) !== "running" || !started || step <= from || total <= step) return null;
  return (nowMs - started) / 1000 / (step - from) * (total - step);
}
function progressBar(job) {
  const total = num(job.total_steps), step = num(job.step);
  const pct = total > 0 ? Math.min(100, 100 * step / total) : 0;
  return h("div", {class: "bar", title: `${step}/${total || "?"}`},
           h("span", {style: `width:${pct.toFixed(1)}%`}), h("em", {}, `${step}/${total || "?"}`));
}
function cost(job) {
  if (job.cost != null && num(job.cost) > 0) return fmtNum(job.cost, 3);
  if (job.gpu_seconds != null && num(job.gpu_seconds) > 0) return `${fmtDuration(num(job.gpu_seconds))} GPU`;
  return "–";
}
async function api(path, options) {
  const response = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
  if (response.status === 401) {
    location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new Error("not logged in");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}
function showError(where, error) {
  where.replaceChildren(h("p", {class: "error"}, String(error.message || error)));
}
function fileUrl(jobId, name) {
  return `/api/jobs/${jobId}/files/${name.split("/").map(encodeURIComponent).join("/")}`;
}
// The artifact recorded for a file a Sample/Checkpoint event names (its
// name is the path relative to the job's output folder).
function artifactFor(artifacts, path) {
  return artifacts.find((a) => path === a.name || path.endsWith(`/${a.name}`));
}
function table(headers, rows, attrs) {
  return h("div", {class: "table-wrap"},
           h("table", attrs || {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
             h("tbody", {}, rows)));
}

// ---------- queue ----------
async function queuePage() {
  const params = new URLSearchParams(location.search);
  const state = params.get("state") || "";
  const sweep = params.get("sweep") || "";
  const stateSelect = h("select", {id: "state-filter", onchange: applyFilters},
                        h("option", {value: ""}, "all states"),
                        STATES.map((s) => h("option", {value: s, selected: s === state}, s)));
  const sweepSelect = h("select", {id: "sweep-filter", onchange: applyFilters}, h("option", {value: ""}, "all sweeps"));
  const list = h("div", {id: "jobs"}, h("p", {class: "muted"}, "Loading…"));
  const sweeps = h("div", {id: "sweeps"});
  main.replaceChildren(h("h1", {}, "Queue"),
                       h("div", {class: "filters"}, h("label", {}, "State ", stateSelect),
                         h("label", {}, "Sweep ", sweepSelect)),
                       list, h("h2", {}, "Sweeps"), sweeps);
  function applyFilters() {
    const next = new URLSearchParams();
    if (stateSelect.value) next.set("state", stateSelect.value);
    if (sweepSelect.value) next.set("sweep", sweepSelect.value);
    history.replaceState(null, "", `/${next.toString() ? "?" + next : ""}`);
    refresh();
  }
  try {
    const data = await api("/api/sweeps");
    for (const s of data.sweeps || []) {
      sweepSelect.append(h("option", {value: s.name, selected: s.name === sweep}, s.name));
    }
    sweeps.replaceChildren(data.sweeps && data.sweeps.length
        ? table(["Sweep", "Jobs", "Done", "Active", "Created"], data.sweeps.map((s) => h("tr", {},
            h("td", {}, h("a", {href: `/sweeps/${encodeURIComponent(s.name)}`}, s.name)),
            h("td", {}, num(s.jobs_total)), h("td", {}, num(s.jobs_succeeded)),
            h("td", {}, num(s.jobs_active)), h("td", {}, fmtTime(s.created_unix_ms)))))
        : h("p", {class: "muted"}, "No sweeps yet."));
  } catch (e) { showError(sweeps, e); }
  async function refresh() {
    const q = new URLSearchParams();
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (sweepSelect.value) q.set("sweep", sweepSelect.value);
    try {
      const data = await api(`/api/jobs?${q}`);
      const now = num(data.now_unix_ms) || Date.now();
      const jobs = data.jobs || [];
      list.replaceChildren(jobs.length ? table(["#", "Name", "State", "Progress", "Loss", "ETA", "Cost", "Created"],
          jobs.map((j) => h("tr", {"data-job": j.id, "data-state": stateName(j.state)},
            h("td", {}, j.id), h("td", {}, h("a", {href: `/jobs/${j.id}`, class: "job-link"}, j.name || "job")),
            h("td", {}, badge(j.state)), h("td", {}, progressBar(j)),
            h("td", {}, num(j.step) ? fmtNum(j.loss) : "–"), h("td", {}, fmtDuration(etaSeconds(j, now))),
            h("td", {}, cost(j)), h("td", {}, fmtTime(j.created_unix_ms)))), {id: "jobs-table"})
        : h("p", {class: "muted"}, "No jobs match."));
    } catch (e) { showError(list, e); }
  }
  await refresh();
  pageTimer = setInterval(refresh, 3000);
}

// ---------- job ----------
async function jobPage(id) {
  const head = h("div", {id: "job-head"});
  const lossChart = h("div", {id: "loss-chart", class: "chart-box"});
  const lrChart = h("div", {id: "lr-chart", class: "chart-box"});
  const smoothing = h("input", {type: "range", min: "0", max: "0.99", step: "0.01", value: "0.9", id: "smoothing"});
  const smoothingValue = h("output", {}, "0.9");
  const previews = h("div", {id: "previews"}, h("p", {class: "muted"}, "No previews yet."));
  const findings = h("ul", {id: "findings", class: "findings"});
  const downloads = h("ul", {id: "downloads", class: "downloads"});
  const hp = h("div", {id: "hyperparameters"});
  const log = h("pre", {id: "log", class: "log"});
  main.replaceChildren(head,
      h("section", {}, h("h2", {}, "Loss"), h("label", {class: "inline"}, "smoothing ", smoothing, smoothingValue),
        lossChart),
      h("section", {}, h("h2", {}, "Learning rate"), lrChart),
      h("section", {}, h("h2", {}, "Previews"), previews),
      h("section", {}, h("h2", {}, "Advisor findings"), findings),
      h("section", {}, h("h2", {}, "Downloads"), downloads),
      h("section", {}, h("h2", {}, "Hyperparameters"), hp),
      h("section", {}, h("h2", {}, "Log"), log));

  const loss = [];            // [step, loss]
  const lrs = new Map();      // group -> [[step, lr]]
  const samples = [];         // Sample events
  const logLines = [];
  let job = null, artifacts = [], latest = null, nowOffset = 0, drawQueued = false;

  function drawCharts() {
    drawQueued = false;
    const s = Number(smoothing.value);
    smoothingValue.textContent = s.toFixed(2);
    LoradCharts.line(lossChart, {xLabel: "step", yLabel: "loss", series: [
      {label: "raw", points: loss, raw: true, color: "#3056d3", opacity: 0.3, width: 1},
      {label: `smoothed (${s.toFixed(2)})`, points: LoradCharts.smooth(loss, s), color: "#3056d3", width: 2}]});
    LoradCharts.line(lrChart, {xLabel: "step", yLabel: "lr", height: 180,
      series: [...lrs.entries()].map(([group, points]) => ({label: group, points}))});
  }
  function queueDraw() {
    if (!drawQueued) { drawQueued = true; setTimeout(drawCharts, 250); }
  }
  smoothing.addEventListener("input", drawCharts);
  window.addEventListener("resize", queueDraw);

  function drawHead() {
    if (!job) return;
    const st = stateName(job.state);
    const active = st === "queued" || st === "running";
    const p = latest || {};
    const now = Date.now() + nowOffset;
    const facts = [
      ["step", `${num(job.step)}/${num(job.total_steps) || "?"}`],
      ["loss", num(job.step) ? fmtNum(p.loss_avg != null ? p.loss_avg : job.loss) : "–"],
      ["ETA", st === "running" ? fmtDuration(p.eta_s != null ? num(p.eta_s) : etaSeconds(job, now)) : "–"],
      ["speed", p.it_per_s ? `${fmtNum(p.it_per_s, 3)} it/s` : "–"],
      ["GPU memory", num(p.gpu_memory_allocated_bytes) ? fmtBytes(p.gpu_memory_allocated_bytes) : "–"],
      ["cost", cost(job)],
      ["dataset", job.dataset || "–"],
    ];
    const cancel = active ? h("button", {id: "cancel", class: "danger", onclick: onCancel},
                              job.cancel_requested ? "Stopping…" : "Cancel job") : null;
    if (cancel && job.cancel_requested) cancel.disabled = true;
    head.replaceChildren(...[
        h("h1", {}, `#${job.id} ${job.name || "job"} `, badge(job.state)),
        job.sweep ? h("p", {}, "sweep ", h("a", {href: `/sweeps/${encodeURIComponent(job.sweep)}`}, job.sweep)) : null,
        progressBar(job),
        h("dl", {class: "facts"}, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
        job.reason ? h("p", {class: st === "failed" ? "error" : "muted", id: "reason"}, job.reason) : null,
        cancel].filter(Boolean));
  }
  let armed = false;
  async function onCancel(event) {
    const button = event.currentTarget;
    if (!armed) {
      armed = true;
      button.textContent = "Click again to cancel";
      setTimeout(() => { armed = false; if (button.isConnected && !button.disabled) button.textContent = "Cancel job"; },
                 5000);
      return;
    }
    button.disabled = true;
    try {
      const body = await api(`/api/jobs/${id}/cancel`, {method: "POST"});
      job = Object.assign(job, body.job);
      drawHead();
    } catch (e) { button.disabled = false; alert(e.message); }
  }
  function drawPreviews() {
    if (!samples.length) return;
    const prompts = new Map();  // index -> {prompt, byStep}
    for (const s of samples) {
      const i = num(s.prompt_index);
      if (!prompts.has(i)) prompts.set(i, {prompt: s.prompt, byStep: new Map()});
      prompts.get(i).byStep.set(num(s.step), s);
    }
    const steps = [...new Set(samples.map((s) => num(s.step)))].sort((a, b) => a - b);
    const rows = [...prompts.entries()].sort((a, b) => a[0] - b[0]).map(([i, p]) => h("tr", {},
        h("th", {class: "prompt", title: p.prompt}, p.prompt || `prompt ${i}`),
        steps.map((step) => {
          const s = p.byStep.get(step);
          const a = s && artifactFor(artifacts, s.path);
          return h("td", {}, a ? h("a", {href: fileUrl(id, a.name), target: "_blank"},
                                   h("img", {src: fileUrl(id, a.name), alt: `step ${step}`, loading: "lazy",
                                             class: "preview"})) : (s ? "…" : ""));
        })));
    previews.replaceChildren(h("div", {class: "table-wrap"}, h("table", {class: "grid"},
        h("thead", {}, h("tr", {}, h("th", {}, "prompt \\ step"), steps.map((s) => h("th", {}, s)))),
        h("tbody", {}, rows))));
  }
  function drawDownloads() {
    const loras = artifacts.filter((a) => kindName(a.kind) === "lora" || kindName(a.kind) === "log");
    downloads.replaceChildren(...(loras.length ? loras.map((a) => h("li", {},
        h("a", {href: fileUrl(id, a.name), download: a.name.split("/").pop(), class: "download"}, a.name),
        ` ${fmtBytes(a.bytes)}`, a.is_final ? h("strong", {}, " final") : ` step ${num(a.step)}`))
      : [h("li", {class: "muted"}, "No LoRA saved yet.")]));
  }
  async function loadJob() {
    const data = await api(`/api/jobs/${id}`);
    job = data.job;
    artifacts = data.artifacts || [];
    nowOffset = num(data.now_unix_ms) - Date.now();
    drawHead();
    drawDownloads();
    drawPreviews();
    const keys = Object.keys(job.hyperparameters || {}).sort();
    // Folded: a run records every kohya key (100+), the page leads with its curves.
    hp.replaceChildren(keys.length ? h("details", {},
        h("summary", {}, `${keys.length} keys (learning_rate ${job.hyperparameters.learning_rate ?? "–"}, `,
          `network_dim ${job.hyperparameters.network_dim ?? "–"}, optimizer ${job.hyperparameters.optimizer_type ?? "–"})`),
        table(["key", "value"], keys.map((k) =>
          h("tr", {}, h("td", {}, h("code", {}, k)), h("td", {}, job.hyperparameters[k])))))
      : h("p", {class: "muted"}, "Recorded when the job starts."));
  }
  let artifactsTimer = null;
  function reloadSoon() {
    clearTimeout(artifactsTimer);
    artifactsTimer = setTimeout(() => loadJob().catch(() => {}), 400);
  }
  function onEvent(message) {
    const data = JSON.parse(message.data);
    const e = data.event || {};
    if (e.progress) {
      const p = e.progress;
      latest = p;
      loss.push([num(p.step), num(p.loss)]);
      for (const g of p.lr || []) {
        if (!lrs.has(g.group)) lrs.set(g.group, []);
        lrs.get(g.group).push([num(p.step), num(g.lr)]);
      }
      if (job) { job.step = p.step; job.total_steps = p.total_steps; job.loss = p.loss_avg; }
      queueDraw();
      drawHead();
    } else if (e.sample) {
      samples.push(e.sample);
      reloadSoon();
    } else if (e.checkpoint || e.finished || e.job_started) {
      reloadSoon();
    } else if (e.warning) {
      findings.querySelector(".muted")?.remove();
      findings.append(h("li", {}, h("code", {}, e.warning.code || "warning"), " ", e.warning.message));
    }
    if (e.log || e.warning || e.finished) {
      const text = e.log ? e.log.message : e.warning ? `warning: ${e.warning.message}`
                 : `finished: ${e.finished.status}${e.finished.reason ? " (" + e.finished.reason + ")" : ""}`;
      logLines.push(`${new Date(num(e.time_unix_ms)).toLocaleTimeString()}  ${text}`);
      log.textContent = logLines.slice(-200).join("\n");
    }
  }
  try {
    await loadJob();
  } catch (e) { showError(head, e); return; }
  findings.replaceChildren(h("li", {class: "muted"}, "None."));
  drawCharts();
  // Live: the browser reconnects by itself and resumes after the last id it saw.
  pageStream = new EventSource(`/api/jobs/${id}/stream`);
  pageStream.onmessage = onEvent;
  pageStream.addEventListener("end", () => { pageStream.close(); reloadSoon(); });
  pageStream.addEventListener("error", (e) => { if (e.data) { pageStream.close(); } });
}

// ---------- sweep ----------
async function sweepPage(ref) {
  main.replaceChildren(h("p", {class: "muted"}, "Loading…"));
  let data;
  try { data = await api(`/api/sweeps/${encodeURIComponent(ref)}`); } catch (e) { showError(main, e); return; }
  const sweep = data.sweep;
  const rows = Array.isArray(data.table) ? data.table : [];
  const varied = [];
  for (const r of rows) for (const k of Object.keys(r.varied || {})) if (!varied.includes(k)) varied.push(k);
  const columns = [
    ["job", (r) => num(r.job_id), (r) => h("a", {href: `/jobs/${r.job_id}`}, `#${r.job_id}`)],
    ...varied.map((k) => [k, (r) => (r.varied || {})[k] ?? "", (r) => (r.varied || {})[k] ?? ""]),
    ["state", (r) => r.state, (r) => badge(r.state)],
    ["final loss", (r) => r.final_smoothed_loss ?? Infinity, (r) => fmtNum(r.final_smoothed_loss)],
    ["min loss", (r) => r.min_smoothed_loss ?? Infinity, (r) => fmtNum(r.min_smoothed_loss)],
    ["steps", (r) => num(r.steps), (r) => `${num(r.steps)}/${r.total_steps ?? "?"}`],
    ["time", (r) => r.duration_s ?? Infinity, (r) => fmtDuration(r.duration_s)],
    ["img/s", (r) => r.images_per_s ?? 0, (r) => fmtNum(r.images_per_s, 3)],
  ];
  let sortBy = 3 + varied.length, ascending = true;  // final loss, best first
  const tableBox = h("div", {id: "sweep-table"});
  function drawTable() {
    const key = columns[sortBy][1];
    const sorted = rows.slice().sort((a, b) => {
      const x = key(a), y = key(b);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? c : -c;
    });
    tableBox.replaceChildren(h("div", {class: "table-wrap"}, h("table", {class: "sortable"},
        h("thead", {}, h("tr", {}, columns.map(([name], i) => h("th", {
          class: i === sortBy ? (ascending ? "sorted asc" : "sorted desc") : "",
          onclick: () => { ascending = i === sortBy ? !ascending : true; sortBy = i; drawTable(); }}, name)))),
        h("tbody", {}, sorted.map((r) => h("tr", {}, columns.map(([, , cell]) => h("td", {}, cell(r)))))))));
  }
  const chart = h("div", {id: "sweep-chart", class: "chart-box"});
  const smoothing = h("input", {type: "range", min: "0", max: "0.99", step: "0.01", value: "0.9"});
  function drawChart() {
    const s = Number(smoothing.value);
    LoradCharts.line(chart, {xLabel: "step", yLabel: `loss (smoothed ${s.toFixed(2)})`, height: 320,
      series: data.curves.map((c) => ({label: c.label, points: LoradCharts.smooth(c.points, s)}))});
  }
  smoothing.addEventListener("input", drawChart);
  const prompts = data.grid.prompts || [];
  const grid = prompts.length ? h("div", {class: "table-wrap"}, h("table", {class: "grid", id: "sample-grid"},
      h("thead", {}, h("tr", {}, h("th", {}, "job \\ prompt"),
        prompts.map((p) => h("th", {class: "prompt", title: p.prompt}, p.prompt)))),
      h("tbody", {}, data.grid.rows.map((row) => h("tr", {}, h("th", {}, h("a", {href: `/jobs/${row.job_id}`}, row.label)),
        prompts.map((p) => {
          const cell = row.cells[String(p.index)];
          return h("td", {}, cell && cell.file
              ? h("img", {src: fileUrl(row.job_id, cell.file), class: "preview", loading: "lazy",
                          alt: `${row.label}: ${p.prompt}`, title: `step ${cell.step}`}) : "");
        }))))))
    : h("p", {class: "muted"}, "No previews (set sample_prompts and sample_every_n_steps).");
  main.replaceChildren(h("h1", {}, `Sweep ${sweep.name}`),
      h("p", {class: "muted"}, `${num(sweep.jobs_total)} jobs · ${num(sweep.jobs_succeeded)} succeeded · `,
        `${num(sweep.jobs_failed)} failed · ${num(sweep.jobs_active)} active · mode ${sweep.mode}`,
        sweep.cost ? ` · cost ${fmtNum(sweep.cost, 3)}` : ""),
      h("section", {}, h("h2", {}, "Morning table"), tableBox),
      h("section", {}, h("h2", {}, "Loss curves"), h("label", {class: "inline"}, "smoothing ", smoothing), chart),
      h("section", {}, h("h2", {}, "Samples"), grid));
  drawTable();
  drawChart();
  window.addEventListener("resize", drawChart);
}

// ---------- datasets ----------
async function datasetsPage() {
  main.replaceChildren(h("h1", {}, "Datasets"), h("p", {class: "muted"}, "Loading…"));
  try {
    const data = await api("/api/datasets");
    const list = data.datasets || [];
    main.replaceChildren(h("h1", {}, "Datasets"), list.length ? table(["Name", "Id", "Images", "Size", "Uploaded"],
        list.map((d) => h("tr", {}, h("td", {}, h("a", {href: `/datasets/${d.id}`}, d.name || d.id)),
          h("td", {}, h("code", {}, String(d.id).slice(0, 12))), h("td", {}, num(d.images)),
          h("td", {}, fmtBytes(d.bytes)), h("td", {}, fmtTime(d.created_unix_ms)))))
      : h("p", {class: "muted"}, "No uploaded datasets (loractl datasets upload DIR)."));
  } catch (e) { showError(main, e); }
}

async function datasetPage(id) {
  main.replaceChildren(h("h1", {}, "Dataset"), h("p", {class: "muted"}, "Running the curation report…"));
  let data;
  try { data = await api(`/api/datasets/${encodeURIComponent(id)}/report`); } catch (e) { showError(main, e); return; }
  const d = data.dataset, r = data.report || {};
  const root = String(d.path || "").replace(/\/$/, "");
  const rel = (p) => (p.startsWith(root + "/") ? p.slice(root.length + 1) : p);
  const thumb = (p, caption) => h("figure", {class: "thumb"},
      h("a", {href: `/api/datasets/${d.id}/files/${rel(p).split("/").map(encodeURIComponent).join("/")}`, target: "_blank"},
        h("img", {src: `/api/datasets/${d.id}/files/${rel(p).split("/").map(encodeURIComponent).join("/")}`,
                  loading: "lazy", alt: rel(p)})),
      h("figcaption", {}, caption || rel(p)));
  const sections = [];
  sections.push(h("dl", {class: "facts"}, [
    ["images", r.images], ["with repeats", r.train_images_with_repeats], ["steps / epoch", r.steps_per_epoch],
    ["size", fmtBytes(d.bytes)], ["missing captions", (r.missing_captions || []).length],
  ].map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v ?? "–")))));
  if ((r.warnings || []).length) sections.push(h("ul", {class: "findings"}, r.warnings.map((w) => h("li", {}, w))));
  sections.push(h("h2", {}, `Exact duplicates (${(r.exact_duplicates || []).length})`));
  sections.push(h("div", {class: "thumbs"}, (r.exact_duplicates || []).flatMap((group, g) =>
      group.map((p) => thumb(p, `group ${g + 1}: ${rel(p)}`)))));
  sections.push(h("h2", {}, `Near duplicates (${(r.near_duplicates || []).length})`));
  sections.push(h("div", {class: "thumbs"}, (r.near_duplicates || []).map((pair) => h("div", {class: "pair"},
      thumb(pair.a), thumb(pair.b), h("span", {class: "muted"}, `pHash distance ${pair.distance}`)))));
  sections.push(h("h2", {}, `Low resolution: short side below 512 (${(r.below_512 || []).length})`));
  sections.push(h("div", {class: "thumbs"}, (r.below_512 || []).map((s) => thumb(s.path, `${rel(s.path)} ${s.width}×${s.height}`))));
  if ((r.buckets || []).length) {
    sections.push(h("h2", {}, "Buckets"), table(["resolution", "images"],
        r.buckets.map((b) => h("tr", {}, h("td", {}, `${b.resolution[0]}×${b.resolution[1]}`), h("td", {}, b.count)))));
  }
  if ((r.top_tags || []).length) {
    sections.push(h("h2", {}, "Top tags"), h("p", {class: "tags"},
        r.top_tags.slice(0, 60).map((t) => h("span", {class: "tag"}, `${t.tag} `, h("em", {}, t.count)))));
  }
  main.replaceChildren(h("h1", {}, `Dataset ${d.name || d.id}`), h("p", {}, h("code", {}, d.id)), ...sections);
}

// ---------- server ----------
async function serverPage() {
  main.replaceChildren(h("h1", {}, "Server"), h("p", {class: "muted"}, "Loading…"));
  try {
    const s = await api("/api/server");
    const disk = s.disk || {};
    const used = num(disk.total_bytes) > 0 ? 1 - num(disk.free_bytes) / num(disk.total_bytes) : 0;
    const facts = [
      ["version", s.version], ["LibTorch", s.libtorch_version], ["CUDA", s.cuda_available ? "yes" : "no"],
      ["slots", `${num(s.running)} busy of ${num(s.slots)}`], ["queue", num(s.queue_length)],
      ["uptime", fmtDuration(num(s.uptime_s))], ["data dir", s.data_dir],
      ["event subscribers", num(s.event_subscribers)],
    ];
    if (num(s.price_per_hour) > 0) facts.push(["price / hour", fmtNum(s.price_per_hour, 3)],
                                               ["cost since start", fmtNum(s.cost_since_start, 3)]);
    main.replaceChildren(h("h1", {}, "Server"),
        h("dl", {class: "facts", id: "server-facts"}, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
        h("h2", {}, "Disk"),
        h("div", {class: "bar", id: "disk"}, h("span", {style: `width:${(100 * used).toFixed(1)}%`}),
          h("em", {}, `${fmtBytes(disk.free_bytes)} free of ${fmtBytes(disk.total_bytes)}`)),
        h("h2", {}, "GPUs"),
        (s.gpus || []).length ? table(["#", "name", "memory free"], s.gpus.map((g) => h("tr", {},
            h("td", {}, g.index), h("td", {}, g.name),
            h("td", {}, `${fmtBytes(g.memory_free_bytes)} of ${fmtBytes(g.memory_total_bytes)}`))))
          : h("p", {class: "muted"}, "No GPU (nvidia-smi saw none): jobs train on the CPU."),
        h("p", {}, h("a", {href: "/metrics"}, "Prometheus metrics")));
  } catch (e) { showError(main, e); }
}

// ---------- router ----------
function route() {
  clearInterval(pageTimer);
  if (pageStream) pageStream.close();
  const path = location.pathname;
  let m;
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.remove("active");
  const nav = (name) => document.querySelector(`[data-nav=${name}]`)?.classList.add("active");
  if ((m = path.match(/^\/jobs\/(\d+)$/))) { nav("queue"); return jobPage(m[1]); }
  if ((m = path.match(/^\/sweeps\/([^/]+)$/))) { nav("queue"); return sweepPage(decodeURIComponent(m[1])); }
  if ((m = path.match(/^\/datasets\/([^/]+)$/))) { nav("datasets"); return datasetPage(decodeURIComponent(m[1])); }
  if (path === "/datasets") { nav("datasets"); return datasetsPage(); }
  if (path === "/server") { nav("server"); return serverPage(); }
  nav("queue");
  return queuePage();
}
route();
