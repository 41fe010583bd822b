// Small DOM helpers: elements built with textContent only (never innerHTML), formatting in
// the browser's locale and time zone, and rows kept in place across refreshes.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.setAttribute("class", value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// h("p", {class: "x"}, "text", child): an HTML element.
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// An SVG element.
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

// The API's error as a message screen readers announce.
export function alertBox(error) {
  const text = error && error.message ? error.message : String(error);
  return h("p", { class: "alert", role: "alert" }, text);
}

export function fmtInt(n) {
  return typeof n === "number" && Number.isFinite(n) ? Math.round(n).toLocaleString() : "–";
}

export function fmtNum(n, digits = 1) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return n.toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function fmtMs(n) {
  return typeof n === "number" && Number.isFinite(n) ? `${fmtNum(n, n < 10 ? 2 : 0)} ms` : "–";
}

// A share (0.0123) as a percentage.
export function fmtPct(share, digits = 2) {
  if (typeof share !== "number" || !Number.isFinite(share)) return "–";
  return `${(share * 100).toLocaleString(undefined, { maximumFractionDigits: digits })} %`;
}

// A time (milliseconds since the epoch, or RFC 3339) in the browser's time zone.
export function fmtTime(value, withDate = true) {
  if (value === null || value === undefined || value === "") return "–";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return withDate ? date.toLocaleString() : date.toLocaleTimeString();
}

export function fmtDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  const d = Math.floor(seconds / 86400);
  const hr = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d} d ${hr} h`;
  if (hr > 0) return `${hr} h ${m} min`;
  if (m > 0) return `${m} min`;
  return `${Math.floor(seconds)} s`;
}

// A section with a heading, its id for aria-labelledby.
export function section(id, title, ...children) {
  return h("section", { class: "panel", "aria-labelledby": `${id}-title`, id },
    h("h2", { id: `${id}-title` }, title), ...children);
}

// A table with a caption read by screen readers, headings and an empty body. A heading
// starting with "#" is a numeric column (right-aligned, like its cells).
export function table(caption, headings) {
  const body = h("tbody");
  const head = headings.map((x) => (x.startsWith("#")
    ? h("th", { scope: "col", class: "num" }, x.slice(1))
    : h("th", { scope: "col" }, x)));
  const el = h("div", { class: "table-wrap" },
    h("table", {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, head)),
      body));
  return { el, body };
}

// Makes `container`'s children one per item, in order: a row whose item has the same key
// and signature as before is kept as it is (so focus and pending clicks survive a refresh);
// the others are built with `render`. `empty` is shown when there are no items.
export function syncRows(container, items, key, render, empty) {
  const old = new Map();
  for (const child of Array.from(container.children)) {
    if (child.dataset.key !== undefined) old.set(child.dataset.key, child);
  }
  const rows = [];
  for (const item of items) {
    const k = String(key(item));
    const sig = JSON.stringify(item);
    let row = old.get(k);
    if (!row || row.dataset.sig !== sig) {
      row = render(item);
      row.dataset.key = k;
      row.dataset.sig = sig;
    }
    rows.push(row);
  }
  if (rows.length === 0 && empty) rows.push(empty());
  // Rows that stay are not moved (moving a node would take the focus away from it).
  const keep = new Set(rows);
  for (const child of Array.from(container.children)) {
    if (!keep.has(child)) child.remove();
  }
  let cursor = container.firstElementChild;
  for (const row of rows) {
    if (row === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      container.insertBefore(row, cursor);
    }
  }
}

// Replaces the contents of the element `id` inside `root` (if it is still shown).
export function fill(root, id, ...children) {
  const el = root.querySelector(`#${id}`);
  if (el) el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}
