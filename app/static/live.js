// Live camera: frames from getUserMedia go over a WebSocket one at a time (the next only after
// the reply, so a slow link or CPU never builds a backlog); "Save this frame" posts the last
// frame sent through the ordinary upload form. No framework, works offline.
(function () {
  const video = document.getElementById("camera-view");
  const canvas = document.getElementById("frame");
  const startButton = document.getElementById("start");
  const stopButton = document.getElementById("stop");
  const status = document.getElementById("live-status");
  const form = document.getElementById("save-form");
  const saveButton = document.getElementById("save");
  const saveError = document.getElementById("save-error");
  const PAUSE_MS = 100; // between a reply and the next frame: enough for a kiosk, spares the CPU
  let socket = null;
  let stream = null;
  let lastFrame = null; // the JPEG of the frame whose prediction is on screen
  let pending = null;

  function say(text) { status.textContent = text; }

  function grab() {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  }

  async function sendFrame() {
    if (!socket || socket.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    pending = await grab();
    socket.send(await pending.arrayBuffer());
  }

  function show(reply) {
    const risk = document.getElementById("live-risk");
    if (reply.error) {
      risk.textContent = "No prediction for this frame";
      document.getElementById("live-label").textContent = reply.detail;
      return;
    }
    lastFrame = pending;
    saveButton.disabled = false;
    risk.textContent = "Risk group: " + reply.risk_group;
    risk.className = "card-header " + ({malignant: "text-bg-danger", "pre-cancerous": "text-bg-warning"}[reply.risk_group] || "text-bg-success");
    document.getElementById("live-label").textContent = "Most likely: " + reply.name;
    document.getElementById("live-confidence").textContent = (reply.confidence * 100).toFixed(1) + "%";
    document.getElementById("live-flag").textContent = reply.melanoma_flag ? "raised" : "not raised";
    const urgent = reply.melanoma_flag || reply.risk_group === "malignant";
    document.getElementById("live-advice").textContent = urgent ? "Please see a dermatologist promptly." : "";
    say("Live. " + reply.disclaimer + (reply.dropped_total ? " (" + reply.dropped_total + " frames skipped)" : ""));
  }

  async function start() {
    try {
      stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: "environment", width: {ideal: 1280}}});
    } catch (err) {
      say("No camera: " + err.message + " (the page needs HTTPS or localhost, and camera permission).");
      return;
    }
    video.srcObject = stream;
    await video.play();
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/analyses/live/ws");
    socket.binaryType = "arraybuffer";
    socket.onopen = () => { say("Connected."); sendFrame(); };
    socket.onmessage = (event) => { show(JSON.parse(event.data)); setTimeout(sendFrame, PAUSE_MS); };
    socket.onclose = (event) => { say("Live view stopped" + (event.reason ? ": " + event.reason : ".")); };
    startButton.disabled = true;
    stopButton.disabled = false;
  }

  function stop() {
    if (socket) socket.close();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    socket = stream = null;
    startButton.disabled = false;
    stopButton.disabled = true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!lastFrame) return;
    const data = new FormData(form);
    data.append("images", new File([lastFrame], "camera-frame.jpg", {type: "image/jpeg"}));
    saveButton.disabled = true;
    const response = await fetch(form.action, {method: "POST", body: data});
    if (response.ok && response.redirected) {
      stop();
      location.assign(response.url); // the new analysis's result page
      return;
    }
    saveError.textContent = "Not saved (" + response.status + "). Check the patient field and try again.";
    saveButton.disabled = false;
  });
  startButton.addEventListener("click", start);
  stopButton.addEventListener("click", stop);
})();
