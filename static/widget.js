// <videochat-avatar>: the embeddable widget. A third-party page loads this
// script from the videochat server and drops the element in, with a session
// token its own backend minted (POST /api/sessions with the API key):
//
//   <script src="https://videochat.example/widget.js"></script>
//   <videochat-avatar token="..." lang="en"></videochat-avatar>
//
// Plain JS, no build step, no CDN. docs/embedding.md has the whole API.
(() => {
  'use strict';

  if (customElements.get('videochat-avatar')) return; // loaded twice

  // Where this script came from is where the server is, unless the element
  // says otherwise with server="...".
  const SCRIPT_ORIGIN = (() => {
    try { return new URL(document.currentScript.src).origin; } catch { return ''; }
  })();
  const ICE_GATHER_TIMEOUT_MS = 5000;
  // Ends the same session token may continue (the server keeps the session a
  // while): the widget reconnects on its own.
  const RESUMABLE = new Set(['node_lost', 'connection_failed']);
  const RECONNECT_DELAYS_MS = [1000, 2000, 4000]; // before each attempt
  const RETRY_AFTER_MAX_S = 5;        // a busy server's Retry-After up to this is honoured
  const DISCONNECTED_GRACE_MS = 3000; // "disconnected" this long counts as lost
  const RECONNECT_OPEN_TIMEOUT_MS = 15000;
  const LOST = 'The connection was lost. Press Start to talk again.';
  const CJK_END = /[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]$/;

  const STYLE = `
    :host {
      display: inline-block; width: 360px; max-width: 100%;
      font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans",
        "PingFang SC", "Microsoft YaHei", sans-serif;
      color: #1f2433; contain: content;
    }
    :host([hidden]) { display: none; }
    * { box-sizing: border-box; }
    [hidden] { display: none !important; }
    .card { background: #fff; border: 1px solid #e3e6f0; border-radius: 14px; overflow: hidden;
      box-shadow: 0 1px 2px rgb(20 24 40 / 6%), 0 8px 24px rgb(20 24 40 / 6%); }
    .stage { position: relative; aspect-ratio: 1; background: #11131a; }
    video { display: block; width: 100%; height: 100%; object-fit: cover; }
    .idle { position: absolute; inset: 0; display: grid; place-items: center; color: #c9cde0;
      text-align: center; padding: 1rem; }
    .state { position: absolute; top: 8px; left: 8px; padding: 2px 10px; border-radius: 999px;
      background: rgb(0 0 0 / 55%); color: #fff; font-size: 12px; text-transform: capitalize; }
    .state[data-state="listening"] { background: #2f9e6b; }
    .state[data-state="thinking"] { background: #d9922b; }
    .state[data-state="speaking"] { background: #3b82f6; }
    .state[data-state="reconnecting"] { background: #d9922b; text-transform: none; }
    .subtitles { position: absolute; left: 0; right: 0; bottom: 0; padding: 8px 10px;
      background: linear-gradient(transparent, rgb(0 0 0 / 70%)); color: #fff; }
    .subtitles p { margin: 2px 0; text-shadow: 0 1px 2px #000; }
    .subtitles .user { opacity: 0.8; font-style: italic; }
    .sound { position: absolute; top: 8px; right: 8px; }
    .bar { display: flex; gap: 6px; padding: 8px; }
    .bar input { flex: 1; min-width: 0; }
    button, input { font: inherit; border-radius: 8px; padding: 6px 10px; }
    button { border: 1px solid #d3d7e6; background: #f4f5fb; color: inherit; cursor: pointer; }
    button:disabled, input:disabled { opacity: 0.55; cursor: default; }
    button.primary { background: #5b5bd6; border-color: #5b5bd6; color: #fff; }
    button.stop { background: #d64545; border-color: #d64545; color: #fff; }
    button[aria-pressed="true"] { background: #fbe3e3; border-color: #d64545; }
    input { border: 1px solid #d3d7e6; }
    .error { margin: 0 8px 8px; padding: 6px 10px; border-radius: 8px;
      background: #fdecec; color: #a32f2f; }
  `;

  const TEMPLATE = `
    <div class="card" part="card">
      <div class="stage">
        <video part="video" width="512" height="512" playsinline autoplay muted></video>
        <div class="idle" part="idle">Press Start and talk.</div>
        <span class="state" part="state" role="status" aria-live="polite">idle</span>
        <button class="sound" type="button" hidden>Tap for sound</button>
        <div class="subtitles" part="subtitles" aria-live="polite">
          <p class="user"></p><p class="bot"></p>
        </div>
      </div>
      <div class="bar">
        <button class="start primary" part="start" type="button">Start</button>
        <button class="mute" part="mute" type="button" aria-pressed="false" disabled>Mute</button>
      </div>
      <form class="bar composer" autocomplete="off">
        <input class="text" part="text" type="text" maxlength="500"
               placeholder="Type a question…" aria-label="Type a question" disabled>
        <button class="send" part="send" type="submit" disabled>Send</button>
      </form>
      <div class="error" part="error" role="alert" hidden></div>
    </div>
  `;

  // The server's errors are {"detail": "..."} (docs/api.md).
  async function errorText(resp) {
    const body = await resp.json().catch(() => null);
    return (body && typeof body.detail === 'string' && body.detail)
      || `server answered ${resp.status} ${resp.statusText}`;
  }

  function sleep(ms) {
    return new Promise((resolve) => { setTimeout(resolve, ms); });
  }

  // Milliseconds of a Retry-After header when short enough to wait for; else 0.
  function shortRetryAfterMs(header) {
    const seconds = Number(header);
    if (!Number.isFinite(seconds) || seconds < 0 || seconds > RETRY_AFTER_MAX_S) return 0;
    return seconds * 1000;
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

  function closePeer(pc, dc) {
    try { if (dc) dc.close(); } catch { /* already closed */ }
    try { if (pc) pc.close(); } catch { /* already closed */ }
  }

  function waitIceGathering(pc) {
    // The server takes one offer with every candidate in it (no trickle).
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') { resolve(); return; }
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      function check() {
        if (pc.iceGatheringState === 'complete' || pc.iceConnectionState === 'failed') done();
      }
      function done() {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        pc.removeEventListener('iceconnectionstatechange', check);
        resolve();
      }
      pc.addEventListener('icegatheringstatechange', check);
      pc.addEventListener('iceconnectionstatechange', check);
    });
  }

  class VideochatAvatar extends HTMLElement {
    static get observedAttributes() { return ['token', 'server']; }

    constructor() {
      super();
      const root = this.attachShadow({ mode: 'open' });
      root.innerHTML = `<style>${STYLE}</style>${TEMPLATE}`;
      const q = (sel) => root.querySelector(sel);
      this._el = {
        video: q('video'), idle: q('.idle'), state: q('.state'), sound: q('.sound'),
        user: q('.subtitles .user'), bot: q('.subtitles .bot'), start: q('.start'),
        mute: q('.mute'), composer: q('.composer'), text: q('.text'), send: q('.send'),
        error: q('.error'),
      };
      this._pc = null;
      this._dc = null;
      this._mic = null;
      this._sessionId = null;
      this._sessionToken = null; // the token that reaches this session (from the answer)
      this._starting = false;
      this._established = false; // this session's data channel has opened once
      this._reconnect = null;     // { reason } while re-offering with the session's token
      this._disconnectTimer = null;
      this._muted = false;
      this._state = 'idle';
      this._botTurnOpen = false; // bot_text clauses of one reply join on one line

      this._el.start.addEventListener('click', () => {
        if (this._pc || this._reconnect) this.stop(); else this.start();
      });
      this._el.mute.addEventListener('click', () => this.mute(!this._muted));
      this._el.sound.addEventListener('click', () => this._unmuteVideo());
      this._el.composer.addEventListener('submit', (event) => {
        event.preventDefault();
        if (this.send(this._el.text.value)) this._el.text.value = '';
      });
      this._onPageHide = () => { if (this._pc || this._reconnect) this.stop(); };
    }

    connectedCallback() { window.addEventListener('pagehide', this._onPageHide); }

    disconnectedCallback() {
      window.removeEventListener('pagehide', this._onPageHide);
      if (this._pc || this._reconnect) this.stop();
    }

    attributeChangedCallback() { this._showError(''); }

    // ----------------------------------------------------------- properties

    get server() {
      return (this.getAttribute('server') || SCRIPT_ORIGIN || location.origin).replace(/\/+$/, '');
    }
    set server(value) { this.setAttribute('server', value); }
    get token() { return this.getAttribute('token') || ''; }
    set token(value) { this.setAttribute('token', value); }
    get sessionId() { return this._sessionId; }
    get state() { return this._state; }
    get connected() { return this._pc !== null && !this._starting && !this._reconnect; }
    get muted() { return this._muted; }

    // -------------------------------------------------------------- methods

    /** Open the microphone, offer WebRTC to the server with the token. */
    async start() {
      if (this._pc || this._starting || this._reconnect) return;
      this._starting = true;
      this._showError('');
      this._el.start.disabled = true;
      this._setState('connecting');
      this._el.user.textContent = '';
      this._el.bot.textContent = '';
      this._botTurnOpen = false;
      this._el.video.muted = false; // a click on Start allows sound
      try {
        this._mic = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        });
        this._applyMute();
        const peer = await this._connectPeer(this.token);
        if (!peer) return;
        this._starting = false;
        this._setControls(true);
      } catch (err) {
        const detail = { type: 'error', message: String((err && err.message) || err) };
        if (err && err.name === 'NotAllowedError') {
          detail.message = 'Microphone access was denied. Allow it and press Start again.';
        }
        if (err && err.status) detail.status = err.status;
        this._fail(detail);
        this._teardown(null, true);
      } finally {
        this._starting = false;
        this._el.start.disabled = false;
      }
    }

    /** Hang up: the server closes the session, then this side closes. */
    stop() { return this._teardown({ type: 'ended', reason: 'stopped' }, true); }

    /** Mute (true) or unmute (false) the microphone: the track sends silence. */
    mute(muted = true) {
      this._muted = Boolean(muted);
      this._applyMute();
    }

    /** Ask in writing; it interrupts a reply in progress. False if not connected. */
    send(text) {
      const line = String(text ?? '').trim();
      if (!line) return false;
      if (!this._sendJson({ type: 'text', text: line })) {
        this._showError('Not connected: press Start first.');
        return false;
      }
      return true;
    }

    /** Stop the avatar talking. */
    interrupt() { return this._sendJson({ type: 'interrupt' }); }

    // ------------------------------------------------------------ internals

    // A fresh peer connection on the microphone, offered with `token`.
    // Resolves with { pc, dc } once the server answered, or null when stopped
    // meanwhile; throws on a refused offer (err.status, err.retryAfter).
    async _connectPeer(token) {
      const pc = new RTCPeerConnection({ iceServers: await this._iceServers() });
      this._pc = pc;
      const remote = new MediaStream();
      pc.addTransceiver(this._mic.getAudioTracks()[0], {
        direction: 'sendrecv', streams: [this._mic],
      });
      pc.addTransceiver('video', { direction: 'recvonly' });
      const dc = pc.createDataChannel('events');
      this._dc = dc;
      dc.onmessage = (event) => this._onMessage(event, dc);
      dc.onopen = () => {
        if (this._dc !== dc) return;
        const resumed = this._established;
        this._established = true;
        this._setState('listening');
        const detail = { type: 'connected', session_id: this._sessionId };
        if (resumed) detail.resumed = true;
        this._emit('connected', detail);
      };
      pc.ontrack = (event) => {
        if (this._pc !== pc) return;
        const stream = (event.streams && event.streams[0]) || remote;
        if (!stream.getTracks().includes(event.track)) stream.addTrack(event.track);
        if (this._el.video.srcObject !== stream) this._el.video.srcObject = stream;
        this._playVideo();
      };
      pc.onconnectionstatechange = () => this._onPeerState(pc);

      await pc.setLocalDescription(await pc.createOffer());
      await waitIceGathering(pc);
      if (this._pc !== pc) { pc.close(); return null; } // stopped meanwhile

      const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type, token };
      for (const name of ['lang', 'avatar', 'voice']) {
        if (this.getAttribute(name)) body[name] = this.getAttribute(name);
      }
      if (!body.token) delete body.token; // the server's own page may go without
      const resp = await this._fetch('/offer', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!resp.ok) {
        const error = new Error(await errorText(resp));
        error.status = resp.status;
        error.retryAfter = resp.headers.get('Retry-After');
        throw error;
      }
      const answer = await resp.json();
      if (this._pc !== pc) { // stopped while the server answered: end what it opened
        if (answer.session_id) this._deleteSession(answer.session_id, answer.token || token);
        pc.close();
        return null;
      }
      this._sessionId = answer.session_id ?? null;
      this._sessionToken = answer.token || token || null;
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
      return { pc, dc };
    }

    _onPeerState(pc) {
      // An old peer, or a reconnect attempt's (the attempt watches its own).
      if (this._pc !== pc || this._reconnect) return;
      const state = pc.connectionState;
      if (state === 'connected') {
        clearTimeout(this._disconnectTimer);
        this._disconnectTimer = null;
      } else if (state === 'disconnected') {
        // Often back within a second or two; longer counts as lost.
        if (!this._disconnectTimer) {
          this._disconnectTimer = setTimeout(() => {
            this._disconnectTimer = null;
            if (this._pc === pc && !this._reconnect && pc.connectionState === 'disconnected') {
              this._connectionLost();
            }
          }, DISCONNECTED_GRACE_MS);
        }
      } else if (state === 'failed') {
        this._connectionLost();
      }
    }

    _canReconnect() {
      return this._established && !this._reconnect && !this._starting
        && Boolean(this._sessionId && this._sessionToken);
    }

    _connectionLost() {
      if (this._canReconnect()) {
        this._beginReconnect('connection_failed');
        return;
      }
      if (this._reconnect) return;
      this._fail({ type: 'error', message: 'The connection to the avatar failed.' });
      this._teardown({ type: 'ended', reason: 'connection failed' }, false);
    }

    // The session ended resumably (or its peer was lost): leave the old peer
    // without ending the session on the server and offer again with its token
    // (a fresh peer connection, the same microphone), up to three times.
    _beginReconnect(reason) {
      const pc = this._pc;
      const dc = this._dc;
      const attempt = { reason };
      this._reconnect = attempt;
      clearTimeout(this._disconnectTimer);
      this._disconnectTimer = null;
      this._pc = null;
      this._dc = null;
      closePeer(pc, dc);
      this._botTurnOpen = false;
      this._showError('');
      this._el.mute.disabled = true;
      this._el.text.disabled = true;
      this._el.send.disabled = true;
      this._setState('reconnecting', 'Reconnecting…');
      this._emit('reconnecting', { type: 'reconnecting', reason, session_id: this._sessionId });
      this._reconnectLoop(attempt);
    }

    async _reconnectLoop(attempt) {
      let retryAfterMs = 0;
      for (const delay of RECONNECT_DELAYS_MS) {
        await sleep(Math.max(delay, retryAfterMs));
        if (this._reconnect !== attempt) return; // stopped meanwhile
        retryAfterMs = 0;
        try {
          const peer = await this._connectPeer(this._sessionToken);
          if (!peer || this._reconnect !== attempt) return;
          await channelOpen(peer.pc, peer.dc, RECONNECT_OPEN_TIMEOUT_MS);
          if (this._reconnect !== attempt || this._pc !== peer.pc) return;
          this._reconnect = null;
          this._setControls(true);
          this._setState('listening');
          return;
        } catch (err) {
          if (this._reconnect !== attempt) return;
          console.warn('videochat-avatar: reconnect attempt failed', err);
          const { _pc: pc, _dc: dc } = this;
          this._pc = null;
          this._dc = null;
          closePeer(pc, dc);
          // The server no longer knows the session (ended for good, expired).
          if ([400, 401, 403, 404].includes(err && err.status)) break;
          // Busy (503) or too many requests (429): a short Retry-After is waited for
          // (readable from another origin only if the server exposes the header).
          if (err && [429, 503].includes(err.status)) {
            retryAfterMs = shortRetryAfterMs(err.retryAfter);
          }
        }
      }
      if (this._reconnect !== attempt) return;
      this._fail({ type: 'error', message: LOST });
      this._sessionId = null; // the server ends the session itself: nothing to delete
      this._teardown({ type: 'ended', reason: attempt.reason }, false);
    }

    _emit(name, detail) {
      // composed: the host page can listen on the element or anywhere above it.
      this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
    }

    // STUN/TURN as the server is configured (server.ice_servers); none if unknown.
    async _iceServers() {
      try {
        const resp = await fetch(`${this.server}/api/rtc`, { mode: 'cors', credentials: 'omit' });
        if (resp.ok) return (await resp.json()).iceServers || [];
      } catch { /* refused or down: the offer below reports it */ }
      return [];
    }

    _fetch(path, init) {
      return fetch(this.server + path, { mode: 'cors', credentials: 'omit', ...init })
        .catch(async (err) => {
          // A CORS refusal and a server that is down look the same to fetch();
          // an opaque no-cors request tells them apart.
          let reachable = false;
          try {
            await fetch(`${this.server}/health`, { mode: 'no-cors', credentials: 'omit' });
            reachable = true;
          } catch { /* down or unreachable */ }
          const error = new Error(reachable
            ? `The videochat server at ${this.server} refused this page's origin `
              + `(${location.origin}): it is not on the server's allow-list.`
            : `Could not reach the videochat server at ${this.server} (${err.message}).`);
          error.status = reachable ? 'cors' : 'network';
          throw error;
        });
    }

    _sendJson(obj) {
      if (!this._dc || this._dc.readyState !== 'open') return false;
      this._dc.send(JSON.stringify(obj));
      return true;
    }

    _onMessage(event, dc) {
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      switch (msg.type) {
        case 'state':
          this._setState(msg.value);
          if (msg.value === 'thinking') this._botTurnOpen = false;
          this._emit('state', msg);
          break;
        case 'user_text': {
          const text = String(msg.text ?? '').trim();
          if (text || !msg.final) this._el.user.textContent = text || '…';
          if (msg.final && text) this._botTurnOpen = false;
          this._emit('user-text', msg);
          break;
        }
        case 'bot_text': {
          const text = String(msg.text ?? '').trim();
          if (text) {
            const line = this._el.bot;
            if (!this._botTurnOpen) line.textContent = text;
            else line.textContent += (CJK_END.test(line.textContent) ? '' : ' ') + text;
            this._botTurnOpen = true;
          }
          this._emit('bot-text', msg);
          break;
        }
        case 'turn':
          this._botTurnOpen = false;
          this._emit('turn', msg);
          break;
        case 'error':
          this._fail(msg);
          break;
        case 'ended':
          if (dc !== this._dc) break; // a peer the widget has already left
          // The node holding the session was lost, or its peer failed: the
          // same token continues the conversation.
          if (RESUMABLE.has(msg.reason) && this._canReconnect()) {
            this._beginReconnect(msg.reason);
            break;
          }
          // The server closes the session itself (time limit, idle, deleted).
          this._teardown(msg, false);
          break;
        default: break;
      }
    }

    _fail(detail) {
      this._showError(detail.message || 'error');
      this._emit('error', detail);
    }

    async _teardown(endedDetail, tellServer) {
      const pc = this._pc;
      const dc = this._dc;
      const sessionId = this._sessionId;
      const token = this._sessionToken;
      const wasReconnecting = this._reconnect !== null;
      this._pc = null;
      this._dc = null;
      this._sessionId = null;
      this._sessionToken = null;
      this._reconnect = null;
      this._established = false;
      clearTimeout(this._disconnectTimer);
      this._disconnectTimer = null;
      if (this._mic) { this._mic.getTracks().forEach((t) => t.stop()); this._mic = null; }
      this._el.video.pause();
      this._el.video.srcObject = null;
      this._el.sound.hidden = true;
      this._setControls(false);
      this._setState('idle');
      // The server first, so that it does not see the peer vanish and close
      // the session on its own; then this side.
      if (tellServer && sessionId) await this._deleteSession(sessionId, token);
      closePeer(pc, dc);
      if ((pc || wasReconnecting) && endedDetail) this._emit('ended', endedDetail);
    }

    async _deleteSession(sessionId, token) {
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(), 2000);
      try {
        await fetch(`${this.server}/api/sessions/${encodeURIComponent(sessionId)}`, {
          method: 'DELETE', mode: 'cors', credentials: 'omit', keepalive: true,
          signal: ctrl.signal, headers: token ? { Authorization: `Bearer ${token}` } : {},
        });
      } catch (err) {
        console.warn('videochat-avatar: DELETE session', err);
      } finally {
        clearTimeout(timer);
      }
    }

    _applyMute() {
      if (this._mic) this._mic.getAudioTracks().forEach((t) => { t.enabled = !this._muted; });
      this._el.mute.setAttribute('aria-pressed', String(this._muted));
      this._el.mute.textContent = this._muted ? 'Unmute' : 'Mute';
    }

    _playVideo() {
      this._el.video.play().catch(() => {
        // start() was not called from a click: play muted, offer sound.
        this._el.video.muted = true;
        this._el.sound.hidden = false;
        this._el.video.play().catch(() => {});
      });
    }

    _unmuteVideo() {
      this._el.video.muted = false;
      this._el.sound.hidden = true;
      this._el.video.play().catch(() => {});
    }

    _setState(value, label = value) {
      this._state = value;
      this._el.state.textContent = label;
      this._el.state.dataset.state = value;
    }

    _setControls(connected) {
      const el = this._el;
      el.start.textContent = connected ? 'Stop' : 'Start';
      el.start.classList.toggle('primary', !connected);
      el.start.classList.toggle('stop', connected);
      el.mute.disabled = !connected;
      el.text.disabled = !connected;
      el.send.disabled = !connected;
      el.idle.hidden = connected;
    }

    _showError(message) {
      this._el.error.textContent = message;
      this._el.error.hidden = !message;
    }
  }

  customElements.define('videochat-avatar', VideochatAvatar);
})();
