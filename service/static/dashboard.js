// /dashboard: the model card, codebook health of traffic vs reference, and the collections.
// Every number comes from this server's JSON routes (fetched with the API key, if one is
// set); the page itself holds no data. Text from the server is set with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 10000;
let timer = null;
let plotUrls = {};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function num(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function pct(x) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function badge(node, status) {
  node.textContent = (status || "unknown").replace("_", " ");
  node.className = "badge " + (status || "unknown");
  node.dataset.status = status || "unknown";
}

async function json(path, allowed = []) {
  const resp = await MonolithAuth.authFetch(path);
  if (resp.ok) return resp.json();
  if (allowed.includes(resp.status)) return null;
  let detail = resp.statusText;
  try { detail = (await resp.json()).detail; } catch (e) { /* not JSON */ }
  const err = new Error(`${path}: ${resp.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  err.status = resp.status;
  throw err;
}

async function plot(img, source) {
  const resp = await MonolithAuth.authFetch(`/codebook/health.svg?source=${source}`);
  if (!resp.ok) { img.alt = `no ${source} plot (${resp.status})`; img.removeAttribute("src"); return; }
  const url = URL.createObjectURL(await resp.blob());
  if (plotUrls[source]) URL.revokeObjectURL(plotUrls[source]);
  plotUrls[source] = url;
  img.src = url;
}

function showModel(card) {
  const dl = $("model-card");
  const cfg = card.config || {};
  const prov = card.provenance || {};
  const m = card.metrics || {};
  const enc = card.encoding || {};
  const split = card.metrics_split || "validation";
  const testRecall = Object.entries(card.test_recall || {}).map(([set, r]) => `${set} ${num(r, 3)}`).join(" · ");
  const rows = [
    ["name", card.name], ["version", card.version], ["sha256", card.sha256], ["weights sha256", card.weights_sha256],
    ["architecture", `${card.architecture}: ${cfg.input_dim}-d → ${cfg.num_heads} heads × ${cfg.codebook_size} codes`],
    ["bytes per vector", card.bytes_per_vector],
    ["encoding", enc.candidates > 1 ? `decoder-aware search over ${enc.candidates} codes per head` : "nearest codes"],
    ["trained on", prov.train_vectors ? `${prov.train_vectors} vectors (${(prov.train_files || []).join(", ")})` : "–"],
    // The card's top-level metrics are measured on the validation split, README's table on test
    // data (card.test_recall): each number says which, so the two are not read as one.
    [`recall 10@10 / 1@10 / 10@100, ${split} split`,
     `${num(m["recall_10@10"], 3)} / ${num(m["recall_1@10"], 3)} / ${num(m["recall_10@100"], 3)}`, "recall"],
    [`reconstruction cosine, ${split} split`, num(m.cosine, 3), "reconstruction-cosine"],
    ["recall 10@10, test sets (README's Quality table)", testRecall || "no evaluation recorded", "test-recall"],
    ["text model", card.text_model || "off (embeddings only)"],
    ["checkpoint", card.checkpoint], ["service version", card.service_version],
  ];
  dl.replaceChildren();
  for (const [k, v, id] of rows) {
    const dd = el("dd", v);
    dd.id = "model-" + (id || k.replace(/[^a-z0-9]+/gi, "-"));
    dl.append(el("dt", k), dd);
  }
}

function showStatus(prefix, health) {
  if (!health) {
    badge($(`${prefix}-status`), "unknown");
    $(`${prefix}-counted`).textContent = "the checkpoint stores no reference counts";
    $(`${prefix}-reasons`).replaceChildren();
    return;
  }
  badge($(`${prefix}-status`), health.status);
  const vectors = health.heads.length ? Math.max(...health.heads.map((h) => h.total)) : 0;
  const counted = $(`${prefix}-counted`);
  counted.textContent = `${vectors} vectors counted (status judged from ${health.min_vectors}), ` +
    `${pct(health.overall_usage)} of codes used`;
  counted.dataset.vectors = String(vectors);
  const ul = $(`${prefix}-reasons`);
  ul.replaceChildren(...health.reasons.map((r) => el("li", r)));
}

function showDrift(drift) {
  const numbers = $("drift-numbers");
  const reasons = $("drift-reason");
  if (!drift) {
    badge($("drift-status"), "unknown");
    numbers.textContent = "the checkpoint stores nothing to compare with";
    reasons.textContent = "";
    return;
  }
  // The status is the server's (vqvae/drift.py): drifted once a deciding signal (the
  // reconstruction cosine, where the checkpoint stores one) is judged drifted, ok once every
  // deciding signal is judged ok, else insufficient_data. A code-usage shift alone is another
  // text domain, shown as a note, never as drift.
  badge($("drift-status"), drift.status);
  const parts = [];
  if (drift.reconstruction_cosine !== null) {
    parts.push(`reconstruction cosine ${num(drift.reconstruction_cosine, 3)} over ${drift.cosine_vectors} vectors ` +
      `(reference ${num(drift.reference_cosine, 3)}, drifted below ${num(drift.cosine_threshold, 3)})`);
  }
  if (drift.js_divergence !== null) {
    const decides = (drift.deciding || []).includes("usage");
    parts.push(`code usage: Jensen–Shannon divergence ${num(drift.js_divergence, 3)} bits ` +
      `(${decides ? "drifted" : "another domain, not drift,"} above ${num(drift.js_threshold, 2)}; ` +
      `chance alone ≈ ${num(drift.noise_floor, 3)}), total variation ${num(drift.total_variation, 3)}`);
  }
  const needs = Object.entries(drift.needs || {}).filter(([signal]) => (drift.deciding || []).includes(signal));
  if (drift.status === "insufficient_data" && needs.length) {
    parts.push("judged after " + needs.map(([signal, n]) =>
      `${n} more vectors for the ${signal === "cosine" ? "reconstruction cosine" : "code usage"}`).join(" and "));
  }
  numbers.textContent = parts.join("; ") || "no traffic yet";
  numbers.dataset.cosine = drift.reconstruction_cosine === null ? "" : String(drift.reconstruction_cosine);
  numbers.dataset.needs = JSON.stringify(drift.needs || {});
  const text = drift.reasons.length ? drift.reasons.join(" · ")
    : drift.status === "ok" ? "traffic looks like the vectors this checkpoint was trained for" : "";
  reasons.textContent = text;
}

function headCells(h) {
  if (!h) return ["–", "–", "–", "–", "–"];
  return [`${h.used}/${h.used + h.dead}`, num(h.entropy_bits), num(h.normalized_entropy, 3),
    h.zipf_alpha === null ? "–" : `${num(h.zipf_alpha)} / ${num(h.zipf_r2)}`, pct(h.top10_share)];
}

function showHeads(traffic, reference) {
  const body = $("heads").tBodies[0];
  body.replaceChildren();
  const jsd = (traffic.drift && traffic.drift.js_divergence_per_head) || [];
  traffic.heads.forEach((h, i) => {
    const tr = document.createElement("tr");
    tr.dataset.head = String(h.head);
    const ref = reference ? reference.heads[i] : null;
    for (const v of [h.head, ...headCells(h), ...headCells(ref), jsd.length ? num(jsd[i], 3) : "–"]) {
      tr.append(el("td", v));
    }
    body.append(tr);
  });
}

// Whose codes a collection holds: the server's checkpoint, or its own fitted model with the held-out
// recall 10@10 of its fit beside the generic checkpoint's (docs/collections.md, "Fitting a collection").
function codesOf(c) {
  const model = c.fit && c.fit.model;
  if (!model) return "generic";
  const r = c.fit.report;
  const recall = r ? ` (10@10 ${num(r.adapted_recall, 3)} vs generic ${num(r.generic_recall, 3)})` : "";
  return `fitted ${model.weights_sha256.slice(0, 8)}${recall}`;
}

function showCollections(list) {
  const body = $("collection-table").tBodies[0];
  body.replaceChildren();
  const cols = (list && list.collections) || [];
  $("no-collections").hidden = cols.length > 0;
  for (const c of cols) {
    const tr = document.createElement("tr");
    tr.dataset.collection = c.name;
    const index = c.index ? (c.index.kind || JSON.stringify(c.index)) + (c.index.trained === false
      ? ` (untrained; trains at ${c.index.train_at ?? "?"} items)` : "") : "flat";
    const per = c.bytes_per_item;
    const perItem = per ? `${num(per.ram, 1)} B · ${num(per.disk, 0)} B` : "–";
    for (const v of [c.name, c.count ?? "–", bytes(c.size_bytes), perItem, c.vectors ?? "–", codesOf(c), c.status,
      index,
      c.created ? c.created.replace("T", " ").slice(0, 19) : "–", c.description || ""]) {
      tr.append(el("td", v));
    }
    if (c.error) tr.title = c.error;
    body.append(tr);
  }
}

function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

async function refresh() {
  clearTimeout(timer);
  try {
    const ready = await fetch("/readyz", { credentials: "same-origin" });
    if (!ready.ok) {
      badge($("server-status"), "loading");
      $("server-status").textContent = "loading the model…";
      schedule(2000);
      return;
    }
    const [card, traffic, reference, collections] = await Promise.all([
      json("/model"), json("/codebook/health?source=traffic"),
      json("/codebook/health?source=reference", [404]), json("/collections"),
    ]);
    badge($("server-status"), "ready");
    showModel(card);
    showStatus("traffic", traffic);
    showStatus("reference", reference);
    showDrift(traffic.drift);
    showHeads(traffic, reference);
    showCollections(collections);
    await Promise.all([plot($("plot-traffic"), "traffic"), reference ? plot($("plot-reference"), "reference") : null]);
    $("content").hidden = false;
    $("forget-key").hidden = !MonolithAuth.get();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
    showError("");
    schedule(REFRESH_MS);
  } catch (err) {
    if (err instanceof MonolithAuth.Unauthorized) {
      $("content").hidden = true;
      badge($("server-status"), "unknown");
      $("server-status").textContent = "API key needed";
      MonolithAuth.showForm($("auth"), err.message, refresh);
      return;
    }
    badge($("server-status"), "down");
    showError(String(err.message || err));
    schedule(REFRESH_MS);
  }
}

function schedule(ms) {
  clearTimeout(timer);
  if ($("auto-refresh").checked) timer = setTimeout(refresh, ms);
}

document.addEventListener("DOMContentLoaded", () => {
  $("refresh").addEventListener("click", refresh);
  $("auto-refresh").addEventListener("change", () => schedule(REFRESH_MS));
  $("forget-key").addEventListener("click", () => { MonolithAuth.clear(); $("content").hidden = true; refresh(); });
  refresh();
});
