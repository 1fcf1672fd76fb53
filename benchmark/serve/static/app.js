// bench serve's page: search, mark, refresh / LLM-guided rounds. Data is only ever put into the
// page with textContent and element attributes, never parsed as markup.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  if (!form) return; // the server could not load its model: the page shows why
  let current = null; // the search shown now
  let marks = new Map(); // gallery index -> "relevant" | "not_relevant"

  function message(text, isError) {
    const m = $("message");
    m.textContent = text || "";
    m.classList.toggle("error", Boolean(isError));
  }

  function busy(on) {
    for (const id of ["search-btn", "refresh-btn", "ask-btn", "answer-btn"]) $(id).disabled = on;
    document.body.classList.toggle("busy", on);
  }

  async function call(method, url, body) {
    busy(true);
    try {
      const res = await fetch(url, {
        method: method,
        headers: body ? { "Content-Type": "application/json" } : {},
        body: body ? JSON.stringify(body) : undefined,
      });
      let data = null;
      try { data = await res.json(); } catch (e) { data = null; }
      if (!res.ok) throw new Error((data && data.error) || ("request failed: HTTP " + res.status));
      return data;
    } finally {
      busy(false);
    }
  }

  function markButton(label, kind, index) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "mark mark-" + kind;
    b.textContent = label;
    b.dataset.index = String(index);
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => {
      if (marks.get(index) === kind) marks.delete(index); else marks.set(index, kind);
      renderMarks();
    });
    return b;
  }

  function renderMarks() {
    for (const card of document.querySelectorAll(".result")) {
      const index = Number(card.dataset.index);
      const m = marks.get(index) || "";
      card.dataset.mark = m;
      for (const b of card.querySelectorAll(".mark")) {
        const kind = b.classList.contains("mark-relevant") ? "relevant" : "not_relevant";
        b.setAttribute("aria-pressed", String(m === kind));
      }
    }
  }

  function render(view) {
    current = view;
    marks = new Map();
    $("summary").hidden = false;
    $("actions").hidden = false;
    $("current-query").textContent = view.current_query;
    $("query-length").textContent =
      view.query_length === null ? "fixed-length query" : "query length L = " + view.query_length;
    $("round").textContent = String(view.rounds);
    $("excluded").textContent = String(view.excluded);
    $("export-link").setAttribute("href", "/api/export?search=" + view.search);
    const list = $("results");
    list.replaceChildren();
    view.results.forEach((r, rank) => {
      const card = document.createElement("figure");
      card.className = "result";
      card.dataset.index = String(r.index);
      const img = document.createElement("img");
      img.src = r.thumb;
      img.alt = r.caption;
      img.title = r.image_id;
      const cap = document.createElement("figcaption");
      const head = document.createElement("span");
      head.className = "score";
      head.textContent = "#" + (rank + 1) + "  score " + r.score.toFixed(4);
      const text = document.createElement("span");
      text.className = "caption";
      text.textContent = r.caption;
      cap.append(head, text);
      const buttons = document.createElement("div");
      buttons.className = "marks";
      buttons.append(markButton("relevant", "relevant", r.index), markButton("not relevant", "not_relevant", r.index));
      card.append(img, cap, buttons);
      list.append(card);
    });
    renderQuestions(view.pending);
    const last = view.last_round;
    if (last && last.kind === "llm" && last.fallback) {
      message("The question writer found nothing to ask (" + last.fallback + "): the scores were refreshed instead.");
    } else if (last && last.kind === "llm" && last.refined_query) {
      message("Refined query: " + last.refined_query);
    }
  }

  function renderQuestions(pending) {
    const box = $("question-list");
    box.replaceChildren();
    $("questions").hidden = !pending;
    if (!pending) return;
    pending.questions.forEach((q, k) => {
      const field = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = q.question;
      field.append(legend);
      q.options.forEach((opt, j) => {
        const label = document.createElement("label");
        const input = document.createElement("input");
        input.type = "radio";
        input.name = "q" + k;
        input.value = opt;
        if (j === q.options.length - 1) input.checked = true; // "none / unsure" until answered
        label.append(input, document.createTextNode(" " + opt));
        field.append(label);
      });
      box.append(field);
    });
  }

  function markedBody() {
    const body = { relevant: [], not_relevant: [] };
    for (const [index, kind] of marks) body[kind].push(index);
    return body;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message("");
    try {
      render(await call("POST", "/api/search", { query: $("query").value }));
    } catch (e) { message(e.message, true); }
  });

  $("refresh-btn").addEventListener("click", async () => {
    if (!current) return;
    message("");
    try {
      render(await call("POST", "/api/searches/" + current.search + "/refresh", markedBody()));
      message("Scores refreshed (round " + current.rounds + ").");
    } catch (e) { message(e.message, true); }
  });

  $("ask-btn").addEventListener("click", async () => {
    if (!current) return;
    message("");
    try {
      const keep = marks;
      const view = await call("POST", "/api/searches/" + current.search + "/questions", markedBody());
      if (view.pending) {
        current = view;
        marks = keep;
        renderQuestions(view.pending);
        message("Answer the questions, then refine the query.");
      } else {
        render(view);
      }
    } catch (e) { message(e.message, true); }
  });

  $("answer-btn").addEventListener("click", async () => {
    if (!current || !current.pending) return;
    const answers = current.pending.questions.map((q, k) => {
      const picked = document.querySelector('input[name="q' + k + '"]:checked');
      return picked ? picked.value : q.options[q.options.length - 1];
    });
    try {
      render(await call("POST", "/api/searches/" + current.search + "/answers", { answers: answers }));
    } catch (e) { message(e.message, true); }
  });
})();
