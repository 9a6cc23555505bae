"""python -m training split|train ..."""

from __future__ import annotations

import os

# Before anything imports onnxruntime: its native library sends telemetry otherwise (issue 16).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import argparse
import json
import logging
from pathlib import Path

from training.models import ARCHITECTURES


def _size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    split = sub.add_parser("split", help="write the lesion-level split CSV")
    split.add_argument(
        "--metadata", type=Path, default=Path("../shared/data/ham10000/metadata.csv")
    )
    split.add_argument("-o", "--out", type=Path, default=None)

    pk = sub.add_parser("pack", help="copy train/val JPEGs + labels for a GPU machine")
    pk.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    pk.add_argument(
        "--parts", nargs="+", default=["train", "val"], choices=["train", "val", "test"]
    )
    pk.add_argument("-o", "--out", type=Path, required=True)

    tr = sub.add_parser("train", help="fine-tune, calibrate and save a Keras HDF5 model")
    tr.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    tr.add_argument(
        "--weights",
        type=Path,
        default=Path("../shared/weights"),
        help="folder with the ImageNet backbones",
    )
    tr.add_argument("--no-pretrained", action="store_true", help="train from scratch")
    tr.add_argument("-o", "--out", type=Path, default=Path("models/skin_lesion.h5"))
    tr.add_argument("--arch", choices=ARCHITECTURES, default="mobilenetv2_035")
    tr.add_argument("--size", type=_size, default=(160, 120), help="WIDTHxHEIGHT")
    tr.add_argument("--epochs", type=int, default=12)
    tr.add_argument("--warmup-epochs", type=int, default=1)
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--lr", type=float, default=1e-3, help="head warm-up learning rate")
    tr.add_argument(
        "--finetune-lr", type=float, default=5e-4, help="peak fine-tuning rate (cosine)"
    )
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument("--nv-per-epoch", type=int, default=1500)
    tr.add_argument("--split", type=Path, default=None, help="split CSV (default: committed)")
    tr.add_argument("--limit", type=int, default=None, help="images per part (smoke tests)")
    tr.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True)
    tr.add_argument(
        "--degrade",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="JPEG re-compression and rescaling augmentation",
    )

    ens = sub.add_parser("ensemble", help="members from training.portable -> one calibrated HDF5")
    ens.add_argument("members", type=Path, nargs="+", help="member folders (member.json inside)")
    ens.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ens.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    ens.add_argument("-o", "--out", type=Path, default=Path("models/skin_lesion.h5"))

    unp = sub.add_parser(
        "unpack", help="a mean-head ensemble HDF5 -> member folders (to replace one member)"
    )
    unp.add_argument("model", type=Path, help="an HDF5 `ensemble` wrote, before `head`")
    unp.add_argument("-o", "--out", type=Path, required=True)
    unp.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))

    unb = sub.add_parser(
        "unblend", help="a blended-head ensemble HDF5 -> member folders, scaled by a reference"
    )
    unb.add_argument("model", type=Path, help="an HDF5 whose head `training head` blended")
    unb.add_argument(
        "--reference", type=Path, required=True, help="a mean-head ensemble holding some members"
    )
    unb.add_argument("-o", "--out", type=Path, required=True)
    unb.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))

    adj = sub.add_parser(
        "adjust", help="refit a calibrated HDF5's logit adjustment, temperature and threshold"
    )
    adj.add_argument("model", type=Path, nargs="?", default=Path("models/skin_lesion.h5"))
    adj.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    adj.add_argument("--split", type=Path, default=None, help="split CSV (default: committed)")

    head = sub.add_parser(
        "head", help="blend an ensemble HDF5's head with a joint head fitted on train features"
    )
    head.add_argument("model", type=Path, nargs="?", default=Path("models/skin_lesion.h5"))
    head.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    head.add_argument("-o", "--out", type=Path, default=None, help="default: replace the model")
    head.add_argument("--split", type=Path, default=None, help="split CSV (default: committed)")
    head.add_argument(
        "--flips",
        action="store_true",
        help="fit on the train images and their 3 flips (measured on val, not kept)",
    )

    ft = sub.add_parser(
        "finetune", help="fine-tune an ensemble HDF5's top blocks on cached augmented activations"
    )
    ft.add_argument("model", type=Path, nargs="?", default=Path("models/skin_lesion.h5"))
    ft.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    ft.add_argument("-o", "--out", type=Path, required=True)
    ft.add_argument("--work", type=Path, default=Path("training/runs/finetune"))
    ft.add_argument("--split", type=Path, default=None, help="split CSV (default: committed)")
    ft.add_argument("--views", type=int, default=8)
    ft.add_argument("--epochs", type=int, default=30)
    ft.add_argument("--lr", type=float, default=3e-4)
    ft.add_argument("--resume", action="store_true", help="continue from the last epoch")

    lev = sub.add_parser("levers", help="val figures of a fleet run's members and ensembles")
    lev.add_argument("run", type=Path, help="the folder `training.portable fleet` wrote")
    lev.add_argument("-o", "--out", type=Path, default=Path("models/card/levers.json"))

    card = sub.add_parser("card", help="measure a converted model for the model card")
    card.add_argument("model", type=Path, help="ONNX model (the one the server loads)")
    card.add_argument("--images", type=Path, default=Path("../shared/data/ham10000/images"))
    card.add_argument("--fullres", type=Path, default=Path("../shared/data/fullres"))
    card.add_argument("-o", "--out", type=Path, default=Path("models/card"))
    card.add_argument(
        "--write-card",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="render models/MODEL_CARD.md from the measured figures",
    )

    cmp = sub.add_parser("compare", help="val BMA and ONNX latency of candidate models")
    cmp.add_argument("models", type=Path, nargs="+", help="HDF5 files with .training.json beside")
    cmp.add_argument("-o", "--out", type=Path, default=Path("training/comparison.json"))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "split":
        from training.split import SPLIT_CSV, make_split, write_split

        write_split(make_split(args.metadata), args.out or SPLIT_CSV)
        return 0

    if args.command == "pack":
        from training.portable import pack
        from training.split import read_split

        count = pack(args.images, read_split(), args.out, tuple(args.parts))
        print(f"{count} images -> {args.out}")
        return 0

    if args.command == "ensemble":
        from training.ensemble import assemble

        summary = assemble(args.members, args.out, args.images, args.checkpoint)
        print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "members")}))
        return 0

    if args.command == "unpack":
        from training.ensemble import unpack

        for folder in unpack(args.model, args.out, args.images):
            print(folder)
        return 0

    if args.command == "unblend":
        from training.head import unblend

        folders, fit = unblend(args.model, args.reference, args.out, args.images)
        print(json.dumps(fit))
        for folder in folders:
            print(folder)
        return 0

    if args.command == "adjust":
        from training.ensemble import readjust

        summary = readjust(args.model, args.images, args.split)
        print(
            json.dumps(
                {k: v for k, v in summary.items() if k not in ("config", "members", "history")}
            )
        )
        return 0

    if args.command == "head":
        from training.head import refit_head

        summary = refit_head(args.model, args.images, args.out, args.split, args.flips)
        print(json.dumps(summary["head"]))
        return 0

    if args.command == "finetune":
        from training.finetune import FinetuneConfig, finetune

        cfg = FinetuneConfig(views=args.views, epochs=args.epochs, lr=args.lr)
        summary = finetune(
            args.model, args.images, args.out, args.work, cfg, args.split, args.resume
        )
        record = summary["finetune"]
        print(json.dumps({k: v for k, v in record.items() if k != "history"}))  # type: ignore[union-attr]
        return 0

    if args.command == "levers":
        from training.ensemble import levers

        figures = levers(args.run)
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
        for name, row in {**figures["members"], **figures["ensembles"]}.items():
            print(f"{name:32s} val BMA {row['val_bma']:.4f}  val AUC {row['val_auc']:.4f}")
        return 0

    if args.command == "compare":
        from training.compare import compare

        for row in compare(args.models, args.out):
            print(json.dumps({k: v for k, v in row.items() if k != "val_bma_by_epoch"}))
        return 0

    if args.command == "card":
        from training.report import measure

        result = measure(args.model, args.images, args.fullres, args.out)
        if args.write_card:
            from training.card import write_card

            write_card(
                args.out / "metrics.json",
                Path("models/skin_lesion.training.json"),
                Path("training/comparison.json"),
                Path("models/manifest.json"),
                Path("models/MODEL_CARD.md"),
            )
        print(json.dumps({k: result[k] for k in ("point", "ci95", "fullres")}, indent=2))
        return 0

    from training.split import SPLIT_CSV
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        images=args.images,
        out=args.out,
        arch=args.arch,
        size=args.size,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        batch=args.batch,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        seed=args.seed,
        weights=None if args.no_pretrained else args.weights,
        split_csv=args.split or SPLIT_CSV,
        nv_per_epoch=args.nv_per_epoch,
        limit=args.limit,
        cache=args.cache,
        degrade=args.degrade,
    )
    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
