// The servefleet dashboard: a live grid of endpoints × regions, kept up to date from
// the API's watch stream (GET v1/watch, server-sent events).
//
// EventSource cannot send an Authorization header, so the stream is read with fetch()
// and parsed here; it resumes with Last-Event-ID and lists again after `compacted`.
// Every value from the API is someone's input (names, images, messages): it reaches
// the page only as text (textContent, text nodes, attribute values), never as HTML.
"use strict";

const TOKEN_KEY = "servefleet.token";
const RETRY_FIRST_MS = 1000;
const RETRY_LAST_MS = 15000;
const HISTORY_KEPT = 50;
const ROLES_THAT_DEPLOY = new Set(["deployer", "admin"]);
const ASKED = {
  stop: "Stop {name}? Every replica stops and its route is removed.",
  start: "Start {name} again?",
  promote: "Promote the canary of {name}? It becomes the primary version everywhere.",
  rollback: "Roll back the canary of {name}? All traffic goes to the primary version.",
  scale: "Scale {name} to {replicas} replicas?",
};
// A status change worth a line of history; a heartbeat alone is not one.
const TRACKED = [
  "state", "observed_generation", "replicas_ready", "replicas_desired",
  "canary_ready", "canary_desired", "routed", "message",
];

const page = {
  token: sessionStorage.getItem(TOKEN_KEY),
  endpoints: new Map(), // name -> declaration, as GET v1/endpoints lists it
  statuses: new Map(), // "endpoint region" -> the latest RegionStatus
  history: new Map(), // "endpoint region" -> the RegionStatus changes seen, oldest first
  lastEventId: null,
  selected: null,
  stream: null, // the AbortController of the open watch
  retryMs: RETRY_FIRST_MS,
  renderQueued: false,
  session: 0, // +1 on each sign-in and sign-out: an older watch loop then stops
};

class Unauthorized extends Error {}

const $ = (id) => document.getElementById(id);
const keyOf = (endpoint, region) => `${endpoint} ${region}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// An element with attributes and children; strings become text nodes, never markup.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function utc(iso) {
  return iso ? `${new Date(iso).toISOString().slice(0, 19).replace("T", " ")} UTC` : "";
}

// ---- talking to the API ----

async function api(method, path, { body, headers = {}, signal } = {}) {
  const sent = { Authorization: `Bearer ${page.token}`, ...headers };
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers: sent, signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    forgetToken("The API refused the token: it is unknown or revoked.");
    throw new Unauthorized();
  }
  return response;
}

async function refusal(response) {
  try {
    return (await response.json()).message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

// ---- what the page knows ----

function forget(name) {
  for (const map of [page.statuses, page.history]) {
    for (const key of map.keys()) if (key.startsWith(`${name} `)) map.delete(key);
  }
}

async function relist() {
  const response = await api("GET", "v1/endpoints");
  if (!response.ok) throw new Error(await refusal(response));
  page.endpoints = new Map((await response.json()).map((doc) => [doc.metadata.name, doc]));
  for (const key of [...page.statuses.keys()]) {
    const name = key.split(" ")[0];
    if (!page.endpoints.has(name)) forget(name);
  }
  queueRender();
}

function noteStatus(status) {
  const key = keyOf(status.endpoint, status.region);
  page.statuses.set(key, status);
  const seen = page.history.get(key) ?? [];
  const last = seen.at(-1);
  if (last && TRACKED.every((field) => last[field] === status[field])) seen[seen.length - 1] = status;
  else seen.push(status);
  page.history.set(key, seen.slice(-HISTORY_KEPT));
}

// One event of the stream; returns why the stream is ending (compacted: "" to
// reconnect at once), or undefined while it goes on.
function handle(event, data, id) {
  if (id !== undefined) page.lastEventId = id;
  queueRender();
  switch (event) {
    case "endpoint":
      page.endpoints.set(data.metadata.name, data);
      return undefined;
    case "purged":
      page.endpoints.delete(data.name);
      forget(data.name);
      return undefined;
    case "status":
      noteStatus(data);
      return undefined;
    case "compacted":
      page.lastEventId = null; // list again, then watch from now
      return "";
    case "unavailable":
      return data.message;
    default:
      return undefined;
  }
}

// ---- the watch stream ----

// Reads one connection to its end; returns why it ended ("" to reconnect at once).
async function follow() {
  page.stream = new AbortController();
  const headers = { Accept: "text/event-stream" };
  if (page.lastEventId !== null) headers["Last-Event-ID"] = page.lastEventId;
  const response = await api("GET", "v1/watch", { headers, signal: page.stream.signal });
  if (response.status === 422) {
    page.lastEventId = null; // the server does not know our position: start again
    return "";
  }
  if (!response.ok) return await refusal(response);
  setStream("live", "live");
  page.retryMs = RETRY_FIRST_MS;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let fields = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return "the server closed the stream";
    buffer += value;
    // A lone "\r" at the end may be the first half of "\r\n": wait for the rest.
    for (let end = buffer.search(/\r\n|\r(?!$)|\n/); end >= 0; end = buffer.search(/\r\n|\r(?!$)|\n/)) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (fields.data !== undefined) {
          const ending = handle(fields.event ?? "message", JSON.parse(fields.data), fields.id);
          if (ending !== undefined) {
            page.stream.abort();
            return ending;
          }
        }
        fields = {};
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        fields[name] = name === "data" && fields.data !== undefined ? `${fields.data}\n${value}` : value;
      }
    }
  }
}

async function watchForever() {
  const session = page.session;
  while (page.session === session) {
    let why;
    try {
      if (page.lastEventId === null) await relist();
      why = await follow();
    } catch (error) {
      if (error instanceof Unauthorized || page.session !== session) return;
      why = error.message;
    }
    if (why === "") continue;
    const seconds = page.retryMs / 1000;
    setStream("down", `stream down (${why}): reconnecting in ${seconds} s`);
    await sleep(page.retryMs);
    if (page.session !== session) return;
    page.retryMs = Math.min(page.retryMs * 2, RETRY_LAST_MS);
    setStream("connecting", "reconnecting…");
  }
}

function setStream(state, text) {
  $("stream").dataset.state = state;
  $("stream").textContent = text;
}

// ---- drawing ----

function queueRender() {
  if (page.renderQueued) return;
  page.renderQueued = true;
  requestAnimationFrame(() => {
    page.renderQueued = false;
    render();
  });
}

function render() {
  const docs = [...page.endpoints.values()].sort((a, b) =>
    a.metadata.name < b.metadata.name ? -1 : 1);
  const regions = [...new Set(docs.flatMap((doc) => doc.regions ?? []))].sort();
  $("grid").tHead.replaceChildren(el("tr", {}, el("th", {}, "endpoint"),
    ...regions.map((region) => el("th", {}, region))));
  $("grid").tBodies[0].replaceChildren(...docs.map((doc) => row(doc, regions)));
  $("empty").hidden = docs.length > 0;
  renderDetails();
}

function row(doc, regions) {
  const name = doc.metadata.name;
  const open = el("button", { type: "button", class: "endpoint" }, name);
  open.addEventListener("click", () => select(name));
  const head = el("th", { scope: "row" }, open, el("div", { class: "desired" }, doc.state ?? ""));
  return el("tr", { "data-endpoint": name }, head, ...regions.map((region) => cell(doc, region)));
}

function cell(doc, region) {
  const name = doc.metadata.name;
  const where = { "data-endpoint": name, "data-region": region };
  if (!(doc.regions ?? []).includes(region)) return el("td", { ...where, class: "untargeted" }, "");
  const status = page.statuses.get(keyOf(name, region)) ?? { state: "pending" };
  const spec = doc.spec;
  const lines = [
    el("div", { class: "state", "data-state": status.state }, status.state),
    el("div", { class: "replicas" },
      `${status.replicas_ready ?? 0}/${status.replicas_desired ?? spec.replicas} ready`),
    el("div", { class: "image" }, spec.region_images?.[region] ?? spec.image ?? ""),
  ];
  if (spec.canary) {
    lines.push(el("div", { class: "canary" }, `canary ${spec.canary.weight}%, ` +
      `${status.canary_ready ?? 0}/${status.canary_desired ?? spec.canary.replicas} ready`));
  }
  lines.push(el("div", { class: "routed", "data-routed": String(Boolean(status.routed)) },
    status.routed ? "routed" : "not routed"));
  if (status.message) lines.push(el("div", { class: "message", title: status.message }, status.message));
  if (status.last_transition) {
    lines.push(el("div", { class: "changed", title: status.last_transition,
      "data-since": status.last_transition }, `changed ${ago(status.last_transition)}`));
  }
  return el("td", where, ...lines);
}

function renderDetails() {
  const doc = page.endpoints.get(page.selected);
  $("details").hidden = doc === undefined;
  if (doc === undefined) return;
  const { name, generation, revision } = doc.metadata;
  $("details-name").textContent = `${name}: ${doc.state}, generation ${generation}, revision ${revision}`;
  const declaration = JSON.stringify(doc, null, 2);
  // Set only when it changed, so a selection in it survives other endpoints' events.
  if ($("declaration").textContent !== declaration) $("declaration").textContent = declaration;
  $("history").replaceChildren(...(doc.regions ?? []).map((region) => historyOf(name, region)));
}

function historyOf(name, region) {
  const seen = [...(page.history.get(keyOf(name, region)) ?? [])].reverse();
  const rows = seen.map((status) => el("tr", {},
    el("td", { title: ago(status.last_transition) }, utc(status.last_transition)),
    el("td", { "data-state": status.state }, status.state),
    el("td", {}, `${status.replicas_ready}/${status.replicas_desired}`),
    el("td", {}, status.canary_desired ? `${status.canary_ready}/${status.canary_desired}` : ""),
    el("td", {}, status.routed ? "routed" : "not routed"),
    el("td", {}, status.message)));
  const table = seen.length === 0
    ? el("p", { class: "hint" }, "No report from this region yet.")
    : el("table", { class: "history" },
      el("thead", {}, el("tr", {}, ...["changed", "state", "ready", "canary", "route", "message"]
        .map((heading) => el("th", {}, heading)))),
      el("tbody", {}, ...rows));
  return el("section", { "data-region": region }, el("h4", {}, region), table);
}

function select(name) {
  page.selected = name;
  $("replicas").value = page.endpoints.get(name)?.spec.replicas ?? "";
  $("action-result").textContent = "";
  renderDetails();
}

// ---- actions (deployers and admins) ----

function confirmed(question) {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function act(verb) {
  const doc = page.endpoints.get(page.selected);
  if (doc === undefined) return;
  const name = doc.metadata.name;
  if (verb === "scale" && !$("replicas").reportValidity()) return;
  const body = verb === "scale" ? { replicas: Number($("replicas").value) } : undefined;
  const question = ASKED[verb].replace("{name}", name).replace("{replicas}", body?.replicas);
  if (!(await confirmed(question))) return;
  $("action-result").textContent = `${verb}: sending…`;
  try {
    // If-Match: only if nobody changed the endpoint since this page saw it.
    const response = await api("POST", `v1/endpoints/${encodeURIComponent(name)}/${verb}`,
      { body, headers: { "If-Match": `"${doc.metadata.revision}"` } });
    $("action-result").textContent = response.ok
      ? `${verb}: done`
      : `${verb} refused: ${await refusal(response)}`;
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("action-result").textContent = `${verb} failed: ${error.message}`;
  }
}

// ---- the token ----

function forgetToken(why) {
  page.token = null;
  page.session += 1;
  sessionStorage.removeItem(TOKEN_KEY);
  page.stream?.abort();
  page.endpoints = new Map();
  page.statuses = new Map();
  page.history = new Map();
  page.lastEventId = null;
  page.selected = null;
  $("fleet").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why;
  $("who").textContent = "";
  setStream("off", "not connected");
}

async function start() {
  let me;
  try {
    const response = await api("GET", "v1/whoami");
    if (!response.ok) throw new Error(await refusal(response));
    me = await response.json();
  } catch (error) {
    if (!(error instanceof Unauthorized)) {
      $("login").hidden = false;
      $("login-error").textContent = `Cannot reach the API: ${error.message}`;
    }
    return;
  }
  $("who").textContent = `${me.name} (${me.role})`;
  $("actions").hidden = !ROLES_THAT_DEPLOY.has(me.role);
  $("login").hidden = true;
  $("login-error").textContent = "";
  $("fleet").hidden = false;
  $("sign-out").hidden = false;
  page.session += 1;
  setStream("connecting", "connecting…");
  render();
  watchForever();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    page.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, page.token);
    start();
  });
  $("sign-out").addEventListener("click", () => forgetToken(""));
  for (const button of document.querySelectorAll("#actions button[data-verb]")) {
    button.addEventListener("click", () => act(button.dataset.verb));
  }
  for (const button of document.querySelectorAll("#confirm button")) {
    button.addEventListener("click", () => $("confirm").close(button.value));
  }
  setInterval(() => {
    for (const node of document.querySelectorAll("[data-since]")) {
      node.textContent = `changed ${ago(node.dataset.since)}`;
    }
  }, 5000);
  if (page.token) start();
  else $("login").hidden = false;
});
