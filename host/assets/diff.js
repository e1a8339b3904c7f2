// A line diff (longest common subsequence) for ACP `diff` tool-call content, rendered as text
// nodes: unchanged runs beyond a few lines of context fold into one "n unchanged lines" row.

const CONTEXT = 3;
const MAX_CELLS = 4e6;

/** [{op: ' '|'-'|'+', text}] turning `a` into `b` (arrays of lines). */
export function diffLines(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length, endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  const head = a.slice(0, start).map(text => ({ op: ' ', text }));
  const tail = a.slice(endA).map(text => ({ op: ' ', text }));
  const x = a.slice(start, endA), y = b.slice(start, endB);
  let mid;
  if (x.length * y.length > MAX_CELLS) {
    mid = [...x.map(text => ({ op: '-', text })), ...y.map(text => ({ op: '+', text }))];
  } else {
    // lcs[i][j]: the LCS length of x[i..] and y[j..].
    const w = y.length + 1;
    const lcs = new Uint32Array((x.length + 1) * w);
    for (let i = x.length - 1; i >= 0; i--) {
      for (let j = y.length - 1; j >= 0; j--) {
        lcs[i * w + j] = x[i] === y[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
      }
    }
    mid = [];
    let i = 0, j = 0;
    while (i < x.length && j < y.length) {
      if (x[i] === y[j]) { mid.push({ op: ' ', text: x[i] }); i++; j++; }
      else if (lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) mid.push({ op: '-', text: x[i++] });
      else mid.push({ op: '+', text: y[j++] });
    }
    while (i < x.length) mid.push({ op: '-', text: x[i++] });
    while (j < y.length) mid.push({ op: '+', text: y[j++] });
  }
  return [...head, ...mid, ...tail];
}

const lines = s => (s == null || s === '' ? [] : String(s).replace(/\r\n?/g, '\n').replace(/\n$/, '').split('\n'));

/** A diff block for ACP `{type: "diff", path, oldText, newText}` (oldText null: a new file). */
export function renderDiff(d) {
  const box = document.createElement('div');
  box.className = 'diff';
  const path = document.createElement('div');
  path.className = 'path';
  const isNew = d.oldText == null;
  path.textContent = (d.path || '(no path)') + (isNew ? '  (new file)' : '');
  const pre = document.createElement('pre');
  const rows = diffLines(lines(d.oldText), lines(d.newText));
  let added = 0, removed = 0;
  const changed = rows.map(r => r.op !== ' ');
  rows.forEach((r, k) => {
    if (r.op === '+') added++;
    if (r.op === '-') removed++;
    const near = changed.slice(Math.max(0, k - CONTEXT), k + CONTEXT + 1).some(Boolean);
    if (!near) {
      const last = pre.lastChild;
      if (last && last.classList.contains('gap')) {
        last.dataset.n = String(+last.dataset.n + 1);
        last.textContent = `⋯ ${last.dataset.n} unchanged lines`;
      } else {
        const gap = document.createElement('span');
        gap.className = 'ln gap';
        gap.dataset.n = '1';
        gap.textContent = '⋯ 1 unchanged line';
        pre.append(gap);
      }
      return;
    }
    const ln = document.createElement('span');
    ln.className = 'ln' + (r.op === '+' ? ' add' : r.op === '-' ? ' del' : '');
    ln.textContent = r.op + ' ' + r.text;
    pre.append(ln);
  });
  const stat = document.createElement('span');
  stat.className = 'mut';
  stat.textContent = `  +${added} −${removed}`;
  path.append(stat);
  box.append(path, pre);
  return box;
}
