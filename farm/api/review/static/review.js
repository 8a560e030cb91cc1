/* farm review room: play a clip in place, live progress of a batch, play compared clips together.
   Plain JavaScript, no dependencies, nothing loaded from elsewhere. */
(function () {
  "use strict";

  function playInPlace(link) {
    var video = document.createElement("video");
    video.controls = true;
    video.autoplay = true;
    video.muted = true;
    video.loop = true;
    video.playsInline = true;
    video.className = "clip";
    var img = link.querySelector("img");
    if (img) { video.poster = img.src; }
    video.src = link.getAttribute("data-video");
    link.replaceWith(video);
    var playing = video.play();
    if (playing && playing.catch) { playing.catch(function () { /* the controls stay usable */ }); }
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a.play");
    if (link) {
      event.preventDefault();
      playInPlace(link);
      return;
    }
    if (event.target.id === "play-all") {
      document.querySelectorAll("#compare video").forEach(function (v) {
        v.currentTime = 0;
        var p = v.play();
        if (p && p.catch) { p.catch(function () {}); }
      });
    }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id !== "compare-form") { return; }
    var picked = document.querySelectorAll('input[name="job"][form="compare-form"]:checked').length;
    if (picked < 2 || picked > 4) {
      event.preventDefault();
      window.alert("Choose 2 to 4 clips to compare (" + picked + " chosen).");
    }
  });

  function setText(el, text) { if (el && el.textContent !== String(text)) { el.textContent = String(text); } }

  function showPoster(tile, job) {
    var media = tile.querySelector(".media");
    if (!media || media.querySelector("img, video") || !job.poster_url) { return; }
    var link = document.createElement("a");
    link.className = "play";
    link.href = job.video_url;
    link.setAttribute("data-video", job.video_url);
    link.title = "Play";
    var img = document.createElement("img");
    img.className = "poster";
    img.alt = "poster of seed " + job.seed;
    img.src = job.poster_url;
    link.appendChild(img);
    media.replaceChildren(link);
  }

  function updateTile(job) {
    var tile = document.querySelector('.tile[data-job-id="' + job.id + '"]');
    if (!tile) { return; }
    if (tile.getAttribute("data-status") !== job.status) {
      tile.setAttribute("data-status", job.status);
      var status = tile.querySelector(".status");
      if (status) { setText(status, job.status); status.className = "status status-" + job.status; }
      var placeholder = tile.querySelector(".placeholder");
      if (placeholder) { setText(placeholder, job.status); placeholder.className = "placeholder status-" + job.status; }
    }
    showPoster(tile, job);
  }

  function startProgress(head) {
    var url = head.getAttribute("data-progress-url");
    var every = parseInt(head.getAttribute("data-poll-ms"), 10) || 1500;
    var live = document.getElementById("live");
    var polls = 0;

    function apply(data) {
      Object.keys(data.counts).forEach(function (s) {
        setText(document.querySelector('[data-count="' + s + '"]'), data.counts[s]);
      });
      setText(document.getElementById("finished"), data.finished);
      var bar = document.getElementById("progress");
      if (bar) { bar.value = data.finished; }
      data.jobs.forEach(updateTile);
      polls += 1;
      head.setAttribute("data-polls", String(polls));
      head.setAttribute("data-done", data.done ? "true" : "false");
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
        .then(function (r) {
          var type = r.headers.get("content-type") || "";
          if (!r.ok || type.indexOf("application/json") !== 0) { throw new Error("progress: " + r.status); }
          return r.json();
        })
        .then(function (data) {
          apply(data);
          if (data.done) { setText(live, ""); } else { window.setTimeout(poll, every); }
        })
        .catch(function () {
          setText(live, "live progress stopped (reload the page)");
        });
    }
    window.setTimeout(poll, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var head = document.getElementById("batch");
    if (head && head.getAttribute("data-done") !== "true") { startProgress(head); }
  });
})();
