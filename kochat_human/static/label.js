// kochat label: rank one item's answers at a time, by keyboard or by clicking.
// Model text is untrusted: it only ever enters the page through textContent.
"use strict";

const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const $ = (id) => document.getElementById(id);
const state = { item: null, picks: [], tieNext: false, tieLeftover: false, lastVote: null, shownAt: 0, busy: false };

function voteId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(method, path, body) {
  // A vote keeps its id across retries, so a resent vote counts once.
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(path, {
        method, headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const data = await response.json().catch(() => ({ error: response.statusText }));
      if (!response.ok) throw Object.assign(new Error(data.error || response.statusText), { status: response.status });
      return data;
    } catch (err) {
      if (err.status !== undefined || attempt >= 2) throw err;
      await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
    }
  }
}

function say(text) { $("message").textContent = text || ""; }

// The order so far as groups of places on the screen (best first); the last answer left goes last by itself.
function groups() {
  const result = [];
  for (const pick of state.picks) {
    if (pick.tie && result.length) result[result.length - 1].push(pick.place);
    else result.push([pick.place]);
  }
  const left = unplaced();
  if (left.length === 1 && result.length) {
    if (state.tieLeftover) result[result.length - 1].push(left[0]);
    else result.push([left[0]]);
  }
  return result;
}

function unplaced() {
  if (!state.item) return [];
  const placed = new Set(state.picks.map((pick) => pick.place));
  return state.item.answers.map((_, place) => place).filter((place) => !placed.has(place));
}

function complete() { return state.item && groups().reduce((n, g) => n + g.length, 0) === state.item.answers.length; }

function render() {
  const order = groups();
  const rankOf = new Map();
  let better = 0;
  order.forEach((group) => {
    group.forEach((place) => rankOf.set(place, { rank: better + 1, tied: group.length > 1 }));
    better += group.length;
  });
  $("answers").querySelectorAll("li").forEach((li, place) => {
    const badge = li.querySelector(".rank");
    const placed = rankOf.get(place);
    li.classList.toggle("placed", placed !== undefined);
    badge.classList.toggle("tied", Boolean(placed && placed.tied));
    badge.textContent = placed ? (placed.tied ? "=" : "") + placed.rank + "위" : "";
  });
  $("order").textContent = order.length
    ? "순서: " + order.map((group) => group.map((place) => place + 1).join(" = ")).join(" > ") + (state.tieNext ? " = …" : "")
    : "";
  $("submit").disabled = !complete() || state.busy;
  $("undo").disabled = !state.lastVote || state.busy;
}

function show(data) {
  state.lastVote = data.last_vote;
  $("who").textContent = data.annotator;
  $("guidelines").textContent = data.guidelines;
  const { done, total } = data.progress;
  $("bar").style.width = (total ? (100 * done) / total : 100) + "%";
  document.querySelector(".progress").setAttribute("aria-valuenow", String(done));
  document.querySelector(".progress").setAttribute("aria-valuemax", String(total));
  $("count").textContent = done + " / " + total;
  state.item = data.item;
  state.picks = [];
  state.tieNext = state.tieLeftover = false;
  $("task").hidden = !data.item;
  $("done").hidden = Boolean(data.item);
  if (data.item) {
    $("prompt").textContent = data.item.prompt;
    const list = $("answers");
    list.replaceChildren(...data.item.answers.map((text, place) => {
      const li = document.createElement("li");
      li.dataset.place = String(place);
      const key = document.createElement("span");
      key.className = "key";
      key.textContent = String(place + 1);
      const body = document.createElement("div");
      body.className = "text";
      body.textContent = text;
      const rank = document.createElement("span");
      rank.className = "rank";
      li.append(key, body, rank);
      li.addEventListener("click", () => place_(place));
      return li;
    }));
    state.shownAt = performance.now();
  }
  render();
}

async function load() {
  try { show(await api("GET", "/api/next")); } catch (err) { say(err.message); }
}

function place_(place) {
  if (!state.item || state.busy || place >= state.item.answers.length) return;
  if (state.picks.some((pick) => pick.place === place) || complete()) return;
  state.picks.push({ place, tie: state.tieNext && state.picks.length > 0 });
  state.tieNext = false;
  say("");
  render();
}

function tie() {
  if (!state.item || state.busy) return;
  if (!state.picks.length) { say("먼저 가장 좋은 답을 고르세요 · pick the best answer first"); return; }
  if (unplaced().length === 1) state.tieLeftover = true; // the answer left over ties with the last one picked
  else state.tieNext = true;
  render();
}

function clear() {
  if (state.tieLeftover) state.tieLeftover = false;
  else if (state.tieNext) state.tieNext = false;
  else state.picks.pop();
  render();
}

async function send(kind) {
  if (!state.item || state.busy) return;
  const vote = { item: state.item.id, kind, client_vote_id: voteId(), seconds: (performance.now() - state.shownAt) / 1000 };
  if (kind === "rank") {
    if (!complete()) { say("모든 답의 순위를 정하세요 · rank every answer first"); return; }
    const ranking = new Array(state.item.answers.length);
    groups().forEach((group, rank) => group.forEach((place) => { ranking[place] = rank; }));
    vote.ranking = ranking;
  }
  state.busy = true;
  render();
  try {
    await api("POST", "/api/votes", vote);
    say(kind === "flag" ? "신고했습니다 (u: 되돌리기) · flagged" : kind === "skip" ? "건너뛰었습니다 · skipped" : "");
    state.busy = false;
    await load();
  } catch (err) {
    state.busy = false;
    say(err.message);
    render();
  }
}

async function undo() {
  if (!state.lastVote || state.busy) return;
  state.busy = true;
  try {
    await api("POST", "/api/undo", { client_vote_id: state.lastVote });
    say("되돌렸습니다: 다시 순위를 정하세요 · undone: rank it again");
  } catch (err) {
    say(err.message);
  }
  state.busy = false;
  await load();
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.target.closest("summary")) return;
  const actions = { "=": tie, "Enter": () => send("rank"), "Backspace": clear, "s": () => send("skip"), "u": undo, "f": () => send("flag") };
  if (/^[1-9]$/.test(event.key)) place_(Number(event.key) - 1);
  else if (actions[event.key]) actions[event.key]();
  else return;
  event.preventDefault();
});

document.addEventListener("DOMContentLoaded", () => {
  $("submit").addEventListener("click", () => send("rank"));
  $("tie").addEventListener("click", tie);
  $("clear").addEventListener("click", clear);
  $("skip").addEventListener("click", () => send("skip"));
  $("undo").addEventListener("click", undo);
  $("flag").addEventListener("click", () => send("flag"));
  load();
});
