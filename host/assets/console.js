// The acpd console: workspaces and sessions, one session's live transcript (the agent's
// messages as safe Markdown, thoughts, tool calls with diffs, plans, permission requests), a
// composer with the queue of pending prompts, a link from every turn to its trace, and the model
// and approval-mode pickers where the agent announces them. It uses only the public HTTP API. Agent output is always put into the page as text nodes.

import { api, EventStream } from './api.js';
import { render as markdown } from './markdown.js';
import { renderDiff } from './diff.js';

const $ = s => document.querySelector(s);

/** An element: `attrs` are properties for on* handlers, attributes otherwise (never style). */
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) e[k] = v;
    else if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of kids.flat()) if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
  return e;
}
const pill = (text, cls) => el('span', { class: 'pill ' + (cls || String(text).replace(/\W+/g, '_')) }, text);

function dur(ms) {
  if (!Number.isFinite(ms)) return '';
  if (ms < 1000) return Math.round(ms) + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
  return Math.floor(ms / 60000) + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
}
const when = iso => { const d = new Date(iso); return isNaN(d) ? '' : d.toLocaleString(); };

let toastTimer = null;
function toast(message) {
  const t = $('#toast');
  t.textContent = message;
  t.className = 'notice bad toast';
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = 'sr-only'; t.textContent = ''; }, 6000);
}
const errText = e => (e && e.message ? e.message : String(e)) + (e && e.code ? ` (${e.code})` : '');

// ---- client ids: one per session and tab (sessionStorage is per tab) -------------------------

const CLIENTS = 'acpd.clients';
function clientIds() { try { return JSON.parse(sessionStorage.getItem(CLIENTS) || '{}'); } catch { return {}; } }
function rememberClient(sessionId, clientId) {
  const all = clientIds();
  if (clientId) all[sessionId] = clientId; else delete all[sessionId];
  try { sessionStorage.setItem(CLIENTS, JSON.stringify(all)); } catch { /* storage off */ }
}

// ---- the session list -----------------------------------------------------------------------

// Events that change what a fetched snapshot shows (Session.snapshot): the queue of pending prompts, or
// the session's context (model, modes, config options).
const SNAPSHOT_OF = {
  pending_prompt_added: 'queue', pending_prompt_started: 'queue', pending_prompt_completed: 'queue',
  prompt_cancelled: 'queue',
  model_switched: 'context', approval_mode_changed: 'context', current_mode_update: 'context',
  config_option_update: 'context',
};

const app = { workspaces: [], sessions: new Map(), details: new Map(), current: null, timer: null };
window.acpdConsole = app; // for debugging from the devtools console

async function refreshSessions() {
  try {
    const caps = await api('GET', '/capabilities');
    app.workspaces = Array.isArray(caps.workspaces) && caps.workspaces.length
      ? caps.workspaces : [{ id: caps.workspaceCwd, cwd: caps.workspaceCwd, primary: true }];
    await Promise.all(app.workspaces.map(async ws => {
      const r = await api('GET', `/workspace/${encodeURIComponent(ws.id)}/sessions`);
      app.sessions.set(ws.id, Array.isArray(r.sessions) ? r.sessions : []);
    }));
    const ids = [...app.sessions.values()].flat().map(s => s.sessionId);
    await Promise.all(ids.map(async id => {
      try { app.details.set(id, await api('GET', `/session/${encodeURIComponent(id)}`)); } catch { app.details.delete(id); }
    }));
    $('#daemon').replaceChildren(pill('daemon up', 'ok'));
  } catch (e) {
    $('#daemon').replaceChildren(pill('daemon unreachable', 'offline'));
  }
  renderSessions();
}

function renderSessions() {
  const current = app.current && app.current.id;
  const list = app.workspaces.map(ws => {
    const sessions = app.sessions.get(ws.id) || [];
    return el('section', { class: 'ws', 'aria-label': 'Workspace ' + ws.cwd },
      el('div', { class: 'ws-head' },
        el('h2', {}, ws.primary ? 'Workspace' : 'Workspace'),
        el('span', { class: 'cwd', title: ws.cwd }, ws.cwd),
        el('button', { class: 'small primary', type: 'button', 'data-action': 'new-session', onclick: () => newSession(ws) }, 'New session')),
      sessions.length ? sessions.map(s => {
        const d = app.details.get(s.sessionId) || {};
        const child = d.child;
        return el('a', { class: 'sess', href: '#/s/' + encodeURIComponent(s.sessionId), 'aria-current': s.sessionId === current ? 'true' : 'false', dataset: { sessionId: s.sessionId } },
          el('span', { class: 'id', title: s.sessionId }, s.sessionId),
          el('span', { class: 'meta' },
            pill(s.state || d.state || '?'),
            child ? el('span', {}, child.agent || 'agent') : el('span', {}, 'no agent yet'),
            child ? pill(child.state, child.state) : null,
            child && child.pid ? el('span', { class: 'mono' }, 'pid ' + child.pid) : null,
            el('span', {}, when(s.createdAt))));
      }) : el('div', { class: 'mut' }, 'No sessions.'));
  });
  $('#sessions').replaceChildren(...(list.length ? list : [el('div', { class: 'empty' }, 'No workspaces.')]));
}

async function newSession(ws) {
  try {
    const s = await api('POST', '/session', { body: { cwd: ws.cwd, sessionScope: 'thread' } });
    rememberClient(s.sessionId, s.clientId);
    location.hash = '#/s/' + encodeURIComponent(s.sessionId);
    refreshSessions();
  } catch (e) { toast('Could not create a session: ' + errText(e)); }
}

function welcome() {
  const primary = app.workspaces.find(w => w.primary) || app.workspaces[0];
  $('#main').replaceChildren(el('div', { class: 'welcome' },
    el('h2', {}, 'acpd console'),
    el('p', {}, 'Pick a session on the left, or start a new one. Each turn links to its trace.'),
    primary ? el('p', {}, el('button', { class: 'primary', type: 'button', onclick: () => newSession(primary) }, 'New session')) : null,
    el('p', { class: 'mut' }, 'With the demo agent: plain text is echoed; ', el('code', {}, 'write notes.txt hello'),
      ' asks permission to write a file; ', el('code', {}, 'slow 20 250'), ' streams slowly (try Cancel); ',
      el('code', {}, 'mode plan'), ' has the agent switch its own approval mode.')));
}

// ---- one session ----------------------------------------------------------------------------

const textOf = block => {
  if (!block || typeof block !== 'object') return '';
  switch (block.type) {
    case 'text': return block.text || '';
    case 'resource_link': return `[${block.name || block.uri || 'resource'}]`;
    case 'resource': return (block.resource && (block.resource.text || block.resource.uri)) || '[resource]';
    default: return `[${block.type || 'content'}]`;
  }
};

// ---- the agent's models and approval modes (GET /session/{id}/context) ----------------------

/** `[{value, name}]` of a select config option (a flat list, or groups of lists). */
function optionValues(opt) {
  const out = [];
  for (const o of Array.isArray(opt.options) ? opt.options : []) {
    if (!o || typeof o !== 'object') continue;
    if (Array.isArray(o.options)) out.push(...o.options.filter(x => x && x.value != null).map(x => ({ value: String(x.value), name: String(x.name || x.value) })));
    else if (o.value != null) out.push({ value: String(o.value), name: String(o.name || o.value) });
  }
  return out;
}
const selectOption = (state, category) => (Array.isArray(state.configOptions) ? state.configOptions : [])
  .find(o => o && o.category === category && o.type === 'select');

/** The model choice as the agent announced it: Qwen Code's `models`, else a `model` select. */
function modelChoice(state) {
  const m = state.models;
  if (m && typeof m === 'object') {
    return { current: m.currentModelId, options: (Array.isArray(m.availableModels) ? m.availableModels : [])
      .filter(x => x && x.modelId != null).map(x => ({ value: String(x.modelId), name: String(x.name || x.modelId) })) };
  }
  const o = selectOption(state, 'model');
  return o ? { current: o.currentValue, options: optionValues(o) } : null;
}

/** The approval modes: ACP `modes`, else a `mode` select. */
function modeChoice(state) {
  const m = state.modes;
  if (m && typeof m === 'object') {
    return { current: m.currentModeId, options: (Array.isArray(m.availableModes) ? m.availableModes : [])
      .filter(x => x && x.id != null).map(x => ({ value: String(x.id), name: String(x.name || x.id) })) };
  }
  const o = selectOption(state, 'mode');
  return o ? { current: o.currentValue, options: optionValues(o) } : null;
}

/**
 * One labelled select (model or approval mode): shown only while the agent offers a choice,
 * switched through `route`, reverted when the switch fails. `current` is what the daemon last
 * said; the select shows it unless this tab's own switch is in flight.
 */
class Picker {
  constructor(view, kind, label, route, bodyKey) {
    this.view = view;
    this.kind = kind;
    this.route = route;
    this.bodyKey = bodyKey;
    this.current = null;
    this.pending = null;
    this.select = el('select', { id: kind + '-picker', name: kind, dataset: { picker: kind } });
    this.select.onchange = () => this.choose(this.select.value);
    this.root = el('span', { class: 'picker hidden', dataset: { picker: kind } },
      el('label', { for: this.select.id }, label), this.select);
  }

  /** The agent's choice (or null: no picker). */
  set(choice) {
    if (!choice || !choice.options.length) { this.root.classList.add('hidden'); this.select.replaceChildren(); return; }
    const opts = choice.options.slice();
    if (choice.current != null && !opts.some(o => o.value === String(choice.current))) opts.push({ value: String(choice.current), name: String(choice.current) });
    this.select.replaceChildren(...opts.map(o => el('option', { value: o.value }, o.name)));
    this.root.classList.remove('hidden');
    this.show(choice.current);
  }

  /** The daemon says the value is now `v`. */
  show(v) {
    if (v == null) return;
    this.current = String(v);
    if (this.pending == null && [...this.select.options].some(o => o.value === this.current)) this.select.value = this.current;
    this.select.dataset.current = this.current;
  }

  async choose(v) {
    if (v === this.current) return;
    this.pending = v;
    this.select.setAttribute('aria-busy', 'true');
    this.view.pickerNote('');
    try {
      await api('POST', `/session/${encodeURIComponent(this.view.id)}/${this.route}`, { body: { [this.bodyKey]: v }, clientId: this.view.clientId });
      this.pending = null;
      this.show(v);
    } catch (e) {
      this.pending = null;
      this.revert();
      this.view.pickerNote(`Could not switch the ${this.kind === 'mode' ? 'approval mode' : 'model'} to ${v}: ${errText(e)}`);
    } finally {
      this.select.removeAttribute('aria-busy');
    }
  }

  revert() { if (this.current != null && this.pending == null) this.select.value = this.current; }
}

class SessionView {
  constructor(id) {
    this.id = id;
    this.clientId = clientIds()[id] || null;
    this.closed = false;
    this.reset();
    this.build();
    this.open();
  }

  reset() {
    this.turns = new Map();
    this.tools = new Map();
    this.perms = new Map();
    this.queue = new Map();
    // Bumped by every event of a kind (and a reset): a snapshot of it fetched meanwhile may predate it.
    this.gens ??= { queue: 0, context: 0 };
    for (const k in this.gens) this.gens[k]++;
    this.dirty = new Set();
    this.running = null;
  }

  build() {
    this.statusEl = el('span', { class: 'meta' });
    this.connEl = pill('connecting', 'reconnecting');
    this.closeBtn = el('button', { class: 'small danger', type: 'button', 'data-action': 'close-session', onclick: () => this.closeSession() }, 'Close session');
    this.transcript = el('div', { id: 'transcript', tabindex: '0', 'aria-label': 'Transcript', 'aria-live': 'polite' });
    this.stick = true;
    this.transcript.onscroll = () => {
      const t = this.transcript;
      this.stick = t.scrollHeight - t.scrollTop - t.clientHeight < 80;
    };
    this.input = el('textarea', { id: 'prompt', rows: '2', placeholder: 'Message the agent (Enter sends, Shift+Enter for a new line)', 'aria-label': 'Prompt' });
    this.input.onkeydown = e => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
      if (e.key === 'Escape' && this.running) { e.preventDefault(); this.cancel(); }
    };
    this.sendBtn = el('button', { class: 'primary', type: 'submit', 'data-action': 'send' }, 'Send');
    this.cancelBtn = el('button', { type: 'button', 'data-action': 'cancel', disabled: true, onclick: () => this.cancel() }, 'Cancel');
    this.queueEl = el('div', { class: 'queue', 'aria-label': 'Pending prompts' });
    this.modelPicker = new Picker(this, 'model', 'Model', 'model', 'modelId');
    this.modePicker = new Picker(this, 'mode', 'Approval mode', 'approval-mode', 'mode');
    this.noteEl = el('span', { class: 'picker-note', role: 'status', 'aria-live': 'polite' });
    this.bar = el('div', { class: 'sess-bar hidden', role: 'group', 'aria-label': 'Agent settings' },
      this.modelPicker.root, this.modePicker.root, this.noteEl);
    const form = el('form', { onsubmit: e => { e.preventDefault(); this.send(); } }, this.input, this.sendBtn, this.cancelBtn);
    this.root = el('section', { class: 'session', 'aria-label': 'Session ' + this.id, dataset: { sessionId: this.id } },
      el('div', { class: 'sess-head' },
        el('a', { class: 'back btn', href: '#/' }, '← Sessions'),
        el('span', { class: 'title', title: this.id }, this.id),
        this.statusEl, el('span', { class: 'grow' }), this.connEl, this.closeBtn),
      this.bar,
      this.transcript,
      el('div', { class: 'composer' }, this.queueEl, form));
    $('#main').replaceChildren(this.root);
  }

  async open() {
    try {
      // Attaches this tab as a client of the session (restoring it on a new agent if it died).
      const info = await api('POST', `/session/${encodeURIComponent(this.id)}/load`, { body: {}, clientId: this.clientId });
      this.clientId = info.clientId;
      rememberClient(this.id, this.clientId);
    } catch (e) {
      if (e.code === 'invalid_client_id' && this.clientId) { this.clientId = null; rememberClient(this.id, null); return this.open(); }
      this.gone(e);
      return;
    }
    if (this.closed) return;
    this.refreshStatus();
    this.loadContext();
    this.stream = new EventStream(this.id, this.clientId, {
      onEvent: env => this.apply(env),
      onBatch: () => this.flush(),
      onResync: d => this.resync(d),
      onStatus: s => { this.connEl.replaceWith(this.connEl = pill(s, s === 'live' ? 'live' : 'reconnecting')); this.connEl.dataset.state = s; },
      onGone: e => {
        if (e.code === 'invalid_client_id') { rememberClient(this.id, null); this.clientId = null; this.stream = null; this.reset(); this.transcript.replaceChildren(); this.open(); return; }
        this.gone(e);
      },
    });
  }

  dispose() {
    this.closed = true;
    if (this.stream) this.stream.close();
  }

  gone(e) {
    this.notice(e.code === 'session_not_found'
      ? 'This session no longer exists (it was closed, or the daemon restarted).'
      : 'Could not open the session: ' + errText(e), true);
    this.setComposer(false);
    this.connEl.replaceWith(this.connEl = pill('offline', 'offline'));
    refreshSessions();
  }

  setComposer(on) {
    for (const c of [this.input, this.sendBtn]) c.disabled = !on;
    if (!on) this.cancelBtn.disabled = true;
  }

  notice(text, bad) {
    this.transcript.append(el('div', { class: 'notice' + (bad ? ' bad' : '') }, text));
    this.scroll();
  }

  scroll() { if (this.stick) this.transcript.scrollTop = this.transcript.scrollHeight; }

  async refreshStatus() {
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(async () => {
      try {
        const s = await api('GET', `/session/${encodeURIComponent(this.id)}`);
        const c = s.child;
        this.statusEl.replaceChildren(pill(s.state),
          c ? el('span', {}, 'agent ', el('b', {}, c.agent || '?')) : el('span', {}, 'no agent child'),
          c ? pill('child ' + c.state, c.state) : null,
          c && c.pid ? el('span', { class: 'mono' }, 'pid ' + c.pid) : null,
          el('span', { class: 'mono', title: s.workspaceCwd }, s.workspaceCwd));
        app.details.set(this.id, s);
      } catch { /* the stream reports a gone session */ }
    }, 150);
  }

  /** The agent's models and modes as the daemon keeps them; the pickers follow. */
  loadContext() {
    return this.snapshot('context', () => api('GET', `/session/${encodeURIComponent(this.id)}/context`),
      cx => this.applyContext((cx && cx.state) || {}));
  }

  applyContext(state) {
    this.context = state;
    this.modelPicker.set(modelChoice(state));
    this.modePicker.set(modeChoice(state));
    const any = !this.modelPicker.root.classList.contains('hidden') || !this.modePicker.root.classList.contains('hidden');
    this.bar.classList.toggle('hidden', !any);
    this.root.dataset.context = 'loaded';
  }

  pickerNote(text) {
    this.noteEl.textContent = text;
    this.noteEl.classList.toggle('bad', !!text);
  }

  resync(d) {
    this.reset();
    this.transcript.replaceChildren();
    this.notice('Reloaded from the daemon (' + (d.reason || 'resync') + ').');
  }

  // ---- events ----

  turn(pid) {
    const key = pid || '';
    let t = this.turns.get(key);
    if (!t) {
      t = { el: el('div', { class: 'turn', dataset: { promptId: key } }), plan: null };
      this.turns.set(key, t);
      this.transcript.append(t.el);
    }
    return t;
  }

  apply(env) {
    const d = env.data || {};
    const pid = env.promptId || d.promptId || null;
    const kind = SNAPSHOT_OF[env.type] || (env.type === 'session_update' && SNAPSHOT_OF[d.update?.sessionUpdate]);
    if (kind) this.gens[kind]++;
    switch (env.type) {
      case 'session_update': this.update(d.update || {}, pid); break;
      case 'permission_request': this.permission(d, pid); break;
      case 'permission_resolved': this.resolved(d); break;
      case 'turn_complete': this.turnEnd(pid, d, false); break;
      case 'turn_error': this.turnEnd(pid, d, true); break;
      case 'pending_prompt_added': this.queue.set(pid, { text: d.text || '', state: 'queued' }); this.renderQueue(); break;
      case 'pending_prompt_started': {
        const q = this.queue.get(pid) || { text: '' };
        q.state = 'running';
        this.queue.set(pid, q);
        this.running = pid;
        this.turn(pid);
        this.renderQueue();
        this.refreshStatus();
        break;
      }
      case 'pending_prompt_completed': this.queue.delete(pid); if (this.running === pid) this.running = null; this.renderQueue(); break;
      case 'prompt_cancelled':
        if (d.state === 'queued') this.queue.delete(pid);
        else { const q = this.queue.get(pid); if (q) q.state = 'cancelling'; }
        this.renderQueue();
        break;
      case 'session_died':
        this.notice(d.reason === 'daemon_shutdown' ? 'The daemon is shutting down.'
          : `The agent exited (${[d.reason, d.exitCode != null ? 'exit code ' + d.exitCode : null, d.signalCode].filter(Boolean).join(', ')}). The next prompt restores the session on a new agent.`, true);
        this.refreshStatus();
        break;
      case 'session_closed':
        this.notice('This session was closed.', true);
        this.setComposer(false);
        this.closeBtn.disabled = true;
        refreshSessions();
        break;
      case 'replay_complete': this.caughtUp = true; this.reconcile(); break;
      case 'model_switched':
        this.modelPicker.show(d.modelId);
        if (this.caughtUp) this.pickerNote('');
        break;
      case 'model_switch_failed':
        // The model is unchanged: the select goes back to it (in every tab).
        this.modelPicker.revert();
        if (this.caughtUp) this.pickerNote(`Could not switch the model to ${d.requestedModelId || '?'}: ${d.error || 'the agent refused'}${d.code != null ? ` (${d.code})` : ''}`);
        break;
      case 'approval_mode_changed':
        this.modePicker.show(d.next);
        if (this.caughtUp) this.pickerNote('');
        break;
      case 'client_evicted': this.notice('This tab fell behind the event stream; reconnecting.'); break;
      default: break;
    }
  }

  /** After a replay: the queue as the daemon holds it (older events may have left its ring). */
  reconcile() {
    this.refreshStatus();
    this.loadContext();
    this.snapshot('queue', () => api('GET', `/session/${encodeURIComponent(this.id)}/pending-prompts`), r => {
      this.queue = new Map((r.pendingPrompts || []).map(p => [p.promptId, { text: p.text || '', state: p.state }]));
      this.running = (r.pendingPrompts || []).find(p => p.state === 'running')?.promptId || null;
      this.renderQueue();
    });
  }

  /**
   * Fetches a snapshot and applies it, unless an event of its kind arrived while it was in flight: the
   * snapshot may predate that event and would erase it (a prompt sent just after a replay lost its
   * running row, and Cancel with it). It is then fetched again; after five tries the events' state
   * stands.
   */
  async snapshot(kind, get, apply) {
    for (let tries = 0; tries < 5; tries++) {
      const gen = this.gens[kind];
      let r;
      try { r = await get(); } catch { return; /* the stream reports a gone session */ }
      if (this.closed) return;
      if (gen === this.gens[kind]) { apply(r); return; }
    }
  }

  update(u, pid) {
    // Not transcript: the agent's own mode switch and its new options.
    if (u.sessionUpdate === 'current_mode_update') {
      if (this.context && this.context.modes) this.modePicker.show(u.currentModeId);
      return;
    }
    if (u.sessionUpdate === 'config_option_update') {
      if (Array.isArray(u.configOptions)) this.applyContext({ ...(this.context || {}), configOptions: u.configOptions });
      return;
    }
    const t = this.turn(pid);
    const last = t.el.lastElementChild;
    switch (u.sessionUpdate) {
      case 'user_message_chunk': {
        const m = last && last.classList.contains('user') ? last : t.el.appendChild(el('div', { class: 'msg user' }));
        m.append(textOf(u.content));
        break;
      }
      case 'agent_message_chunk': {
        let m = last && last.classList.contains('agent') ? last : null;
        if (!m) { m = t.el.appendChild(el('div', { class: 'msg agent md' })); m._raw = ''; }
        m._raw += textOf(u.content);
        this.dirty.add(m);
        break;
      }
      case 'agent_thought_chunk': {
        let m = last && last.classList.contains('thought') ? last : null;
        if (!m) m = t.el.appendChild(el('details', { class: 'thought' }, el('summary', {}, 'Thought'), el('div', { class: 'body' })));
        m.lastElementChild.append(textOf(u.content));
        break;
      }
      case 'tool_call':
      case 'tool_call_update': {
        const id = u.toolCallId;
        let tool = this.tools.get(id);
        if (!tool) {
          tool = { data: { toolCallId: id }, el: el('div', { class: 'card tool', dataset: { toolCallId: id || '' } }) };
          this.tools.set(id, tool);
          t.el.append(tool.el);
        }
        for (const [k, v] of Object.entries(u)) if (k !== 'sessionUpdate' && v != null) tool.data[k] = v;
        this.renderTool(tool);
        break;
      }
      case 'plan': {
        if (!t.plan) { t.plan = el('div', { class: 'card plan' }); t.el.append(t.plan); }
        const entries = Array.isArray(u.entries) ? u.entries : [];
        t.plan.replaceChildren(el('div', { class: 'card-head' }, el('span', { class: 'name' }, 'Plan')),
          el('div', { class: 'card-body' }, el('ol', {}, entries.map(e =>
            el('li', { class: String(e.status || '').replace(/\W+/g, '_') }, e.content || '', e.priority ? el('span', { class: 'mut' }, ` (${e.priority})`) : null)))));
        break;
      }
      default: break;
    }
  }

  renderTool(tool) {
    const d = tool.data;
    const status = d.status || 'pending';
    tool.el.replaceChildren(
      el('div', { class: 'card-head' },
        pill(d.kind || 'other', 'kind'),
        el('span', { class: 'name' }, d.title || 'Tool call'),
        pill(status.replace('_', ' '), status)),
      el('div', { class: 'card-body' }, this.toolBody(d)));
    tool.el.dataset.status = status;
  }

  toolBody(d) {
    const out = [];
    for (const loc of Array.isArray(d.locations) ? d.locations : []) {
      out.push(el('div', { class: 'loc' }, (loc && loc.path) || '', loc && loc.line != null ? ':' + loc.line : ''));
    }
    for (const c of Array.isArray(d.content) ? d.content : []) {
      if (!c || typeof c !== 'object') continue;
      if (c.type === 'diff') out.push(renderDiff(c));
      else if (c.type === 'terminal') out.push(el('div', { class: 'mut' }, 'terminal ', el('code', {}, c.terminalId || '')));
      else if (c.type === 'content') out.push(el('pre', { class: 'md' }, el('code', {}, textOf(c.content))));
    }
    return out;
  }

  permission(d, pid) {
    const t = this.turn(pid);
    const tc = d.toolCall || {};
    const options = Array.isArray(d.options) ? d.options : [];
    const buttons = options.map(o => el('button', {
      type: 'button', class: String(o.kind || '').startsWith('allow') ? 'primary' : String(o.kind || '').startsWith('reject') ? 'danger' : '',
      dataset: { optionId: o.optionId }, onclick: () => this.vote(d.requestId, o.optionId),
    }, o.name || o.optionId));
    const result = el('span', { class: 'result mut' }, 'Waiting for an answer…');
    const card = el('div', { class: 'card permission', role: 'group', 'aria-label': 'Permission request', dataset: { requestId: d.requestId } },
      el('div', { class: 'card-head' }, pill('permission', 'pending'), el('span', { class: 'name' }, tc.title || 'The agent asks permission'), tc.kind ? pill(tc.kind, 'kind') : null),
      el('div', { class: 'card-body' }, this.toolBody(tc)),
      el('div', { class: 'options' }, buttons, result));
    this.perms.set(d.requestId, { card, options, buttons, result });
    t.el.append(card);
    if (buttons[0]) setTimeout(() => { if (document.activeElement === document.body) buttons[0].focus(); });
  }

  async vote(requestId, optionId) {
    const p = this.perms.get(requestId);
    if (p) p.buttons.forEach(b => { b.disabled = true; });
    try {
      await api('POST', `/session/${encodeURIComponent(this.id)}/permission/${encodeURIComponent(requestId)}`,
        { body: { outcome: { outcome: 'selected', optionId } }, clientId: this.clientId });
    } catch (e) {
      // Another client may have answered first: its permission_resolved event says so.
      if (e.code !== 'permission_not_pending') { toast('Vote failed: ' + errText(e)); if (p && !p.done) p.buttons.forEach(b => { b.disabled = false; }); }
    }
  }

  resolved(d) {
    const p = this.perms.get(d.requestId);
    if (!p) return;
    p.done = true;
    const o = d.outcome || {};
    const chosen = o.outcome === 'selected' ? p.options.find(x => x.optionId === o.optionId) : null;
    const by = d.voterClientId ? (d.voterClientId === this.clientId ? 'you' : 'another client') : 'the daemon';
    p.buttons.forEach(b => { b.disabled = true; if (chosen && b.dataset.optionId === chosen.optionId) b.setAttribute('aria-pressed', 'true'); });
    p.result.textContent = chosen ? `${chosen.name || chosen.optionId} — answered by ${by}` : `Cancelled (${by})`;
    p.card.classList.add('resolved');
    p.card.dataset.outcome = chosen ? chosen.optionId : 'cancelled';
    p.card.dataset.voter = by;
  }

  turnEnd(pid, d, error) {
    const t = this.turn(pid);
    const parts = [];
    if (error) parts.push(el('span', { class: 'bad' }, 'Error: ', d.message || 'turn failed'), el('code', {}, d.code || 'error'));
    else parts.push(el('span', {}, 'stop: '), pill(d.stopReason || '?', d.stopReason === 'end_turn' ? 'ok' : d.stopReason));
    if (Number.isFinite(d.durationMs)) parts.push(el('span', { class: 'dur' }, dur(d.durationMs)));
    if (d.traceId) {
      parts.push(el('a', { class: 'trace', href: '/debug/traces#' + encodeURIComponent(d.traceId), target: '_blank', rel: 'opener', title: 'Trace ' + d.traceId }, 'trace ↗'));
    }
    t.el.append(el('div', { class: 'turn-end' + (error ? ' error' : ''), dataset: { stopReason: d.stopReason || '', code: d.code || '' } }, parts));
    if (this.running === pid) this.running = null;
    this.refreshStatus();
    this.renderQueue();
    if (this.caughtUp) refreshSessions();
  }

  flush() {
    for (const m of this.dirty) m.replaceChildren(markdown(m._raw));
    this.dirty.clear();
    this.scroll();
  }

  renderQueue() {
    const rows = [...this.queue.entries()].map(([id, q]) => el('div', { class: 'q', dataset: { promptId: id, state: q.state } },
      pill(q.state, q.state === 'running' ? 'running' : ''), el('span', { class: 'text', title: q.text }, q.text || '(prompt)'),
      q.state === 'queued' ? el('button', { type: 'button', class: 'small', 'data-action': 'remove', 'aria-label': 'Remove queued prompt', onclick: () => this.removeQueued(id) }, 'Remove') : null));
    this.queueEl.replaceChildren(...rows);
    const busy = [...this.queue.values()].some(q => q.state === 'running');
    this.cancelBtn.disabled = !busy;
  }

  async send() {
    const text = this.input.value;
    if (!text.trim() || this.input.disabled) return;
    this.sendBtn.disabled = true;
    try {
      await api('POST', `/session/${encodeURIComponent(this.id)}/prompt`, { body: { prompt: [{ type: 'text', text }] }, clientId: this.clientId });
      this.input.value = '';
      this.stick = true;
    } catch (e) {
      toast('Not sent: ' + errText(e));
    } finally {
      this.sendBtn.disabled = this.input.disabled;
      this.input.focus();
    }
  }

  async cancel() {
    try { await api('POST', `/session/${encodeURIComponent(this.id)}/cancel`, { body: {}, clientId: this.clientId }); }
    catch (e) { toast('Cancel failed: ' + errText(e)); }
  }

  async removeQueued(promptId) {
    try { await api('DELETE', `/session/${encodeURIComponent(this.id)}/pending-prompts/${encodeURIComponent(promptId)}`, { clientId: this.clientId }); }
    catch (e) { toast('Could not remove it: ' + errText(e)); }
  }

  async closeSession() {
    if (this.closeBtn.dataset.confirm !== 'yes') {
      this.closeBtn.dataset.confirm = 'yes';
      this.closeBtn.textContent = 'Confirm close';
      setTimeout(() => { this.closeBtn.dataset.confirm = ''; this.closeBtn.textContent = 'Close session'; }, 4000);
      return;
    }
    try {
      await api('DELETE', `/session/${encodeURIComponent(this.id)}`);
      rememberClient(this.id, null);
      location.hash = '#/';
    } catch (e) { toast('Close failed: ' + errText(e)); }
    refreshSessions();
  }
}

// ---- routing --------------------------------------------------------------------------------

function route() {
  const m = /^#\/s\/(.+)$/.exec(location.hash);
  const id = m ? decodeURIComponent(m[1]) : null;
  if (app.current && app.current.id !== id) { app.current.dispose(); app.current = null; }
  document.body.classList.toggle('in-session', !!id);
  if (id && !app.current) app.current = new SessionView(id);
  if (!id) welcome();
  renderSessions();
}

addEventListener('hashchange', route);
refreshSessions().then(() => { if (!app.current) route(); });
route();
// The list refreshes after every action, when the tab comes back, and every 30 s (each refresh is
// a few requests, and each request a trace in the trace view).
app.timer = setInterval(() => { if (document.visibilityState === 'visible') refreshSessions(); }, 30000);
addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') refreshSessions(); });
