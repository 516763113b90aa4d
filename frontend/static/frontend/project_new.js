// The new-project form's class rows: add and remove, keys renumbered (1..max), never fewer
// than two rows. The server checks the names (non-empty, unique, at least two).
const rows = document.getElementById("class-rows");
const add = document.getElementById("add-class");
const max = Number(add.dataset.max);

function renumber() {
  const all = rows.querySelectorAll(".class-row");
  all.forEach((row, i) => {
    row.querySelector(".key").textContent = String(i + 1);
    row.querySelector("input").setAttribute("aria-label", `class ${i + 1}`);
    const remove = row.querySelector(".remove-class");
    remove.setAttribute("aria-label", `remove class ${i + 1}`);
    remove.disabled = all.length <= 2;
  });
  add.disabled = all.length >= max;
}

add.addEventListener("click", () => {
  const row = rows.querySelector(".class-row").cloneNode(true);
  const input = row.querySelector("input");
  input.value = "";
  input.classList.remove("invalid");
  rows.append(row);
  renumber();
  input.focus();
});

rows.addEventListener("click", (event) => {
  const remove = event.target.closest(".remove-class");
  if (!remove || rows.children.length <= 2) return;
  remove.closest(".class-row").remove();
  renumber();
});

renumber();
