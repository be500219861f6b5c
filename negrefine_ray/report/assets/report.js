// report.html's script: inlined into the page (no server, no network). Tables with class "sortable"
// sort by the clicked column (numbers by their data-v value); inputs with data-filter hide the rows
// of the table they name that do not contain the typed text.
"use strict";

function cellValue(row, index) {
  const cell = row.cells[index];
  if (!cell) return "";
  const v = cell.getAttribute("data-v");
  if (v !== null && v !== "") return parseFloat(v);
  return cell.textContent.trim().toLowerCase();
}

function sortTable(table, index, header) {
  const body = table.tBodies[0];
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  const rows = Array.from(body.rows);
  rows.sort(function (a, b) {
    const x = cellValue(a, index);
    const y = cellValue(b, index);
    let order;
    if (typeof x === "number" && typeof y === "number") order = x - y;
    else order = String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  for (const row of rows) body.appendChild(row);
}

function filterTable(input) {
  const table = document.getElementById(input.getAttribute("data-filter"));
  const query = input.value.trim().toLowerCase();
  let shown = 0;
  for (const row of table.tBodies[0].rows) {
    const match = query === "" || row.textContent.toLowerCase().indexOf(query) >= 0;
    row.hidden = !match;
    if (match) shown += 1;
  }
  const count = document.getElementById(input.getAttribute("data-count"));
  if (count) count.textContent = shown + " of " + table.tBodies[0].rows.length;
}

document.addEventListener("DOMContentLoaded", function () {
  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach(function (th, index) {
      th.addEventListener("click", function () { sortTable(table, index, th); });
    });
  }
  for (const input of document.querySelectorAll("input[data-filter]")) {
    input.addEventListener("input", function () { filterTable(input); });
    filterTable(input);
  }
});
