// The review page's keyboard flow (pipeline/review/server.py serves it).
// Text from the server is only ever set as textContent: log values are untrusted.
"use strict";

(() => {
  const token = document.querySelector('meta[name="review-token"]').content;
  const cases = Array.from(document.querySelectorAll("article.case"));
  const links = Array.from(document.querySelectorAll("#case-list a"));
  const status = document.getElementById("status");
  const progress = document.getElementById("progress");
  if (cases.length === 0) return;

  // Key → label, from the buttons the server rendered (one place decides the keys).
  const labelOfKey = {};
  for (const button of cases[0].querySelectorAll("button.choice")) {
    for (const key of button.dataset.keys.split(" ")) labelOfKey[key] = button.dataset.label;
  }

  let current = -1;
  let pending = null;
  let saving = false;

  function say(text) {
    status.textContent = text;
  }

  function loadGradcam(index) {
    const figure = cases[index] && cases[index].querySelector("figure.gradcam[data-src]");
    if (!figure || figure.dataset.loading) return;
    figure.dataset.loading = "1";
    const img = figure.querySelector("img");
    fetch(figure.dataset.src, { credentials: "same-origin" })
      .then((response) =>
        response.ok
          ? response.blob().then((blob) => {
              img.src = URL.createObjectURL(blob);
            })
          : response.text().then((text) => {
              img.remove();
              figure.querySelector("figcaption").textContent = text;
            }),
      )
      .catch(() => {
        figure.querySelector("figcaption").textContent = "no Grad-CAM: the review server did not answer";
      });
  }

  function choose(label) {
    pending = label;
    for (const button of cases[current].querySelectorAll("button.choice")) {
      button.setAttribute("aria-pressed", String(button.dataset.label === label));
    }
    say(`${label}: Enter saves it`);
  }

  // Scrolls the case list only (scrollIntoView would scroll the whole page too).
  function keepInView(link) {
    const nav = link.closest("nav");
    if (link.offsetTop < nav.scrollTop) nav.scrollTop = link.offsetTop;
    else if (link.offsetTop + link.offsetHeight > nav.scrollTop + nav.clientHeight) {
      nav.scrollTop = link.offsetTop + link.offsetHeight - nav.clientHeight;
    }
  }

  function show(index) {
    if (index < 0 || index >= cases.length) return;
    if (current >= 0) {
      cases[current].hidden = true;
      links[current].removeAttribute("aria-current");
      for (const button of cases[current].querySelectorAll("button.choice")) {
        button.setAttribute("aria-pressed", "false");
      }
    }
    current = index;
    pending = null;
    const article = cases[index];
    article.hidden = false;
    links[index].setAttribute("aria-current", "true");
    keepInView(links[index]);
    for (const img of article.querySelectorAll("img[data-src]")) {
      if (!img.src) img.src = img.dataset.src;
    }
    loadGradcam(index);
    loadGradcam(index + 1); // ready when the reviewer gets there
  }

  function reviewedCount() {
    return cases.filter((article) => article.dataset.label).length;
  }

  function record(article, review) {
    article.dataset.label = review.label;
    const state = article.querySelector(".review-state");
    state.textContent = "reviewed: ";
    const strong = document.createElement("strong");
    strong.className = "review-label";
    strong.textContent = review.label;
    state.append(strong, ` by ${review.reviewer} at ${review.reviewed_at}`);
    if (review.supersedes !== null) state.append(" (replaces an earlier review)");
    links[Number(article.dataset.case)].querySelector(".nav-label").textContent = review.label;
    progress.textContent = String(reviewedCount());
  }

  async function save() {
    if (saving) return;
    if (!pending) {
      say("choose a label first: 1-4 for a class, 0 or u for not a usable slice");
      return;
    }
    const article = cases[current];
    const label = pending;
    saving = true;
    say(`saving ${label}…`);
    try {
      const response = await fetch("/reviews", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Review-Token": token },
        body: JSON.stringify({ case: Number(article.dataset.case), record_id: article.dataset.record, label }),
      });
      const answer = await response.json();
      if (!response.ok) {
        say(`not saved: ${answer.error}`);
        return;
      }
      record(article, answer);
      say(`saved: case ${current + 1} is ${answer.label}`);
      if (current + 1 < cases.length) show(current + 1);
    } catch (error) {
      say(`not saved: the review server did not answer (${error})`);
    } finally {
      saving = false;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key in labelOfKey) choose(labelOfKey[key]);
    else if (key === "Enter") save();
    else if (key === "j" || key === "ArrowDown" || key === "ArrowRight") show(current + 1);
    else if (key === "k" || key === "ArrowUp" || key === "ArrowLeft") show(current - 1);
    else return;
    event.preventDefault();
  });
  for (const link of links) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      show(Number(link.dataset.case));
    });
  }
  for (const article of cases) {
    for (const button of article.querySelectorAll("button.choice")) {
      button.addEventListener("click", () => choose(button.dataset.label));
    }
    article.querySelector("button.save").addEventListener("click", save);
  }

  // Start at the first case nobody has reviewed yet.
  const first = cases.findIndex((article) => !article.dataset.label);
  show(first === -1 ? 0 : first);
})();
