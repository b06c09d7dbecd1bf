// Builds BinderHub-style launch links and a Markdown badge from the form's fields.
(function () {
  "use strict";
  var repo = document.getElementById("repo");
  var ref = document.getElementById("ref");
  var path = document.getElementById("path");
  var link = document.getElementById("link");
  var markdown = document.getElementById("markdown");
  if (!repo || !link) { return; }
  function update() {
    var base = window.location.origin;
    var url = base + "/v2/git/" + encodeURIComponent(repo.value.trim()) + "/" +
      encodeURIComponent(ref.value.trim() || "HEAD");
    if (path.value.trim()) { url += "?urlpath=" + encodeURIComponent("tree/" + path.value.trim()); }
    link.value = repo.value.trim() ? url : "";
    markdown.value = repo.value.trim() ? "[![launch](" + base + "/badge.svg)](" + url + ")" : "";
  }
  [repo, ref, path].forEach(function (field) { field.addEventListener("input", update); });
  update();
})();
