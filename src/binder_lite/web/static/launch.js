// Follows a launch's server-sent events, marks its phases and opens the notebook.
(function () {
  "use strict";
  var data = document.getElementById("launch-data");
  var log = document.getElementById("log");
  var status = document.getElementById("status");
  var order = ["fetching", "resolving", "building", "starting", "ready"];

  function mark(stage, failed) {
    var reached = order.indexOf(stage);
    document.querySelectorAll("#phases li").forEach(function (item, index) {
      item.classList.toggle("done", index < reached || stage === "ready");
      item.classList.toggle("active", index === reached && stage !== "ready" && !failed);
      item.classList.toggle("failed", index === reached && failed);
    });
  }

  function append(text) {
    log.textContent += text;  // text, never HTML
    log.scrollTop = log.scrollHeight;
  }

  var source = new EventSource(data.dataset.events);
  source.onmessage = function (message) {
    var event = JSON.parse(message.data);
    var stage = event.stage || event.phase;
    if (event.phase === "failed") {
      mark(stage, true);
      status.textContent = "The launch failed.";
      append(event.message || "");
      source.close();
      return;
    }
    mark(stage, false);
    if (event.phase === "ready") {
      status.textContent = "Ready: opening the notebook…";
      source.close();
      window.location.href = event.view || event.url;
      return;
    }
    status.textContent = "Working: " + stage + "…";
    append(event.message || "");
  };
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) {
      status.textContent = "Lost the connection to the server.";
    }
  };
})();
