// MASB exchange report: filter and sort the exchange table in the page. Without JavaScript the
// table is a plain, complete table and these controls stay hidden.
(function () {
  "use strict";
  var table = document.getElementById("exchange-table");
  var controls = document.getElementById("exchange-controls");
  if (!table || !controls) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var selects = Array.prototype.slice.call(controls.querySelectorAll("select[data-filter]"));
  var search = controls.querySelector("input[type=search]");
  var count = document.getElementById("exchange-count");
  var texts = null; // lower-cased row texts, made on the first search

  function apply() {
    var wanted = selects.filter(function (s) { return s.value !== ""; });
    var needle = search.value.trim().toLowerCase();
    if (needle && texts === null) {
      texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
    }
    var shown = 0;
    rows.forEach(function (row, i) {
      var ok = wanted.every(function (s) { return row.getAttribute("data-" + s.dataset.filter) === s.value; }) &&
        (!needle || texts[i].indexOf(needle) !== -1);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = "Showing " + shown + " of " + rows.length + " exchanges" +
      (shown < rows.length ? " (filtered in the page)" : "");
  }

  function sortBy(th, column) {
    var descending = th.getAttribute("aria-sort") === "ascending";
    var numeric = th.dataset.sort === "number";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var keyed = rows.map(function (row, i) {
      var cell = row.cells[column];
      var key = cell.getAttribute("data-sort");
      if (key === null) { key = cell.textContent.trim(); }
      return { row: row, key: numeric ? parseFloat(key) || 0 : key.toLowerCase(), i: i };
    });
    keyed.sort(function (a, b) {
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : a.i - b.i;
      return descending ? -order : order;
    });
    rows = keyed.map(function (k) { return k.row; });
    texts = null;
    rows.forEach(function (row) { body.appendChild(row); });
  }

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    if (!th.dataset.sort) { return; }
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = th.textContent;
    button.title = "Sort by " + th.textContent;
    th.setAttribute("data-title", th.textContent);
    th.classList.add("sortable");
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", function () { sortBy(th, column); });
  });
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  search.addEventListener("input", apply);
  controls.querySelector("button[type=reset]").addEventListener("click", function () {
    selects.forEach(function (s) { s.value = ""; });
    search.value = "";
    apply();
  });
  controls.hidden = false;
  apply();
}());
