// The trace view (GET /debug/traces): the recent traces from `/debug/traces.json` and one
// trace as a waterfall with its spans' details; `#<traceId>` opens that trace (the console links
// every turn there). Text from spans is put into the page as text nodes only.

import { authHeaders, signIn, token } from './api.js';

const $ = s => document.querySelector(s);
// The token: the one the console signed in with (this tab's session storage), else `?token=`.
const urlToken = new URLSearchParams(location.search).get('token');
if (urlToken && !token.get()) token.set(urlToken);
const API = location.pathname.replace(/\/+$/, '') + '.json';
const PAL = ['#0969da', '#8250df', '#1a7f37', '#bf8700', '#0a7ea4', '#953800', '#6e7781', '#5a32a3'];
const ERR = '#cf222e', colors = {};
let traces = [], curId = null, cur = null, selId = null;

function color(s) { if (!(s in colors)) colors[s] = PAL[Object.keys(colors).length % PAL.length]; return colors[s]; }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    // Styles through the CSSOM (the page's policy refuses style attributes in markup).
    if (k === 'style') e.style.cssText = v; else if (k.startsWith('on')) e[k] = v; else e.setAttribute(k, v);
  }
  for (const c of kids.flat()) if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
  return e;
}
const dot = s => el('span', { class: 'dot', style: 'background:' + color(s) });
function dur(ms) {
  if (!isFinite(ms)) return '?';
  if (ms < 0.9995) return Math.round(ms * 1000) + 'µs';
  if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 1) + 'ms';
  return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + 's';
}
const clock = ns => ns ? new Date(ns / 1e6).toLocaleTimeString([], { hour12: false }) : '';
const iso = ns => ns ? new Date(ns / 1e6).toISOString() : '';
const str = v => typeof v === 'string' ? v : JSON.stringify(v);
function pairs(a) {
  if (Array.isArray(a)) return a.map(p => Array.isArray(p) ? p : [p && p.key, p && p.value]);
  return a && typeof a === 'object' ? Object.entries(a) : [];
}
async function get(url) {
  const r = await fetch(url, { credentials: 'same-origin', headers: authHeaders(), cache: 'no-store' });
  if (r.status === 401) { await signIn(); return get(url); }
  if (!r.ok) throw new Error(r.status === 404 ? 'not found (evicted?)' : 'HTTP ' + r.status);
  return r.json();
}

async function loadList() {
  try {
    const d = await get(API);
    traces = Array.isArray(d.traces) ? d.traces : [];
    const dr = d.dropped || {};
    $('#msg').textContent = traces.length + ' recent trace' + (traces.length === 1 ? '' : 's') +
      (dr.spans || dr.traces ? ` · ${dr.spans || 0} span(s) dropped, ${dr.traces || 0} trace(s) evicted` : '');
  } catch (e) { $('#msg').textContent = 'Could not load traces: ' + e.message; traces = null; }
  renderList();
}
function renderList() {
  const list = $('#list');
  if (!traces) return list.replaceChildren(el('div', { class: 'empty' }, 'Traces unavailable.'));
  list.replaceChildren(...traces.map(t => el('div', { class: 'tr' + (t.traceId === curId ? ' sel' : ''), onclick: () => go(t.traceId) },
    el('b', { title: t.rootName || '' }, t.rootName || '(unnamed)'),
    el('div', { class: 'meta' },
      (t.services || []).map(s => el('span', {}, dot(s), s)),
      el('span', {}, dur(t.durationMs)), el('span', {}, (t.spanCount || 0) + ' spans'),
      t.errorCount ? el('span', { class: 'bad' }, t.errorCount + ' error' + (t.errorCount > 1 ? 's' : '')) : null,
      el('span', {}, clock(t.startUnixNanos))))));
  if (!traces.length) list.append(el('div', { class: 'empty' }, 'No traces yet.'));
}
function go(id) {
  if (location.hash.slice(1) === id) open(id); else location.hash = id;
}
async function open(id, keepSel) {
  curId = id; renderList();
  try { render(await get(API + '?traceId=' + encodeURIComponent(id)), keepSel); }
  catch (e) { cur = null; $('#head').replaceChildren(el('div', { class: 'empty' }, `Trace ${id}: ${e.message}`)); $('#wf').replaceChildren(); $('#detail').replaceChildren(); }
}

function render(d, keepSel) {
  const spans = (Array.isArray(d && d.spans) ? d.spans : []).filter(s => s && s.spanId).map(s => {
    const st = +s.startUnixNanos || 0;
    return Object.assign({}, s, { st, en: Math.max(+s.endUnixNanos || 0, st), service: s.service || '?' });
  });
  if (!spans.length) { $('#head').replaceChildren(el('div', { class: 'empty' }, 'This trace has no spans.')); return; }
  const t0 = Math.min(...spans.map(s => s.st)), total = Math.max(Math.max(...spans.map(s => s.en)) - t0, 1);
  const byId = new Map(spans.map(s => [s.spanId, s])), kids = new Map(), roots = [], order = [], seen = new Set();
  for (const s of spans) {
    const p = s.parentSpanId;
    if (p && p !== s.spanId && byId.has(p)) { if (!kids.has(p)) kids.set(p, []); kids.get(p).push(s); } else roots.push(s);
  }
  const byStart = (a, b) => a.st - b.st;
  const walk = (s, depth) => {
    if (seen.has(s.spanId)) return;
    seen.add(s.spanId); order.push([s, depth]);
    (kids.get(s.spanId) || []).sort(byStart).forEach(c => walk(c, depth + 1));
  };
  roots.sort(byStart).forEach(r => walk(r, 0));
  spans.forEach(s => walk(s, 0)); // parent cycles
  const services = [...new Set(order.map(([s]) => s.service))], errors = spans.filter(s => s.status === 'error').length;
  const root = order[0][0];
  cur = { spans: order, t0, total, byId };
  $('#head').replaceChildren(el('h2', {}, root.name || '(unnamed)'), el('div', { class: 'meta' },
    el('span', { class: 'mono' }, d.traceId || root.traceId), el('span', {}, dur(total / 1e6)), el('span', {}, spans.length + ' spans'),
    errors ? el('span', { class: 'bad' }, errors + ' error' + (errors > 1 ? 's' : '')) : null, el('span', {}, iso(t0)),
    services.map(s => el('span', {}, dot(s), s))));
  const axis = el('div', { class: 'tl' }, [0, .25, .5, .75, 1].map(f => el('span', {
    class: 'tick', style: f === 1 ? 'right:0' : `left:${f * 100}%`
  }, f ? dur(total * f / 1e6) : '0')));
  const rows = order.map(([s, depth]) => {
    const left = (s.st - t0) / total * 100, width = (s.en - s.st) / total * 100, end = left + width;
    const err = s.status === 'error';
    // The duration label: after the bar, else inside it (long bars), else before it.
    const pos = end <= 80 ? ['lbl', `left:${end}%`] : width >= 12 ? ['lbl in', `right:${100 - end}%`] : ['lbl', `right:${100 - left}%`];
    const label = el('span', { class: pos[0], style: pos[1] }, dur((s.en - s.st) / 1e6));
    return el('div', { class: 'row' + (err ? ' err' : ''), 'data-id': s.spanId, onclick: () => select(s.spanId) },
      el('div', { class: 'nm', style: `padding-left:${8 + depth * 16}px`, title: `${s.name} (${s.service})` }, dot(s.service), el('span', { class: 't' }, s.name || '(unnamed)')),
      el('div', { class: 'tl' }, el('div', { class: 'bar', title: `${s.name} · ${dur((s.en - s.st) / 1e6)}`, style: `left:${left}%;width:${width}%;background:${err ? ERR : color(s.service)}` }), label));
  });
  $('#wf').replaceChildren(el('div', { class: 'row axis' }, el('div', { class: 'nm', style: 'padding-left:8px' }, el('span', { class: 'mut' }, 'span')), axis), ...rows);
  const first = order.find(([s]) => s.status === 'error') || order[0];
  select(keepSel && byId.has(selId) ? selId : first[0].spanId);
}

function select(id) {
  if (!cur || !cur.byId.has(id)) return;
  selId = id;
  for (const r of document.querySelectorAll('#wf .row[data-id]')) r.classList.toggle('sel', r.dataset.id === id);
  const s = cur.byId.get(id), rel = ns => '+' + dur((ns - cur.t0) / 1e6);
  const kv = (k, v) => el('tr', {}, el('td', {}, k), el('td', {}, v));
  const attrs = pairs(s.attributes), events = Array.isArray(s.events) ? s.events : [], links = Array.isArray(s.links) ? s.links : [];
  const spanLink = sid => cur.byId.has(sid) ? el('a', { onclick: () => select(sid) }, sid) : sid || '—';
  $('#detail').replaceChildren(
    el('h2', {}, dot(s.service), s.name || '(unnamed)'),
    el('table', {},
      kv('service', s.service), kv('kind', s.kind || '?'),
      kv('status', el('span', { class: s.status === 'error' ? 'bad' : '' }, (s.status || 'unset') + (s.statusMessage ? ': ' + s.statusMessage : ''))),
      kv('duration', dur((s.en - s.st) / 1e6)), kv('start', `${iso(s.st)} (${rel(s.st)})`),
      kv('trace id', s.traceId || ''), kv('span id', s.spanId), kv('parent', s.parentSpanId ? spanLink(s.parentSpanId) : '— (root)')),
    el('h3', {}, `Attributes (${attrs.length})`),
    attrs.length ? el('table', {}, attrs.map(([k, v]) => kv(k, str(v)))) : el('div', { class: 'mut' }, 'none'),
    el('h3', {}, `Events (${events.length})`),
    events.length ? el('table', {}, events.map(e => kv(rel(+e.timeUnixNanos || s.st), el('span', {}, el('b', {}, e.name || '(event)'),
      pairs(e.attributes).map(([k, v]) => el('div', {}, k + ' = ' + str(v))))))) : el('div', { class: 'mut' }, 'none'),
    el('h3', {}, `Links (${links.length})`),
    links.length ? el('table', {}, links.map(l => kv('link', el('span', {},
      l.traceId && l.traceId !== curId ? el('a', { onclick: () => go(l.traceId) }, 'trace ' + l.traceId) : 'this trace',
      ' · span ', spanLink(l.spanId))))) : el('div', { class: 'mut' }, 'none'));
}

async function refresh() {
  await loadList();
  const want = location.hash.slice(1);
  if (want) await open(want, want === curId);
  else if (traces && traces.length) { history.replaceState(null, '', '#' + traces[0].traceId); await open(traces[0].traceId); }
}
$('#refresh').onclick = refresh;
addEventListener('hashchange', () => { const id = location.hash.slice(1); if (id) open(id); });
refresh();
