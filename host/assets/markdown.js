// A small Markdown renderer for agent output that can never run script: it builds DOM nodes
// with createElement/createTextNode only (never parses HTML), so raw HTML in the text shows as
// text; links are made only for http(s) URLs (rel="noopener noreferrer"), anything else
// (javascript:, data:, ...) stays text. Supported: fenced and indented code blocks, headings,
// lists (nested by indentation), block quotes, rules, paragraphs; inline code, **strong**,
// *em*, ~~del~~, [links](https://...), <https://...> and bare https:// URLs, backslash escapes.

const h = (tag, cls) => { const e = document.createElement(tag); if (cls) e.className = cls; return e; };
const text = s => document.createTextNode(s);

/** A safe href for `url`, or null: http(s) only, absolute. */
export function safeUrl(url) {
  const u = String(url).trim();
  if (!/^https?:\/\//i.test(u)) return null;
  try {
    const parsed = new URL(u);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : null;
  } catch { return null; }
}

function link(href, kids) {
  const a = h('a');
  a.href = href;
  a.rel = 'noopener noreferrer nofollow';
  a.target = '_blank';
  a.append(...kids);
  return a;
}

const PUNCT = /[!-/:-@[-`{-~]/;

/** Inline Markdown of one block's text, as nodes. */
export function inline(src, inLink = false) {
  const out = [];
  let buf = '';
  const flush = () => { if (buf) { out.push(text(buf)); buf = ''; } };
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === '\\' && i + 1 < src.length && PUNCT.test(src[i + 1])) { buf += src[i + 1]; i += 2; continue; }
    if (c === '\n') { flush(); out.push(h('br')); i++; continue; }
    if (c === '`') {
      let n = 1;
      while (src[i + n] === '`') n++;
      const fence = '`'.repeat(n);
      const end = src.indexOf(fence, i + n);
      if (end > 0) {
        flush();
        const code = h('code');
        let body = src.slice(i + n, end).replace(/\n/g, ' ');
        if (/^ .* $/.test(body) && body.trim()) body = body.slice(1, -1);
        code.textContent = body;
        out.push(code);
        i = end + n;
        continue;
      }
      buf += fence; i += n; continue;
    }
    if (c === '[' && !inLink) {
      const close = matchBracket(src, i);
      if (close > 0 && src[close + 1] === '(') {
        const end = src.indexOf(')', close + 2);
        if (end > 0) {
          const target = src.slice(close + 2, end).trim().split(/\s+/)[0].replace(/^<|>$/g, '');
          const label = inline(src.slice(i + 1, close), true);
          const href = safeUrl(target);
          flush();
          if (href) out.push(link(href, label));
          else out.push(...label, text(' (' + target + ')'));
          i = end + 1;
          continue;
        }
      }
    }
    if (c === '<' && !inLink) {
      const end = src.indexOf('>', i);
      const href = end > 0 ? safeUrl(src.slice(i + 1, end)) : null;
      if (href && !/\s/.test(src.slice(i + 1, end))) {
        flush(); out.push(link(href, [text(src.slice(i + 1, end))])); i = end + 1; continue;
      }
    }
    if ((c === 'h' || c === 'H') && !inLink && /^https?:\/\//i.test(src.slice(i, i + 8)) && (i === 0 || /[\s(]/.test(src[i - 1]))) {
      let end = i;
      while (end < src.length && !/[\s<>"]/.test(src[end])) end++;
      while (end > i && /[.,;:!?)\]'*_]/.test(src[end - 1])) end--;
      const href = safeUrl(src.slice(i, end));
      if (href) { flush(); out.push(link(href, [text(src.slice(i, end))])); i = end; continue; }
    }
    if (c === '*' || c === '_' || c === '~') {
      const double = src[i + 1] === c;
      if (c === '~' && !double) { buf += c; i++; continue; }
      const mark = double ? c + c : c;
      const open = i + mark.length;
      // Intraword underscores (snake_case) are not emphasis; openers need text right after.
      const leftOk = c !== '_' || i === 0 || !/\w/.test(src[i - 1]);
      if (leftOk && open < src.length && !/\s/.test(src[open])) {
        let end = src.indexOf(mark, open);
        while (end > 0 && (/\s/.test(src[end - 1]) || (!double && src[end + 1] === c) || (c === '_' && /\w/.test(src[end + mark.length] || '')))) {
          end = src.indexOf(mark, end + 1);
        }
        if (end > open) {
          flush();
          const e = h(c === '~' ? 'del' : double ? 'strong' : 'em');
          e.append(...inline(src.slice(open, end), inLink));
          out.push(e);
          i = end + mark.length;
          continue;
        }
      }
      buf += mark; i += mark.length; continue;
    }
    buf += c; i++;
  }
  flush();
  return out;
}

function matchBracket(src, i) {
  let depth = 0;
  for (let j = i; j < src.length; j++) {
    if (src[j] === '\\') { j++; continue; }
    if (src[j] === '[') depth++;
    else if (src[j] === ']' && --depth === 0) return j;
    else if (src[j] === '\n' && src[j + 1] === '\n') return -1;
  }
  return -1;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

const indentOf = s => s.replace(/\t/g, '    ').length;

/** Renders Markdown `src` into a fragment of safe DOM nodes. */
export function render(src) {
  const frag = document.createDocumentFragment();
  blocks(String(src).replace(/\r\n?/g, '\n').split('\n'), frag);
  return frag;
}

function blocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length)) && !lines[i].trim().slice(fence.length).trim())) body.push(lines[i++]);
      i++;
      const pre = h('pre'), code = h('code');
      if (m[2]) code.dataset.lang = m[2];
      code.textContent = body.join('\n');
      pre.append(code);
      parent.append(pre);
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const e = h('h' + m[1].length);
      e.append(...inline(m[2]));
      parent.append(e);
      i++;
      continue;
    }
    if (RULE.test(line)) { parent.append(h('hr')); i++; continue; }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { inner.push(m[1]); i++; }
      const q = h('blockquote');
      blocks(inner, q);
      parent.append(q);
      continue;
    }
    if (ITEM.test(line)) { i = list(lines, i, parent); continue; }
    if (/^( {4}|\t)/.test(line)) {
      const body = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || !lines[i].trim())) body.push(lines[i++].replace(/^( {4}|\t)/, ''));
      while (body.length && !body[body.length - 1].trim()) body.pop();
      const pre = h('pre'), code = h('code');
      code.textContent = body.join('\n');
      pre.append(code);
      parent.append(pre);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) && !RULE.test(lines[i]) && !QUOTE.test(lines[i]) && !ITEM.test(lines[i])) {
      para.push(lines[i++].trim());
    }
    const p = h('p');
    p.append(...inline(para.join('\n')));
    parent.append(p);
  }
}

/** A list starting at `lines[i]`; items indented deeper than its marker nest. Returns the next line. */
function list(lines, i, parent) {
  const first = ITEM.exec(lines[i]);
  const base = indentOf(first[1]);
  const ordered = /\d/.test(first[2]);
  const el = h(ordered ? 'ol' : 'ul');
  if (ordered && parseInt(first[2], 10) !== 1) el.start = parseInt(first[2], 10);
  let item = null, body = [];
  const close = () => {
    if (!item) return;
    const [head, ...rest] = body;
    item.append(...inline(head));
    if (rest.length) blocks(rest, item);
    el.append(item);
  };
  while (i < lines.length) {
    const line = lines[i];
    const m = ITEM.exec(line);
    if (m && indentOf(m[1]) === base && /\d/.test(m[2]) === ordered) {
      close();
      item = h('li');
      body = [m[3]];
      i++;
      continue;
    }
    if (m && indentOf(m[1]) < base) break;
    if (!line.trim()) {
      const next = lines[i + 1];
      if (next === undefined || (!ITEM.test(next) && indentOf(next.match(/^\s*/)[0]) <= base)) break;
      body.push('');
      i++;
      continue;
    }
    const ind = indentOf(line.match(/^\s*/)[0]);
    if (m || ind > base) { body.push(line.slice(Math.min(line.length - line.trimStart().length, base + 2))); i++; continue; }
    if (body.length && body[body.length - 1].trim() && !ITEM.test(line) && !FENCE.test(line) && !HEADING.test(line)) {
      body[body.length - 1] += '\n' + line.trim(); // a lazy continuation line
      i++;
      continue;
    }
    break;
  }
  close();
  parent.append(el);
  return i;
}
