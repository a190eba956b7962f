// Vitrine demo search page: plain JavaScript over POST /v1/search (no build step).
// Image and/or text queries, filters, facet counts, a result grid, and "more like this".
// Opening a product counts as a view: it is sent to POST /v1/events under an opaque shopper id
// kept in localStorage, shown under "recently viewed", and GET /v1/recommendations?shopper=
// fills "you may also like".
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, mlt: null, seq: 0, recSeq: 0 };
const PAGE_SIZE = 48;
const SHOPPER_KEY = "vitrine-shopper";
const RECENT_KEY = "vitrine-recently-viewed";
const RECENT_MAX = 8;
const RECOMMENDED = 8;

function currentFilters() {
  const filters = {};
  const tags = $("filter-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) filters.tags_all = tags;
  if ($("filter-category").value) filters.category = $("filter-category").value;
  const min = $("filter-min-price").value;
  const max = $("filter-max-price").value;
  if (min !== "") filters.min_price = Number(min);
  if (max !== "") filters.max_price = Number(max);
  if ($("filter-in-stock").checked) filters.in_stock = true;
  return filters;
}

function buildRequest() {
  const request = { filters: currentFilters(), k: PAGE_SIZE, facets: true };
  if (state.mlt) {
    request.product_id = state.mlt.product_id;
    request.merchant_id = state.mlt.merchant_id;
    return request;
  }
  const text = $("query-text").value.trim();
  if (text) request.text = text;
  return request;
}

function errorText(body) {
  const detail = body && body.detail;
  if (!detail) return "search failed";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return detail.message || detail.reason || JSON.stringify(detail);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function search() {
  const seq = ++state.seq;
  const request = buildRequest();
  let init;
  if (state.image && !state.mlt) {
    const form = new FormData();
    form.append("image", state.image);
    form.append("request", JSON.stringify(request));
    init = { method: "POST", body: form };
  } else {
    init = {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    };
  }
  setStatus("Searching…");
  $("results").dataset.state = "loading";
  try {
    const response = await fetch("/v1/search", init);
    const body = await response.json();
    if (seq !== state.seq) return; // a newer search has started
    if (!response.ok) throw new Error(errorText(body));
    render(body);
  } catch (error) {
    if (seq !== state.seq) return;
    setStatus(error.message, true);
    $("results").replaceChildren();
    $("results").dataset.state = "error";
  }
}

function imageSrc(hit) {
  if (/^https?:\/\//i.test(hit.image_url || "")) return hit.image_url;
  return hit.image_sha256 ? `/v1/images/${hit.image_sha256}` : "";
}

function formatPrice(price, currency) {
  if (price === null || price === undefined) return "";
  try {
    if (currency) return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(price);
  } catch (_) { /* unknown currency code: plain number below */ }
  return price.toFixed(2);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: titles come from merchants
  return node;
}

function card(hit) {
  const node = element("article", "card");
  node.tabIndex = 0;
  node.dataset.productId = hit.product_id;
  node.dataset.merchantId = hit.merchant_id;
  node.dataset.category = hit.category || "";
  node.title = "Click for more like this";
  const img = element("img");
  img.src = imageSrc(hit);
  img.alt = hit.title;
  img.loading = "lazy";
  const body = element("div", "body");
  body.append(element("div", "title", hit.title));
  const meta = element("div", "meta");
  meta.append(element("span", "price", formatPrice(hit.price, hit.currency)));
  if (typeof hit.score === "number") meta.append(element("span", "score", `score ${hit.score.toFixed(4)}`));
  body.append(meta);
  const details = [hit.category, hit.merchant_id].filter(Boolean).join(" · ");
  body.append(element("div", "meta", details + (hit.in_stock === false ? " · out of stock" : "")));
  if (hit.tags && hit.tags.length) body.append(element("div", "tags", hit.tags.map((t) => `#${t}`).join(" ")));
  node.append(img, body);
  const open = () => moreLikeThis(hit);
  node.addEventListener("click", open);
  node.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return node;
}

function facetList(title, name, buckets, onPick, isActive) {
  const box = element("div", "facet");
  box.dataset.facet = name;
  box.append(element("h2", "", title));
  const list = element("ul");
  for (const bucket of buckets) {
    const item = element("li");
    const button = element("button");
    button.type = "button";
    button.dataset.value = String(bucket.value);
    button.append(element("span", "value", String(bucket.value)), element("span", "count", String(bucket.count)));
    if (isActive(bucket)) button.classList.add("active");
    button.addEventListener("click", () => onPick(bucket));
    item.append(button);
    list.append(item);
  }
  box.append(list);
  return box;
}

function selectedTags() {
  return $("filter-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
}

function renderFacets(facets) {
  const aside = $("facets");
  aside.replaceChildren();
  if (!facets) return;
  const nonEmpty = (name) => (facets[name] || []).filter((b) => b.count > 0);
  aside.append(facetList("Tags", "tags", nonEmpty("tags"), (b) => {
    const tags = selectedTags();
    const at = tags.indexOf(b.value);
    if (at >= 0) tags.splice(at, 1); else tags.push(b.value);
    $("filter-tags").value = tags.join(", ");
    search();
  }, (b) => selectedTags().includes(b.value)));
  aside.append(facetList("Category", "category", nonEmpty("category"), (b) => {
    $("filter-category").value = $("filter-category").value === b.value ? "" : b.value;
    search();
  }, (b) => $("filter-category").value === b.value));
  aside.append(facetList("Price", "price", nonEmpty("price"), (b) => {
    $("filter-min-price").value = b.from ?? "";
    $("filter-max-price").value = b.to ?? "";
    search();
  }, () => false));
  aside.append(facetList("Merchant", "merchant_id", nonEmpty("merchant_id"), () => {}, () => false));
  // keep the category choices in step with what the index holds
  const select = $("filter-category");
  const known = new Set([...select.options].map((o) => o.value));
  for (const bucket of nonEmpty("category")) {
    if (!known.has(bucket.value)) select.append(new Option(bucket.value, bucket.value));
  }
}

function render(body) {
  const hits = body.hits || [];
  $("results").replaceChildren(...hits.map(card));
  renderFacets(body.facets);
  const what = state.mlt ? "similar products" : `products (${body.shape} search)`;
  setStatus(`${body.total} ${what}${hits.length < body.total ? `, showing ${hits.length}` : ""}`);
  const warning = $("model-warning");
  const randomModel = /random-init/.test(body.model_id || "");
  warning.hidden = !randomModel;
  warning.textContent = randomModel
    ? `Model ${body.model_id} has random weights (no pretrained CLIP weights on this machine): ` +
      "image matches of the same or a near-identical photo are meaningful, semantic similarity is not."
    : "";
  $("results").dataset.shape = body.shape;
  $("results").dataset.state = "ready";
}

function shopperId() {
  let id = localStorage.getItem(SHOPPER_KEY);
  if (!id) { // random and opaque: nothing about the person
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = "s-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(SHOPPER_KEY, id);
  }
  return id;
}

function recentlyViewed() {
  try { return JSON.parse(localStorage.getItem(RECENT_KEY)) || []; } catch (_) { return []; }
}

function remember(hit) {
  const same = (h) => h.product_id === hit.product_id && h.merchant_id === hit.merchant_id;
  const keep = ["product_id", "merchant_id", "title", "price", "currency", "category",
    "image_url", "image_sha256", "in_stock"];
  const entry = Object.fromEntries(keep.map((k) => [k, hit[k]]));
  const recent = [entry, ...recentlyViewed().filter((h) => !same(h))].slice(0, RECENT_MAX);
  localStorage.setItem(RECENT_KEY, JSON.stringify(recent));
}

function renderHistory() {
  const recent = recentlyViewed();
  $("history").hidden = recent.length === 0;
  $("recent").replaceChildren(...recent.map(card));
}

async function loadRecommendations() {
  const seq = ++state.recSeq;
  const panel = $("recommended");
  panel.dataset.state = "loading";
  const params = new URLSearchParams({ shopper: shopperId(), k: String(RECOMMENDED) });
  try {
    const response = await fetch(`/v1/recommendations?${params}`);
    const body = await response.json();
    if (seq !== state.recSeq) return;
    if (!response.ok) throw new Error(errorText(body));
    panel.replaceChildren(...(body.hits || []).map(card));
    panel.dataset.state = "ready";
  } catch (error) {
    if (seq !== state.recSeq) return;
    panel.replaceChildren(element("p", "error", error.message));
    panel.dataset.state = "error";
  }
}

async function recordView(hit) {
  remember(hit);
  renderHistory();
  const event = { type: "view", merchant_id: hit.merchant_id, product_id: hit.product_id };
  try {
    await fetch("/v1/events", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ shopper: shopperId(), events: [event] }),
    });
  } catch (_) { /* offline: the view stays in the local list; recommendations say why below */ }
  loadRecommendations();
}

function moreLikeThis(hit) {
  recordView(hit);
  state.mlt = { product_id: hit.product_id, merchant_id: hit.merchant_id };
  $("mlt-title").textContent = hit.title;
  $("mlt-banner").hidden = false;
  window.scrollTo(0, 0);
  search();
}

function leaveMoreLikeThis() {
  state.mlt = null;
  $("mlt-banner").hidden = true;
}

function setImage(file) {
  state.image = file || null;
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !file;
  preview.src = file ? URL.createObjectURL(file) : "";
  $("drop-hint").hidden = Boolean(file);
  $("clear-image").hidden = !file;
  leaveMoreLikeThis();
  search();
}

function init() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) setImage(file);
  });
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter") $("image-input").click(); });
  $("image-input").addEventListener("change", (event) => setImage(event.target.files[0]));
  $("clear-image").addEventListener("click", () => { $("image-input").value = ""; setImage(null); });
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); leaveMoreLikeThis(); search(); });
  for (const id of ["filter-category", "filter-in-stock", "filter-min-price", "filter-max-price", "filter-tags"]) {
    $(id).addEventListener("change", () => search());
  }
  $("mlt-back").addEventListener("click", () => { leaveMoreLikeThis(); search(); });
  $("reset-button").addEventListener("click", () => {
    $("search-form").reset();
    $("image-input").value = "";
    setImage(null);
  });
  search();
  if (recentlyViewed().length) {
    renderHistory();
    loadRecommendations();
  }
}

document.addEventListener("DOMContentLoaded", init);
