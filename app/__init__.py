"""The skin lesion service (see README.md)."""

import os

# onnxruntime's native library looks up mobile.events.data.microsoft.com about 6, 12 and 20 s
# after start-up unless this is in the environment before it is imported
# (onnxruntime.disable_telemetry_events() did not stop it). Here, the package's first line,
# it precedes every import of onnxruntime by the server, its CLI, its workers and its tests.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# numpy's OpenBLAS would start a thread per core for each matrix product, inside workers that
# already use one core each: the gate's distribution check (a [1, 3840] x [3840, 256] product
# and smaller ones) then took 7.9 ms of CPU an image instead of 0.15 ms, spinning against the
# other worker (measured, 2 cores). One thread per product, unless the environment says else.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
