// videochat page: WebRTC to the avatar server, subtitles, typed questions,
// interruption and per-turn latency. Plain JS, no build step, no CDN.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const el = {
    start: $('start'), hangup: $('hangup'), interrupt: $('interrupt'),
    video: $('video'), placeholder: $('placeholder'), state: $('state'),
    log: $('log'), text: $('text'), send: $('send'), composer: $('composer'),
    latency: $('latency'), avatar: $('avatar'), lang: $('lang'), error: $('error'),
    voice: $('voice'), mode: $('mode'), modeField: $('mode-field'),
  };

  const ICE_GATHER_TIMEOUT_MS = 5000;
  const ENDED = {
    idle_timeout: 'The conversation ended after a long silence. Press Start to talk again.',
    max_duration: 'The conversation reached its time limit. Press Start to talk again.',
    server_shutdown: 'The server is shutting down. Try again in a minute.',
    deleted: 'The conversation was ended.',
    handshake_timeout: 'The connection could not be set up in time. Press Start to retry.',
  };
  // Ends the same session token may continue (the server keeps the session a
  // while): the page reconnects on its own.
  const RESUMABLE = new Set(['node_lost', 'connection_failed']);
  const RECONNECT_DELAYS_MS = [1000, 2000, 4000]; // before each attempt
  const RETRY_AFTER_MAX_S = 5;        // a busy server's Retry-After up to this is honoured
  const DISCONNECTED_GRACE_MS = 3000; // "disconnected" this long counts as lost
  const RECONNECT_OPEN_TIMEOUT_MS = 15000;
  const LOST = 'The connection was lost. Press Start to talk again.';

  // Everything tests need lives here.
  const vc = {
    pc: null,
    dc: null,
    sessionId: null,
    token: null,
    events: [],
    reconnecting: false, // true while the page re-offers with the session's token
    reconnects: 0,       // reconnect attempts made (all sessions of this page)
    modes: null,         // GET /health "modes", once it has answered
    audioLevel,
  };
  window.videochat = vc;

  let mic = null;          // local MediaStream
  let audioCtx = null;
  let analyser = null;
  let analyserBuf = null;
  let remoteStream = null;
  let currentUser = null;  // <li> of the user line still being transcribed
  let currentBot = null;   // <li> of the bot message sentences are appended to
  let pendingTyped = null; // last typed question, to not show it twice if echoed
  let turnCount = 0;
  const latencyCols = [];
  let established = false;    // this session's data channel has opened once
  let reconnect = null;       // { reason } while reconnecting
  let disconnectTimer = null; // a "disconnected" peer counts as lost when it fires

  // ---------------------------------------------------------------- UI helpers

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = !message;
  }

  function setState(value, label = value) {
    el.state.textContent = label;
    el.state.dataset.state = value;
  }

  // The mode the user picked, or null when the server offers one mode only.
  function modeChoice() {
    return el.modeField.hidden ? null : el.mode.value;
  }

  function setConnected(connected) {
    el.start.hidden = connected;
    el.hangup.hidden = !connected;
    el.interrupt.disabled = !connected;
    el.text.disabled = !connected;
    el.send.disabled = !connected;
    el.avatar.disabled = connected;
    el.lang.disabled = connected;
    el.mode.disabled = connected;
    el.placeholder.hidden = connected;
    updateVoicePicker();
  }

  // An end-to-end model speaks in its own voices: the picker does not apply.
  function updateVoicePicker() {
    const endToEnd = modeChoice() === 'end-to-end';
    el.voice.disabled = el.lang.disabled || endToEnd;
    $('voice-play').disabled = endToEnd;
  }

  // While reconnecting: Hang up stays (it ends the session), nothing to send.
  function setReconnecting() {
    setConnected(true);
    el.interrupt.disabled = true;
    el.text.disabled = true;
    el.send.disabled = true;
  }

  function scrollLog() {
    el.log.scrollTop = el.log.scrollHeight;
  }

  function dropPartialUser() {
    if (currentUser && currentUser.classList.contains('partial')) currentUser.remove();
    currentUser = null;
  }

  function addLine(kind, text) {
    const li = document.createElement('li');
    li.className = `msg ${kind}`;
    li.textContent = text;
    el.log.appendChild(li);
    scrollLog();
    return li;
  }

  function lineText(text) {
    return String(text ?? '').trim();
  }

  // ------------------------------------------------------------- remote audio

  function attachAnalyser(track) {
    try {
      if (!audioCtx) audioCtx = new (window.AudioContext || window.webkitAudioContext)();
      if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
      const source = audioCtx.createMediaStreamSource(new MediaStream([track]));
      analyser = audioCtx.createAnalyser();
      analyser.fftSize = 2048;
      analyserBuf = new Float32Array(analyser.fftSize);
      source.connect(analyser); // not to the destination: the <video> plays it
    } catch (err) {
      console.warn('audio analyser unavailable', err);
    }
  }

  /** RMS (0..1) of the remote audio right now; 0 when not connected. */
  function audioLevel() {
    if (!analyser) return 0;
    analyser.getFloatTimeDomainData(analyserBuf);
    let sum = 0;
    for (let i = 0; i < analyserBuf.length; i++) sum += analyserBuf[i] * analyserBuf[i];
    return Math.sqrt(sum / analyserBuf.length);
  }

  // ---------------------------------------------------------- data channel in

  function onUserText(msg) {
    const text = lineText(msg.text);
    if (msg.final && text) currentBot = null; // a new user turn closes the bot message
    if (pendingTyped !== null && text.toLowerCase() === pendingTyped.toLowerCase()) {
      if (msg.final) pendingTyped = null;
      return; // the typed question is already in the log
    }
    // An empty partial (speech started, no words yet) shows as "…".
    if (!currentUser) currentUser = addLine('user partial', text);
    currentUser.textContent = text;
    if (msg.final) {
      currentUser.classList.remove('partial');
      if (!text) currentUser.remove();
      currentUser = null;
    }
    scrollLog();
  }

  function onBotText(msg) {
    const text = lineText(msg.text);
    if (!text) return;
    pendingTyped = null; // the server has moved on to answering
    if (!currentBot) {
      currentBot = addLine('bot', text);
    } else {
      const sep = /[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]$/.test(currentBot.textContent) ? '' : ' ';
      currentBot.textContent += sep + text;
    }
    scrollLog();
  }

  function fmtMs(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '–';
    return String(Math.round(seconds * 1000));
  }

  const ACRONYMS = new Set(['asr', 'llm', 'tts', 'vad', 'rtc', 'e2e', 'ttfb', 'ttft']);

  function columnLabel(key) {
    const words = key.replace(/_s$|_ms$/, '').split(/[_\s]+/).filter(Boolean);
    return words.map((w, i) => {
      if (ACRONYMS.has(w.toLowerCase())) return w.toUpperCase();
      return i === 0 ? w.charAt(0).toUpperCase() + w.slice(1) : w;
    }).join(' ');
  }

  function onTurn(msg) {
    // Not the end of the bot message: the server may report a turn's latency
    // as soon as its first audio goes out, before the later sentences.
    const latency = msg.latency && typeof msg.latency === 'object' ? msg.latency : {};
    turnCount += 1;
    let newCols = false;
    for (const key of Object.keys(latency)) {
      if (!latencyCols.includes(key)) { latencyCols.push(key); newCols = true; }
    }
    const thead = el.latency.tHead.rows[0];
    if (newCols) {
      thead.innerHTML = '<th>#</th>';
      for (const key of latencyCols) {
        const th = document.createElement('th');
        th.textContent = columnLabel(key);
        thead.appendChild(th);
      }
      // widen earlier rows so columns line up
      for (const row of el.latency.tBodies[0].rows) {
        while (row.cells.length < latencyCols.length + 1) row.insertCell().textContent = '–';
      }
    }
    const row = el.latency.tBodies[0].insertRow(0); // newest first
    row.insertCell().textContent = String(turnCount);
    for (const key of latencyCols) {
      const cell = row.insertCell();
      cell.textContent = fmtMs(latency[key]);
      if (key in latency) cell.title = `${key}: ${latency[key]} s`;
    }
    if (msg.interrupted) row.classList.add('interrupted');
  }

  function onMessage(event, dc) {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      console.warn('non-JSON data channel message', event.data);
      return;
    }
    vc.events.push(msg);
    switch (msg.type) {
      case 'state':
        setState(msg.value);
        if (msg.value === 'thinking') currentBot = null;
        break;
      case 'user_text': onUserText(msg); break;
      case 'bot_text': onBotText(msg); break;
      case 'turn': onTurn(msg); break;
      case 'error':
        addLine('error', msg.message || 'error');
        showError(msg.message || 'error');
        break;
      case 'ended':
        if (dc !== vc.dc) break; // a peer this page has already left (hung up, replaced)
        if (RESUMABLE.has(msg.reason) && canReconnect()) {
          beginReconnect(msg.reason);
          break;
        }
        showError(ENDED[msg.reason] || `The conversation ended (${msg.reason}).`);
        vc.sessionId = null; // the server has closed it already
        hangup();
        break;
      default: break;
    }
  }

  function sendJson(obj) {
    if (!vc.dc || vc.dc.readyState !== 'open') return false;
    vc.dc.send(JSON.stringify(obj));
    return true;
  }

  // ------------------------------------------------------------- connection

  function waitIceGathering(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') { resolve(); return; }
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        pc.removeEventListener('iceconnectionstatechange', check);
        resolve();
      }
      // Stop waiting when gathering completes, or when ICE has already failed
      // (no usable interface), so the page reports the error at once.
      function check() {
        if (pc.iceGatheringState === 'complete' || pc.iceConnectionState === 'failed') done();
      }
      pc.addEventListener('icegatheringstatechange', check);
      pc.addEventListener('iceconnectionstatechange', check);
    });
  }

  // STUN/TURN as the server is configured (server.ice_servers); none if unknown.
  async function iceServers() {
    try {
      const resp = await fetch('/api/rtc');
      if (resp.ok) return (await resp.json()).iceServers || [];
    } catch { /* no STUN/TURN: host candidates only */ }
    return [];
  }

  async function errorText(resp) {
    let body = null;
    try { body = await resp.json(); } catch { /* not JSON */ }
    const detail = body && body.detail;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join('; ');
    if (detail) return JSON.stringify(detail);
    return `server answered ${resp.status} ${resp.statusText}`;
  }

  // What the offer carries besides the SDP: the page's choices.
  function offerChoices() {
    const mode = modeChoice();
    return {
      avatar: el.avatar.value,
      lang: el.lang.value,
      // "" (Default): the avatar's own voice, else the language's default;
      // an end-to-end model speaks in its own voices.
      ...(el.voice.value && mode !== 'end-to-end' ? { voice: el.voice.value } : {}),
      // Only when the server offers a choice (GET /health "modes").
      ...(mode ? { mode } : {}),
    };
  }

  // A fresh peer connection on the microphone `mic`, offered with `fields`.
  // Resolves with { pc, dc } once the server has answered, or null when the
  // page hung up meanwhile; throws on a refused offer (err.status, err.retryAfter).
  async function connectPeer(fields) {
    const pc = new RTCPeerConnection({ iceServers: await iceServers() });
    vc.pc = pc;
    remoteStream = new MediaStream();

    pc.addTransceiver(mic.getAudioTracks()[0], { direction: 'sendrecv', streams: [mic] });
    pc.addTransceiver('video', { direction: 'recvonly' });

    const dc = pc.createDataChannel('events');
    vc.dc = dc;
    dc.onmessage = (event) => onMessage(event, dc);
    dc.onopen = () => {
      if (vc.dc !== dc) return;
      established = true;
      setState('listening');
    };

    pc.ontrack = (event) => {
      if (vc.pc !== pc) return;
      const stream = event.streams && event.streams[0];
      if (stream) {
        remoteStream = stream;
      } else if (!remoteStream.getTracks().includes(event.track)) {
        remoteStream.addTrack(event.track);
      }
      if (el.video.srcObject !== remoteStream) el.video.srcObject = remoteStream;
      if (event.track.kind === 'audio') attachAnalyser(event.track);
      el.video.play().catch((err) => console.warn('video.play()', err));
    };

    pc.onconnectionstatechange = () => onPeerState(pc);

    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    if (vc.pc !== pc) { pc.close(); return null; } // hung up meanwhile

    const resp = await fetch('/offer', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        sdp: pc.localDescription.sdp,
        type: pc.localDescription.type,
        ...fields,
      }),
    });
    if (!resp.ok) {
      const error = new Error(await errorText(resp));
      error.status = resp.status;
      error.retryAfter = resp.headers.get('Retry-After');
      throw error;
    }
    const answer = await resp.json();
    if (vc.pc !== pc) { // hung up while the server answered: end what it opened
      if (answer.session_id) deleteSession(answer.session_id, answer.token);
      pc.close();
      return null;
    }
    vc.sessionId = answer.session_id ?? null;
    // This session's own credential: hang-up, and a reconnect continues with it.
    vc.token = answer.token ?? fields.token ?? null;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    return { pc, dc };
  }

  function onPeerState(pc) {
    // An old peer, or a reconnect attempt's (the attempt watches its own).
    if (vc.pc !== pc || reconnect) return;
    const state = pc.connectionState;
    if (state === 'connected') {
      clearTimeout(disconnectTimer);
      disconnectTimer = null;
    } else if (state === 'disconnected') {
      // Often back within a second or two (ICE restarts on its own); longer is lost.
      if (!disconnectTimer) {
        disconnectTimer = setTimeout(() => {
          disconnectTimer = null;
          if (vc.pc === pc && !reconnect && pc.connectionState === 'disconnected') {
            connectionLost();
          }
        }, DISCONNECTED_GRACE_MS);
      }
    } else if (state === 'failed') {
      connectionLost();
    }
  }

  function canReconnect() {
    return established && !reconnect && Boolean(vc.sessionId && vc.token);
  }

  function connectionLost() {
    if (canReconnect()) {
      beginReconnect('connection_failed');
      return;
    }
    if (reconnect) return;
    showError('The connection to the avatar failed.');
    hangup();
  }

  function closePeer(pc, dc) {
    try { if (dc) dc.close(); } catch { /* already closed */ }
    try { if (pc) pc.close(); } catch { /* already closed */ }
  }

  // The session ended resumably (or its peer was lost): leave the old peer
  // without ending the session on the server, and re-offer with its token.
  function beginReconnect(reason) {
    const { pc, dc } = vc;
    const attempt = { reason };
    reconnect = attempt;
    vc.reconnecting = true;
    clearTimeout(disconnectTimer);
    disconnectTimer = null;
    vc.pc = null;
    vc.dc = null;
    closePeer(pc, dc);
    analyser = null;
    dropPartialUser();
    currentBot = null;
    pendingTyped = null;
    showError('');
    setReconnecting();
    setState('reconnecting', 'Reconnecting…');
    console.info(`videochat: reconnecting session ${vc.sessionId} (${reason})`);
    reconnectLoop(attempt);
  }

  function sleep(ms) {
    return new Promise((resolve) => { setTimeout(resolve, ms); });
  }

  // Resolves when the data channel opens; rejects when the peer fails first.
  function channelOpen(pc, dc, timeoutMs) {
    return new Promise((resolve, reject) => {
      if (dc.readyState === 'open') { resolve(); return; }
      const timer = setTimeout(() => finish(new Error('timed out connecting')), timeoutMs);
      function check() {
        if (dc.readyState === 'open') finish(null);
        else if (['failed', 'closed'].includes(pc.connectionState) || dc.readyState === 'closed') {
          finish(new Error(`the connection ${pc.connectionState}`));
        }
      }
      function finish(error) {
        clearTimeout(timer);
        dc.removeEventListener('open', check);
        dc.removeEventListener('close', check);
        pc.removeEventListener('connectionstatechange', check);
        if (error) reject(error); else resolve();
      }
      dc.addEventListener('open', check);
      dc.addEventListener('close', check);
      pc.addEventListener('connectionstatechange', check);
    });
  }

  // Seconds from a Retry-After header, when short enough to wait for; else 0.
  function shortRetryAfterMs(header) {
    const seconds = Number(header);
    if (!Number.isFinite(seconds) || seconds < 0 || seconds > RETRY_AFTER_MAX_S) return 0;
    return seconds * 1000;
  }

  async function reconnectLoop(attempt) {
    let retryAfterMs = 0;
    for (const delay of RECONNECT_DELAYS_MS) {
      await sleep(Math.max(delay, retryAfterMs));
      if (reconnect !== attempt) return; // hung up meanwhile
      retryAfterMs = 0;
      vc.reconnects += 1;
      try {
        const peer = await connectPeer({ token: vc.token, ...offerChoices() });
        if (!peer || reconnect !== attempt) return;
        await channelOpen(peer.pc, peer.dc, RECONNECT_OPEN_TIMEOUT_MS);
        if (reconnect !== attempt || vc.pc !== peer.pc) return;
        reconnect = null;
        vc.reconnecting = false;
        setConnected(true);
        setState('listening');
        console.info(`videochat: session ${vc.sessionId} reconnected`);
        return;
      } catch (err) {
        if (reconnect !== attempt) return;
        console.warn('videochat: reconnect attempt failed', err);
        const { pc, dc } = vc;
        vc.pc = null;
        vc.dc = null;
        closePeer(pc, dc);
        // The server no longer knows this session (ended for good, expired):
        // trying again cannot help.
        if ([400, 401, 403, 404].includes(err && err.status)) break;
        // Busy (503) or too many requests (429): a short Retry-After is waited for.
        if (err && [429, 503].includes(err.status)) {
          retryAfterMs = shortRetryAfterMs(err.retryAfter);
        }
      }
    }
    if (reconnect !== attempt) return;
    reconnect = null;
    vc.reconnecting = false;
    showError(LOST);
    vc.sessionId = null; // nothing to hang up on the server: it ends the session itself
    await hangup();
  }

  async function start() {
    if (vc.pc || reconnect) return;
    showError('');
    el.start.disabled = true;
    setState('connecting');
    // Created inside the click so that autoplay and WebAudio are allowed.
    audioCtx = audioCtx || new (window.AudioContext || window.webkitAudioContext)();
    audioCtx.resume().catch(() => {});
    el.video.muted = false;
    try {
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      const peer = await connectPeer(offerChoices());
      if (peer) setConnected(true);
    } catch (err) {
      const message = err && err.name === 'NotAllowedError'
        ? 'Microphone access was denied. Allow it and press Start again.'
        : String((err && err.message) || err);
      showError(message);
      await hangup();
    } finally {
      el.start.disabled = false;
    }
  }

  async function deleteSession(sessionId, token) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 2000);
    try {
      await fetch(`/api/sessions/${encodeURIComponent(sessionId)}`, {
        method: 'DELETE', keepalive: true, signal: ctrl.signal,
        headers: token ? { Authorization: `Bearer ${token}` } : {},
      });
    } catch (err) {
      console.warn('DELETE session', err);
    } finally {
      clearTimeout(timer);
    }
  }

  // Also the user's Stop during a reconnect: that ends the session for good.
  async function hangup() {
    const { pc, dc, sessionId, token } = vc;
    vc.pc = null;
    vc.dc = null;
    vc.sessionId = null;
    vc.token = null;
    reconnect = null;
    vc.reconnecting = false;
    established = false;
    clearTimeout(disconnectTimer);
    disconnectTimer = null;
    if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
    analyser = null;
    el.video.pause();
    el.video.srcObject = null;
    dropPartialUser();
    currentBot = null;
    setConnected(false);
    setState('idle');
    // Tell the server first, so it does not see the peer vanish and close
    // the session on its own; then close our side.
    if (sessionId) await deleteSession(sessionId, token);
    closePeer(pc, dc);
  }

  function sendTyped(event) {
    event.preventDefault();
    const text = lineText(el.text.value);
    if (!text) return;
    if (!sendJson({ type: 'text', text })) {
      showError('Not connected: press Start first.');
      return;
    }
    dropPartialUser();
    currentBot = null;
    pendingTyped = text;
    addLine('user typed', text);
    el.text.value = '';
    el.text.focus();
  }

  function interrupt() {
    if (sendJson({ type: 'interrupt' }) && currentBot) {
      currentBot.classList.add('interrupted');
      currentBot = null;
    }
  }

  async function loadAvatars(select) {
    let names = [];
    try {
      const resp = await fetch('/api/avatars', { headers: { Accept: 'application/json' } });
      if (resp.status === 200) {
        const list = await resp.json();
        if (Array.isArray(list)) {
          names = list.filter((a) => !(a && typeof a === 'object' && a.ready === false))
            .map((a) => (a && typeof a === 'object' ? a.name : a))
            .filter((n) => typeof n === 'string' && n);
        }
      }
    } catch { /* no avatar API: keep "default" */ }
    if (!names.length) names = ['default'];
    const keep = select || el.avatar.value;
    el.avatar.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(keep)) el.avatar.value = keep;
  }

  // Upload a photo or a clip: POST /api/avatars answers when it is prepared;
  // meanwhile /api/avatars/{name}/progress is polled for the bar.
  async function addAvatar(event) {
    event.preventDefault();
    const name = $('avatar-name').value.trim();
    const file = $('avatar-file').files[0];
    // Adding avatars is the operator's: the server's API key (weights/api_key),
    // kept for this tab only.
    const key = $('avatar-key').value.trim();
    const auth = { Authorization: `Bearer ${key}` };
    sessionStorage.setItem('videochat-api-key', key);
    $('voice-key').value = key;
    const bar = $('avatar-progress');
    const status = $('avatar-status');
    const button = $('avatar-add');
    if (!name || !file) return;
    const form = new FormData();
    form.append('name', name);
    form.append('file', file);
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    status.textContent = `Uploading ${file.name}…`;
    try {
      const { resp, body } = await uploadWithProgress('/api/avatars', name, form, auth,
        (p) => { bar.value = p.fraction; status.textContent = `Preparing ${name}: ${p.message}`; });
      if (resp.status === 201) {
        bar.value = 1;
        status.textContent = `Added ${name} (${body.mode || 'photo'}). Pick it and press Start.`;
        $('avatar-form').reset();
        $('avatar-key').value = key;
        await loadAvatars(name);
      } else {
        status.textContent = `Could not add ${name}: ${body.detail || resp.statusText}`;
      }
    } catch (err) {
      status.textContent = `Upload failed: ${err}`;
    } finally {
      button.disabled = false;
      setTimeout(() => { bar.hidden = true; }, 800);
    }
  }

  // POST a multipart form to `url` and, while it is processed, poll
  // `url/<name>/progress` every 0.5 s; `onProgress` gets the running job.
  async function uploadWithProgress(url, name, form, auth, onProgress) {
    let polling = true;
    const poll = async () => {
      while (polling) {
        await new Promise((r) => setTimeout(r, 500));
        if (!polling) break;
        try {
          const resp = await fetch(`${url}/${encodeURIComponent(name)}/progress`,
            { headers: auth });
          if (resp.status === 200 && polling) {
            const p = await resp.json();
            if (p.state === 'running') onProgress(p);
          }
        } catch { /* keep polling */ }
      }
    };
    poll();
    try {
      const resp = await fetch(url, { method: 'POST', body: form, headers: auth });
      let body = {};
      try { body = await resp.json(); } catch { /* not JSON */ }
      return { resp, body };
    } finally {
      polling = false;
    }
  }

  // ------------------------------------------------------------------ voices

  let voiceDefaults = { en: '', zh: '' };
  let sample = null; // the <audio> playing a sample
  // GET /api/voices "keeps_up", by language and voice: whether this machine
  // makes the voice's replies at least as fast as they play.
  let keepsUp = { en: {}, zh: {} };

  async function loadVoices(select) {
    let list = null;
    try {
      const resp = await fetch('/api/voices', { headers: { Accept: 'application/json' } });
      if (resp.status === 200) list = await resp.json();
    } catch { /* no voice API: keep "Default" only */ }
    const keep = select || el.voice.value;
    const options = [new Option('Default', '')];
    keepsUp = { en: {}, zh: {} };
    if (list && typeof list === 'object') {
      voiceDefaults = list.default || voiceDefaults;
      for (const v of [...(list.user || []), ...Object.values(list.stock || {}).flat()]) {
        if (v && typeof v.keeps_up === 'boolean' && keepsUp[v.lang]) keepsUp[v.lang][v.name] = v.keeps_up;
      }
      const user = (list.user || []).filter((v) => v && v.ready !== false);
      if (user.length) {
        const group = document.createElement('optgroup');
        group.label = 'Your voices';
        for (const v of user) {
          const sim = typeof v.similarity === 'number' ? `, match ${v.similarity.toFixed(2)}` : '';
          group.append(new Option(`${v.name} (${v.lang}${sim})`, v.name));
        }
        options.push(group);
      }
      for (const [lang, label] of [['en', 'English'], ['zh', '中文']]) {
        const stock = (list.stock && list.stock[lang]) || [];
        if (!stock.length) continue;
        const group = document.createElement('optgroup');
        group.label = label;
        for (const v of stock) {
          // Another backend's voice (Piper's "joe") says what it is.
          const about = [v.gender, v.description].filter(Boolean).join(', ');
          group.append(new Option(about ? `${v.name} (${about})` : v.name, v.name));
        }
        options.push(group);
      }
    }
    el.voice.replaceChildren(...options);
    if ([...el.voice.options].some((o) => o.value === keep)) el.voice.value = keep;
    updateVoiceHint();
  }

  // Where this machine makes the chosen voice's speech more slowly than it
  // plays (calibration: GET /api/voices "keeps_up"), say so, and name the
  // voices that keep up: answers in the chosen one start late and may pause.
  function updateVoiceHint() {
    const hint = $('voice-hint');
    const langs = el.lang.value === 'auto' ? ['en', 'zh'] : [el.lang.value];
    const slow = langs.filter((lang) => {
      const known = keepsUp[lang] || {};
      // A voice that does not speak this language (joe in Chinese) leaves it
      // to the language's configured voice.
      const speaking = el.voice.value in known ? el.voice.value : voiceDefaults[lang];
      return known[speaking] === false;
    });
    const names = { en: 'English', zh: 'Chinese' };
    const faster = slow.flatMap((lang) => Object.keys(keepsUp[lang]).filter((n) => keepsUp[lang][n])
      .map((n) => `${n} (${names[lang]})`));
    hint.textContent = slow.length
      ? `This machine speaks ${slow.map((lang) => names[lang]).join(' and ')} in this voice more `
        + 'slowly than it plays, so answers start late and may pause.'
        + (faster.length ? ` Keeps up here: ${faster.join(', ')}.` : '')
      : '';
    hint.hidden = modeChoice() === 'end-to-end' || !slow.length;
  }

  function playSample() {
    const lang = el.lang.value === 'zh' ? 'zh' : 'en';
    const name = el.voice.value || voiceDefaults[lang];
    if (!name) return;
    if (sample) sample.pause();
    const button = $('voice-play');
    button.disabled = true; // the first sample of a voice is synthesized on request
    sample = new Audio(`/api/voices/${encodeURIComponent(name)}/sample`);
    sample.addEventListener('playing', () => { button.disabled = false; }, { once: true });
    sample.addEventListener('error', () => {
      button.disabled = false;
      showError(`The sample of ${name} could not be played.`);
    }, { once: true });
    sample.play().catch(() => { button.disabled = false; });
  }

  // Record 3-10 s from the microphone (MediaRecorder), with a countdown; the
  // recording is uploaded as the form's clip when no file is chosen.
  const RECORD_MAX_S = 10;
  const RECORD_MIN_S = 3;
  let recording = null; // { recorder, stream, timer, started }
  let recorded = null;  // Blob

  async function toggleRecording() {
    const button = $('voice-record');
    const status = $('voice-status');
    if (recording) {
      recording.recorder.stop();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch {
      status.textContent = 'Microphone access was denied: allow it, or choose a file.';
      return;
    }
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    recording = { recorder, stream, timer: null, started: performance.now() };
    recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
    recorder.onstop = () => {
      const seconds = (performance.now() - recording.started) / 1000;
      clearInterval(recording.timer);
      stream.getTracks().forEach((t) => t.stop());
      recording = null;
      button.classList.remove('recording');
      button.textContent = '● Record';
      if (seconds < RECORD_MIN_S) {
        recorded = null;
        status.textContent = `Too short (${seconds.toFixed(1)} s): speak for at least ${RECORD_MIN_S} s.`;
        return;
      }
      recorded = new Blob(chunks, { type: recorder.mimeType || 'audio/webm' });
      const preview = $('voice-recording');
      preview.src = URL.createObjectURL(recorded);
      preview.hidden = false;
      $('voice-file').value = '';
      status.textContent = `Recorded ${seconds.toFixed(1)} s. Add it as a voice, or record again.`;
    };
    recorder.start();
    button.classList.add('recording');
    const tick = () => {
      const left = Math.max(0, RECORD_MAX_S - (performance.now() - recording.started) / 1000);
      button.textContent = `■ Stop (${Math.ceil(left)} s)`;
      status.textContent = 'Recording: speak naturally until the countdown ends.';
      if (left <= 0) recorder.stop();
    };
    tick();
    recording.timer = setInterval(tick, 250);
  }

  // Upload a clip: POST /api/voices answers when the voice is matched; meanwhile
  // /api/voices/{name}/progress is polled for the bar (as for avatars).
  async function addVoice(event) {
    event.preventDefault();
    const name = $('voice-name').value.trim();
    const file = $('voice-file').files[0];
    const clip = file || recorded;
    const key = $('voice-key').value.trim();
    const auth = { Authorization: `Bearer ${key}` };
    sessionStorage.setItem('videochat-api-key', key);
    $('avatar-key').value = key;
    const bar = $('voice-progress');
    const status = $('voice-status');
    const button = $('voice-add');
    if (!name) return;
    if (!clip) {
      status.textContent = 'Choose an audio file or record one first.';
      return;
    }
    const form = new FormData();
    form.append('name', name);
    form.append('audio', clip, file ? file.name : 'recording.webm');
    const text = $('voice-text').value.trim();
    if (text) form.append('text', text);
    if ($('voice-lang').value) form.append('lang', $('voice-lang').value);
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    status.textContent = 'Uploading…';
    try {
      const { resp, body } = await uploadWithProgress('/api/voices', name, form, auth,
        (p) => { bar.value = p.fraction; status.textContent = `Matching ${name}: ${p.message}`; });
      if (resp.status === 201) {
        bar.value = 1;
        const sim = Number(body.similarity || 0).toFixed(2);
        const near = Number(body.nearest_similarity || 0).toFixed(2);
        status.textContent = `Added ${name} (${body.lang}): it matches your clip at ${sim} `
          + `(the nearest stock voice, ${body.nearest_stock}, at ${near}). Picked for the next Start.`;
        $('voice-form').reset();
        $('voice-key').value = key;
        recorded = null;
        $('voice-recording').hidden = true;
        await loadVoices(name);
      } else {
        status.textContent = `Could not add ${name}: ${body.detail || resp.statusText}`;
      }
    } catch (err) {
      status.textContent = `Upload failed: ${err}`;
    } finally {
      button.disabled = false;
      setTimeout(() => { bar.hidden = true; }, 800);
    }
  }

  // ------------------------------------------------------------------- modes

  // The Mode switch shows only when the server offers more than one mode
  // (GET /health "modes": an end-to-end model is configured beside the cascade).
  async function loadModes() {
    let modes = [];
    try {
      const resp = await fetch('/health', { headers: { Accept: 'application/json' } });
      if (resp.ok) modes = (await resp.json()).modes || [];
    } catch { /* no /health: the server's default mode */ }
    vc.modes = modes;
    const offered = [...el.mode.options].filter((o) => modes.includes(o.value));
    el.modeField.hidden = offered.length < 2;
    if (offered.length >= 2) {
      // An operator who configured an end-to-end model has it by default (as
      // the server does for an offer that names no mode).
      if (modes.includes('end-to-end')) el.mode.value = 'end-to-end';
    }
    updateVoicePicker();
  }

  el.start.addEventListener('click', start);
  el.hangup.addEventListener('click', () => { hangup(); });
  el.interrupt.addEventListener('click', interrupt);
  el.composer.addEventListener('submit', sendTyped);
  $('avatar-form').addEventListener('submit', addAvatar);
  $('voice-form').addEventListener('submit', addVoice);
  $('voice-record').addEventListener('click', toggleRecording);
  $('voice-play').addEventListener('click', playSample);
  $('voice-file').addEventListener('change', () => {
    recorded = null;
    $('voice-recording').hidden = true;
  });
  el.mode.addEventListener('change', updateVoicePicker);
  el.mode.addEventListener('change', updateVoiceHint);
  el.voice.addEventListener('change', updateVoiceHint);
  el.lang.addEventListener('change', updateVoiceHint);
  window.addEventListener('pagehide', () => { if (vc.pc || reconnect) hangup(); });

  setConnected(false);
  setState('idle');
  $('avatar-key').value = sessionStorage.getItem('videochat-api-key') || '';
  $('voice-key').value = $('avatar-key').value;
  loadAvatars();
  loadVoices();
  loadModes();
})();
