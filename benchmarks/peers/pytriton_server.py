"""PyTriton peer: the bundled Triton server in front of a Python callable that binds the same
decode, preprocessing and ORT session as the service, two model instances, dynamic batching
(up to 8, 2 ms queue delay, as the service's micro-batcher). The JPEG bytes travel as a BYTES
tensor over Triton's HTTP binary-data extension. Runs in its own venv (pytriton.txt)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess

MODEL_NAME = "skin"


def make_infer(classifier: Classifier):  # type: ignore[no-untyped-def]
    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        xs = np.stack([preprocess(bytes(row[0]), classifier.spec) for row in image])
        return {"probabilities": classifier.run(xs)}

    return infer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--instances", type=int, default=int(os.environ.get("PEER_THREADS", "2")))
    args = p.parse_args()
    cv2.setNumThreads(1)
    classifier = Classifier(Path(os.environ["PEER_MODEL"]), "cpu", threads=1)
    classifier.warm_up()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[make_infer(classifier) for _ in range(args.instances)],
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=8,
                batcher=DynamicBatcher(max_queue_delay_microseconds=2000),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
