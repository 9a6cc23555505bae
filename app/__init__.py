"""The skin lesion service (see README.md)."""

import os

# onnxruntime's native library looks up mobile.events.data.microsoft.com about 6, 12 and 20 s
# after start-up unless this is in the environment before it is imported
# (onnxruntime.disable_telemetry_events() did not stop it). Here, the package's first line,
# it precedes every import of onnxruntime by the server, its CLI, its workers and its tests.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
