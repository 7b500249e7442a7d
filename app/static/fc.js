// FashionChameleon browser client: WebRTC offer/answer with fetch, stats polling.
(() => {
  const ICE_GATHER_TIMEOUT_MS = 2000;
  const state = { pc: null, sid: "", cfg: null, poll: null, shown: 0, lastStats: null };
  const $ = (id) => document.getElementById(id);

  async function config() {
    if (!state.cfg) state.cfg = await (await fetch("/api/config")).json();
    return state.cfg;
  }

  function status(text, kind) {
    const el = $("fc-status");
    if (el) { el.textContent = text; el.dataset.kind = kind || "info"; }
  }

  function setCell(id, text) { const el = $(id); if (el) el.textContent = text; }
  const fmt = (v, unit, digits) => (v === null || v === undefined) ? "–" : `${Number(v).toFixed(digits)}${unit}`;

  function countFrames(video) {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
    const cb = () => { state.shown += 1; video.requestVideoFrameCallback(cb); };
    video.requestVideoFrameCallback(cb);
  }

  function waitIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
    });
  }

  function render(s) {
    const e = s.engine || {};
    setCell("fc-stat-fps", `${fmt(s.delivered_fps, "", 1)} / ${fmt(s.target_fps, "", 0)}`);
    setCell("fc-stat-chunk", fmt(e.chunk_ms, " ms", 0));
    setCell("fc-stat-ttff", fmt(s.ttff_s, " s", 2));
    setCell("fc-stat-swap", fmt(s.last_swap_latency_s, " s", 2));
    setCell("fc-stat-garment", s.current_garment || "–");
    setCell("fc-stat-pending", s.pending_garment ? `→ ${s.pending_garment}` : "none");
    setCell("fc-stat-shown", String(state.shown));
    setCell("fc-stat-rec", s.recording ? `● ${s.recorded_frames} frames` : "off");
    const panel = $("fc-panel");
    if (panel) panel.dataset.pending = s.pending_garment ? "1" : "0";
    if (s.error) status(`Stream stopped: ${s.error}`, "error");
  }

  async function poll() {
    if (!state.sid) return;
    try {
      const r = await fetch(`/api/stats/${state.sid}`);
      if (r.status === 404) { status("The stream has ended. Press Start to begin again.", "info"); stopPolling(); return; }
      state.lastStats = await r.json();
      render(state.lastStats);
    } catch (err) { /* server restarting: keep polling */ }
  }

  function startPolling(ms) { stopPolling(); state.poll = setInterval(poll, ms); }
  function stopPolling() { if (state.poll) clearInterval(state.poll); state.poll = null; }

  async function start(reference, garment, prompt, seed, schedule) {
    await stop();
    const cfg = await config();
    status("Connecting…", "info");
    const pc = new RTCPeerConnection({ iceServers: cfg.iceServers || [] });
    state.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const video = $("fc-video");
    pc.ontrack = (ev) => {
      video.srcObject = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (state.pc !== pc) return;
      if (pc.connectionState === "connected") status("Streaming. Click a garment to swap it live.", "ok");
      if (pc.connectionState === "failed") status("Connection failed (across networks WebRTC needs a TURN server: see docs/APP.md).", "error");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    let r, body;
    try {
      r = await fetch("/api/offer", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type,
                               reference, garment, prompt, seed, schedule }),
      });
      body = await r.json();
    } catch (err) {
      body = { error: "network", message: String(err) };
    }
    if (!r || !r.ok) {
      pc.close(); state.pc = null;
      const busy = body && body.error === "busy";
      status(busy ? `Server busy: ${body.message}` : `Could not start: ${(body && body.message) || "error"}`, busy ? "busy" : "error");
      return "";
    }
    await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    state.sid = body.sid;
    startPolling(cfg.statsPollMs);
    return body.sid;
  }

  async function stop() {
    const sid = state.sid, pc = state.pc;
    state.sid = ""; state.pc = null;
    stopPolling();
    if (sid) {
      try { await fetch("/api/stop", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sid }) }); }
      catch (err) { /* ignore */ }
      status("Stopped.", "info");
    }
    if (pc) pc.close();
    const video = $("fc-video");
    if (video) video.srcObject = null;
    return "";
  }

  async function swap(garment) {
    if (!state.sid) return null;
    const r = await fetch("/api/swap", { method: "POST", headers: { "content-type": "application/json" },
                                         body: JSON.stringify({ sid: state.sid, garment }) });
    return r.json();
  }

  window.addEventListener("pagehide", () => {
    if (state.sid) navigator.sendBeacon("/api/stop", JSON.stringify({ sid: state.sid }));
  });

  // The video element is rendered by Gradio after this script runs.
  const hook = setInterval(() => {
    const video = $("fc-video");
    if (video && !video.dataset.fcHooked) { video.dataset.fcHooked = "1"; countFrames(video); clearInterval(hook); }
  }, 100);

  window.fc = { start, stop, swap, state };
})();
