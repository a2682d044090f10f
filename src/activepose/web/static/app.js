/* activepose labelling page (docs/labelling-api.md is the server's contract).
 *
 * Plain JavaScript, no build step, nothing fetched from the network but the page's own server.
 * Every text that comes from the server (file names, annotator names, error details) is written with
 * textContent, never as HTML.
 *
 * Effort recorded per person and sent with each save (people[].seconds / people[].clicks):
 *  - clicks: one per action that changes the person: a drag that moved one of its keypoints (counted at the
 *    drag's end), a keypoint placed by a click, a visibility change (V). Selecting, panning, zooming and
 *    skipping a keypoint while adding (S) change nothing and are not counted.
 *  - seconds: the time leading up to each action on the person. A person action (an edit above, or
 *    selecting one of its keypoints by click, Tab or the side list, or skipping while adding it) is charged
 *    with the time since the previous person action (or since the image was opened), each gap capped at
 *    IDLE_CAP_S so a coffee break is not charged. Looking, panning and zooming before an edit therefore
 *    count for the person that edit touches.
 *  - the request's top-level `seconds`: the image's active time (time between any two inputs, each gap
 *    capped at IDLE_CAP_S) from opening it to saving.
 * People loaded from existing labels start from their stored seconds / clicks, so re-saving accumulates.
 */
"use strict";

(() => {
  const IDLE_CAP_S = 30;
  const WEAK = 0.3;
  const LEASE_RENEW_MS = 60000;
  const ROUND_REFRESH_MS = 30000;
  const HIT_PX = 11;
  const DRAG_PX = 3;
  // The server's rule (letters, digits, space, . _ @ -), in ASCII: fetch() refuses header values outside
  // ISO-8859-1, so a name like "李" could never be sent as X-Annotator.
  const NAME_RE = /^[A-Za-z0-9 ._@-]{1,64}$/;
  const NAME_KEY = "activepose.annotator";
  const COLORS = ["#4cc9f0", "#f72585", "#b8f35a", "#ffbe0b", "#a77bff", "#ff7b39", "#2ee6b0", "#ff8fc0",
    "#5fa8ff", "#e9ff70"];

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");

  const S = {
    annotator: null,
    round: null, // GET /api/round
    skel: null,
    K: 0,
    image: null, // GET /api/images/{id}
    img: null, // HTMLImageElement
    loadSeq: 0,
    people: [], // {uid, origin, score, color, kps: [{x, y, v, conf, edited, placed}]}
    stats: new Map(), // uid -> {clicks, seconds}
    nextUid: 1,
    sel: { uid: null, k: -1 },
    add: null, // {uid, next}: adding (placing) keypoints of a person in skeleton order
    hover: null, // {uid, k}
    view: { s: 1, tx: 0, ty: 0 },
    undo: [],
    redo: [],
    dirty: false,
    saving: false,
    activeS: 0,
    lastInput: 0,
    lastMark: 0,
    tabVisited: [],
    drag: null,
    pan: null,
    spaceDown: false,
    pointer: null, // last pointer position in canvas px
    theirs: null, // the conflicting version, drawn while the conflict dialog is open
    leaveArmed: null,
    leaseTimer: null,
    roundTimer: null,
    canSave: true,
  };

  // ---------------------------------------------------------------------------------------------------
  // server
  class ApiError extends Error {
    constructor(status, detail, body) {
      super(detail);
      this.status = status;
      this.body = body;
    }
  }

  function detailText(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && body.detail !== undefined) return JSON.stringify(body.detail);
    return `the server answered ${status}`;
  }

  async function api(method, path, body, opts = {}) {
    const headers = { "Accept": "application/json" };
    if (S.annotator) headers["X-Annotator"] = S.annotator;
    // Every state change says JSON, body or not: the server refuses any other content type there, which
    // a cross-site form or "simple" request cannot send without a CORS preflight (that it never grants).
    if (method !== "GET") headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, {
        method, headers, credentials: "same-origin", keepalive: !!opts.keepalive,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "the server cannot be reached (is `activepose annotate` still running?)", null);
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      let detail = detailText(data, res.status);
      if (res.status === 401) detail += " — open the page with the link `activepose annotate` printed (…/?token=…).";
      throw new ApiError(res.status, detail, data);
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------------------
  // messages
  let messageTimer = null;
  function showMessage(text, kind = "error", ms = 0) {
    const box = $("message");
    $("message-text").textContent = text;
    box.className = "message" + (kind === "error" ? "" : " " + kind);
    box.hidden = false;
    clearTimeout(messageTimer);
    if (ms) messageTimer = setTimeout(() => { box.hidden = true; }, ms);
  }
  function hideMessage() { $("message").hidden = true; }
  $("message-close").addEventListener("click", hideMessage);

  // ---------------------------------------------------------------------------------------------------
  // geometry
  function canvasSize() {
    const r = canvas.getBoundingClientRect();
    return { w: r.width, h: r.height, left: r.left, top: r.top };
  }
  function toScreen(x, y) { return { x: x * S.view.s + S.view.tx, y: y * S.view.s + S.view.ty }; }
  function toImage(px, py) { return { x: (px - S.view.tx) / S.view.s, y: (py - S.view.ty) / S.view.s }; }
  function eventPoint(e) { const c = canvasSize(); return { x: e.clientX - c.left, y: e.clientY - c.top }; }
  function insideImage(p) { return S.image && p.x >= 0 && p.y >= 0 && p.x <= S.image.width && p.y <= S.image.height; }
  function clampToImage(p) {
    return { x: Math.min(Math.max(p.x, 0), S.image.width), y: Math.min(Math.max(p.y, 0), S.image.height) };
  }

  function fitView() {
    if (!S.image) return;
    const c = canvasSize();
    const pad = 28;
    const s = Math.min((c.w - 2 * pad) / S.image.width, (c.h - 2 * pad) / S.image.height);
    S.view.s = Math.max(s, 0.02);
    S.view.tx = (c.w - S.image.width * S.view.s) / 2;
    S.view.ty = (c.h - S.image.height * S.view.s) / 2;
    draw();
  }

  function zoomAt(factor, px, py) {
    const s = Math.min(Math.max(S.view.s * factor, 0.05), 64);
    const f = s / S.view.s;
    S.view.tx = px - (px - S.view.tx) * f;
    S.view.ty = py - (py - S.view.ty) * f;
    S.view.s = s;
    draw();
  }

  function ensureVisible(x, y) {
    const c = canvasSize();
    const p = toScreen(x, y);
    const m = 40;
    if (p.x < m || p.y < m || p.x > c.w - m || p.y > c.h - m) {
      S.view.tx += c.w / 2 - p.x;
      S.view.ty += c.h / 2 - p.y;
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // people, selection, effort
  function person(uid) { return S.people.find((p) => p.uid === uid) || null; }
  function personIndex(uid) { return S.people.findIndex((p) => p.uid === uid); }
  function stats(uid) {
    if (!S.stats.has(uid)) S.stats.set(uid, { clicks: 0, seconds: 0 });
    return S.stats.get(uid);
  }
  function labelled(kp) { return kp.v > 0; }
  // A point nobody has checked yet: the model's (below WEAK confidence), or copied from another frame.
  function unchecked(p, kp) { return (p.origin === "predicted" || p.origin === "copied") && kp.v > 0 && !kp.edited; }
  function isWeak(p, kp) { return unchecked(p, kp) && (p.origin === "copied" || kp.conf < WEAK); }
  function side(k) { return (S.skel.sides && S.skel.sides[k]) || "center"; }
  function kpName(k) { return S.skel.keypoints[k].replace(/_/g, " "); }
  function freeColor() {
    const used = new Set(S.people.map((p) => p.color));
    for (let i = 0; i < COLORS.length; i++) if (!used.has(i)) return i;
    return S.people.length % COLORS.length;
  }

  function noteInput() {
    const now = performance.now();
    S.activeS += Math.min((now - S.lastInput) / 1000, IDLE_CAP_S);
    S.lastInput = now;
  }
  // Charge the time since the previous person action to person `uid` (see the header comment).
  function chargeTime(uid) {
    const now = performance.now();
    const dt = Math.min((now - S.lastMark) / 1000, IDLE_CAP_S);
    S.lastMark = now;
    if (uid != null) stats(uid).seconds += dt;
  }

  function snapshot() {
    return {
      people: S.people.map((p) => ({ ...p, kps: p.kps.map((k) => ({ ...k })) })),
      sel: { ...S.sel },
      add: S.add ? { ...S.add } : null,
    };
  }
  function restore(snap) {
    S.people = snap.people.map((p) => ({ ...p, kps: p.kps.map((k) => ({ ...k })) }));
    S.sel = { ...snap.sel };
    S.add = snap.add ? { ...snap.add } : null;
    if (S.add && !person(S.add.uid)) S.add = null;
    if (S.sel.uid != null && !person(S.sel.uid)) S.sel = { uid: null, k: -1 };
  }
  function pushUndo(snap) {
    S.undo.push(snap || snapshot());
    if (S.undo.length > 500) S.undo.shift();
    S.redo = [];
  }
  // An edit of person `uid` is done: count the click, charge the time, redraw.
  function edited(uid, click = true) {
    if (click) stats(uid).clicks += 1;
    chargeTime(uid);
    markDirty();
    refresh();
  }
  function markDirty() {
    S.dirty = true;
    S.leaveArmed = null;
    $("status-dirty").hidden = false;
  }
  function undo() {
    if (!S.undo.length) return showMessage("nothing to undo", "info", 1500);
    S.redo.push(snapshot());
    restore(S.undo.pop());
    markDirty();
    refresh();
  }
  function redo() {
    if (!S.redo.length) return showMessage("nothing to redo", "info", 1500);
    S.undo.push(snapshot());
    restore(S.redo.pop());
    markDirty();
    refresh();
  }

  function select(uid, k, charge = true) {
    S.sel = { uid, k };
    if (uid != null && charge) chargeTime(uid);
    refresh();
  }

  // ---------------------------------------------------------------------------------------------------
  // loading
  function personFrom(points, origin, score, withConf) {
    const uid = S.nextUid++;
    const kps = [];
    for (let k = 0; k < S.K; k++) {
      const row = points[k] || [0, 0, 0];
      const [x, y, third] = row;
      let v, conf;
      if (withConf) {
        conf = Number(third) || 0;
        v = conf > 0 || x !== 0 || y !== 0 ? 2 : 0;
      } else {
        v = Number(third) || 0;
        conf = 1;
      }
      kps.push({ x: Number(x), y: Number(y), v, conf, edited: !withConf, placed: v > 0 });
    }
    return { uid, origin, score, kps, color: 0 };
  }

  async function loadRound() {
    const r = await api("GET", "/api/round");
    S.round = r;
    S.skel = r.skeleton;
    S.K = r.skeleton.keypoints.length;
    renderRound();
    return r;
  }

  function imageEntry(id) { return S.round ? S.round.images.find((im) => im.id === id) : null; }

  async function openImage(id) {
    const seq = ++S.loadSeq;
    const previous = S.image;
    stopLease();
    if (previous && previous.id !== id && previous.lease && previous.lease.mine) {
      api("DELETE", `/api/images/${previous.id}/lease`).catch(() => {});
    }
    let data;
    try {
      data = await api("GET", `/api/images/${id}`);
    } catch (e) {
      if (seq === S.loadSeq) showMessage(`image ${id}: ${e.message}`);
      return;
    }
    const img = new Image();
    img.src = `/api/images/${id}/file`;
    try { await img.decode(); } catch (e) {
      if (seq === S.loadSeq) showMessage(`image ${data.file}: the picture could not be loaded`);
    }
    if (seq !== S.loadSeq) return;
    S.image = data;
    S.img = img;
    S.people = [];
    S.stats = new Map();
    const fromLabels = data.state !== "queued" || (data.labels && data.labels.length > 0);
    if (fromLabels) {
      for (const lab of data.labels || []) {
        const p = personFrom(lab.keypoints, "manual", null, false);
        S.stats.set(p.uid, { clicks: Number(lab.clicks) || 0, seconds: Number(lab.seconds) || 0 });
        S.people.push(p);
      }
    } else {
      for (const pred of data.predictions || []) {
        const p = personFrom(pred.keypoints, "predicted", pred.score, true);
        if (p.kps.some(labelled)) S.people.push(p);
      }
    }
    S.people.forEach((p, i) => { p.color = i % COLORS.length; });
    S.sel = { uid: null, k: -1 };
    S.add = null;
    S.hover = null;
    S.undo = [];
    S.redo = [];
    S.dirty = false;
    S.tabVisited = [];
    S.theirs = null;
    S.leaveArmed = null;
    S.activeS = 0;
    S.lastInput = S.lastMark = performance.now();
    $("status-dirty").hidden = true;
    if (!$("message").classList.contains("ok")) hideMessage(); // a "saved" note stays for its 2 s
    history.replaceState(null, "", `#image=${id}`);
    updateEntry(id, { state: data.state, lease: data.lease });
    renderLease();
    startLease();
    fitView();
    refresh();
    renderImageList();
  }

  function renderLease() {
    const im = S.image;
    const box = $("lease-banner");
    S.canSave = !(S.round && S.round.read_only);
    if (S.round && S.round.read_only && !S.round.complete) {
      box.textContent = `Round ${S.round.round} is ${S.round.state}: you can look at the images but not save.`;
      box.hidden = false;
    } else if (S.round && S.round.complete) {
      box.hidden = true;
    } else if (im && im.lease && !im.lease.mine) {
      const mins = Math.max(1, Math.round((im.lease.expires_in || 0) / 60));
      box.textContent = `${im.lease.annotator} is labelling this image (lease: about ${mins} min left). You can look; saving waits until they finish.`;
      box.hidden = false;
    } else {
      box.hidden = true;
    }
  }

  function stopLease() { clearInterval(S.leaseTimer); S.leaseTimer = null; }
  function startLease() {
    stopLease();
    const id = S.image.id;
    S.leaseTimer = setInterval(async () => {
      if (!S.image || S.image.id !== id || S.image.state !== "queued") return;
      try {
        const r = await api("POST", `/api/images/${id}/lease`);
        if (S.image && S.image.id === id) { S.image.lease = r.lease; renderLease(); }
      } catch (e) {
        if (e.status === 423 && S.image && S.image.id === id) {
          const who = leaseHolder(e);
          showMessage(`the lease of this image is held by ${who}: ${e.message}`);
        } else if (e.status) {
          showMessage(`renewing the lease: ${e.message}`);
        }
      }
    }, LEASE_RENEW_MS);
  }
  function leaseHolder(e) {
    const l = e.body && (e.body.lease || (e.body.conflict && e.body.conflict.lease));
    return (l && l.annotator) || "another annotator";
  }

  // ---------------------------------------------------------------------------------------------------
  // saving
  function bodyPeople() {
    const out = [];
    for (const p of S.people) {
      if (!p.kps.some(labelled)) continue;
      const st = stats(p.uid);
      out.push({
        keypoints: p.kps.map((k) => (k.v > 0 ? [round2(k.x), round2(k.y), k.v] : [0, 0, 0])),
        seconds: round2(st.seconds),
        clicks: st.clicks,
        origin: p.origin,
      });
    }
    return out;
  }
  function round2(x) { return Math.round(x * 100) / 100; }

  async function save({ force = false, nobody = false, next = false } = {}) {
    if (!S.image || S.saving) return;
    if (!S.canSave) return showMessage("this round is read-only: nothing can be saved");
    if (S.add) finishAdd();
    noteInput();
    const id = S.image.id;
    const body = {
      revision: S.image.revision, force, seconds: round2(S.activeS), people: nobody ? [] : bodyPeople(),
    };
    S.saving = true;
    try {
      const r = await api("POST", `/api/images/${id}/labels`, body);
      if (nobody && S.image && S.image.id === id) {
        S.people = [];
        S.sel = { uid: null, k: -1 };
      }
      afterWrite(id, r);
      const n = body.people.length;
      showMessage(n ? `saved ${n} ${n === 1 ? "person" : "people"} (revision ${r.revision})` : "saved: nobody in this image",
        "ok", 1800);
      if (next && !r.complete) goNext(true);
    } catch (e) {
      writeFailed(e, body);
    } finally {
      S.saving = false;
    }
  }

  async function skipImage() {
    if (!S.image || S.saving) return;
    if (!S.canSave) return showMessage("this round is read-only: nothing can be skipped");
    S.saving = true;
    const id = S.image.id;
    try {
      const r = await api("POST", `/api/images/${id}/skip`, { revision: S.image.revision });
      afterWrite(id, r);
      showMessage("image skipped: it will not be selected again", "ok", 1800);
      if (!r.complete) goNext(true);
    } catch (e) {
      writeFailed(e, null);
    } finally {
      S.saving = false;
    }
  }

  function afterWrite(id, r) {
    if (S.image && S.image.id === id) {
      S.image.revision = r.revision;
      S.image.state = r.state;
      S.dirty = false;
      $("status-dirty").hidden = true;
      // people saved from now on are stored labels (their effort so far stays with them)
      for (const p of S.people) for (const k of p.kps) k.edited = true;
    }
    updateEntry(id, { state: r.state });
    if (S.round) {
      if (r.progress) S.round.progress = r.progress;
      S.round.complete = !!r.complete;
      if (r.complete) {
        if (r.next) S.round.next = r.next;
        S.round.state = "labelled";
        S.round.read_only = true; // the server refuses writes once the round is no longer open
      }
    }
    renderRound();
    renderLease();
    refresh();
  }

  function writeFailed(e, body) {
    if (e.status === 409 && e.body && e.body.conflict) {
      showConflict(e.body.conflict, body);
    } else if (e.status === 423) {
      showMessage(`not saved: this image is leased to ${leaseHolder(e)} — ${e.message}`);
    } else {
      showMessage(`not saved: ${e.message}`);
    }
  }

  function showConflict(conflict, body) {
    const who = conflict.annotator || "another annotator";
    // stored labels: rows of [x, y, v] per person (or label objects with `keypoints`)
    const theirs = (conflict.labels || []).map((lab) => (Array.isArray(lab) ? lab : (lab && lab.keypoints) || []));
    S.theirs = theirs;
    const n = theirs.length;
    const mine = body ? body.people.length : 0;
    $("conflict-text").textContent =
      `${who} saved this image (revision ${conflict.revision}) with ${n} ${n === 1 ? "person" : "people"}; ` +
      `your version has ${mine}. Keep yours (it replaces theirs) or take theirs (your changes are dropped).`;
    $("conflict").hidden = false;
    draw();
  }
  function closeConflict() { $("conflict").hidden = true; S.theirs = null; draw(); }
  $("conflict-mine").addEventListener("click", () => { closeConflict(); save({ force: true }); });
  $("conflict-theirs").addEventListener("click", () => {
    closeConflict();
    if (S.image) openImage(S.image.id);
  });

  // ---------------------------------------------------------------------------------------------------
  // navigation
  function goRelative(step) {
    if (!S.round || !S.round.images.length) return;
    const ids = S.round.images.map((im) => im.id);
    const i = S.image ? ids.indexOf(S.image.id) : -1;
    const j = Math.min(Math.max(i + step, 0), ids.length - 1);
    if (j !== i) leaveTo(ids[j]);
  }
  function goNext(afterSave) {
    if (!S.round) return;
    const ims = S.round.images;
    const i = S.image ? ims.findIndex((im) => im.id === S.image.id) : -1;
    for (let n = 1; n <= ims.length; n++) {
      const im = ims[(i + n) % ims.length];
      if (im.state === "queued" && !(im.lease && !im.lease.mine) && (!S.image || im.id !== S.image.id)) {
        return afterSave ? openImage(im.id) : leaveTo(im.id);
      }
    }
    if (!afterSave) goRelative(1);
  }
  // Leaving an image with unsaved changes needs a second press (within 4 s).
  function leaveTo(id) {
    if (S.dirty && S.canSave) {
      const now = performance.now();
      if (!S.leaveArmed || S.leaveArmed.id !== id || now - S.leaveArmed.at > 4000) {
        S.leaveArmed = { id, at: now };
        showMessage("unsaved changes: press again to leave without saving, or Enter to save", "info", 4000);
        return;
      }
    }
    openImage(id);
  }

  // ---------------------------------------------------------------------------------------------------
  // adding a person / placing keypoints
  function nextMissing(p, from) {
    for (let k = from; k < S.K; k++) if (p.kps[k].v === 0) return k;
    return S.K;
  }
  function startAdd() {
    if (!S.image) return;
    if (S.add) finishAdd();
    pushUndo();
    const p = personFrom([], "manual", null, false);
    p.color = freeColor();
    S.people.push(p);
    S.add = { uid: p.uid, next: 0 };
    S.sel = { uid: p.uid, k: 0 };
    markDirty();
    refresh();
  }
  function startCompleting() {
    const p = person(S.sel.uid);
    if (!p) return showMessage("select a person first (click one of its points)", "info", 2500);
    const next = nextMissing(p, 0);
    if (next >= S.K) return showMessage("this person has every keypoint already", "info", 2500);
    S.add = { uid: p.uid, next };
    S.sel = { uid: p.uid, k: next };
    refresh();
  }
  function advanceAdd() {
    const p = person(S.add.uid);
    const next = nextMissing(p, S.add.next + 1);
    if (next >= S.K) return finishAdd();
    S.add.next = next;
    S.sel = { uid: p.uid, k: next };
    refresh();
  }
  function skipInAdd() {
    chargeTime(S.add.uid);
    advanceAdd();
  }
  function finishAdd() {
    const p = person(S.add.uid);
    S.add = null;
    if (p && !p.kps.some(labelled)) {
      S.people.splice(personIndex(p.uid), 1);
      S.sel = { uid: null, k: -1 };
    }
    refresh();
  }
  function placeAt(p, k, pt) {
    pushUndo();
    const kp = p.kps[k];
    kp.x = pt.x;
    kp.y = pt.y;
    kp.v = 2;
    kp.edited = true;
    kp.placed = true;
    edited(p.uid);
  }

  // Footage: start from the people of the nearest labelled frame of the same video (the server scales them to
  // this image); they replace the people shown (Undo brings those back) and every point stays unchecked (Tab
  // visits them) until it is moved or confirmed.
  function copyNeighbour() {
    const nb = S.image && S.image.neighbour;
    if (!nb) return showMessage("no labelled frame of this video with people to copy from", "info", 2500);
    if (!S.canSave) return showMessage("this round is read-only: nothing can be changed");
    if (S.add) finishAdd();
    pushUndo();
    S.people = [];
    for (const pts of nb.people) {
      const p = personFrom(pts, "copied", null, false);
      p.from = nb.frame;
      p.kps.forEach((k) => { k.edited = false; k.conf = 0; });
      if (p.kps.some(labelled)) { p.color = freeColor(); S.people.push(p); }
    }
    S.sel = { uid: null, k: -1 };
    markDirty();
    refresh();
    showMessage(`copied ${S.people.length} person(s) from frame ${nb.frame}: move the points that changed (Tab: next)`, "info", 3000);
  }

  function deleteSelected() {
    const i = personIndex(S.sel.uid);
    if (i < 0) return showMessage("select a person first (click one of its points)", "info", 2500);
    pushUndo();
    if (S.add && S.add.uid === S.sel.uid) S.add = null;
    S.people.splice(i, 1);
    S.sel = { uid: null, k: -1 };
    markDirty();
    refresh();
  }

  function cycleVisibility() {
    const p = person(S.sel.uid);
    if (!p || S.sel.k < 0) return showMessage("select a keypoint first (click it, or Tab)", "info", 2500);
    const kp = p.kps[S.sel.k];
    if (kp.v === 0 && !kp.placed) {
      return showMessage(`${kpName(S.sel.k)} is not labelled: click the image to place it`, "info", 2500);
    }
    pushUndo();
    kp.v = kp.v === 2 ? 1 : kp.v === 1 ? 0 : 2;
    kp.edited = true;
    edited(p.uid);
  }

  // Tab: the weakest unvisited keypoint first (weak ones, then the rest of the unchecked predicted ones by
  // confidence, then the checked ones).
  function tabOrder() {
    const items = [];
    for (const p of S.people) {
      p.kps.forEach((kp, k) => {
        let group;
        if (isWeak(p, kp)) group = 0;
        else if (kp.v > 0 && !kp.edited) group = 1;
        else if (kp.v === 0) return; // missing ones are placed from the side list or with Shift+A
        else group = 3;
        items.push({ uid: p.uid, k, group, conf: kp.v > 0 ? kp.conf : 0 });
      });
    }
    items.sort((a, b) => a.group - b.group || a.conf - b.conf);
    return items;
  }
  function tabNext(back) {
    if (!S.people.length) return;
    if (back) {
      S.tabVisited.pop();
      const prev = S.tabVisited[S.tabVisited.length - 1];
      if (prev && person(prev.uid)) return focusKp(prev.uid, prev.k);
      return;
    }
    const key = (it) => `${it.uid}:${it.k}`;
    const seen = new Set(S.tabVisited.map(key));
    let items = tabOrder().filter((it) => !seen.has(key(it)) && !(it.uid === S.sel.uid && it.k === S.sel.k));
    if (!items.length) {
      S.tabVisited = [];
      items = tabOrder();
    }
    if (!items.length) return;
    const it = items[0];
    S.tabVisited.push({ uid: it.uid, k: it.k });
    focusKp(it.uid, it.k);
  }
  function focusKp(uid, k) {
    const kp = person(uid).kps[k];
    if (kp.v > 0) ensureVisible(kp.x, kp.y);
    select(uid, k);
  }

  // ---------------------------------------------------------------------------------------------------
  // pointer
  function hitTest(pt) {
    let best = null;
    let bestD = HIT_PX;
    for (const p of S.people) {
      p.kps.forEach((kp, k) => {
        if (kp.v === 0) return;
        const s = toScreen(kp.x, kp.y);
        const d = Math.hypot(s.x - pt.x, s.y - pt.y);
        if (d < bestD || (d === bestD && p.uid === S.sel.uid)) { best = { uid: p.uid, k }; bestD = d; }
      });
    }
    return best;
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (!S.image || e.button > 1) return;
    canvas.focus({ preventScroll: true });
    noteInput();
    const pt = eventPoint(e);
    canvas.setPointerCapture(e.pointerId);
    const placing = S.add || pendingPlacement();
    const hit = S.spaceDown || e.button === 1 || placing ? null : hitTest(pt);
    if (hit) {
      const kp = person(hit.uid).kps[hit.k];
      const s = toScreen(kp.x, kp.y);
      S.drag = { ...hit, start: pt, off: { x: s.x - pt.x, y: s.y - pt.y }, snap: snapshot(), moved: false };
      S.sel = { uid: hit.uid, k: hit.k };
      refresh();
    } else {
      S.pan = { start: pt, tx: S.view.tx, ty: S.view.ty, moved: false, force: S.spaceDown || e.button === 1 };
    }
  });

  canvas.addEventListener("pointermove", (e) => {
    const pt = eventPoint(e);
    S.pointer = pt;
    if (S.drag) {
      if (!S.drag.moved && Math.hypot(pt.x - S.drag.start.x, pt.y - S.drag.start.y) < DRAG_PX) return;
      S.drag.moved = true;
      const p = person(S.drag.uid);
      const q = clampToImage(toImage(pt.x + S.drag.off.x, pt.y + S.drag.off.y));
      p.kps[S.drag.k].x = q.x;
      p.kps[S.drag.k].y = q.y;
      draw();
    } else if (S.pan) {
      if (!S.pan.moved && Math.hypot(pt.x - S.pan.start.x, pt.y - S.pan.start.y) < DRAG_PX) return;
      S.pan.moved = true;
      S.view.tx = S.pan.tx + pt.x - S.pan.start.x;
      S.view.ty = S.pan.ty + pt.y - S.pan.start.y;
      canvas.style.cursor = "grabbing";
      draw();
    } else {
      const hit = hitTest(pt);
      const changed = (hit && (!S.hover || hit.uid !== S.hover.uid || hit.k !== S.hover.k)) || (!hit && S.hover);
      S.hover = hit;
      canvas.style.cursor = S.spaceDown ? "grab" : S.add || pendingPlacement() ? "crosshair" : hit ? "pointer" : "default";
      if (changed || S.add) draw();
    }
  });

  function endPointer(e, cancelled) {
    if (S.drag) {
      const d = S.drag;
      S.drag = null;
      if (d.moved && !cancelled) {
        const p = person(d.uid);
        const q = clampToImage(toImage(eventPoint(e).x + d.off.x, eventPoint(e).y + d.off.y));
        const kp = p.kps[d.k];
        kp.x = q.x;
        kp.y = q.y;
        kp.edited = true;
        pushUndo(d.snap);
        edited(d.uid);
      } else if (cancelled) {
        restore(d.snap);
        refresh();
      } else {
        select(d.uid, d.k);
      }
      return;
    }
    if (S.pan) {
      const pan = S.pan;
      S.pan = null;
      canvas.style.cursor = "default";
      if (!pan.moved && !pan.force && !cancelled) clickEmpty(toImage(pan.start.x, pan.start.y));
    }
  }
  canvas.addEventListener("pointerup", (e) => { noteInput(); endPointer(e, false); });
  canvas.addEventListener("pointercancel", (e) => endPointer(e, true));
  canvas.addEventListener("pointerleave", () => { if (S.hover) { S.hover = null; draw(); } });

  // A selected keypoint that has never been placed (missing from the prediction, or skipped while adding):
  // the next click on the image places it. One set to "not labelled" with V keeps its position (V again).
  function pendingPlacement() {
    const p = person(S.sel.uid);
    return p && S.sel.k >= 0 && p.kps[S.sel.k].v === 0 && !p.kps[S.sel.k].placed ? p : null;
  }

  function clickEmpty(pt) {
    if (S.add) {
      if (!insideImage(pt)) return showMessage("click inside the image (S or Space skips a keypoint)", "info", 2000);
      const p = person(S.add.uid);
      placeAt(p, S.add.next, pt);
      advanceAdd();
      return;
    }
    const p = pendingPlacement();
    if (p) {
      if (!insideImage(pt)) return showMessage("click inside the image", "info", 2000);
      placeAt(p, S.sel.k, pt);
      return;
    }
    if (S.sel.uid != null) { S.sel = { uid: null, k: -1 }; refresh(); }
  }

  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    noteInput();
    const pt = eventPoint(e);
    const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    zoomAt(Math.exp(-delta * 0.0015), pt.x, pt.y);
  }, { passive: false });

  // ---------------------------------------------------------------------------------------------------
  // keyboard
  function typing(e) {
    const t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  }
  function dialogOpen() { return !$("name-dialog").hidden; }

  document.addEventListener("keydown", (e) => {
    if (typing(e) || dialogOpen()) return;
    const key = e.key;
    const ctrl = e.ctrlKey || e.metaKey;
    noteInput();
    if (!$("help").hidden) {
      if (key === "Escape" || key === "?" || key === "Enter") { $("help").hidden = true; e.preventDefault(); }
      return;
    }
    if (ctrl && (key === "z" || key === "Z")) { e.preventDefault(); return e.shiftKey ? redo() : undo(); }
    if (ctrl && (key === "y" || key === "Y")) { e.preventDefault(); return redo(); }
    if (ctrl && (key === "s" || key === "S")) { e.preventDefault(); return save(); }
    if (ctrl || e.altKey) return;
    if (!$("conflict").hidden) {
      if (key === "Escape") { e.preventDefault(); closeConflict(); }
      return;
    }
    if (S.add) {
      if (key === "s" || key === "S" || key === " ") { e.preventDefault(); return skipInAdd(); }
      if (key === "Escape" || key === "Enter") { e.preventDefault(); return finishAdd(); }
    }
    switch (key) {
      case " ":
        e.preventDefault();
        if (!S.spaceDown) { S.spaceDown = true; canvas.style.cursor = "grab"; }
        return;
      case "ArrowRight": case "j": case "J": e.preventDefault(); return goRelative(1);
      case "ArrowLeft": case "k": case "K": e.preventDefault(); return goRelative(-1);
      case "Tab": e.preventDefault(); return tabNext(e.shiftKey);
      case "n": case "N": e.preventDefault(); return tabNext(false);
      case "v": case "V": e.preventDefault(); return cycleVisibility();
      case "a": e.preventDefault(); return startAdd();
      case "A": e.preventDefault(); return e.shiftKey ? startCompleting() : startAdd();
      case "Delete": case "Backspace": e.preventDefault(); return deleteSelected();
      case "Enter": e.preventDefault(); return save({ next: true });
      case "0": e.preventDefault(); return save({ nobody: true, next: true });
      case "x": case "X": e.preventDefault(); return skipImage();
      case "c": case "C": e.preventDefault(); return copyNeighbour();
      case "+": case "=": e.preventDefault(); return zoomCenter(1.25);
      case "-": case "_": e.preventDefault(); return zoomCenter(0.8);
      case "f": case "F": e.preventDefault(); return fitView();
      case "?": e.preventDefault(); $("help").hidden = false; return;
      case "Escape":
        e.preventDefault();
        hideMessage();
        if (S.sel.uid != null) { S.sel = { uid: null, k: -1 }; refresh(); }
        return;
      default:
    }
  });
  document.addEventListener("keyup", (e) => {
    if (e.key === " ") { S.spaceDown = false; canvas.style.cursor = "default"; }
  });
  function zoomCenter(f) { const c = canvasSize(); zoomAt(f, c.w / 2, c.h / 2); }

  // toolbar
  $("toolbar").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    noteInput();
    const actions = {
      prev: () => goRelative(-1), next: () => goRelative(1), add: startAdd, delete: deleteSelected,
      visibility: cycleVisibility, tab: () => tabNext(false), undo, fit: fitView,
      none: () => save({ nobody: true, next: true }), skip: skipImage, save: () => save(), copy: copyNeighbour,
    };
    const f = actions[b.dataset.action];
    if (f) f();
    canvas.focus({ preventScroll: true });
  });
  $("help-button").addEventListener("click", () => { $("help").hidden = false; });
  $("help-close").addEventListener("click", () => { $("help").hidden = true; });
  $("help").addEventListener("click", (e) => { if (e.target === $("help")) $("help").hidden = true; });

  // ---------------------------------------------------------------------------------------------------
  // drawing
  function resizeCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const c = canvasSize();
    const w = Math.max(1, Math.round(c.w * dpr));
    const h = Math.max(1, Math.round(c.h * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      const had = canvas.width > 1;
      canvas.width = w;
      canvas.height = h;
      if (!had) fitView();
    }
    draw();
  }
  new ResizeObserver(resizeCanvas).observe(canvas);

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const c = canvasSize();
    ctx.clearRect(0, 0, c.w, c.h);
    if (!S.image) return;
    const { s, tx, ty } = S.view;
    if (S.img && S.img.complete && S.img.naturalWidth) {
      ctx.imageSmoothingEnabled = s < 3;
      ctx.drawImage(S.img, tx, ty, S.image.width * s, S.image.height * s);
    }
    ctx.strokeStyle = "rgba(255,255,255,.15)";
    ctx.lineWidth = 1;
    ctx.strokeRect(tx - 0.5, ty - 0.5, S.image.width * s + 1, S.image.height * s + 1);

    if (S.theirs) for (const kps of S.theirs) drawSkeleton(kps.map(([x, y, v]) => ({ x, y, v })), "#b8bcc6", false, true);
    const order = S.people.slice().sort((a, b) => (a.uid === S.sel.uid) - (b.uid === S.sel.uid));
    for (const p of order) drawPerson(p);
    drawAddGhost();
    drawTooltip();
    $("status-zoom").textContent = `${Math.round(s * 100)} %`;
  }

  function drawSkeleton(kps, color, selected, ghost) {
    ctx.lineCap = "round";
    for (const [a, b] of S.skel.limbs) {
      const ka = kps[a];
      const kb = kps[b];
      if (!ka || !kb || ka.v <= 0 || kb.v <= 0) continue;
      const pa = toScreen(ka.x, ka.y);
      const pb = toScreen(kb.x, kb.y);
      ctx.setLineDash(ka.v === 1 || kb.v === 1 || ghost ? [6, 5] : []);
      ctx.strokeStyle = "rgba(0,0,0,.55)";
      ctx.lineWidth = selected ? 5.5 : 4.5;
      ctx.beginPath(); ctx.moveTo(pa.x, pa.y); ctx.lineTo(pb.x, pb.y); ctx.stroke();
      ctx.strokeStyle = color;
      ctx.globalAlpha = ghost ? 0.7 : side(a) === "right" || side(b) === "right" ? 0.75 : 0.95;
      ctx.lineWidth = selected ? 3 : 2.2;
      ctx.beginPath(); ctx.moveTo(pa.x, pa.y); ctx.lineTo(pb.x, pb.y); ctx.stroke();
      ctx.globalAlpha = 1;
    }
    ctx.setLineDash([]);
    if (ghost) {
      for (const kp of kps) {
        if (!kp || kp.v <= 0) continue;
        const q = toScreen(kp.x, kp.y);
        ctx.fillStyle = "#b8bcc6";
        ctx.beginPath(); ctx.arc(q.x, q.y, 3.5, 0, 2 * Math.PI); ctx.fill();
      }
    }
  }

  function drawPerson(p) {
    const color = COLORS[p.color % COLORS.length];
    const selected = p.uid === S.sel.uid;
    drawSkeleton(p.kps, color, selected, false);
    const r = selected ? 6.5 : 5.5;
    p.kps.forEach((kp, k) => {
      if (kp.v === 0) {
        if (selected && k === S.sel.k && kp.placed) {
          const q = toScreen(kp.x, kp.y);
          ctx.strokeStyle = "rgba(255,255,255,.6)";
          ctx.setLineDash([3, 3]);
          ctx.beginPath(); ctx.arc(q.x, q.y, r + 3, 0, 2 * Math.PI); ctx.stroke();
          ctx.setLineDash([]);
        }
        return;
      }
      const q = toScreen(kp.x, kp.y);
      const sd = side(k);
      if (isWeak(p, kp)) {
        ctx.strokeStyle = "#ffb020";
        ctx.lineWidth = 2.5;
        ctx.beginPath(); ctx.arc(q.x, q.y, r + 5, 0, 2 * Math.PI); ctx.stroke();
      }
      if (kp.v === 1) {
        ctx.fillStyle = "rgba(0,0,0,.35)";
        ctx.beginPath(); ctx.arc(q.x, q.y, r, 0, 2 * Math.PI); ctx.fill();
        ctx.setLineDash([3, 2.5]);
        ctx.strokeStyle = color;
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(q.x, q.y, r, 0, 2 * Math.PI); ctx.stroke();
        ctx.setLineDash([]);
      } else if (sd === "left") {
        ctx.fillStyle = color;
        ctx.strokeStyle = "#0b0d12";
        ctx.lineWidth = 1.5;
        ctx.beginPath(); ctx.arc(q.x, q.y, r, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      } else if (sd === "right") {
        ctx.fillStyle = "rgba(11,13,18,.85)";
        ctx.strokeStyle = color;
        ctx.lineWidth = 2.6;
        ctx.beginPath(); ctx.arc(q.x, q.y, r - 0.5, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      } else {
        ctx.fillStyle = color;
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = 1.6;
        ctx.beginPath(); ctx.arc(q.x, q.y, r, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      }
      if (selected && k === S.sel.k) {
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(q.x, q.y, r + 4, 0, 2 * Math.PI); ctx.stroke();
      }
    });
  }

  function drawAddGhost() {
    const p = S.add ? person(S.add.uid) : pendingPlacement();
    if (!p || !S.pointer || S.drag || S.pan) return;
    const k = S.add ? S.add.next : S.sel.k;
    const { x, y } = S.pointer;
    ctx.strokeStyle = COLORS[p.color % COLORS.length];
    ctx.lineWidth = 1;
    ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(x - 14, y); ctx.lineTo(x + 14, y); ctx.moveTo(x, y - 14); ctx.lineTo(x, y + 14); ctx.stroke();
    ctx.setLineDash([]);
    label(`${kpName(k)}`, x + 12, y + 22);
  }

  function drawTooltip() {
    // the dragged, else the hovered, else the selected keypoint
    const h = S.drag ? { uid: S.drag.uid, k: S.drag.k } : S.hover || (S.sel.uid != null && S.sel.k >= 0 ? S.sel : null);
    if (!h) return;
    const p = person(h.uid);
    if (!p) return;
    const kp = p.kps[h.k];
    if (kp.v === 0) return;
    const q = toScreen(kp.x, kp.y);
    const vis = kp.v === 2 ? "visible" : "occluded";
    const conf = p.origin === "predicted" && !kp.edited ? `confidence ${kp.conf.toFixed(2)}`
      : unchecked(p, kp) ? `copied from frame ${p.from}` : "checked";
    label(`${kpName(h.k)} (${side(h.k)}) · ${conf} · ${vis}`, q.x + 12, q.y - 12);
  }

  function label(text, x, y) {
    ctx.font = "12px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 12;
    const c = canvasSize();
    x = Math.min(x, c.w - w - 4);
    y = Math.max(y, 18);
    ctx.fillStyle = "rgba(15,17,23,.92)";
    ctx.strokeStyle = "rgba(255,255,255,.18)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.rect(x, y - 15, w, 21);
    ctx.fill(); ctx.stroke();
    ctx.fillStyle = "#e6e8ee";
    ctx.fillText(text, x + 6, y);
  }

  // ---------------------------------------------------------------------------------------------------
  // panels
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function refresh() {
    draw();
    renderPeople();
    renderHint();
  }

  function renderHint() {
    const hint = $("mode-hint");
    hint.replaceChildren();
    const p = S.add ? person(S.add.uid) : pendingPlacement();
    if (p) {
      const k = S.add ? S.add.next : S.sel.k;
      const n = S.people.indexOf(p) + 1;
      hint.append(el("span", "", `Person ${n}: click `), el("b", "", kpName(k)),
        el("span", "muted", S.add ? `  (${k + 1}/${S.K})  ·  S / Space skip  ·  Enter / Esc finish` : "  to place it"));
      hint.hidden = false;
    } else {
      hint.hidden = true;
    }
    const empty = $("empty-hint");
    empty.hidden = !S.image || S.people.length > 0;
    empty.textContent = S.image && S.image.state === "queued"
      ? "No person predicted here. A adds a person; 0 saves the image with nobody."
      : "Nobody labelled in this image.";
    if (S.image) {
      const st = S.image.state;
      const im = S.image;
      const where = (im.video != null ? ` · video ${im.video}` : "") + (im.frame != null ? ` · frame ${im.frame}` : "") +
        (im.time != null ? ` · ${Number(im.time).toFixed(2)} s` : "");
      $("status-image").textContent = `${im.file}${where} · ${im.width}×${im.height} · ${st} · revision ${im.revision}`;
      const copy = $("copy-button");
      copy.hidden = !im.neighbour;
      if (im.neighbour) $("copy-frame").textContent = String(im.neighbour.frame);
    }
  }

  function renderPeople() {
    const list = $("people-list");
    list.replaceChildren();
    $("people-count").textContent = S.people.length ? `(${S.people.length})` : "";
    if (!S.people.length) {
      list.append(el("div", "people-empty", "No people. Press A to add one."));
      return;
    }
    S.people.forEach((p, i) => {
      const card = el("div", "person" + (p.uid === S.sel.uid ? " selected" : ""));
      card.dataset.uid = String(p.uid);
      const head = el("div", "person-head");
      const sw = el("span", "swatch");
      sw.style.background = COLORS[p.color % COLORS.length];
      const st = stats(p.uid);
      const origin = p.origin === "predicted" ? `predicted${p.score != null ? " " + Number(p.score).toFixed(2) : ""}`
        : p.origin === "copied" ? `copied from frame ${p.from}` : "manual";
      head.append(sw, el("span", "title", `Person ${i + 1}`), el("span", "muted", origin),
        el("span", "stats", `${st.clicks} clicks · ${st.seconds.toFixed(1)} s`));
      head.addEventListener("click", () => {
        const k = p.kps.findIndex(labelled);
        select(p.uid, k);
      });
      card.append(head);
      const rows = el("ul", "kp-rows");
      p.kps.forEach((kp, k) => {
        const weak = isWeak(p, kp);
        const row = el("li", "kp-row" + (weak ? " weak" : "") + (kp.v === 0 ? " missing" : "") +
          (p.uid === S.sel.uid && k === S.sel.k ? " selected" : ""));
        row.dataset.k = String(k);
        const mark = el("span", "mark");
        const color = COLORS[p.color % COLORS.length];
        const sd = side(k);
        if (kp.v === 0) mark.style.border = "1px solid #555c6b";
        else if (kp.v === 1) mark.style.border = `1.5px dashed ${color}`;
        else if (sd === "right") mark.style.border = `2px solid ${color}`;
        else { mark.style.background = color; if (sd === "center") mark.style.border = "1.5px solid #fff"; }
        const vis = kp.v === 2 ? "" : kp.v === 1 ? " (occluded)" : " — missing";
        const bar = el("span", "conf");
        const fill = el("i");
        const predicted = p.origin === "predicted" && !kp.edited && kp.v > 0;
        fill.style.width = predicted ? `${Math.round(kp.conf * 100)}%` : "0%";
        bar.append(fill);
        bar.title = predicted ? `model confidence ${kp.conf.toFixed(2)}` : "";
        const num = el("span", "num", predicted ? kp.conf.toFixed(2) : unchecked(p, kp) ? "copy" : kp.v > 0 ? "✓" : "");
        row.append(mark, el("span", "kp-name", kpName(k) + vis), bar, num);
        row.addEventListener("click", () => focusKp(p.uid, k));
        rows.append(row);
      });
      card.append(rows);
      list.append(card);
    });
    const selRow = list.querySelector(".kp-row.selected");
    if (selRow) selRow.scrollIntoView({ block: "nearest" });
  }

  function updateEntry(id, fields) {
    const im = imageEntry(id);
    if (im) Object.assign(im, fields);
  }

  function renderRound() {
    const r = S.round;
    if (!r) return;
    $("round-title").textContent = `${r.project} · round ${r.round} · ${r.state}` +
      (r.model ? ` · model ${r.model.file}` : " · no model (no pre-annotations)");
    const pr = r.progress || { total: 0, labelled: 0, skipped: 0, todo: 0 };
    const total = Math.max(pr.total, 1);
    $("progress-labelled").style.width = `${(100 * pr.labelled) / total}%`;
    $("progress-skipped").style.width = `${(100 * pr.skipped) / total}%`;
    $("progress").setAttribute("aria-valuenow", String(Math.round((100 * (pr.labelled + pr.skipped)) / total)));
    $("progress-text").textContent = `${pr.labelled} labelled · ${pr.skipped} skipped · ${pr.todo} to do / ${pr.total}`;
    const banner = $("banner");
    if (r.complete) {
      $("banner-title").textContent = `Round ${r.round} is complete.`;
      $("banner-text").textContent = r.next ? `Next: ${r.next}` : "";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    renderImageList();
  }

  const thumbs = new Map();
  function renderImageList() {
    const r = S.round;
    if (!r) return;
    const list = $("image-list");
    list.replaceChildren();
    $("images-count").textContent = `(${r.images.length})`;
    for (const im of r.images) {
      const li = el("li", S.image && S.image.id === im.id ? "current" : "");
      li.dataset.id = String(im.id);
      let t = thumbs.get(im.id);
      if (!t) {
        t = el("img", "thumb");
        t.loading = "lazy";
        t.alt = "";
        t.src = `/api/images/${im.id}/file`;
        thumbs.set(im.id, t);
      }
      const info = el("div");
      const name = el("div", "name", im.file);
      name.title = im.file;
      const meta = el("div", "meta");
      meta.append(el("span", `badge ${im.state}`, im.state));
      if (im.lease && !im.lease.mine) meta.append(el("span", "badge leased", `🔒 ${im.lease.annotator}`));
      if (im.uncertainty != null) meta.append(el("span", "", `u ${Number(im.uncertainty).toFixed(2)}`));
      info.append(name, meta);
      li.append(t, info);
      li.addEventListener("click", () => leaveTo(im.id));
      list.append(li);
    }
    const cur = list.querySelector("li.current");
    if (cur) cur.scrollIntoView({ block: "nearest" });
  }

  async function refreshRound() {
    try {
      const r = await api("GET", "/api/round");
      const prevComplete = S.round && S.round.complete;
      S.round = r;
      renderRound();
      if (r.complete && !prevComplete) showMessage(`round ${r.round} is complete`, "ok", 3000);
    } catch (e) { /* a transient failure: the next refresh tries again */ }
  }

  // ---------------------------------------------------------------------------------------------------
  // annotator name
  function askName() {
    return new Promise((resolve) => {
      const dlg = $("name-dialog");
      const input = $("name-input");
      input.value = S.annotator || "";
      dlg.hidden = false;
      input.focus();
      const form = $("name-form");
      const onSubmit = (e) => {
        e.preventDefault();
        const v = input.value.trim();
        if (!NAME_RE.test(v)) { $("name-error").hidden = false; return; }
        $("name-error").hidden = true;
        form.removeEventListener("submit", onSubmit);
        dlg.hidden = true;
        S.annotator = v;
        try { localStorage.setItem(NAME_KEY, v); } catch (err) { /* private mode: asked again next time */ }
        $("annotator").textContent = `annotator: ${v}`;
        canvas.focus({ preventScroll: true });
        resolve(v);
      };
      form.addEventListener("submit", onSubmit);
    });
  }
  $("annotator").addEventListener("click", () => askName());

  // ---------------------------------------------------------------------------------------------------
  // start
  window.addEventListener("pagehide", () => {
    if (S.image && S.image.lease && S.image.lease.mine && S.image.state === "queued") {
      api("DELETE", `/api/images/${S.image.id}/lease`, undefined, { keepalive: true }).catch(() => {});
    }
  });
  window.addEventListener("beforeunload", (e) => {
    if (S.dirty && S.canSave) { e.preventDefault(); e.returnValue = ""; }
  });

  async function start() {
    let name = null;
    try { name = localStorage.getItem(NAME_KEY); } catch (e) { name = null; }
    if (name && NAME_RE.test(name)) {
      S.annotator = name;
      $("annotator").textContent = `annotator: ${name}`;
    } else {
      await askName();
    }
    try {
      await loadRound();
    } catch (e) {
      $("round-title").textContent = "not connected";
      showMessage(e.message);
      return;
    }
    S.roundTimer = setInterval(refreshRound, ROUND_REFRESH_MS);
    const m = /image=(\d+)/.exec(location.hash);
    const ims = S.round.images;
    let id = m ? Number(m[1]) : null;
    if (id == null || !imageEntry(id)) {
      const first = ims.find((im) => im.state === "queued" && !(im.lease && !im.lease.mine)) ||
        ims.find((im) => im.state === "queued") || ims[0];
      id = first ? first.id : null;
    }
    if (id == null) {
      $("empty-hint").hidden = false;
      $("empty-hint").textContent = "This round has no images.";
      return;
    }
    await openImage(id);
  }

  // A small read-only handle for tests and scripted measurements (the page itself does not use it).
  window.activepose = {
    ready: () => !!S.image && !!S.img && !S.saving,
    imageId: () => (S.image ? S.image.id : null),
    // image coordinates -> viewport (client) coordinates, for pointer events
    toClient: (x, y) => { const c = canvasSize(); const q = toScreen(x, y); return { x: c.left + q.x, y: c.top + q.y }; },
    people: () => JSON.parse(JSON.stringify(S.people.map((p) => ({ ...p, ...stats(p.uid) })))),
    selected: () => ({ ...S.sel }),
    adding: () => (S.add ? { ...S.add } : null),
    dirty: () => S.dirty,
    saving: () => S.saving,
    revision: () => (S.image ? S.image.revision : null),
    state: () => (S.image ? S.image.state : null),
    complete: () => !!(S.round && S.round.complete),
  };

  start();
})();
