// breastscreen viewer: upload an exam, follow its job, look at the views with their heatmaps.
// Plain browser JavaScript, no libraries, nothing loaded from outside this service.
"use strict";

(function () {
  const KEY_STORE = "breastscreen.apiKey";
  const POLL_MS = 700;
  const HANGING = ["R-CC", "L-CC", "R-MLO", "L-MLO"];
  const $ = (id) => document.getElementById(id);

  const state = {
    key: localStorage.getItem(KEY_STORE) || "",
    job: null,          // the job status document being shown
    examIndex: 0,
    pollTimer: null,
    blobs: new Map(),   // API path -> object URL (result files never change)
    views: [],          // zoom/pan state of every panel on screen
    cursor: null,       // next page of the job list
    modality: null,
  };

  // ------------------------------------------------------------------ API

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (state.key) opts.headers["Authorization"] = "Bearer " + state.key;
    const resp = await fetch(path, opts);
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (e) { /* not JSON: keep the status text */ }
      const err = new Error(resp.status + ": " + detail);
      err.status = resp.status;
      err.retryAfter = resp.headers.get("Retry-After");
      throw err;
    }
    return resp;
  }

  async function blobUrl(path) {
    if (state.blobs.has(path)) return state.blobs.get(path);
    const resp = await api(path);
    const url = URL.createObjectURL(await resp.blob());
    state.blobs.set(path, url);
    return url;
  }

  function showMessage(text) {
    const box = $("message");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function explain(err) {
    if (err.status === 401) return "The service refused the API key (401). Enter a valid key above.";
    if (err.status === 429) return "The job queue is full (429); try again in " + (err.retryAfter || "a few") + " s.";
    if (err.status === 413) return "Upload too large (413): " + err.message.replace(/^413: /, "");
    if (err.status === 422) return "The service cannot use this upload (422): " + err.message.replace(/^422: /, "");
    return err.message;
  }

  // ------------------------------------------------------------------ key and model

  function setKey(key) {
    state.key = key.trim();
    if (state.key) localStorage.setItem(KEY_STORE, state.key);
    else localStorage.removeItem(KEY_STORE);
    $("api-key").value = state.key ? "••••••••" : "";
    state.blobs.clear();
    loadModel();
    loadJobs(true);
  }

  async function loadModel() {
    if (!state.key) { $("model-name").textContent = "model: — (enter an API key)"; return; }
    try {
      const info = await (await api("/v1/models")).json();
      const names = info.models.map((m) => m.ref + " (" + m.version + ")").join(" + ");
      $("model-name").textContent = "model: " + names + " · " + info.modality;
      $("model-name").dataset.models = info.models.map((m) => m.ref).join(",");
      state.modality = info.modality;
      showMessage("");
    } catch (err) {
      $("model-name").textContent = "model: —";
      showMessage(explain(err));
    }
  }

  // ------------------------------------------------------------------ jobs list

  function when(t) {
    return t ? new Date(t * 1000).toLocaleString() : "";
  }

  async function loadJobs(reset) {
    const list = $("job-list");
    if (!state.key) { list.textContent = ""; return; }
    if (reset) { state.cursor = null; list.textContent = ""; }
    try {
      const q = "/v1/jobs?limit=20" + (state.cursor ? "&cursor=" + encodeURIComponent(state.cursor) : "");
      const page = await (await api(q)).json();
      for (const job of page.jobs) {
        const li = document.createElement("li");
        li.dataset.id = job.id;
        li.dataset.testid = "job-item";
        const pct = job.status === "running" ? " " + Math.round(job.progress.fraction * 100) + " %" : "";
        li.textContent = (job.exam_ids.join(", ") || job.id.slice(0, 8)) + " — " + job.status + pct;
        const small = document.createElement("div");
        small.className = "when";
        small.textContent = when(job.created_at);
        li.appendChild(small);
        if (state.job && state.job.id === job.id) li.classList.add("current");
        li.addEventListener("click", () => openJob(job.id));
        list.appendChild(li);
      }
      state.cursor = page.next_cursor;
      $("more-jobs").hidden = !page.next_cursor;
    } catch (err) {
      showMessage(explain(err));
    }
  }

  // ------------------------------------------------------------------ upload

  async function upload(files) {
    if (!files || !files.length) return;
    if (!state.key) { showMessage("Enter an API key first."); return; }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const zone = $("drop-zone");
    zone.classList.add("busy");
    showMessage("");
    try {
      const created = await (await api("/v1/exams", { method: "POST", body: form })).json();
      await openJob(created.id);
      loadJobs(true);
    } catch (err) {
      showMessage(explain(err));
    } finally {
      zone.classList.remove("busy");
      $("file-input").value = "";
    }
  }

  // ------------------------------------------------------------------ one job

  async function openJob(id) {
    clearTimeout(state.pollTimer);
    state.examIndex = 0;
    history.replaceState(null, "", "#job=" + id);
    for (const li of $("job-list").children) li.classList.toggle("current", li.dataset.id === id);
    await poll(id);
  }

  async function poll(id) {
    let job;
    try {
      job = await (await api("/v1/jobs/" + encodeURIComponent(id))).json();
    } catch (err) {
      showMessage(explain(err));
      return;
    }
    const changed = !state.job || state.job.id !== job.id || state.job.status !== job.status;
    state.job = job;
    showStatus(job);
    if (job.status === "queued" || job.status === "running") {
      $("result").hidden = true;
      state.pollTimer = setTimeout(() => poll(id), POLL_MS);
    } else if (changed || $("result").hidden) {
      if (job.status === "done") await showResult(job);
      loadJobs(true);
    }
  }

  function showStatus(job) {
    $("empty").hidden = true;
    $("job-panel").hidden = false;
    $("job-id").textContent = job.id;
    const badge = $("job-status");
    badge.textContent = job.status;
    badge.className = "badge " + job.status;
    const p = job.progress || {};
    let stage = "";
    if (job.status === "queued") stage = "waiting" + (job.queue_position ? " (position " + job.queue_position + ")" : "");
    else if (job.status === "running") stage = (p.stage || "") + " " + Math.round((p.stage_fraction || 0) * 100) + " %";
    $("job-stage").textContent = stage;
    $("job-progress").value = job.status === "done" ? 1 : (p.fraction || 0);
    $("job-error").hidden = !job.error;
    $("job-error").textContent = job.error || "";
    const errs = $("exam-errors");
    errs.textContent = "";
    for (const e of job.errors || []) {
      const li = document.createElement("li");
      li.textContent = "exam " + e.exam_id + ": " + e.reason;
      errs.appendChild(li);
    }
    errs.hidden = !(job.errors && job.errors.length);
  }

  async function showResult(job) {
    const exams = job.exams || [];
    if (!exams.length) { $("result").hidden = true; return; }
    const select = $("exam-select");
    select.textContent = "";
    exams.forEach((e, i) => {
      const opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = e.exam_id;
      select.appendChild(opt);
    });
    $("exam-select-label").hidden = exams.length < 2;
    select.value = String(state.examIndex);
    $("result").hidden = false;
    await showExam(exams[state.examIndex] || exams[0]);
  }

  function formatProb(v) {
    return v === null || v === undefined ? "—" : v.toFixed(3);
  }

  async function showExam(exam) {
    $("exam-title").textContent = "Exam " + exam.exam_id + " · " + exam.modality;
    for (const td of document.querySelectorAll("#probs td[data-key]")) {
      const v = exam.predictions[td.dataset.key];
      td.textContent = formatProb(v);
      td.dataset.value = v === null || v === undefined ? "" : String(v);
    }
    state.views = [];
    const isUS = exam.modality === "US";
    $("hanging").hidden = isUS;
    $("us").hidden = !isUS;
    if (isUS) await showUltrasound(exam);
    else await showMammo(exam);
    applyOverlay();
    showLinks(exam);
  }

  // ------------------------------------------------------------------ panels with zoom and pan

  function makePanel(el, label, images) {
    el.textContent = "";
    const lab = document.createElement("div");
    lab.className = "label";
    lab.textContent = label;
    el.appendChild(lab);
    const layer = document.createElement("div");
    layer.className = "layer";
    el.appendChild(layer);
    const base = document.createElement("img");
    base.className = "base";
    base.alt = label;
    base.src = images.base;
    layer.appendChild(base);
    for (const [name, url] of Object.entries(images.overlays || {})) {
      const ov = document.createElement("img");
      ov.className = "overlay";
      ov.alt = label + " " + name + " overlay";
      ov.dataset.map = name;
      ov.dataset.testid = "map-" + name;
      ov.src = url;
      layer.appendChild(ov);
    }
    const view = { el, layer, s: 1, x: 0, y: 0 };
    state.views.push(view);
    attachZoom(view);
    return view;
  }

  function applyTransform(view) {
    view.layer.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.s + ")";
  }

  function linked(view) {
    return $("link-zoom").checked && !view.el.closest(".card") ? state.views.filter((v) => !v.el.closest(".card")) : [view];
  }

  function attachZoom(view) {
    const el = view.el;
    el.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const rect = el.getBoundingClientRect();
      const cx = ev.clientX - rect.left, cy = ev.clientY - rect.top;
      const factor = Math.exp(-ev.deltaY * 0.0015);
      const s = Math.min(20, Math.max(1, view.s * factor));
      const k = s / view.s;
      for (const v of linked(view)) {
        v.x = cx - (cx - v.x) * k;
        v.y = cy - (cy - v.y) * k;
        v.s = s;
        if (s === 1) { v.x = 0; v.y = 0; }
        applyTransform(v);
      }
    }, { passive: false });
    let drag = null;
    el.addEventListener("pointerdown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY };
      el.setPointerCapture(ev.pointerId);
      el.classList.add("dragging");
    });
    el.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      drag = { x: ev.clientX, y: ev.clientY };
      for (const v of linked(view)) { v.x += dx; v.y += dy; applyTransform(v); }
    });
    const end = () => { drag = null; el.classList.remove("dragging"); };
    el.addEventListener("pointerup", end);
    el.addEventListener("pointercancel", end);
    el.addEventListener("dblclick", () => { for (const v of linked(view)) resetView(v); });
  }

  function resetView(v) {
    v.s = 1; v.x = 0; v.y = 0;
    applyTransform(v);
  }

  function applyOverlay() {
    const choice = document.querySelector("input[name=overlay]:checked").value;
    const opacity = Number($("opacity").value) / 100;
    $("opacity-value").textContent = $("opacity").value + " %";
    for (const img of document.querySelectorAll("img.overlay")) {
      img.hidden = img.dataset.map !== choice;
      img.style.opacity = String(opacity);
    }
    // Maps of the panels on screen (an overlay's own hidden flag is the choice, not availability).
    const available = new Set([...document.querySelectorAll("#result img.overlay")]
      .filter((img) => !img.parentElement.closest("[hidden]")).map((img) => img.dataset.map));
    for (const r of document.querySelectorAll("input[name=overlay]")) {
      r.disabled = r.value !== "none" && !available.has(r.value);
    }
    const note = $("overlay-note");
    note.hidden = available.size > 0 || $("result").hidden;
    note.textContent = "This model gives no heatmaps or saliency maps to overlay.";
  }

  // ------------------------------------------------------------------ mammography

  async function showMammo(exam) {
    const views = exam.views || {};
    const details = exam.details || {};
    const perView = details.per_view || {};
    for (const el of document.querySelectorAll("#hanging .view")) {
      const name = el.dataset.view;
      const v = views[name];
      if (!v) {
        el.textContent = "";
        const lab = document.createElement("div");
        lab.className = "label";
        lab.textContent = name;
        const miss = document.createElement("div");
        miss.className = "missing";
        miss.textContent = "missing";
        el.append(lab, miss);
        continue;
      }
      const overlays = {};
      for (const [k, path] of Object.entries(v.overlays || {})) overlays[k] = await blobUrl(path);
      const label = name + (v.geometry === "preprocessed" ? " (preprocessed)" : "");
      makePanel(el, label, { base: await blobUrl(v.image), overlays });
      const pv = (perView[name] || [])[0];
      if (pv) {
        const p = document.createElement("div");
        p.className = "vprob";
        p.textContent = "view: benign " + formatProb(pv.benign) + " · malignant " + formatProb(pv.malignant);
        el.appendChild(p);
      }
    }
  }

  // ------------------------------------------------------------------ ultrasound

  async function showUltrasound(exam) {
    const box = $("us");
    box.textContent = "";
    const names = { R: "Right breast", L: "Left breast", U: "Breast of unknown side" };
    for (const side of ["R", "L", "U"]) {
      const b = (exam.breasts || {})[side];
      if (!b) continue;
      const sec = document.createElement("section");
      sec.className = "breast";
      sec.dataset.side = side;
      const h = document.createElement("h3");
      h.textContent = names[side] + ": benign " + formatProb(b.benign) + " · malignant " + formatProb(b.malignant) +
        " · " + b.images.length + " image(s), highest attention first";
      sec.appendChild(h);
      const cards = document.createElement("div");
      cards.className = "cards";
      for (const im of b.images) {
        const card = document.createElement("div");
        card.className = "card";
        const panel = document.createElement("div");
        panel.className = "view";
        card.appendChild(panel);
        const overlays = {};
        for (const [k, path] of Object.entries(im.overlays || {})) overlays[k] = await blobUrl(path);
        makePanel(panel, "#" + im.rank, { base: await blobUrl(im.image), overlays });
        const att = document.createElement("div");
        att.className = "att";
        att.dataset.testid = "attention";
        att.dataset.value = String(im.attention);
        const bar = document.createElement("div");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.style.width = Math.round(Math.min(1, im.attention) * 100) + "%";
        bar.appendChild(fill);
        const txt = document.createElement("span");
        txt.textContent = "attention " + im.attention.toFixed(3);
        att.append(txt, bar);
        card.appendChild(att);
        if (im.source) {
          const src = document.createElement("div");
          src.className = "hint";
          src.textContent = im.source;
          card.appendChild(src);
        }
        cards.appendChild(card);
      }
      sec.appendChild(cards);
      box.appendChild(sec);
    }
  }

  // ------------------------------------------------------------------ downloads

  function showLinks(exam) {
    const box = $("links");
    box.textContent = "";
    const add = (text, path, filename) => {
      const a = document.createElement("a");
      a.href = "#";
      a.textContent = text;
      a.addEventListener("click", async (ev) => {
        ev.preventDefault();
        try {
          const url = path ? await blobUrl(path) : URL.createObjectURL(
            new Blob([JSON.stringify(state.job, null, 2)], { type: "application/json" }));
          const dl = document.createElement("a");
          dl.href = url;
          dl.download = filename;
          document.body.appendChild(dl);
          dl.click();
          dl.remove();
        } catch (err) { showMessage(explain(err)); }
      });
      box.appendChild(a);
    };
    for (const f of exam.figures || []) add("overlay figure (PNG)", f, f.split("/").pop());
    for (const [view, v] of Object.entries(exam.views || {})) {
      if (v.heatmaps) add(view + " heatmaps (NPZ)", v.heatmaps, v.heatmaps.split("/").pop());
    }
    for (const [side, b] of Object.entries(exam.breasts || {})) {
      if (b.saliency) add(side + " saliency (NPZ)", b.saliency, b.saliency.split("/").pop());
    }
    add("job result (JSON)", null, "job-" + state.job.id + ".json");
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("api-key").value = state.key ? "••••••••" : "";
    $("save-key").addEventListener("click", () => {
      const v = $("api-key").value;
      if (v && !/^•+$/.test(v)) setKey(v);
    });
    $("api-key").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("save-key").click(); });
    $("api-key").addEventListener("focus", () => { if (/^•+$/.test($("api-key").value)) $("api-key").value = ""; });
    $("forget-key").addEventListener("click", () => setKey(""));

    const zone = $("drop-zone");
    zone.addEventListener("click", () => $("file-input").click());
    zone.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file-input").click(); });
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      upload([...ev.dataTransfer.files]);
    });
    $("file-input").addEventListener("change", (ev) => upload([...ev.target.files]));

    $("refresh-jobs").addEventListener("click", () => loadJobs(true));
    $("more-jobs").addEventListener("click", () => loadJobs(false));
    for (const r of document.querySelectorAll("input[name=overlay]")) r.addEventListener("change", applyOverlay);
    $("opacity").addEventListener("input", applyOverlay);
    $("reset-zoom").addEventListener("click", () => state.views.forEach(resetView));
    $("exam-select").addEventListener("change", (ev) => {
      state.examIndex = Number(ev.target.value);
      showExam(state.job.exams[state.examIndex]);
    });

    loadModel();
    loadJobs(true);
    const m = /job=([0-9a-f]+)/.exec(location.hash);
    if (m && state.key) openJob(m[1]);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
