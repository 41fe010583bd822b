// The SLO page (#/slos), from GET /api/v1/slos: per SLO its objective and SLI, the error
// budget left (a bar and a number), the burn rate of every window against the four alert
// rules of docs/slo.md, the alerts firing with their severity and since when, the budget
// burning down over the current window (budget_history: one point per minute, or per step
// of a longer window), the alerts fired since the gateway started (alert_history), and the
// runbook they name.

import { get } from "./api.js";
import { h, alertBox, fill, syncRows, fmtInt, fmtNum, fmtPct, fmtTime } from "./dom.js";
import { lineChart } from "./chart.js";

export const title = "SLOs";

// The multiwindow, multi-burn-rate rules (docs/slo.md, "The four rules"): a rule holds when
// the burn rate over both of its windows is above its factor.
const RULES = [
  { severity: "page", long: "1h", short: "5m", factor: 14.4 },
  { severity: "page", long: "6h", short: "30m", factor: 6 },
  { severity: "ticket", long: "1d", short: "2h", factor: 3 },
  { severity: "ticket", long: "3d", short: "6h", factor: 1 },
];
function rate(slo, window) {
  const found = (slo.burn_rates || []).find((b) => b.window === window);
  return found && typeof found.burn_rate === "number" ? found.burn_rate : null;
}

function fmtRate(value) {
  return value === null ? "–" : `${fmtNum(value, 2)}×`;
}

function rateCell(value, factor) {
  const over = value !== null && value > factor;
  return h("td", { class: over ? "num bad" : "num" }, fmtRate(value));
}

function burnTable(slo) {
  const rows = RULES.map((rule) => {
    const long = rate(slo, rule.long);
    const short = rate(slo, rule.short);
    const holds = long !== null && short !== null && long > rule.factor && short > rule.factor;
    return h("tr", { "data-testid": "burn-rule", "data-severity": rule.severity, "data-long": rule.long },
      h("th", { scope: "row" },
        h("span", { class: `badge ${rule.severity === "page" ? "bad" : "warn"}` }, rule.severity),
        h("span", { class: "nowrap" }, `${rule.long} / ${rule.short}`)),
      rateCell(long, rule.factor),
      rateCell(short, rule.factor),
      h("td", { class: "num" }, `> ${fmtNum(rule.factor, 1)}×`),
      h("td", {}, holds ? h("span", { class: "badge bad" }, "holds") : h("span", { class: "muted" }, "below")));
  });
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("caption", { class: "sr-only" }, `${slo.name}: burn rates against the alert rules`),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Alert, windows"),
        h("th", { scope: "col", class: "num" }, "Long"),
        h("th", { scope: "col", class: "num" }, "Short"),
        h("th", { scope: "col", class: "num" }, "Above"),
        h("th", { scope: "col" }, "Rule"))),
      h("tbody", {}, rows)));
}

function budget(slo) {
  const b = slo.error_budget || {};
  const left = typeof b.remaining === "number" ? b.remaining : null;
  const over = left !== null && left < 0;
  return h("div", { class: "budget" },
    h("div", { class: "budget-head" },
      h("span", { class: "card-label" }, "Error budget left"),
      h("span", { class: over ? "budget-value bad" : "budget-value", "data-testid": "budget-remaining" },
        over ? `${fmtPct(left, 1)} (overspent)` : fmtPct(left, 1))),
    h("meter", {
      class: "budget-bar", min: 0, max: 1, low: 0.25, high: 0.5, optimum: 1,
      value: Math.min(1, Math.max(0, left ?? 0)), "aria-label": `${slo.name}: error budget left`,
    }),
    h("p", { class: "muted small" },
      `${fmtInt(Math.max(0, b.remaining_events ?? 0))} more bad events allowed over ${slo.window} at the events so far`));
}

function burnDown(slo) {
  const points = slo.budget_history || [];
  // Not clamped at 0 (the legend shows an overspent budget); drawn at the bottom edge.
  return lineChart(`${slo.name}: error budget left over the current ${slo.window} window`, points.map((p) => p.at_ms), [
    { label: "Budget left", cls: "s1", values: points.map((p) => p.remaining), format: (v) => fmtPct(v, 1), max: 1 },
  ]);
}

function alertHistory(slo) {
  const records = (slo.alert_history || []).slice().reverse();
  if (!records.length) return h("p", { class: "muted small", "data-testid": "no-alert-history" }, "No alert has fired since the gateway started.");
  return h("div", { class: "table-wrap" },
    h("table", { "data-testid": "alert-history" },
      h("caption", { class: "sr-only" }, `${slo.name}: alerts fired, newest first`),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Alert"),
        h("th", { scope: "col" }, "Started"),
        h("th", { scope: "col" }, "Resolved"))),
      h("tbody", {}, records.map((r) => h("tr", { "data-testid": "alert-record", "data-severity": r.severity, "data-open": r.ended_at ? "false" : "true" },
        h("th", { scope: "row" }, h("span", { class: `badge ${r.severity === "page" ? "bad" : "warn"}` }, r.severity)),
        h("td", {}, h("time", { datetime: r.started_at }, fmtTime(r.started_at))),
        h("td", {}, r.ended_at ? h("time", { datetime: r.ended_at }, fmtTime(r.ended_at)) : h("span", { class: "badge bad" }, "firing")))))));
}

function alerts(slo) {
  const firing = slo.alerts_firing || [];
  if (!firing.length) return h("p", { class: "muted", "data-testid": "no-alert" }, "No alert is firing.");
  return h("ul", { class: "plain" }, firing.map((a) => h("li", { "data-testid": "alert-firing", "data-severity": a.severity },
    h("span", { class: `badge ${a.severity === "page" ? "bad" : "warn"}` }, a.severity),
    " firing since ",
    h("time", { datetime: a.since }, fmtTime(a.since)))));
}

function scope(slo) {
  const parts = [`route ${slo.route}`];
  if (slo.consumer) parts.push(`consumer ${slo.consumer}`);
  if (slo.upstream) parts.push(`upstream ${slo.upstream}`);
  parts.push(slo.sli, `window ${slo.window}`);
  if (slo.counts) parts.push(`${slo.counts} counts`);
  return parts.join(" · ");
}

function stat(label, value, cls) {
  return h("div", { class: "stat" }, h("span", { class: "card-label" }, label), h("span", { class: cls || "stat-value" }, value));
}

function panel(slo) {
  const id = `slo-${slo.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const events = slo.events || {};
  const sli = typeof slo.sli_now === "number" ? slo.sli_now : null;
  const missed = sli !== null && sli < slo.objective;
  const firing = (slo.alerts_firing || []).length > 0;
  return h("section", {
    class: firing ? "panel slo firing" : "panel slo", "data-testid": "slo", "data-slo": slo.name,
    "aria-labelledby": `${id}-title`,
  },
  h("h2", { id: `${id}-title` }, slo.name),
  h("p", { class: "muted small" }, scope(slo)),
  h("div", { class: "slo-grid" },
    h("div", {},
      h("div", { class: "stats" },
        stat("Objective", `${fmtNum(slo.objective, 3)} %`),
        stat("SLI now", sli === null ? "no events yet" : `${fmtNum(sli, 3)} %`, missed ? "stat-value bad" : "stat-value"),
        stat("Events", `${fmtInt(events.total)} (${fmtInt(events.bad)} bad)`)),
      budget(slo),
      h("h3", {}, "Alerts firing"),
      alerts(slo),
      h("h3", {}, "Alert history"),
      alertHistory(slo),
      slo.runbook
        ? h("p", { class: "small", "data-testid": "runbook" }, "Runbook: ", h("code", {}, slo.runbook), " (in the Levee repository)")
        : null,
      h("p", { class: "muted small" }, `Evaluated ${fmtTime(slo.evaluated_at)}`)),
    h("div", {},
      h("h3", {}, "Burn rates"),
      burnTable(slo),
      burnDown(slo))));
}

export function mount(root) {
  const list = h("div", { id: "slo-list" });
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title), h("p", { class: "muted", id: "slo-updated" })),
    h("div", { id: "slo-error" }),
    list,
  );
  return {
    async refresh() {
      let answer;
      try {
        answer = await get("/api/v1/slos");
      } catch (error) {
        fill(root, "slo-error", alertBox(error));
        return;
      }
      fill(root, "slo-error");
      const slos = answer.slos || [];
      fill(root, "slo-updated", `Updated ${fmtTime(Date.now(), false)}`);
      // A panel is rebuilt when its SLO's numbers changed (evaluated_at does every second).
      syncRows(list, slos, (s) => s.name, panel,
        () => h("p", { class: "panel muted" }, "No SLO is configured (slos: in the configuration, see docs/slo.md)."));
    },
  };
}
