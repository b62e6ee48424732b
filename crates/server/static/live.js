// Live transcript of a call page (the only script of the console; the pages work
// without it). Server-Sent Events: `turn` (one <li data-seq>), `call` (the Call and
// outcome sections), `transcript` (every turn, once the call has ended), `end`.
(function () {
  "use strict";
  var list = document.getElementById("transcript");
  if (!list || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var url = list.getAttribute("data-events") + "?after=" + encodeURIComponent(list.getAttribute("data-last-seq") || "0");
  var source = new EventSource(url);

  function say(text) {
    if (status) status.textContent = text;
  }

  function parse(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content;
  }

  function noLongerEmpty() {
    var empty = document.getElementById("no-turns");
    if (empty) empty.remove();
  }

  source.addEventListener("turn", function (e) {
    var item = parse(e.data).firstElementChild;
    if (!item) return;
    var seq = Number(item.getAttribute("data-seq"));
    var same = list.querySelector('[data-seq="' + seq + '"]');
    if (same) {
      same.replaceWith(item);
      return;
    }
    var before = null;
    for (var i = 0; i < list.children.length; i++) {
      if (Number(list.children[i].getAttribute("data-seq")) > seq) {
        before = list.children[i];
        break;
      }
    }
    list.insertBefore(item, before);
    noLongerEmpty();
  });
  source.addEventListener("call", function (e) {
    var state = document.getElementById("call-state");
    if (state) state.replaceChildren(parse(e.data));
  });
  source.addEventListener("transcript", function (e) {
    list.replaceChildren(parse(e.data));
    if (list.children.length) noLongerEmpty();
  });
  source.addEventListener("end", function () {
    source.close();
    say("The call has ended.");
  });
  source.onopen = function () {
    say("Live: new turns appear as they arrive.");
  };
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) say("Live updates interrupted; reconnecting…");
  };
})();
