// The HTTP API as the console and the trace view use it: the token (kept in sessionStorage, sent
// only as `Authorization: Bearer`, never in a URL), JSON requests, and a session's event stream
// read with fetch() so it can send Last-Event-ID, the epoch and the client id as headers.

const TOKEN_KEY = 'acpd.token';

export const token = {
  get() { try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; } },
  set(t) { try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); } catch { /* storage off */ } },
};

/** The headers every request carries: the token, when there is one. */
export function authHeaders(extra = {}) {
  const h = { ...extra };
  const t = token.get();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

export class ApiError extends Error {
  constructor(status, body) {
    const b = body && typeof body === 'object' ? body : {};
    super(b.error || (typeof body === 'string' && body) || 'HTTP ' + status);
    this.status = status;
    this.code = b.code || (status === 401 ? 'unauthorized' : 'http_' + status);
    this.body = b;
  }
}

let signingIn = null;

/** Asks for the daemon's token (a modal form); resolves once one is entered. */
export function signIn(reason) {
  if (signingIn) return signingIn;
  signingIn = new Promise(resolve => {
    const dlg = document.createElement('dialog');
    dlg.className = 'signin';
    const form = document.createElement('form');
    const h = document.createElement('h2');
    h.textContent = 'Sign in to acpd';
    const p = document.createElement('p');
    p.className = 'mut';
    p.textContent = reason || 'This daemon requires its token. It is kept in this tab only (session storage) and sent as a header.';
    const label = document.createElement('label');
    label.textContent = 'Token';
    label.htmlFor = 'signin-token';
    const input = document.createElement('input');
    input.type = 'password';
    input.id = 'signin-token';
    input.autocomplete = 'current-password';
    input.required = true;
    const row = document.createElement('div');
    row.className = 'row';
    const ok = document.createElement('button');
    ok.className = 'primary';
    ok.type = 'submit';
    ok.textContent = 'Sign in';
    row.append(ok);
    form.append(h, p, label, input, row);
    dlg.append(form);
    form.addEventListener('submit', e => {
      e.preventDefault();
      token.set(input.value.trim());
      dlg.close();
      dlg.remove();
      signingIn = null;
      resolve();
    });
    dlg.addEventListener('cancel', e => e.preventDefault());
    document.body.append(dlg);
    dlg.showModal();
    input.focus();
  });
  return signingIn;
}

/** A JSON request; a 401 asks for the token and retries. Resolves to the body (null for 204). */
export async function api(method, path, { body, clientId, retry = true } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (clientId) headers['X-Qwen-Client-Id'] = clientId;
  const r = await fetch(path, {
    method, headers, cache: 'no-store', credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && retry) {
    await signIn(token.get() ? 'The token was not accepted. Enter it again.' : undefined);
    return api(method, path, { body, clientId, retry });
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  if (!r.ok) throw new ApiError(r.status, parsed);
  return parsed;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

/**
 * A session's event stream that survives drops: it reconnects with `Last-Event-ID` and the
 * epoch (`X-Qwen-Event-Epoch`), drops any frame it already delivered (ids only grow within an
 * epoch), and starts over from the replay when the daemon says `state_resync_required`.
 *
 * handlers: onEvent(envelope), onResync(detail), onStatus('connecting'|'live'|'reconnecting'),
 * onGone(error) (the session or the client id is no longer known: stop).
 */
export class EventStream {
  constructor(sessionId, clientId, handlers, { stallMs = 45000 } = {}) {
    this.sessionId = sessionId;
    this.clientId = clientId;
    this.h = handlers;
    this.lastId = 0;
    this.epoch = null;
    this.stallMs = stallMs;
    this.closed = false;
    this.ctrl = null;
    this.connects = 0; // connections opened (a reconnect adds one)
    this.run();
  }

  close() {
    this.closed = true;
    if (this.ctrl) this.ctrl.abort();
  }

  /** Ends the current connection (a network drop): the stream reconnects by itself. */
  drop() { if (this.ctrl) this.ctrl.abort(); }

  async run() {
    let backoff = 250;
    while (!this.closed) {
      this.h.onStatus && this.h.onStatus(backoff === 250 ? 'connecting' : 'reconnecting');
      const ctrl = new AbortController();
      this.ctrl = ctrl;
      let stall = null;
      const arm = () => { clearTimeout(stall); stall = setTimeout(() => ctrl.abort(), this.stallMs); };
      try {
        const headers = authHeaders({ Accept: 'text/event-stream', 'Last-Event-ID': String(this.lastId) });
        if (this.clientId) headers['X-Qwen-Client-Id'] = this.clientId;
        if (this.epoch) headers['X-Qwen-Event-Epoch'] = this.epoch;
        const r = await fetch(`/session/${encodeURIComponent(this.sessionId)}/events`, {
          headers, cache: 'no-store', credentials: 'same-origin', signal: ctrl.signal,
        });
        if (r.status === 401) { await signIn(); continue; }
        if (r.status === 404 || (r.status === 400)) {
          let b = null;
          try { b = await r.json(); } catch { /* not JSON */ }
          this.closed = true;
          this.h.onGone && this.h.onGone(new ApiError(r.status, b));
          return;
        }
        if (!r.ok || !r.body) throw new ApiError(r.status, null);
        const epoch = r.headers.get('X-Qwen-Event-Epoch');
        this.connects++;
        this.h.onStatus && this.h.onStatus('live');
        backoff = 250;
        arm();
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          buf += value;
          const frames = buf.split(/\r?\n\r?\n/);
          buf = frames.pop();
          for (const f of frames) this.frame(f);
          this.h.onBatch && this.h.onBatch();
          if (epoch) this.epoch = epoch;
        }
        if (epoch) this.epoch = epoch;
      } catch (e) {
        if (this.closed) return;
      } finally {
        clearTimeout(stall);
      }
      if (this.closed) return;
      this.h.onStatus && this.h.onStatus('reconnecting');
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  frame(text) {
    let id = null;
    const data = [];
    for (const line of text.split(/\r?\n/)) {
      if (line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = Number(value);
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    let env;
    try { env = JSON.parse(data.join('\n')); } catch { return; }
    if (!env || typeof env !== 'object') return;
    if (id !== null && Number.isFinite(id)) {
      if (id <= this.lastId) return; // already delivered (a replay overlapping what we have)
      this.lastId = id;
    }
    if (env.type === 'state_resync_required') {
      // What follows is the whole retained history again, from the start.
      this.lastId = 0;
      this.h.onResync && this.h.onResync(env.data || {});
      return;
    }
    if (env.type === 'session_closed') this.closed = true;
    this.h.onEvent(env);
  }
}
