// The new-project form's class rows: add and remove, keys renumbered (1..max), never fewer
// than two rows (one for a region task: points, boxes, masks). The server checks the names
// (non-empty, unique, enough of them). The region settings show only for a region task.
const rows = document.getElementById("class-rows");
const add = document.getElementById("add-class");
const max = Number(add.dataset.max);
const taskType = document.querySelector("select[name=task_type]");
const regionSettings = document.querySelector("[data-testid=region-settings]");
const regionTypes = taskType.dataset.regionTypes.split(" ");
const fewest = () => (regionTypes.includes(taskType.value) ? 1 : 2);

function addRow() {
  const row = rows.querySelector(".class-row").cloneNode(true);
  const input = row.querySelector("input");
  input.value = "";
  input.classList.remove("invalid");
  rows.append(row);
  return input;
}

function renumber() {
  const all = rows.querySelectorAll(".class-row");
  all.forEach((row, i) => {
    row.querySelector(".key").textContent = String(i + 1);
    row.querySelector("input").setAttribute("aria-label", `class ${i + 1}`);
    const remove = row.querySelector(".remove-class");
    remove.setAttribute("aria-label", `remove class ${i + 1}`);
    remove.disabled = all.length <= fewest();
  });
  add.disabled = all.length >= max;
}

add.addEventListener("click", () => {
  const input = addRow();
  renumber();
  input.focus();
});

rows.addEventListener("click", (event) => {
  const remove = event.target.closest(".remove-class");
  if (!remove || rows.children.length <= fewest()) return;
  remove.closest(".class-row").remove();
  renumber();
});

renumber();

taskType.addEventListener("change", () => {
  regionSettings.hidden = !regionTypes.includes(taskType.value);
  while (rows.children.length < fewest()) addRow();
  renumber();
});
