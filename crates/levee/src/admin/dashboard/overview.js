// The overview (#/overview): totals, traffic over the last minutes, every route, SLOs with
// their budget left, alerts firing and canaries, from one call (GET /api/v1/overview).

import { get } from "./api.js";
import { h, alertBox, fill, section, table, syncRows, fmtInt, fmtNum, fmtMs, fmtPct, fmtDuration, fmtTime } from "./dom.js";
import { lineChart } from "./chart.js";

export const title = "Overview";

function card(label, value, testid) {
  return h("div", { class: "card" },
    h("span", { class: "card-label" }, label),
    h("span", { class: "card-value", "data-testid": testid }, value));
}

function cards(o) {
  const totals = o.totals || {};
  const points = (o.series && o.series.points) || [];
  const last = points.length ? points[points.length - 1] : {};
  const list = [
    card("Requests", fmtInt(totals.requests), "requests-total"),
    card("Errors", fmtInt(totals.errors), "errors-total"),
    card("Error rate", fmtPct(totals.error_rate), "error-rate"),
    card("Requests/s", fmtNum(last.rps, 1), "rps-now"),
    card("p99 latency", fmtMs(last.p99_ms), "p99-now"),
    card("Up for", fmtDuration(o.uptime_s), "uptime"),
    card("Config version", fmtInt(o.config_version), "config-version"),
  ];
  if (o.cluster_nodes !== null && o.cluster_nodes !== undefined) {
    list.push(card("Cluster nodes", fmtInt(o.cluster_nodes), "cluster-nodes"));
  }
  return list;
}

function chart(series) {
  const points = (series && series.points) || [];
  const times = points.map((p) => p.t_ms);
  return [
    lineChart("Requests per second and error rate", times, [
      { label: "Requests/s", cls: "s1", values: points.map((p) => p.rps), format: (v) => fmtNum(v, 1) },
      { label: "Error rate", cls: "s3", values: points.map((p) => p.error_rate), format: (v) => fmtPct(v) },
    ]),
    lineChart("Latency p50 and p99", times, [
      { label: "p50", cls: "s2", values: points.map((p) => p.p50_ms), format: fmtMs },
      { label: "p99", cls: "s4", values: points.map((p) => p.p99_ms), format: fmtMs },
    ]),
  ];
}

function routeRow(r) {
  return h("tr", { "data-testid": "route-row", "data-route": r.route },
    h("th", { scope: "row" }, r.route || "(no route)"),
    h("td", { class: "num" }, fmtInt(r.requests)),
    h("td", { class: "num" }, fmtInt(r.errors)),
    h("td", { class: "num" }, fmtPct(r.error_rate)),
    h("td", { class: "num" }, fmtNum(r.rps, 1)),
    h("td", { class: "num" }, fmtMs(r.p50_ms)),
    h("td", { class: "num" }, fmtMs(r.p99_ms)));
}

function sloRow(slo) {
  const left = typeof slo.budget_remaining === "number" ? slo.budget_remaining : null;
  const firing = slo.alerts_firing || [];
  return h("tr", { "data-testid": "slo-row", "data-slo": slo.name },
    h("th", { scope: "row" }, slo.name),
    h("td", {},
      h("meter", { min: 0, max: 1, low: 0.25, high: 0.5, optimum: 1, value: Math.max(0, left ?? 0), "aria-label": `${slo.name} budget left` }),
      ` ${fmtPct(left, 1)}`),
    h("td", {}, firing.length
      ? firing.map((a) => h("span", { class: "badge bad" }, typeof a === "string" ? a : a.severity))
      : h("span", { class: "muted" }, "none")));
}

function alertsList(o) {
  const firing = [];
  for (const slo of o.slos || []) {
    for (const a of slo.alerts_firing || []) {
      firing.push(`${slo.name}: ${typeof a === "string" ? a : a.severity}`);
    }
  }
  const count = Array.isArray(o.alerts_firing) ? o.alerts_firing.length : o.alerts_firing;
  const head = h("p", { "data-testid": "alerts-firing" },
    count ? `${fmtInt(count)} firing` : "No alert is firing.");
  return [head, firing.length ? h("ul", { class: "plain" }, firing.map((f) => h("li", { class: "bad" }, f))) : null];
}

function canaryRow(c) {
  const bad = c.state === "rolled_back";
  return h("tr", { "data-testid": "canary-row", "data-route": c.route },
    h("th", { scope: "row" }, c.route),
    h("td", {}, h("span", { class: `badge ${bad ? "bad" : "ok"}` }, c.state)));
}

export function mount(root) {
  const routes = table("Traffic per route", ["Route", "#Requests", "#Errors", "#Error rate", "#Req/s", "#p50", "#p99"]);
  const slos = table("SLOs", ["SLO", "Error budget left", "Alerts"]);
  const canaries = table("Canaries", ["Route", "State"]);
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title), h("p", { class: "muted", id: "ov-updated" })),
    h("div", { id: "ov-error" }),
    h("div", { class: "cards", id: "ov-cards" }),
    section("ov-traffic", "Traffic", h("div", { class: "charts", id: "ov-charts" })),
    section("ov-routes", "Routes", routes.el),
    h("div", { class: "cols" },
      section("ov-slos", "SLOs", slos.el),
      section("ov-alerts", "Alerts", h("div", { id: "ov-alert-list" })),
      section("ov-canaries", "Canaries", canaries.el)),
  );
  const empty = (text, cols) => () => h("tr", {}, h("td", { colspan: cols, class: "muted" }, text));
  return {
    async refresh() {
      let o;
      try {
        o = await get("/api/v1/overview");
      } catch (error) {
        fill(root, "ov-error", alertBox(error));
        return;
      }
      fill(root, "ov-error");
      fill(root, "ov-cards", cards(o));
      fill(root, "ov-charts", chart(o.series));
      fill(root, "ov-updated", `Updated ${fmtTime(o.now_ms || Date.now(), false)}`);
      syncRows(routes.body, o.routes || [], (r) => r.route, routeRow, empty("No traffic yet.", 7));
      syncRows(slos.body, o.slos || [], (x) => x.name, sloRow, empty("No SLO is configured.", 3));
      fill(root, "ov-alert-list", alertsList(o));
      syncRows(canaries.body, o.canaries || [], (c) => c.route, canaryRow, empty("No canary.", 2));
    },
  };
}
