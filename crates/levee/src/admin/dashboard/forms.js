// Forms and action buttons of the management pages: every field labelled, the API's refusal
// shown as an alert beside the control, and what a role may do.

import { h, alertBox } from "./dom.js";

// What the signed-in token's role may change (the API checks again and has the last word).
export function abilities(who) {
  const role = who && who.role;
  return {
    // Consumers, keys, subscriptions: an admin, or a team admin within its team.
    write: role === "admin" || role === "team_admin",
    // Teams: an admin only.
    admin: role === "admin",
  };
}

let fieldCount = 0;

// A labelled field: {name, label, type: "text" | "select", options, required, placeholder}.
function field(spec) {
  fieldCount += 1;
  const id = `f-${spec.name}-${fieldCount}`;
  const control = spec.type === "select"
    ? h("select", { id, name: spec.name, required: spec.required })
    : h("input", {
      id, name: spec.name, type: "text", required: spec.required, placeholder: spec.placeholder,
      autocomplete: "off", spellcheck: "false", pattern: spec.pattern,
    });
  if (spec.type === "select") setOptions(control, spec.options || [], spec.blank);
  return h("div", { class: "field" }, h("label", { for: id }, spec.label), control);
}

// Sets a select's options (values or {value, label}), keeping the selected one if it stays.
export function setOptions(select, options, blank) {
  const chosen = select.value;
  const list = options.map((o) => (typeof o === "object" ? o : { value: o, label: o }));
  const same = select.options.length === list.length + (blank ? 1 : 0)
    && list.every((o, i) => select.options[i + (blank ? 1 : 0)].value === o.value);
  if (same) return;
  const items = list.map((o) => h("option", { value: o.value }, o.label));
  if (blank) items.unshift(h("option", { value: "" }, blank));
  select.replaceChildren(...items);
  if (list.some((o) => o.value === chosen) || (blank && chosen === "")) select.value = chosen;
}

// A create form. `submit(values)` returns a promise; its rejection's message is shown.
export function createForm({ id, legend, fields, button, submit }) {
  const status = h("div", { class: "form-status" });
  const submitButton = h("button", { type: "submit" }, button);
  const form = h("form", { id, class: "create", "data-testid": "create-form", novalidate: false },
    h("fieldset", {}, h("legend", {}, legend), fields.map(field), submitButton), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = {};
    for (const [k, v] of new FormData(form).entries()) {
      const text = String(v).trim();
      if (text !== "") values[k] = text;
    }
    submitButton.disabled = true;
    status.replaceChildren();
    try {
      await submit(values, form);
      form.reset();
    } catch (error) {
      status.replaceChildren(alertBox(error));
    } finally {
      submitButton.disabled = false;
    }
  });
  return form;
}

// A button acting on one object: `run()` returns a promise; a refusal is shown beside it.
// With `confirm`, the first press asks again and only a second press within 5 s acts.
export function actionButton({ action, label, confirm, run, name }) {
  const button = h("button", { type: "button", "data-action": action, class: `act ${action}`, "aria-label": `${label} ${name}` }, label);
  const status = h("span", { class: "act-status" });
  let armed = null;
  button.addEventListener("click", async () => {
    status.replaceChildren();
    if (confirm && !armed) {
      button.textContent = confirm;
      button.setAttribute("aria-label", `${confirm} ${name}`);
      button.classList.add("armed");
      armed = setTimeout(() => {
        armed = null;
        button.textContent = label;
        button.setAttribute("aria-label", `${label} ${name}`);
        button.classList.remove("armed");
      }, 5000);
      return;
    }
    if (armed) clearTimeout(armed);
    armed = null;
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      status.replaceChildren(alertBox(error));
      button.disabled = false;
      button.textContent = label;
      button.classList.remove("armed");
    }
  });
  return h("span", { class: "action" }, button, status);
}
