// The page at /: sends photos to the service's public API and draws what it
// answers. Plain JavaScript with no dependency; every call goes to this
// page's own origin (the Content-Security-Policy allows nothing else).
"use strict";

const KEY_STORAGE = "vision-api-key";
const TOP_K = 5;
const NO_FACE = "/problems/no-face";
const OVERLOADED = "/problems/overloaded";
const BUSY_ATTEMPTS = 3;

const byId = (id) => document.getElementById(id);

// Where an API key is asked for and the call waiting for it.
let retryAfterKey = null;
// Each new action bumps this; answers to an older action are dropped.
let currentAction = 0;
// Object URLs of the photos shown, by <img> id, released when replaced.
const shownPhotos = new Map();
// The two photos of the verify view, by input id.
const verifyFiles = new Map();

class ApiError extends Error {
  constructor(status, problem, retryAfter = 0) {
    super(problem.detail || `The service answered ${status}.`);
    this.status = status;
    this.type = problem.type || "";
    this.retryAfter = retryAfter;
  }
}

// API calls ----------------------------------------------------------------

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage switched off: the key is asked for each time
  }
}

async function post(path, form) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await postOnce(path, form);
    } catch (error) {
      // A busy worker asks to be called again shortly; the service has no
      // queue of its own beyond that.
      const busy = error instanceof ApiError && error.type === OVERLOADED;
      if (!busy || attempt === BUSY_ATTEMPTS) throw error;
      await sleep(1000 * Math.min(error.retryAfter || 1, 5));
    }
  }
}

async function postOnce(path, form) {
  const headers = {};
  const key = storedKey();
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(path, { method: "POST", body: form, headers });
  } catch {
    throw new ApiError(0, { detail: "The service could not be reached." });
  }
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : {};
  if (!response.ok) {
    const retryAfter = Number(response.headers.get("Retry-After")) || 0;
    throw new ApiError(response.status, body, retryAfter);
  }
  return body;
}

function sleep(milliseconds) {
  return new Promise((resolve) => setTimeout(resolve, milliseconds));
}

function imageForm(fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  return form;
}

// Status, errors and the key -------------------------------------------------

function setBusy(message) {
  document.body.classList.toggle("busy", Boolean(message));
  byId("main").setAttribute("aria-busy", message ? "true" : "false");
  byId("status").textContent = message || "";
}

function showError(message) {
  const error = byId("error");
  error.textContent = message || "";
  error.hidden = !message;
}

function askForKey(error, retry) {
  retryAfterKey = retry;
  const form = byId("key-form");
  form.hidden = false;
  showError(error.message);
  byId("key-input").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = byId("key-input").value.trim();
  if (!key) return;
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch {
    showError("This browser does not let the page keep the key.");
    return;
  }
  byId("key-input").value = "";
  byId("key-form").hidden = true;
  showError("");
  const retry = retryAfterKey;
  retryAfterKey = null;
  if (retry) retry();
}

// Runs one action: busy while it lasts, its error shown, a 401 turned into a
// request for the key after which the action runs again.
async function run(message, action) {
  const actionId = ++currentAction;
  const isCurrent = () => actionId === currentAction;
  showError("");
  setBusy(message);
  try {
    await action(isCurrent);
  } catch (error) {
    if (!isCurrent()) return;
    if (error instanceof ApiError && error.status === 401) {
      askForKey(error, () => run(message, action));
    } else {
      showError(error.message);
    }
  } finally {
    if (isCurrent()) setBusy("");
  }
}

// Photos ----------------------------------------------------------------------

async function showPhoto(img, file) {
  const previous = shownPhotos.get(img.id);
  if (previous) URL.revokeObjectURL(previous);
  const url = URL.createObjectURL(file);
  shownPhotos.set(img.id, url);
  img.src = url;
  img.alt = `The photo ${file.name}`;
  try {
    await img.decode();
  } catch {
    throw new ApiError(0, { detail: `${file.name} cannot be shown as an image.` });
  }
}

function clearBoxes(layer) {
  layer.replaceChildren();
}

function percent(value, total) {
  return `${(100 * value) / total}%`;
}

// Draws ``box`` (pixels of an image ``width`` x ``height``) on ``layer``,
// which covers the image at whatever size it is shown.
function drawBox(layer, box, width, height, label) {
  const element = document.createElement("div");
  element.className = "face-box";
  element.style.left = percent(box.x, width);
  element.style.top = percent(box.y, height);
  element.style.width = percent(box.width, width);
  element.style.height = percent(box.height, height);
  if (label) {
    const tag = document.createElement("span");
    tag.className = "face-label";
    tag.textContent = label;
    element.append(tag);
  }
  layer.append(element);
}

function fileOf(input) {
  const file = input.files && input.files[0];
  if (file && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image.`);
    return null;
  }
  return file || null;
}

// The photo view ----------------------------------------------------------------

function renderClasses(predictions) {
  const list = byId("classes");
  list.replaceChildren();
  for (const prediction of predictions) {
    const share = `${(100 * prediction.probability).toFixed(1)} %`;
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "class-name";
    name.textContent = prediction.label;
    const value = document.createElement("span");
    value.className = "class-probability";
    value.textContent = share;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${100 * prediction.probability}%`;
    bar.append(fill);
    item.append(name, value, bar);
    list.append(item);
  }
}

function ageAndGender(face) {
  const parts = [];
  if (face.age) parts.push(String(Math.round(face.age.years)));
  if (face.gender) parts.push(face.gender.label);
  return parts.join(", ");
}

function describeFace(face, index) {
  const parts = [`Face ${index + 1}:`];
  if (face.age) {
    const [low, high] = face.age.range.map(Math.round);
    parts.push(`looks ${Math.round(face.age.years)} (${low} to ${high}),`);
  }
  if (face.gender) {
    const sure = (100 * face.gender.probability).toFixed(0);
    parts.push(`${face.gender.label} (${sure} % sure)`);
  }
  return parts.join(" ");
}

function renderFaces(result) {
  const layer = byId("face-boxes");
  const list = byId("faces");
  clearBoxes(layer);
  list.replaceChildren();
  const faces = result ? result.faces : [];
  for (const [index, face] of faces.entries()) {
    drawBox(layer, face.box, result.width, result.height, ageAndGender(face));
    const item = document.createElement("li");
    item.textContent = describeFace(face, index);
    list.append(item);
  }
  const count = faces.length;
  byId("faces-summary").textContent =
    count === 0 ? "No face found." : count === 1 ? "One face." : `${count} faces.`;
}

// A photo without a face is an answer here, not an error.
async function detectFaces(file) {
  try {
    const answer = await post(
      "/v1/faces/detect?attributes=age,gender",
      imageForm({ image: file }),
    );
    return answer.results[0];
  } catch (error) {
    if (error instanceof ApiError && error.type === NO_FACE) return null;
    throw error;
  }
}

async function lookAtPhoto(file) {
  const img = byId("photo");
  await run("Looking at the photo…", async (isCurrent) => {
    byId("photo-results").hidden = false;
    renderClasses([]);
    renderFaces(null);
    byId("faces-summary").textContent = "";
    byId("photo-caption").textContent = file.name;
    await showPhoto(img, file);
    // One call after the other: sent together to a worker that runs one
    // inference at a time, the second would wait and might be turned away.
    const classes = await post(
      `/v1/classify?top_k=${TOP_K}`,
      imageForm({ image: file }),
    );
    if (!isCurrent()) return;
    renderClasses(classes.results[0].predictions);
    const faces = await detectFaces(file);
    if (!isCurrent()) return;
    renderFaces(faces);
  });
}

// The verify view -----------------------------------------------------------------

function verifySide(inputId) {
  const side = byId(inputId).closest(".side");
  return {
    frame: side.querySelector(".frame"),
    img: side.querySelector("img"),
    layer: side.querySelector(".face-boxes"),
  };
}

async function compareFaces() {
  const first = verifyFiles.get("verify-input-1");
  const second = verifyFiles.get("verify-input-2");
  byId("verdict").hidden = true;
  if (!first || !second) return;
  await run("Comparing the faces…", async (isCurrent) => {
    const answer = await post(
      "/v1/faces/verify",
      imageForm({ image1: first, image2: second }),
    );
    if (!isCurrent()) return;
    for (const [index, face] of answer.faces.entries()) {
      const { img, layer } = verifySide(`verify-input-${index + 1}`);
      clearBoxes(layer);
      if (face.box) {
        drawBox(layer, face.box, img.naturalWidth, img.naturalHeight, "");
      }
    }
    const verdict = byId("verdict");
    verdict.classList.toggle("same", answer.verified);
    byId("verdict-text").textContent = answer.verified
      ? "The same person."
      : "Not the same person.";
    byId("verdict-numbers").textContent =
      `Distance ${answer.distance.toFixed(3)}; the service calls two faces ` +
      `one person at ${answer.threshold} or less. ` +
      `Similarity ${answer.similarity.toFixed(3)}.`;
    verdict.hidden = false;
  });
}

async function pickForVerify(input, file) {
  const { frame, img, layer } = verifySide(input.id);
  verifyFiles.delete(input.id);
  clearBoxes(layer);
  frame.hidden = false;
  try {
    await showPhoto(img, file);
  } catch (error) {
    frame.hidden = true;
    showError(error.message);
    return;
  }
  verifyFiles.set(input.id, file);
  await compareFaces();
}

// Wiring ---------------------------------------------------------------------------

function onFile(input, file) {
  if (!file) return;
  if (input.id === "photo-input") {
    lookAtPhoto(file);
  } else {
    pickForVerify(input, file);
  }
}

function wireDropZone(zone) {
  const input = byId(zone.dataset.input);
  input.addEventListener("change", () => onFile(input, fileOf(input)));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (!files || files.length === 0) return;
    input.files = files;
    onFile(input, fileOf(input));
  });
}

function showView(id) {
  for (const button of document.querySelectorAll(".view-switch")) {
    const chosen = button.dataset.view === id;
    button.setAttribute("aria-pressed", String(chosen));
    byId(button.dataset.view).hidden = !chosen;
  }
}

function start() {
  for (const zone of document.querySelectorAll(".drop-zone")) wireDropZone(zone);
  for (const button of document.querySelectorAll(".view-switch")) {
    button.addEventListener("click", () => {
      const view = button.dataset.view;
      showView(view);
      const address = view === "verify-view" ? "#verify" : location.pathname;
      history.replaceState(null, "", address);
    });
  }
  byId("key-form").addEventListener("submit", useKey);
  // A photo dropped beside a drop zone would otherwise replace the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  if (location.hash === "#verify") showView("verify-view");
}

start();
