// The API key in the browser, shared by /dashboard and /docs (same origin, same tab).
//
// With MONOLITH_API_KEY set on the server, every data route needs "Authorization: Bearer KEY".
// The pages themselves hold no data; they ask for the key once, keep it in sessionStorage
// (gone when the tab closes, never sent anywhere but this server) and send it on every fetch.
"use strict";

const MonolithAuth = (() => {
  const STORAGE = "monolith.apiKey";

  function get() {
    try { return sessionStorage.getItem(STORAGE) || ""; } catch (e) { return ""; }
  }
  function set(key) {
    try { sessionStorage.setItem(STORAGE, key); } catch (e) { /* storage disabled: key lives per page */ }
  }
  function clear() {
    try { sessionStorage.removeItem(STORAGE); } catch (e) { /* nothing stored */ }
  }
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = get();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  class Unauthorized extends Error {}

  // fetch() on this server with the key; a 401 becomes Unauthorized (the caller asks for the key).
  async function authFetch(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    opts.credentials = "same-origin";
    const resp = await fetch(path, opts);
    if (resp.status === 401) {
      let detail = "this server needs its API key";
      try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Unauthorized(detail);
    }
    return resp;
  }

  // The key form in `box`: shows `message`, stores the key entered and calls onKey().
  function showForm(box, message, onKey) {
    box.hidden = false;
    box.replaceChildren();
    const form = document.createElement("form");
    form.id = "key-form";
    const label = document.createElement("label");
    label.textContent = "API key (MONOLITH_API_KEY): ";
    const input = document.createElement("input");
    input.type = "password";
    input.id = "api-key";
    input.autocomplete = "off";
    input.required = true;
    label.append(input);
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Use key";
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = message + " — the key is kept in this tab's session storage only.";
    form.append(label, button, note);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      set(input.value.trim());
      box.hidden = true;
      box.replaceChildren();
      onKey();
    });
    box.append(form);
    input.focus();
  }

  return { get, set, clear, headers, authFetch, showForm, Unauthorized };
})();
