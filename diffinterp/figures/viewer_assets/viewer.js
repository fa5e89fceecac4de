/* diffinterp trajectory viewer. Reads the JSON of diffinterp/figures/viewer.py (#diffinterp-data):
   per block, arrays flattened as [steps, rows, canvas] of indices into D.strings (token labels) and
   D.ids (vocabulary ids); probabilities in 1/D.p_scale, entropies in 1/D.e_scale nats; attention as
   base64 uint8 [rows, heads, query, key]; SAE features per block as [steps, rows, positions] in
   1/D.f_scale of the feature's largest activation. No network, no libraries. */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("diffinterp-data").textContent);
  const $ = (id) => document.getElementById(id);
  const R = D.rows, C = D.canvas, PS = D.p_scale, ES = D.e_scale, FS = D.f_scale;
  const FIELDS = ["argmax", "sampled", "canvas_in", "canvas_out"];
  const state = { row: 0, block: 0, step: 0, field: "argmax", pos: -1, layer: null, feature: 0, timer: null };

  const blk = () => D.blocks[state.block];
  const label = (i) => D.strings[i];
  const vocabId = (i) => D.ids[i];
  const idx = (s, r, p) => (s * R + r) * C + p;
  const fmtP = (q) => (q / PS).toFixed(4);

  // ------------------------------------------------------------------ colours (cividis, PuOr)
  const CIVIDIS = [[0, 32, 77], [65, 77, 107], [124, 123, 120], [188, 175, 111], [255, 234, 70]];
  const PUOR = [[84, 39, 136], [153, 142, 195], [247, 247, 247], [241, 163, 64], [179, 88, 6]];
  const BLUES = [[255, 255, 255], [158, 202, 225], [49, 130, 189], [8, 48, 107]];
  function ramp(stops, t) {
    t = Math.min(1, Math.max(0, t || 0));
    const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    const a = stops[i], b = stops[i + 1];
    return [0, 1, 2].map((c) => Math.round(a[c] + f * (b[c] - a[c])));
  }
  const rgb = (c) => "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  const ink = (c) => (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? "#000" : "#fff");

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function entropyMax(b) {
    if (b._emax === undefined) {
      let m = 0;
      for (const e of b.entropy) if (e > m) m = e;
      b._emax = m || 1;
    }
    return b._emax;
  }

  function marks(b, s, r, p) {
    const acc = b.accepted[idx(s, r, p)] === 1;
    const before = s > 0 && b.accepted[idx(s - 1, r, p)] === 1;
    return { acc: acc, renoised: before && !acc, committed: s >= b.committed[r * C + p], active: b.active[s * R + r] === 1 };
  }

  const promptText = (r) => D.prompts[r].map(label).join(" ");

  // ------------------------------------------------------------------ tooltip
  const tip = $("tooltip");
  function showTip(content, event) {
    tip.textContent = "";
    tip.appendChild(content);
    tip.hidden = false;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = event.clientX + 14, y = event.clientY + 14;
    if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - w - 14);
    if (y + h > window.innerHeight - 4) y = Math.max(4, event.clientY - h - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  const hideTip = () => { tip.hidden = true; };

  function probTable(rows, cls) {
    const table = el("table", cls);
    for (const row of rows) {
      const tr = el("tr", cls + "-row");
      tr.dataset.id = row.id;
      tr.appendChild(el("td", "tk-rank", String(row.rank)));
      tr.appendChild(el("td", "tk-tok", row.tok));
      tr.appendChild(el("td", "tk-id", "#" + row.id));
      const bar = el("span", "pbar");
      bar.style.width = Math.round(60 * row.q / PS) + "px";
      const cell = el("td");
      cell.appendChild(bar);
      tr.appendChild(cell);
      tr.appendChild(el("td", "tk-p", fmtP(row.q)));
      table.appendChild(tr);
    }
    return table;
  }

  function tokenTip(p, s) {
    const b = blk(), r = state.row, i = idx(s, r, p), m = marks(b, s, r, p);
    const box = el("div");
    box.appendChild(el("h3", "", "position " + p + " \u00b7 step " + s));
    const flags = [m.acc ? "accepted" : "not accepted", m.renoised ? "re-noised" : "", m.committed ? "committed" : "",
      m.active ? "" : "row finished"].filter(Boolean).join(", ");
    box.appendChild(el("div", "", state.field + ": " + label(b[state.field][i]) + " (#" + vocabId(b[state.field][i]) +
      ") \u00b7 entropy " + (b.entropy[i] / ES).toFixed(3) + " nats \u00b7 " + flags));
    box.appendChild(el("div", "sub", "in " + label(b.canvas_in[i]) + " \u2192 sampled " + label(b.sampled[i]) +
      " \u2192 out " + label(b.canvas_out[i]) + " \u00b7 final " + label(b.final[r * C + p])));
    const T = b.topk;
    if (T) {
      const k = T.k, base = i * k, rows = [];
      for (let j = 0; j < k; j++) rows.push({ rank: j + 1, tok: label(T.ids[base + j]), id: vocabId(T.ids[base + j]), q: T.p[base + j] });
      box.appendChild(el("div", "sub", "top " + k + " of softmax(logits)"));
      box.appendChild(probTable(rows, "topk"));
    } else {
      box.appendChild(el("div", "sub", "no top-k: the run recorded no logits (generate with record_logits=True)"));
    }
    box.appendChild(scView(b, s, r, p, i, m));
    return box;
  }

  function scView(b, s, r, p, i, m) {
    const mode = D.bottleneck, box = el("div");
    const head = (text) => box.appendChild(el("div", "sub", text));
    if (s === b.steps - 1) head("self-conditioning: this is the canvas's last step; nothing follows it");
    else if (!m.active) head("self-conditioning: the row had finished; its signal stays frozen");
    else if (mode === "none") head("self-conditioning off (bottleneck none): nothing is passed on");
    else if (mode === "argmax" || mode === "sample") {
      const t = mode === "argmax" ? b.argmax[i] : b.sampled[i];
      head("self-conditioning (" + mode + ") passes on one token to step " + (s + 1) + ":");
      box.appendChild(probTable([{ rank: 1, tok: label(t), id: vocabId(t), q: PS }], "sc"));
    } else if (b.topk && b.topk.sc) {
      const T = b.topk, k = T.k, base = i * k, rows = [];
      for (let j = 0; j < k; j++) rows.push({ rank: j + 1, tok: label(T.ids[base + j]), id: vocabId(T.ids[base + j]), q: T.sc[base + j] });
      head("self-conditioning (" + mode + ", logits / T=" + b.temperature[s] + ") passes on to step " + (s + 1) + ":");
      box.appendChild(probTable(rows, "sc"));
    } else head("self-conditioning (" + mode + "): not recorded (needs the step's logits)");
    return box;
  }

  // ------------------------------------------------------------------ header, canvas, entropy
  function initControls() {
    $("title").textContent = D.title;
    const row = $("row"), block = $("block"), field = $("field");
    for (let r = 0; r < R; r++) {
      const text = promptText(r);
      row.appendChild(new Option(r + ": " + (text.length > 60 ? text.slice(0, 59) + "\u2026" : text), r));
    }
    D.blocks.forEach((b, j) => block.appendChild(new Option("canvas " + b.block + " (" + b.steps + " steps)", j)));
    for (const f of FIELDS) field.appendChild(new Option(f, f));
    row.addEventListener("change", () => { state.row = +row.value; update(); });
    block.addEventListener("change", () => { state.block = +block.value; update(); });
    field.addEventListener("change", () => { state.field = field.value; update(); });
    $("step").addEventListener("input", (e) => { state.step = +e.target.value; update(); });
    $("play").addEventListener("click", togglePlay);
    document.addEventListener("keydown", (e) => {
      const tag = e.target.tagName;
      if (tag === "SELECT" || tag === "INPUT" || tag === "BUTTON") return;
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        state.step = Math.max(0, Math.min(blk().steps - 1, state.step + (e.key === "ArrowRight" ? 1 : -1)));
        update();
        e.preventDefault();
      } else if (e.key === " ") {
        togglePlay();
        e.preventDefault();
      }
    });
    const canvas = $("canvas");
    canvas.addEventListener("mousemove", (e) => {
      const t = e.target.closest(".tok");
      if (t) showTip(tokenTip(+t.dataset.pos, state.step), e);
    });
    canvas.addEventListener("mouseleave", hideTip);
    canvas.addEventListener("click", (e) => {
      const t = e.target.closest(".tok");
      if (t) { state.pos = +t.dataset.pos; update(); }
    });
    const entropy = $("entropy");
    entropy.addEventListener("mousemove", (e) => {
      const t = e.target.closest(".bar");
      if (t) showTip(tokenTip(+t.dataset.pos, state.step), e);
    });
    entropy.addEventListener("mouseleave", hideTip);
    entropy.addEventListener("click", (e) => {
      const t = e.target.closest(".bar");
      if (t) { state.pos = +t.dataset.pos; update(); }
    });
  }

  function togglePlay() {
    const button = $("play");
    if (state.timer) {
      clearInterval(state.timer);
      state.timer = null;
      button.textContent = "\u25b6 play";
      return;
    }
    if (state.step >= blk().steps - 1) state.step = 0;
    button.textContent = "\u275a\u275a pause";
    state.timer = setInterval(() => {
      if (state.step >= blk().steps - 1) { togglePlay(); return; }
      state.step += 1;
      update();
    }, 450);
    update();
  }

  function renderHeader() {
    const b = blk(), s = state.step, range = $("step");
    range.max = String(b.steps - 1);
    range.value = String(s);
    const active = b.active[s * R + state.row] === 1;
    $("step-label").textContent = "step " + s + " / " + (b.steps - 1) + " \u00b7 T=" + b.temperature[s] + (active ? "" : " \u00b7 row finished");
    $("prompt").textContent = "prompt: " + promptText(state.row);
  }

  function renderCanvas() {
    const b = blk(), s = state.step, r = state.row, emax = entropyMax(b), field = b[state.field];
    const box = $("canvas"), frag = document.createDocumentFragment();
    for (let p = 0; p < C; p++) {
      const i = idx(s, r, p), m = marks(b, s, r, p);
      const t = el("span", "tok" + (m.acc ? " acc" : "") + (m.renoised ? " renoised" : "") + (m.committed ? " committed" : "") +
        (p === state.pos ? " sel" : "") + (m.active ? "" : " inactive"), label(field[i]));
      t.dataset.pos = p;
      const c = ramp(CIVIDIS, b.entropy[i] / emax);
      t.style.background = rgb(c);
      t.style.color = ink(c);
      frag.appendChild(t);
    }
    box.textContent = "";
    box.appendChild(frag);
    $("entropy-legend").textContent = "colour: entropy, 0 \u2026 " + (emax / ES).toFixed(2) + " nats (cividis)";
  }

  function renderEntropy() {
    const b = blk(), s = state.step, r = state.row, emax = entropyMax(b), box = $("entropy");
    const width = Math.max(2, Math.min(24, Math.floor((box.clientWidth || 600) / C) - 3));
    const frag = document.createDocumentFragment();
    for (let p = 0; p < C; p++) {
      const e = b.entropy[idx(s, r, p)];
      const bar = el("div", "bar");
      bar.dataset.pos = p;
      bar.style.width = width + "px";
      bar.style.height = Math.max(1, Math.round(44 * e / emax)) + "px";
      if (p === state.pos) bar.style.background = "#E69F00";
      frag.appendChild(bar);
    }
    box.textContent = "";
    box.appendChild(frag);
  }

  // ------------------------------------------------------------------ tokens x steps (draws only what is in view)
  const CW = 48, CH = 18, LW = 44, TH = 18;
  function cellAt(e) {
    const wrap = $("grid-wrap"), rect = $("grid-canvas").getBoundingClientRect();
    const x = e.clientX - rect.left + wrap.scrollLeft - LW, y = e.clientY - rect.top + wrap.scrollTop - TH;
    const s = Math.floor(y / CH), p = Math.floor(x / CW);
    return s >= 0 && s < blk().steps && p >= 0 && p < C && e.clientX - rect.left > LW && e.clientY - rect.top > TH ? { s: s, p: p } : null;
  }

  function initGrid() {
    const wrap = $("grid-wrap"), cv = $("grid-canvas");
    wrap.addEventListener("scroll", drawGrid, { passive: true });
    window.addEventListener("resize", () => { drawGrid(); renderEntropy(); });
    cv.addEventListener("mousemove", (e) => { const c = cellAt(e); if (c) showTip(tokenTip(c.p, c.s), e); else hideTip(); });
    cv.addEventListener("mouseleave", hideTip);
    cv.addEventListener("click", (e) => { const c = cellAt(e); if (c) { state.step = c.s; state.pos = c.p; update(); } });
  }

  function drawGrid(scrollToStep) {
    const b = blk(), n = b.steps, wrap = $("grid-wrap"), cv = $("grid-canvas"), spacer = $("grid-spacer");
    spacer.style.width = LW + C * CW + "px";
    spacer.style.height = TH + n * CH + "px";
    if (scrollToStep === true) {
      const y = TH + state.step * CH;
      if (y < wrap.scrollTop + TH || y + CH > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = Math.max(0, y - wrap.clientHeight / 2);
    }
    const sl = wrap.scrollLeft, st = wrap.scrollTop, w = wrap.clientWidth, h = wrap.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    cv.style.left = sl + "px";
    cv.style.top = st + "px";
    cv.style.width = w + "px";
    cv.style.height = h + "px";
    cv.width = Math.max(1, Math.round(w * dpr));
    cv.height = Math.max(1, Math.round(h * dpr));
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const r = state.row, emax = entropyMax(b), field = b[state.field];
    const s0 = Math.max(0, Math.floor(st / CH)), s1 = Math.min(n, Math.ceil((st + h) / CH) + 1);
    const p0 = Math.max(0, Math.floor(sl / CW)), p1 = Math.min(C, Math.ceil((sl + w) / CW) + 1);
    ctx.font = "10px ui-monospace, Menlo, monospace";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let s = s0; s < s1; s++) {
      for (let p = p0; p < p1; p++) {
        const i = idx(s, r, p), x = LW + p * CW - sl, y = TH + s * CH - st, c = ramp(CIVIDIS, b.entropy[i] / emax);
        ctx.fillStyle = rgb(c);
        ctx.fillRect(x, y, CW - 1, CH - 1);
        if (b.accepted[i] === 1) { ctx.strokeStyle = "#009E73"; ctx.lineWidth = 2; ctx.strokeRect(x + 1, y + 1, CW - 3, CH - 3); }
        ctx.fillStyle = ink(c);
        ctx.fillText(label(field[i]).slice(0, 6), x + CW / 2, y + CH / 2);
      }
    }
    ctx.strokeStyle = "#E69F00";
    ctx.lineWidth = 2;
    ctx.strokeRect(LW - 1, TH + state.step * CH - st - 1, C * CW + 1, CH + 1);
    if (state.pos >= 0) ctx.strokeRect(LW + state.pos * CW - sl - 1, TH - 1, CW + 1, n * CH + 1 - st);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, TH);
    ctx.fillRect(0, 0, LW, h);
    ctx.fillStyle = "#6b6b70";
    for (let p = p0; p < p1; p++) ctx.fillText(String(p), LW + p * CW - sl + CW / 2, TH / 2);
    ctx.textAlign = "right";
    for (let s = s0; s < s1; s++) ctx.fillText("s" + s, LW - 6, TH + s * CH - st + CH / 2);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, LW, TH);
  }

  // ------------------------------------------------------------------ logit lens of the selected position
  // The table is rebuilt only when its block, row, position or layer changes; a new step moves the outline.
  let lensKey = null;
  function renderLens() {
    const b = blk(), L = b.lens, box = $("lens"), title = $("lens-title");
    const key = [state.block, state.row, state.pos, state.layer].join(":");
    if (L && state.pos >= 0 && key === lensKey) {
      for (const cell of box.querySelectorAll(".cur")) cell.classList.remove("cur");
      for (const cell of box.querySelectorAll('[data-step="' + state.step + '"]')) cell.classList.add("cur");
      return;
    }
    lensKey = null;
    box.textContent = "";
    title.textContent = "";
    if (!L) {
      box.appendChild(el("p", "empty", "no logit lens: cache decoder.blocks.*.hook_resid_post and give the model (diffinterp view --model)"));
      return;
    }
    if (state.pos < 0) { box.appendChild(el("p", "empty", "click a canvas position: its top-1 lens token per layer and step")); return; }
    const NP = L.positions ? L.positions.length : C, pi = L.positions ? L.positions.indexOf(state.pos) : state.pos;
    if (pi < 0) { box.appendChild(el("p", "empty", "position " + state.pos + " was not cached (cached: " + L.positions.join(", ") + ")")); return; }
    const NL = L.layers.length, r = state.row;
    title.textContent = "position " + state.pos + " (final token " + label(b.final[r * C + state.pos]) + "): top-1 token, colour = its probability";
    const table = el("table", "lens"), head = el("tr");
    head.appendChild(el("th", "", "layer \\ step"));
    for (const s of L.steps) {
      const th = el("th", s === state.step ? "cur" : "", String(s));
      th.dataset.step = s;
      head.appendChild(th);
    }
    table.appendChild(head);
    for (let li = NL - 1; li >= 0; li--) {
      const layer = L.layers[li], tr = el("tr", layer === state.layer ? "sel" : "");
      tr.appendChild(el("th", "", "L" + layer));
      L.steps.forEach((s, si) => {
        const i = ((si * NL + li) * R + r) * NP + pi, c = ramp(CIVIDIS, L.p[i] / PS);
        const td = el("td", s === state.step ? "cur" : "", label(L.top[i]).slice(0, 8));
        td.style.background = rgb(c);
        td.style.color = ink(c);
        td.dataset.step = s;
        td.dataset.layer = layer;
        td.dataset.p = fmtP(L.p[i]);
        td.title = "layer " + layer + ", step " + s + ": " + label(L.top[i]) + " (#" + vocabId(L.top[i]) + ") p=" + fmtP(L.p[i]);
        tr.appendChild(td);
      });
      table.appendChild(tr);
    }
    table.addEventListener("click", (e) => {
      const td = e.target.closest("td");
      if (!td) return;
      state.layer = +td.dataset.layer;
      if (+td.dataset.step < b.steps) state.step = +td.dataset.step;
      update();
    });
    box.appendChild(table);
    lensKey = key;
  }

  // ------------------------------------------------------------------ attention per head
  const decoded = {};
  function pattern(A, layer, step) {
    const key = state.block + ":" + layer + ":" + step;
    if (!decoded[key]) {
      const raw = atob(A.data[layer + ":" + step]), bytes = new Uint8Array(raw.length);
      for (let j = 0; j < raw.length; j++) bytes[j] = raw.charCodeAt(j);
      decoded[key] = bytes;
    }
    return decoded[key];
  }

  function keyLabel(b, s, r, K, k) {
    const nPrefix = K - C;
    if (k < nPrefix) {
      const pos = b.prefix_len - nPrefix + k;
      return "prefix " + pos + " " + label(b.prefix[r * b.prefix_len + pos]);
    }
    return "canvas " + (k - nPrefix) + " " + label(b.canvas_in[idx(s, r, k - nPrefix)]);
  }

  function renderAttention() {
    const b = blk(), A = b.attention, box = $("attention"), select = $("attn-layer"), title = $("attn-title");
    box.textContent = "";
    title.textContent = "";
    select.textContent = "";
    if (!A) {
      select.hidden = true;
      box.appendChild(el("p", "empty", "no attention: cache decoder.blocks.*.attn.hook_pattern"));
      return;
    }
    select.hidden = false;
    for (const layer of A.layers) select.appendChild(new Option("L" + layer, layer));
    const layer = A.layers.indexOf(state.layer) >= 0 ? state.layer : A.layers[A.layers.length - 1];
    select.value = String(layer);
    select.onchange = () => { state.layer = +select.value; update(); };
    const s = state.step, steps = A.steps[layer];
    if (steps.indexOf(s) < 0) {
      box.appendChild(el("p", "empty", "step " + s + " of layer " + layer + " was not cached (cached steps: " + steps.join(", ") + ")"));
      return;
    }
    const H = A.heads, K = A.keys[layer], Q = A.positions ? A.positions.length : C, r = state.row;
    const qi = state.pos < 0 ? -1 : A.positions ? A.positions.indexOf(state.pos) : state.pos;
    const data = pattern(A, layer, s), cell = Math.max(1, Math.min(8, Math.floor(260 / K)));
    title.textContent = "step " + s + ", layer " + layer + ": rows = query positions, columns = keys (" + (K - C) +
      " prefix + " + C + " canvas)" + (qi >= 0 ? "; query " + state.pos + " outlined" : "; click a position to outline its row");
    const heads = el("div", "heads");
    for (let h = 0; h < H; h++) {
      const wrap = el("div", "head"), base = (r * H + h) * Q * K, frame = el("div", "frame");
      wrap.appendChild(el("div", "", "head " + h));
      frame.appendChild(headCanvas(state.block + ":" + layer + ":" + s + ":" + r, h, data, base, Q, K, cell));
      if (qi >= 0) {
        const outline = el("div", "qrow");
        outline.style.top = qi * cell - 1 + "px";
        outline.style.height = cell + 2 + "px";
        frame.appendChild(outline);
      }
      wrap.appendChild(frame);
      if (qi >= 0) {
        const row = Array.from(data.subarray(base + qi * K, base + (qi + 1) * K)), order = row.map((v, k) => k).sort((x, y) => row[y] - row[x]);
        const top = order.slice(0, 3).map((k) => keyLabel(b, s, r, K, k) + " " + (row[k] / 255).toFixed(2)).join("\n");
        const note = el("div", "top", top);
        note.dataset.top = order[0];
        wrap.appendChild(note);
      }
      frame.addEventListener("mousemove", (e) => {
        const q = Math.floor(e.offsetY / cell), k = Math.floor(e.offsetX / cell);
        if (q < 0 || q >= Q || k < 0 || k >= K) return;
        const qpos = A.positions ? A.positions[q] : q;
        showTip(el("div", "", "head " + h + " \u00b7 query canvas " + qpos + " " + label(b.canvas_in[idx(s, r, qpos)]) + " \u2192 key " +
          keyLabel(b, s, r, K, k) + ": " + (data[base + q * K + k] / 255).toFixed(3)), e);
      });
      frame.addEventListener("mouseleave", hideTip);
      frame.addEventListener("click", (e) => {
        const q = Math.floor(e.offsetY / cell);
        if (q >= 0 && q < Q) { state.pos = A.positions ? A.positions[q] : q; update(); }
      });
      heads.appendChild(wrap);
    }
    box.appendChild(heads);
  }

  // The heads' canvases of the pattern on show, drawn once (one pixel per query x key, scaled by CSS):
  // selecting another query position only moves the outline.
  const BLUES_LUT = Array.from({ length: 256 }, (v, j) => ramp(BLUES, j / 255));
  let drawnKey = null, drawn = [];
  function headCanvas(group, h, data, base, Q, K, cell) {
    if (group !== drawnKey) { drawnKey = group; drawn = []; }
    let cv = drawn[h];
    if (!cv) {
      cv = drawn[h] = el("canvas");
      cv.width = K;
      cv.height = Q;
      const ctx = cv.getContext("2d"), img = ctx.createImageData(K, Q);
      for (let j = 0; j < Q * K; j++) {
        const c = BLUES_LUT[data[base + j]];
        img.data[4 * j] = c[0];
        img.data[4 * j + 1] = c[1];
        img.data[4 * j + 2] = c[2];
        img.data[4 * j + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
    }
    cv.style.width = K * cell + "px";
    cv.style.height = Q * cell + "px";
    return cv;
  }

  // ------------------------------------------------------------------ patching heatmaps, linked by their axes
  // A canvas of w x h CSS pixels drawn at the screen's resolution, its cell layout in its dataset.
  function heatmapCanvas(w, h, left, top, cw, ch) {
    const cv = el("canvas"), dpr = window.devicePixelRatio || 1;
    cv.width = w * dpr;
    cv.height = h * dpr;
    cv.style.width = w + "px";
    cv.style.height = h + "px";
    Object.assign(cv.dataset, { left: left, top: top, cw: cw, ch: ch });  // the cell layout, for scripts and tests
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return [cv, ctx];
  }

  // Outline the selected row a0 and column c0 (-1: none), then set the style of the axis labels.
  function outlineAndLabelStyle(ctx, left, top, cw, ch, rows, cols, a0, c0) {
    ctx.strokeStyle = "#E69F00";
    ctx.lineWidth = 2;
    if (a0 >= 0) ctx.strokeRect(left - 1, top + a0 * ch - 1, cols * cw + 1, ch + 1);
    if (c0 >= 0) ctx.strokeRect(left + c0 * cw - 1, top - 1, cw + 1, rows * ch + 1);
    ctx.fillStyle = "#6b6b70";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
  }

  // The [row, column] of the heatmap cell under a mouse event, or null outside the cells.
  function heatmapCell(e, left, top, cw, ch, rows, cols) {
    const c = Math.floor((e.offsetX - left) / cw), a = Math.floor((e.offsetY - top) / ch);
    return a >= 0 && a < rows && c >= 0 && c < cols ? [a, c] : null;
  }
  const LINKS = { step: "step", position: "pos", pos: "pos", layer: "layer" };
  function linkedIndex(name, labels) {
    const key = LINKS[name];
    return key ? labels.indexOf(state[key]) : -1;
  }

  function follow(name, value) {
    const key = LINKS[name];
    if (!key || typeof value !== "number") return;
    if (key === "step" && value >= blk().steps) return;
    state[key] = value;
  }

  function renderPatching() {
    const box = $("patching");
    box.textContent = "";
    if (!D.patching.length) {
      box.appendChild(el("p", "empty", "no patching results (diffinterp view --patching patching.json)"));
      return;
    }
    D.patching.forEach((P, n) => {
      const [name0, labels0] = P.axes[0], [name1, labels1] = P.axes[1];
      const rows = labels0.length, cols = labels1.length;
      const cw = Math.max(4, Math.min(28, Math.floor(560 / cols))), ch = Math.max(4, Math.min(22, Math.floor(300 / rows)));
      const left = 70, top = 8, bottom = 34, w = Math.max(200, left + cols * cw + 8), h = top + rows * ch + bottom;
      let max = 0;
      for (const v of P.values) if (v !== null && Math.abs(v) > max) max = Math.abs(v);
      const panel = el("div", "panel");
      panel.dataset.index = n;
      panel.appendChild(el("h3", "", P.title));
      const info = Object.entries(P.info || {}).map(([k, v]) => k + ": " + v);
      info.push("colour: PuOr, \u00b1" + max.toFixed(3) + " (grey: undefined)");
      panel.appendChild(el("div", "info", info.join(" \u00b7 ")));
      const [cv, ctx] = heatmapCanvas(w, h, left, top, cw, ch);
      for (let a = 0; a < rows; a++) {
        for (let c = 0; c < cols; c++) {
          const v = P.values[a * cols + c];
          ctx.fillStyle = v === null ? "#e4e4e8" : rgb(ramp(PUOR, 0.5 + 0.5 * v / (max || 1)));
          ctx.fillRect(left + c * cw, top + a * ch, cw - 1, ch - 1);
        }
      }
      outlineAndLabelStyle(ctx, left, top, cw, ch, rows, cols, linkedIndex(name0, labels0), linkedIndex(name1, labels1));
      const every0 = Math.ceil(12 / ch), every1 = Math.ceil(22 / cw);
      labels0.forEach((l, a) => { if (a % every0 === 0) ctx.fillText(String(l).slice(0, 10), left - 4, top + a * ch + ch / 2); });
      ctx.textAlign = "center";
      labels1.forEach((l, c) => { if (c % every1 === 0) ctx.fillText(String(l).slice(0, 6), left + c * cw + cw / 2, top + rows * ch + 8); });
      ctx.fillText(name1, left + (cols * cw) / 2, top + rows * ch + 24);
      ctx.save();
      ctx.translate(10, top + (rows * ch) / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(name0, 0, 0);
      ctx.restore();
      const cellOf = (e) => { const hit = heatmapCell(e, left, top, cw, ch, rows, cols); return hit && { a: hit[0], c: hit[1] }; };
      cv.addEventListener("mousemove", (e) => {
        const hit = cellOf(e);
        if (!hit) { hideTip(); return; }
        const v = P.values[hit.a * cols + hit.c];
        showTip(el("div", "patch-tip", name0 + " " + labels0[hit.a] + ", " + name1 + " " + labels1[hit.c] + ": " +
          (v === null ? "n/a" : v.toFixed(4))), e);
      });
      cv.addEventListener("mouseleave", hideTip);
      cv.addEventListener("click", (e) => {
        const hit = cellOf(e);
        if (!hit) return;
        follow(name0, labels0[hit.a]);
        follow(name1, labels1[hit.c]);
        update();
      });
      panel.appendChild(cv);
      box.appendChild(panel);
    });
  }

  // ------------------------------------------------------------------ SAE features: steps x positions, commit steps marked
  function initFeatures() {
    $("feature").addEventListener("change", (e) => { state.feature = +e.target.value; update(); });
  }

  let featureBlock = null;
  function renderFeatures() {
    const F = blk().features || [], box = $("features"), select = $("feature");
    if (featureBlock !== state.block) {  // the selector lists the features of the shown canvas
      featureBlock = state.block;
      select.textContent = "";
      F.forEach((f, n) => select.appendChild(new Option(f.name + " \u00b7 feature " + f.feature, n)));
      state.feature = 0;
    }
    box.textContent = "";
    if (!F.length) {
      box.appendChild(el("p", "empty", "no SAE features (diffinterp view --sae DIR, with the SAE's hook cached)"));
      return;
    }
    const P = F[Math.min(state.feature, F.length - 1)], r = state.row, NP = P.positions.length, S = P.steps;
    const value = (s, p) => (P.values[(s * R + r) * NP + p] / FS) * P.max;
    const cw = Math.max(6, Math.min(28, Math.floor(640 / NP))), ch = Math.max(6, Math.min(18, Math.floor(360 / S)));
    const left = 40, top = 8, bottom = 34, w = Math.max(200, left + NP * cw + 8), h = top + S * ch + bottom;
    const panel = el("div", "panel");
    panel.appendChild(el("h3", "", P.name + " \u00b7 feature " + P.feature));
    panel.appendChild(el("div", "info", "largest activation in this run " + P.max.toPrecision(4) +
      " \u00b7 colour: Blues, 0 \u2026 " + P.max.toPrecision(4) + " \u00b7 black outline: commit step"));
    const [cv, ctx] = heatmapCanvas(w, h, left, top, cw, ch);
    for (let s = 0; s < S; s++) {
      for (let p = 0; p < NP; p++) {
        ctx.fillStyle = rgb(ramp(BLUES, Math.abs(P.values[(s * R + r) * NP + p]) / FS));
        ctx.fillRect(left + p * cw, top + s * ch, cw - 1, ch - 1);
      }
    }
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1.5;
    for (let p = 0; p < NP; p++) ctx.strokeRect(left + p * cw + 0.5, top + P.commit[r * NP + p] * ch + 0.5, cw - 2, ch - 2);
    outlineAndLabelStyle(ctx, left, top, cw, ch, S, NP, state.step < S ? state.step : -1, P.positions.indexOf(state.pos));
    const everyS = Math.ceil(12 / ch), everyP = Math.ceil(22 / cw);
    for (let s = 0; s < S; s += everyS) ctx.fillText("s" + s, left - 4, top + s * ch + ch / 2);
    ctx.textAlign = "center";
    P.positions.forEach((pos, p) => { if (p % everyP === 0) ctx.fillText(String(pos), left + p * cw + cw / 2, top + S * ch + 8); });
    ctx.fillText("position", left + (NP * cw) / 2, top + S * ch + 24);
    const cellOf = (e) => { const hit = heatmapCell(e, left, top, cw, ch, S, NP); return hit && { s: hit[0], p: hit[1] }; };
    cv.addEventListener("mousemove", (e) => {
      const hit = cellOf(e);
      if (!hit) { hideTip(); return; }
      const pos = P.positions[hit.p], b = blk(), token = hit.s < b.steps ? " \u00b7 argmax " + label(b.argmax[idx(hit.s, r, pos)]) : "";
      showTip(el("div", "feature-tip", "step " + hit.s + ", position " + pos + ": " + value(hit.s, hit.p).toPrecision(4) +
        " (commits at step " + P.commit[r * NP + hit.p] + ")" + token), e);
    });
    cv.addEventListener("mouseleave", hideTip);
    cv.addEventListener("click", (e) => {
      const hit = cellOf(e);
      if (!hit) return;
      if (hit.s < blk().steps) state.step = hit.s;
      state.pos = P.positions[hit.p];
      update();
    });
    panel.appendChild(cv);
    box.appendChild(panel);
  }

  // ------------------------------------------------------------------ everything follows the state
  function update() {
    state.step = Math.max(0, Math.min(state.step, blk().steps - 1));
    renderHeader();
    renderCanvas();
    renderEntropy();
    drawGrid(true);
    renderLens();
    renderAttention();
    renderPatching();
    renderFeatures();
  }

  initControls();
  initGrid();
  initFeatures();
  update();
  window.diffinterpViewer = { data: D, state: state, update: update };
})();
