// A small line chart drawn as inline SVG: one or more series over the same times, each on
// its own scale (normalised to its own maximum), with the latest values in the legend.

import { s, h, fmtTime } from "./dom.js";

const W = 600;
const H = 160;
const PAD = { left: 8, right: 8, top: 10, bottom: 22 };

// series: [{label, unit, cls, values: [number|null]}]; times: [ms]. Returns a figure.
export function lineChart(title, times, series) {
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const n = times.length;
  const x = (i) => PAD.left + (n > 1 ? (i / (n - 1)) * innerW : innerW / 2);
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title,
    preserveAspectRatio: "none",
  });
  for (let g = 0; g <= 4; g++) {
    const y = PAD.top + (g / 4) * innerH;
    svg.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid" }));
  }
  for (const line of series) {
    const finite = line.values.filter((v) => typeof v === "number" && Number.isFinite(v));
    const max = Math.max(...finite, 0) || 1;
    let d = "";
    line.values.forEach((v, i) => {
      if (typeof v !== "number" || !Number.isFinite(v)) return;
      const y = PAD.top + innerH - (v / max) * innerH;
      d += `${d ? "L" : "M"}${x(i).toFixed(1)},${y.toFixed(1)}`;
    });
    if (d) svg.append(s("path", { d, class: `line ${line.cls}` }));
  }
  if (n > 0) {
    svg.append(s("text", { x: PAD.left, y: H - 6, class: "axis" }, fmtTime(times[0], false)));
    svg.append(s("text", { x: W - PAD.right, y: H - 6, class: "axis end" }, fmtTime(times[n - 1], false)));
  } else {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "axis middle" }, "No samples yet"));
  }
  const legend = h("ul", { class: "legend" }, series.map((line) => {
    const last = [...line.values].reverse().find((v) => typeof v === "number" && Number.isFinite(v));
    const max = Math.max(...line.values.filter((v) => Number.isFinite(v)), 0);
    return h("li", { class: line.cls },
      h("span", { class: "swatch", "aria-hidden": "true" }),
      `${line.label}: ${line.format(last)} now, ${line.format(max)} max`);
  }));
  return h("figure", { class: "figure" }, svg, h("figcaption", {}, title), legend);
}
