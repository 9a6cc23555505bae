// Drag-and-drop onto the file input, and a list of the chosen files. No framework, works offline.
(function () {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("images");
  const camera = document.getElementById("camera");
  const list = document.getElementById("file-list");
  if (!zone || !input) return;
  function show() {
    list.textContent = "";
    for (const f of [...input.files, ...(camera ? camera.files : [])]) {
      const li = document.createElement("li");
      li.textContent = f.name + " (" + Math.round(f.size / 1024) + " KB)";
      list.appendChild(li);
    }
  }
  input.addEventListener("change", show);
  if (camera) camera.addEventListener("change", show);
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => {
    e.preventDefault(); zone.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => {
    e.preventDefault(); zone.classList.remove("dragover");
  }));
  zone.addEventListener("drop", (e) => {
    const dt = new DataTransfer();
    for (const f of e.dataTransfer.files) if (f.type.startsWith("image/")) dt.items.add(f);
    input.files = dt.files;
    show();
  });
})();
