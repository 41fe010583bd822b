// The management panels besides keys: consumers, teams, subscriptions (approve, reject) and
// the service catalog. Each panel is {el, update(result)}, `result` a settled API call;
// `reload(names)` reads the named lists again after a change.

import { api } from "./api.js";
import { h, alertBox, section, table, syncRows, fmtTime } from "./dom.js";
import { createForm, actionButton, setOptions } from "./forms.js";

const NAME = "[A-Za-z0-9._\\-]{1,64}";

function emptyRow(text, cols) {
  return () => h("tr", {}, h("td", { colspan: cols, class: "muted" }, text));
}

// Shows a failed read as an alert in `box`, or clears it and hands the value on.
function settle(box, result, use) {
  if (result.status === "rejected") {
    box.replaceChildren(alertBox(result.reason));
    return;
  }
  box.replaceChildren();
  use(result.value);
}

export function consumersPanel(can, reload, teamChoices) {
  const list = table("Consumers", ["Consumer", "Team", "Description", "Source", "Created"]);
  const errors = h("div");
  let teamSelect = null;
  const form = can.write ? createForm({
    id: "new-consumer",
    legend: "New consumer",
    button: "Create consumer",
    fields: [
      { name: "name", label: "Name", required: true, pattern: NAME, placeholder: "mobile-app" },
      { name: "team", label: "Team", type: "select", options: [], blank: can.admin ? "(no team)" : null },
      { name: "description", label: "Description" },
    ],
    submit: async (values) => {
      await api("POST", "/api/v1/consumers", values);
      await reload(["consumers"]);
    },
  }) : null;
  if (form) teamSelect = form.querySelector("select[name=team]");
  const row = (c) => h("tr", { "data-testid": "consumer-row", "data-consumer": c.name },
    h("th", { scope: "row" }, c.name),
    h("td", {}, c.team || "–"),
    h("td", {}, c.description || ""),
    h("td", {}, c.source || "api"),
    h("td", {}, fmtTime(c.created_at)));
  return {
    el: section("consumers", "Consumers", errors, form, list.el),
    update(result) {
      settle(errors, result, (v) => syncRows(list.body, v.consumers || [], (c) => c.name, row, emptyRow("No consumer yet.", 5)));
    },
    teams(names) {
      if (teamSelect) setOptions(teamSelect, teamChoices(names), can.admin ? "(no team)" : null);
    },
  };
}

export function teamsPanel(can, reload) {
  const list = table("Teams", ["Team", "Description", "Budget", "Created"]);
  const errors = h("div");
  const form = can.admin ? createForm({
    id: "new-team",
    legend: "New team",
    button: "Create team",
    fields: [
      { name: "name", label: "Name", required: true, pattern: NAME, placeholder: "payments" },
      { name: "description", label: "Description" },
    ],
    submit: async (values) => {
      await api("POST", "/api/v1/teams", values);
      await reload(["teams"]);
    },
  }) : null;
  const row = (t) => h("tr", { "data-testid": "team-row", "data-team": t.name },
    h("th", { scope: "row" }, t.name),
    h("td", {}, t.description || ""),
    h("td", {}, t.budget ? `$${t.budget.usd} per ${t.budget.per}` : "–"),
    h("td", {}, fmtTime(t.created_at)));
  return {
    el: section("teams", "Teams", errors, form, list.el),
    update(result) {
      settle(errors, result, (v) => syncRows(list.body, v.teams || [], (t) => t.name, row, emptyRow("No team yet.", 4)));
    },
  };
}

export function subscriptionsPanel(can, reload) {
  const list = table("Subscriptions", ["Consumer", "Service", "State", "Asked", "Decided", "Actions"]);
  const errors = h("div");
  const decide = (s, verdict) => async () => {
    await api("POST", `/api/v1/subscriptions/${encodeURIComponent(s.id)}/${verdict}`, {});
    await reload(["subscriptions"]);
  };
  const row = (s) => {
    const actions = [];
    if (can.write && s.state === "pending") {
      actions.push(actionButton({ action: "approve", label: "Approve", name: `${s.consumer} → ${s.service}`, run: decide(s, "approve") }));
    }
    if (can.write && (s.state === "pending" || s.state === "approved")) {
      actions.push(actionButton({ action: "reject", label: "Reject", name: `${s.consumer} → ${s.service}`, confirm: s.state === "approved" ? "Confirm reject" : null, run: decide(s, "reject") }));
    }
    const ok = s.state === "approved";
    return h("tr", { "data-testid": "subscription-row", "data-subscription-id": s.id, "data-state": s.state },
      h("th", { scope: "row" }, s.consumer),
      h("td", {}, s.service),
      h("td", { "data-testid": "subscription-state" }, h("span", { class: `badge ${ok ? "ok" : s.state === "pending" ? "warn" : "bad"}` }, s.state)),
      h("td", {}, fmtTime(s.created_at)),
      h("td", {}, s.decided_at ? `${fmtTime(s.decided_at)}${s.reason ? ` (${s.reason})` : ""}` : "–"),
      h("td", { class: "actions" }, actions));
  };
  return {
    el: section("subscriptions", "Subscriptions", errors, list.el),
    update(result) {
      settle(errors, result, (v) => {
        // Pending first, then newest first.
        const items = [...(v.subscriptions || [])].sort((a, b) =>
          (a.state === "pending" ? 0 : 1) - (b.state === "pending" ? 0 : 1)
          || String(b.created_at).localeCompare(String(a.created_at)));
        syncRows(list.body, items, (s) => s.id, row, emptyRow("No subscription yet.", 6));
      });
    },
  };
}

export function catalogPanel() {
  const list = table("Service catalog", ["Service", "Team", "Approval", "Versions", "Description"]);
  const errors = h("div");
  const versions = (svc) => (svc.versions || []).map((v) =>
    h("span", { class: `badge ${v.state === "published" ? "ok" : "warn"}` }, `${v.version || v.route}: ${v.state}`));
  const row = (svc) => h("tr", { "data-testid": "service-row", "data-service": svc.service },
    h("th", { scope: "row" }, svc.service),
    h("td", {}, svc.team || "–"),
    h("td", {}, svc.approval),
    h("td", {}, versions(svc)),
    h("td", {}, svc.description || ""));
  return {
    el: section("catalog", "Service catalog", errors, list.el),
    update(result) {
      settle(errors, result, (v) => syncRows(list.body, v.services || [], (svc) => svc.service, row, emptyRow("No published service.", 5)));
    },
  };
}
