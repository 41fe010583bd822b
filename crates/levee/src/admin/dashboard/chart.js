// A small line chart drawn as inline SVG: one or more series over the same times, each on
// its own scale (normalised to its own maximum), with the first and last time below and
// the latest and highest values in the legend. Short series get a dot per point, longer ones
// a dot where a point has no neighbour to draw a line to.

import { s, h, fmtTime } from "./dom.js";

const W = 600;
const H = 150;
const PAD = 6;
// Up to this many points, each is also drawn as a dot.
const DOTS = 30;

function finite(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// series: [{label, cls, values: [number|null], format, max?}]; times: [ms]. Returns a figure.
export function lineChart(title, times, series) {
  const n = times.length;
  const x = (i) => PAD + (n > 1 ? (i / (n - 1)) * (W - 2 * PAD) : (W - 2 * PAD) / 2);
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title,
    preserveAspectRatio: "none",
  });
  for (let g = 0; g <= 4; g++) {
    const y = PAD + (g / 4) * (H - 2 * PAD);
    svg.append(s("line", { x1: 0, x2: W, y1: y, y2: y, class: "grid" }));
  }
  for (const line of series) {
    // A fixed scale when the series has one (a share: max 1); values outside are drawn at
    // the edge (the legend has the real ones).
    const max = line.max || Math.max(...line.values.filter(finite), 0) || 1;
    const y = (v) => PAD + (H - 2 * PAD) - (Math.min(Math.max(v, 0), max) / max) * (H - 2 * PAD);
    let d = "";
    let dots = "";
    line.values.forEach((v, i) => {
      if (!finite(v)) return;
      d += `${d ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      const alone = !finite(line.values[i - 1]) && !finite(line.values[i + 1]);
      if (n <= DOTS || alone) dots += `M${x(i).toFixed(1)},${y(v).toFixed(1)}h0`;
    });
    if (d) svg.append(s("path", { d, class: `line ${line.cls}` }));
    if (dots) svg.append(s("path", { d: dots, class: `line dot ${line.cls}` }));
  }
  const axis = n > 0
    ? h("div", { class: "axis" }, h("span", {}, fmtTime(times[0], false)), h("span", {}, fmtTime(times[n - 1], false)))
    : h("div", { class: "axis" }, h("span", {}, "No samples yet."));
  const legend = h("ul", { class: "legend" }, series.map((line) => {
    const values = line.values.filter(finite);
    const last = values.length ? values[values.length - 1] : null;
    const max = values.length ? Math.max(...values) : null;
    return h("li", { class: line.cls },
      h("span", { class: "swatch", "aria-hidden": "true" }),
      `${line.label}: ${line.format(last)} now, ${line.format(max)} max`);
  }));
  return h("figure", { class: "figure" }, svg, axis, h("figcaption", {}, title), legend);
}
