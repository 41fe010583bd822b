// Chaos (#/chaos), from GET /api/v1/experiments (docs/chaos.md): every experiment, newest
// first, with its state, fault, guard, times, reason and report, read again every refresh so a
// running one is watched live. An admin also gets the form that starts one
// (POST /api/v1/experiments) and a Stop button per running experiment (DELETE, pressed twice);
// both need the admin role, so a viewer (or a team admin) gets the list only.

import { api, get } from "./api.js";
import { h, alertBox, fill, section, table, syncRows, fmtInt, fmtNum, fmtPct, fmtTime } from "./dom.js";
import { abilities, actionButton, setOptions } from "./forms.js";

export const title = "Chaos";

const WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

function stateBadge(state) {
  const cls = state === "running" ? "warn" : state === "completed" ? "ok" : "bad";
  return h("span", { class: `badge ${cls}` }, state);
}

function faultText(fault) {
  const parts = [];
  if (fault && fault.abort) parts.push(`abort ${fmtNum(fault.abort.percent, 2)} % with ${fault.abort.status}`);
  if (fault && fault.delay) parts.push(`delay ${fmtNum(fault.delay.percent, 2)} % by ${fault.delay.duration}`);
  return parts.join("; ") || "–";
}

function guardText(guard) {
  if (!guard) return h("span", { class: "muted" }, "none");
  return `${guard.slo}: burn rate over ${guard.window || "5m"} above ${fmtNum(guard.burn_rate_above, 2)}`;
}

function report(x) {
  const r = x.report || {};
  const lines = [
    `${fmtInt(r.requests)} requests, ${fmtInt(r.affected)} affected (${fmtInt(r.aborted)} aborted, ${fmtInt(r.delayed)} delayed)`,
    `${fmtInt(r.errors)} errors (${fmtPct(r.error_rate)})`,
  ];
  if (r.budget) {
    lines.push(`${r.budget.slo}: ${fmtPct(r.budget.spent, 2)} of the budget spent, ${fmtPct(r.budget.remaining_at_end, 1)} left, burn rate ${fmtNum(r.budget.burn_rate, 2)}`);
  }
  return lines.map((line) => h("span", { class: "line" }, line));
}

// A labelled control; `attrs` go on the input (or select, with `options`).
function field(name, label, attrs, options) {
  const id = `chaos-${name}`;
  const control = options
    ? h("select", { id, name, ...attrs })
    : h("input", { id, name, autocomplete: "off", spellcheck: "false", ...attrs });
  if (options) setOptions(control, options.list, options.blank);
  return { control, el: h("div", { class: "field" }, h("label", { for: id }, label), control) };
}

function startForm(done) {
  const f = {
    name: field("name", "Name", { type: "text", required: true, maxlength: 128, placeholder: "web-abort-5pct" }),
    route: field("route", "Route", { required: true }, { list: [], blank: "Choose a route" }),
    duration: field("duration", "Duration", { type: "text", required: true, value: "5m", placeholder: "10m", pattern: "[0-9][0-9a-z ]*" }),
    abortPercent: field("abort-percent", "Abort %", { type: "number", min: 0, max: 100, step: "any", placeholder: "5" }),
    abortStatus: field("abort-status", "Abort status", { type: "number", min: 400, max: 599, step: 1, value: 503 }),
    delayPercent: field("delay-percent", "Delay %", { type: "number", min: 0, max: 100, step: "any", placeholder: "10" }),
    delayDuration: field("delay-duration", "Delay by", { type: "text", value: "200ms", placeholder: "200ms", pattern: "[0-9][0-9a-z ]*" }),
    slo: field("guard-slo", "SLO", {}, { list: [], blank: "(no guard)" }),
    burn: field("guard-burn", "Stop above burn rate", { type: "number", min: 0, step: "any", placeholder: "14.4" }),
    window: field("guard-window", "Over window", {}, { list: WINDOWS }),
  };
  const status = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Start experiment");
  const form = h("form", { id: "new-experiment", class: "create", "data-testid": "create-form" },
    h("fieldset", {}, h("legend", {}, "Experiment"), f.name.el, f.route.el, f.duration.el),
    h("fieldset", {}, h("legend", {}, "Fault: abort, delay or both"), f.abortPercent.el, f.abortStatus.el, f.delayPercent.el, f.delayDuration.el),
    h("fieldset", {}, h("legend", {}, "Guard (optional): stop when an SLO burns too fast"), f.slo.el, f.burn.el, f.window.el),
    submit, status);
  const value = (x) => x.control.value.trim();
  const body = () => {
    const fault = {};
    if (value(f.abortPercent)) fault.abort = { percent: Number(value(f.abortPercent)), status: Number(value(f.abortStatus) || 503) };
    if (value(f.delayPercent)) fault.delay = { percent: Number(value(f.delayPercent)), duration: value(f.delayDuration) };
    if (!fault.abort && !fault.delay) throw new Error("Give an abort percentage, a delay percentage or both.");
    const b = { name: value(f.name), route: value(f.route), fault, duration: value(f.duration) };
    if (value(f.slo)) {
      if (!value(f.burn)) throw new Error("A guard needs the burn rate above which it stops the experiment.");
      b.abort_if = { slo: value(f.slo), burn_rate_above: Number(value(f.burn)), window: value(f.window) };
    }
    return b;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    submit.disabled = true;
    try {
      const made = await api("POST", "/api/v1/experiments", body());
      status.replaceChildren(h("p", { class: "muted", "data-testid": "experiment-started" },
        "Started ", h("code", {}, made.id), ` on route ${made.route}, until ${fmtTime(made.ends_at)}.`));
      form.reset();
      await done(made);
    } catch (error) {
      status.replaceChildren(alertBox(error));
    } finally {
      submit.disabled = false;
    }
  });
  return {
    form,
    choices(routes, slos) {
      if (routes) setOptions(f.route.control, routes, "Choose a route");
      if (slos) setOptions(f.slo.control, slos, "(no guard)");
    },
  };
}

// What a row is rebuilt on: everything but the report and the budget, which change every
// second while it runs and are updated in place (a rebuild would drop a pending "Confirm
// stop" and the focus).
function stable(x) {
  const { report: _report, ...rest } = x;
  return rest;
}

export function mount(root, ctx) {
  const can = abilities(ctx.who);
  // POST and DELETE /api/v1/experiments need the admin role (Auth::Admin).
  const admin = can.admin;
  const list = table("Chaos experiments, newest first", ["Experiment", "Route", "State", "Fault", "Guard", "Started", "Ends", "Report"]);
  const full = new Map();
  let ticks = 0;

  const load = async () => {
    let answer;
    try {
      answer = await get("/api/v1/experiments");
    } catch (error) {
      fill(root, "chaos-error", alertBox(error));
      return;
    }
    fill(root, "chaos-error");
    const items = [...(answer.experiments || [])].sort((a, b) => (b.started_ms || 0) - (a.started_ms || 0));
    full.clear();
    for (const x of items) full.set(x.id, x);
    syncRows(list.body, items.map(stable), (x) => x.id, row,
      () => h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No experiment yet.")));
    for (const tr of list.body.querySelectorAll("tr[data-experiment-id]")) {
      const x = full.get(tr.dataset.experimentId);
      const cell = tr.querySelector("[data-testid=experiment-report]");
      if (x && cell) cell.replaceChildren(...report(x));
    }
    const running = items.filter((x) => x.state === "running").length;
    fill(root, "chaos-count", running ? `${fmtInt(running)} running.` : "None running.");
    fill(root, "chaos-updated", `Updated ${fmtTime(Date.now(), false)}`);
  };
  const row = (x) => {
    const ended = x.ended_at
      ? [h("span", { class: "muted small" }, "ended "), fmtTime(x.ended_at)]
      : [h("span", { class: "muted small" }, "until "), fmtTime(x.ends_at)];
    const stop = admin && x.state === "running" ? actionButton({
      action: "stop", label: "Stop", confirm: "Confirm stop", name: `${x.name} (${x.id})`,
      run: async () => {
        await api("DELETE", `/api/v1/experiments/${encodeURIComponent(x.id)}`);
        await load();
      },
    }) : null;
    return h("tr", { "data-testid": "experiment-row", "data-experiment-id": x.id, "data-state": x.state },
      h("th", { scope: "row" }, x.name, h("code", { class: "line small nowrap" }, x.id)),
      h("td", {}, x.route),
      // The Stop button beside the state: in view on a phone, where the table scrolls.
      h("td", { class: "state" }, h("span", { "data-testid": "experiment-state" }, stateBadge(x.state)),
        x.reason ? h("span", { class: "line small", "data-testid": "experiment-reason" }, x.reason) : null,
        stop ? h("span", { class: "line actions" }, stop) : null),
      h("td", { class: "fault" }, faultText(x.fault), h("span", { class: "line muted small" }, `for ${x.duration}`)),
      h("td", {}, guardText(x.abort_if)),
      h("td", {}, fmtTime(x.started_at)),
      h("td", {}, ended),
      h("td", { class: "report", "data-testid": "experiment-report" }));
  };

  const form = admin ? startForm(() => load()) : null;
  const choices = async () => {
    const [routes, slos] = await Promise.allSettled([get("/api/v1/routes"), get("/api/v1/slos")]);
    const failed = [routes, slos].find((r) => r.status === "rejected");
    fill(root, "chaos-form-error", failed ? alertBox(failed.reason) : null);
    if (failed) ticks = 0;
    form.choices(
      routes.status === "fulfilled" ? (routes.value.routes || []).map((r) => r.name).filter((n) => n) : null,
      slos.status === "fulfilled" ? (slos.value.slos || []).map((s) => s.name) : null,
    );
  };

  const role = ctx.who ? ctx.who.role.replace("_", " ") : "unknown";
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, title),
      h("p", { class: "muted" }, admin ? `Signed in as ${role}.` : `Signed in as a ${role}: read only (starting and stopping experiments needs an admin).`),
      h("p", { class: "muted", id: "chaos-updated" })),
    form ? section("chaos-start", "Start an experiment",
      h("p", { class: "muted small" }, "Its fault replaces the route's own for the duration, on live traffic. Start small, guard on the SLO users feel, and have the Stop button ready (docs/chaos.md)."),
      h("div", { id: "chaos-form-error" }), form.form) : null,
    section("chaos-list", "Experiments", h("div", { id: "chaos-error" }), h("p", { class: "muted small", id: "chaos-count" }), list.el),
  );
  return {
    async refresh() {
      await Promise.all([load(), form && ticks++ % 6 === 0 ? choices() : null]);
    },
  };
}
