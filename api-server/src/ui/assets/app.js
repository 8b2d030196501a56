// The dashboard's live updates and small interactions: no framework, no build step. The page's live part
// (`#live`) is fetched again (`?fragment=1`) when its event stream says something moved, at most once per
// `data-throttle` ms, and every `data-every` ms; a task's log (`#log`) is followed entry by entry.
"use strict";
(() => {
  const SEVERITY = { debug: 10, info: 20, warning: 30, error: 40, critical: 50 };
  const live = document.getElementById("live");

  // Forms that ask first (cancel, stop).
  document.addEventListener("submit", (e) => {
    const question = e.target.dataset && e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });
  // Filters that apply as soon as they change.
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    form.addEventListener("change", () => form.submit());
  }

  // Every open stream holds a connection, and browsers allow only six to one server over HTTP/1.1: they are
  // closed when the page is left (also into the back-forward cache, from which the page comes back reloaded).
  const streams = [];
  let polling = null;
  function follow(url) {
    const s = new EventSource(url);
    streams.push(s);
    // A stream the browser gave up on (the server refused it, or it ended without a word): the page
    // polls its live part instead, so that it never silently stops moving.
    s.addEventListener("error", () => {
      if (s.readyState === EventSource.CLOSED && !polling && live) {
        polling = window.setInterval(schedule, 5000);
        schedule();
      }
    });
    return s;
  }
  window.addEventListener("pagehide", () => {
    for (const s of streams) s.close();
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) window.location.reload();
  });

  let timer = null;
  let busy = false;
  let again = false;
  let last = 0;
  let deferred = 0;
  let stale = false;
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && stale) {
      stale = false;
      schedule();
    }
  });
  const throttle = live ? Number(live.dataset.throttle || 1000) : 1000;

  function fragmentUrl() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("notice");
    return url.toString();
  }

  // Whether the keyboard is inside the live part (a refresh would pull the focused element away).
  function focusInside() {
    const a = document.activeElement;
    return a && a !== document.body && live.contains(a);
  }

  async function refresh() {
    // A tab in the background is brought up to date when it is shown again.
    if (document.hidden) {
      stale = true;
      return;
    }
    if (busy) {
      again = true;
      return;
    }
    if (focusInside() && deferred < 5) {
      deferred += 1;
      schedule();
      return;
    }
    deferred = 0;
    busy = true;
    last = Date.now();
    try {
      const r = await fetch(fragmentUrl(), { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (r.redirected) {
        // The session ended (the token was revoked or logged out elsewhere): show the login page.
        window.location.reload();
        return;
      }
      if (r.ok) live.innerHTML = await r.text();
    } catch (_) {
      // The server is away: the next event or tick tries again.
    } finally {
      busy = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    if (timer || !live) return;
    const wait = Math.max(0, throttle - (Date.now() - last));
    timer = window.setTimeout(() => {
      timer = null;
      refresh();
    }, wait);
  }

  function badge(status) {
    const b = document.createElement("span");
    b.className = "badge status-" + status;
    b.dataset.status = status;
    b.textContent = status;
    return b;
  }

  // A state change: the task's rows show it at once, the rest follows with the refresh.
  function onStatus(event) {
    const d = JSON.parse(event.data);
    if (d.status) {
      for (const cell of document.querySelectorAll('tr[data-task-id="' + d.task_id + '"] .status-cell')) {
        cell.replaceChildren(badge(d.status));
      }
    }
    schedule();
  }

  if (live && live.dataset.events) {
    const stream = follow(live.dataset.events);
    stream.addEventListener("status", onStatus);
  }
  if (live && live.dataset.every) {
    window.setInterval(schedule, Number(live.dataset.every));
  }

  // A task's log, followed live.
  const log = document.getElementById("log");
  if (log && log.dataset.events) {
    const min = Number(log.dataset.minSeverity || 0);
    // The newest entry shown: an entry at or below it is not shown twice.
    let shown = Number(new URL(log.dataset.events, window.location.href).searchParams.get("after_seq") || 0);
    const body = log.tBodies[0];
    const following = document.getElementById("following");

    const cell = (text, className) => {
      const td = document.createElement("td");
      if (className) td.className = className;
      if (text !== null) td.textContent = text;
      return td;
    };

    const append = (d) => {
      if (d.seq <= shown) return;
      shown = d.seq;
      if (!d.level || (SEVERITY[d.level] || 0) < min) return;
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      const tr = document.createElement("tr");
      tr.className = "level-" + d.level;
      tr.dataset.seq = String(d.seq);
      tr.appendChild(cell(new Date(d.timestamp).toISOString().slice(11, 23), "nowrap"));
      const level = cell(null);
      const tag = document.createElement("span");
      tag.className = "level level-" + d.level;
      tag.textContent = d.level;
      level.appendChild(tag);
      tr.appendChild(level);
      tr.appendChild(cell(d.attempt == null ? "" : String(d.attempt)));
      const msg = cell(d.message || "", "msg");
      if (d.context && typeof d.context === "object" && Object.keys(d.context).length > 0) {
        const details = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = "context";
        const pre = document.createElement("pre");
        pre.textContent = JSON.stringify(d.context, null, 2);
        details.append(summary, pre);
        msg.appendChild(details);
      }
      tr.appendChild(msg);
      body.appendChild(tr);
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    };

    const stream = follow(log.dataset.events);
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED && following) following.hidden = true;
    });
    stream.addEventListener("log", (e) => append(JSON.parse(e.data)));
    stream.addEventListener("status", (e) => {
      append(JSON.parse(e.data));
      schedule();
    });
    stream.addEventListener("end", () => {
      stream.close();
      if (following) following.textContent = "finished";
      schedule();
    });
  }
})();
