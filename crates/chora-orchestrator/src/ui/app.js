// chora dashboard: swaps in the server-rendered fragments that /ui/events sends,
// keeps ages current, posts the buttons with the session's CSRF token, and
// follows a log. The page works without this script; this makes it live.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const tbody = document.querySelector("#services tbody");
  const conn = document.getElementById("conn");
  const stats = (window.choraDashboard = { events: 0, snapshots: 0, seq: 0 });
  let skew = 0; // server clock minus ours, ms
  let es = null;
  let retry = 500;

  function setConn(state, text) {
    conn.dataset.state = state;
    conn.textContent = text;
  }

  const tpl = document.createElement("template");
  function fragment(html) {
    tpl.innerHTML = html;
    return tpl.content;
  }

  function orderKey(tr) {
    const [p, n] = tr.dataset.order.split(":");
    return [Number(p), n];
  }

  function before(a, b) {
    const [pa, na] = orderKey(a), [pb, nb] = orderKey(b);
    return pa !== pb ? pa < pb : na < nb;
  }

  function findRow(name) {
    for (const tr of tbody.rows) if (tr.dataset.service === name) return tr;
    return null;
  }

  // Each update is applied at once (a status that lasted a moment is still
  // shown); only the cheap parts of the page are redrawn per update.
  function putRow(html) {
    const tr = fragment(html).firstElementChild;
    const old = findRow(tr.dataset.service);
    if (old) {
      if (old.dataset.status !== tr.dataset.status) tr.classList.add("flash");
      old.replaceWith(tr);
    } else {
      let next = null;
      for (const r of tbody.rows) if (before(tr, r)) { next = r; break; }
      tbody.insertBefore(tr, next);
      tr.classList.add("flash");
    }
    ages(tr);
    later(summary);
  }

  const queued = new Set();
  function later(f) {
    if (queued.has(f)) return;
    queued.add(f);
    setTimeout(() => { queued.delete(f); f(); }, 50);
  }

  function summary() {
    const rows = tbody.rows;
    let up = 0;
    for (const r of rows) if (r.dataset.status === "up") up++;
    document.getElementById("summary").textContent = up + " of " + rows.length + " up";
  }

  function meta(m) {
    document.getElementById("bootstrap-body").innerHTML = m.html;
    document.getElementById("manifest-banner").hidden = m.meta.manifest_reachable;
    ages();
  }

  function human(s) {
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function ages(root) {
    const now = Date.now() + skew;
    for (const el of (root || document).querySelectorAll("[data-since]")) {
      const t = Date.parse(el.dataset.since);
      if (!isNaN(t)) el.textContent = human(Math.max(0, Math.floor((now - t) / 1000)));
    }
  }

  function fresh(e) {
    const id = Number(e.lastEventId);
    if (id && id <= stats.seq) return false;
    if (id) stats.seq = id;
    stats.events++;
    return true;
  }

  function connect() {
    es = new EventSource("/ui/events");
    es.addEventListener("snapshot", (e) => {
      const s = JSON.parse(e.data);
      stats.seq = s.seq;
      stats.snapshots++;
      if (!stats.liveAt) stats.liveAt = performance.now();
      skew = Date.parse(s.now) - Date.now();
      tbody.innerHTML = "";
      tbody.appendChild(fragment(s.html));
      meta(s.meta);
      summary();
      retry = 500;
      setConn("live", "live");
    });
    es.addEventListener("row", (e) => {
      if (!fresh(e)) return;
      putRow(JSON.parse(e.data).html);
    });
    // A chart's new drawing (every few seconds): swapped into its row's cell.
    es.addEventListener("chart", (e) => {
      if (!fresh(e)) return;
      const c = JSON.parse(e.data);
      const tr = findRow(c.name);
      const td = tr && tr.querySelector("td.traffic");
      if (td) td.innerHTML = c.html;
    });
    es.addEventListener("remove", (e) => {
      if (!fresh(e)) return;
      const tr = findRow(JSON.parse(e.data).name);
      if (tr) tr.remove();
      later(summary);
    });
    es.addEventListener("meta", (e) => {
      if (fresh(e)) meta(JSON.parse(e.data));
    });
    es.onerror = () => {
      es.close();
      setConn("reconnecting", "reconnecting…");
      // A refused session will not come back by retrying: say so.
      fetch("/ui/session", { cache: "no-store" })
        .then((r) => {
          if (r.status === 401) setConn("expired", "session expired: run chora bootstrap ui");
          else reconnectLater();
        })
        .catch(reconnectLater);
    };
  }

  // Not `later`: a second function of that name would replace the one above,
  // and every row update would then open one more event stream.
  function reconnectLater() {
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 4000);
  }

  document.addEventListener("submit", (e) => {
    const f = e.target;
    if (!f.action.includes("/ui/services/")) return;
    e.preventDefault();
    const b = f.querySelector("button");
    b.disabled = true;
    fetch(f.action, { method: "POST", headers: { "X-CSRF-Token": csrf } })
      .then((r) => { if (!r.ok) throw new Error(r.status + " " + r.statusText); })
      .catch((err) => setConn("reconnecting", f.action.split("/").slice(-2).join(" ") + " failed: " + err.message))
      .finally(() => { b.disabled = false; });
  });

  const logEl = document.getElementById("log");
  const logName = document.getElementById("log-name");
  const logClose = document.getElementById("log-close");
  let tail = null;

  function stopTail() {
    if (tail) tail.abort();
    tail = null;
    logClose.hidden = true;
  }

  async function follow(name) {
    stopTail();
    const ctl = (tail = new AbortController());
    logName.textContent = name;
    logClose.hidden = false;
    logEl.textContent = "";
    try {
      const r = await fetch("/ui/logs/" + encodeURIComponent(name), { signal: ctl.signal });
      if (!r.ok) { logEl.textContent = "(no log: " + r.status + ")"; return; }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const atEnd = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
        let text = logEl.textContent + dec.decode(value, { stream: true });
        if (text.length > 200000) text = text.slice(-150000);
        logEl.textContent = text;
        if (atEnd) logEl.scrollTop = logEl.scrollHeight;
      }
      logEl.textContent += "\n(the log stream ended)";
    } catch (err) {
      if (ctl.signal.aborted) return;
      logEl.textContent += "\n(the log stream broke: " + err.message + ")";
    }
  }

  document.addEventListener("click", (e) => {
    const a = e.target.closest("a[data-logs]");
    if (!a) return;
    e.preventDefault();
    follow(a.dataset.logs);
  });
  logClose.addEventListener("click", () => { stopTail(); logName.textContent = ""; });

  setInterval(() => ages(), 1000);
  setConn("reconnecting", "connecting…");
  connect();
})();
