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
  let keepAlive = null;

  function say(text) { status.textContent = text; }

  function grab() {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  }

  // Sends one frame; until the camera has a picture (or a frame fails to encode) it tries again
  // shortly, so the loop never stops waiting for a reply that was never asked for.
  async function sendFrame() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    try {
      const blob = video.videoWidth ? await grab() : null;
      if (blob) {
        pending = blob;
        socket.send(await blob.arrayBuffer());
        return;
      }
    } catch (err) {
      say("A frame could not be captured: " + err.message);
    }
    setTimeout(sendFrame, PAUSE_MS);
  }

  function show(reply) {
    const risk = document.getElementById("live-risk");
    if (reply.error) {
      // A refused frame (intended-use gate) shows what to change, never a stale result.
      risk.textContent = reply.rejected ? "Adjust and hold still: no result for this frame" : "No prediction for this frame";
      risk.className = "card-header text-bg-secondary";
      document.getElementById("live-label").textContent = reply.detail;
      document.getElementById("live-confidence").textContent = "";
      document.getElementById("live-flag").textContent = "";
      document.getElementById("live-advice").textContent = "";
      if (reply.rejected) saveButton.disabled = true;
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
    socket.onclose = (event) => {
      stop();
      say("Live view stopped" + (event.reason ? ": " + event.reason : "."));
    };
    // Streaming makes no HTTP requests: keep the web session's idle clock from running out,
    // or "Save this frame" would meet the login page.
    keepAlive = setInterval(() => fetch("/analyses/live", {cache: "no-store"}), 5 * 60 * 1000);
    startButton.disabled = true;
    stopButton.disabled = false;
  }

  function stop() {
    const open = socket;
    socket = null;
    if (open) open.close();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    clearInterval(keepAlive);
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
    const landed = new URL(response.url).pathname;
    if (response.ok && /^\/analyses\/[0-9a-f-]{36}$/.test(landed)) {
      stop();
      location.assign(response.url); // the new analysis's result page
      return;
    }
    saveError.textContent = landed === "/login"
      ? "Not saved: the session has ended. Log in again in another tab, then save again."
      : "Not saved (" + response.status + "). Check the patient field and try again.";
    saveButton.disabled = false;
  });
  startButton.addEventListener("click", start);
  stopButton.addEventListener("click", stop);
})();
