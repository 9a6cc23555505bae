"""Render models/MODEL_CARD.md (Mitchell et al. 2019 layout) from measured JSON, so every
figure in the card is one a command produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = {  # issue 17 acceptance (ECE: issue 3), on the lesion-level test split
    "bma": (">=", 0.68),
    "auc_macro_ovr": (">=", 0.95),
    "mel_sensitivity": (">=", 0.85),
    "mel_specificity": (">=", 0.75),
    "ece": ("<=", 0.05),
}
NAMES = {
    "accuracy": "accuracy",
    "bma": "balanced multiclass accuracy (BMA)",
    "auc_macro_ovr": "macro one-vs-rest AUC",
    "mel_sensitivity": "melanoma sensitivity at the shipped threshold",
    "mel_specificity": "melanoma specificity at the shipped threshold",
    "mel_specificity_at_95_sensitivity": "melanoma specificity at 95% sensitivity",
    "ece": "expected calibration error (15 bins)",
}


BITS = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16}


def _quantised(entry: dict[str, Any], manifest: dict[str, Any]) -> str:
    """What the "int8" file really is: its integer types, read from the manifest, and its gates."""
    q = manifest.get("quantization", {})
    act, weight = q.get("activation_type", "?"), q.get("weight_type", "?")
    scheme = f"A{BITS.get(act, '?')}W{BITS.get(weight, '?')}: {act} activations, {weight} weights"
    gates = (
        "accuracy gates passed" if entry.get("gates_passed") else "accuracy gates **not passed**"
    )
    return f"quantised, {scheme}; {gates}"


def _int8_gate_note(manifest: dict[str, Any]) -> str:
    """A card bullet naming the failed FP32-vs-quantised gates; empty when they passed."""
    entry = manifest.get("files", {}).get("int8")
    if not entry or entry.get("gates_passed"):
        return ""
    failed = [
        g
        for g in manifest.get("gates", [])
        if g["name"].startswith("fp32_int8") and not g["passed"]
    ]
    listed = "; ".join(
        f"{g['name'].removeprefix('fp32_int8.')} {g['value']:.3f}, limit "
        f"{'>=' if g['kind'] == 'min' else '<='} {g['limit']:g}"
        for g in failed
    )
    split = manifest.get("parity", {}).get("split", "test")
    return (
        f"- `{entry['path']}` **did not pass** its accuracy gates against FP32 on the {split} "
        f"split{f' ({listed})' if listed else ''}, so it is not the preferred file.\n"
    )


def _int8_selection_note(manifest: dict[str, Any]) -> str:
    """A card bullet saying on which split the quantised file was chosen among attempts."""
    entry = manifest.get("files", {}).get("int8")
    if not entry:
        return ""
    if manifest.get("quantization", {}).get("selection", {}).get("split") == "val":
        return (
            f"\n- `{entry['path']}` was chosen among its quantisation attempts on the val split; "
            "test measured only the file kept, once."
        )
    return (
        f"\n- Exception: the shipped quantised file `{entry['path']}` was selected by an earlier "
        "build that scored its quantisation attempts (which nodes stay FP32, the fallback to "
        "16-bit activations) on the **test** split. The next `python -m conversion build` scores "
        "attempts on the val split and evaluates only the file it keeps on test."
    )


def _met(key: str, value: float) -> str:
    if key not in TARGETS:
        return "-"
    op, bound = TARGETS[key]
    ok = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:.2f}: **{'met' if ok else 'MISSED'}**"


def _gate_section(manifest: dict[str, Any]) -> str:
    """The intended-use gate's thresholds and measured rates, from the gate file beside it."""
    entry = manifest.get("files", {}).get("gate")
    path = Path("models") / entry["path"] if entry else None
    if path is None or not path.is_file():
        return "\n**No intended-use gate file is recorded for this model.**\n"
    doc = json.loads(path.read_text())
    figures = doc.get("figures", {})
    fr = figures.get("false_rejects", {})
    thresholds = ", ".join(f"`{k}` {v:g}" for k, v in doc["quality"]["thresholds"].items())
    view = "x".join(str(v) for v in doc["quality"].get("view", (160, 120)))
    dist = doc.get("distribution")
    groups = "\n".join(
        f"| {g} | {v['images']} | {v['rejected'] * 100:.1f}% | {v['by_quality_checks'] * 100:.1f}% |"
        for g, v in figures.get("rejection_by_group", {}).items()
    )
    auroc = figures.get("auroc_test_vs_non_dermoscopic", {})
    accepted = figures.get("accepted_dev_items")  # absent from gate files before 2026-12-06
    passed = ""
    if accepted:
        passed = (
            f"\nDev-set images the gate let through: {', '.join(f'`{a}`' for a in accepted)}.\n"
        )
    elif accepted is not None:
        passed = "\nThe gate let no dev-set image through.\n"
    full = (
        f"; {fr['fullres']} of the {fr['fullres_images']} full-resolution originals"
        if "fullres" in fr
        else ""
    )
    framed = fr.get("round_field")  # absent from gate files before 2026-12-06 (later session)
    round_field = ""
    if framed:  # absent from gate files before the 2026-12-06 afternoon
        ratios = [key.removeprefix("round_field_") for key in framed]
        left_black = fr["round_field_left_black"]
        rows = "\n".join(
            f"| {ratio} | {framed[key] * 100:.1f}% | {left_black[key] * 100:.1f}% |"
            for ratio, key in zip(ratios, framed, strict=True)
        )
        round_field = f"""- **A dermatoscope's round field of view:** {fr["round_field_images"]} test images framed
  black outside a centred disc (its diameter over the picture's height below; under 1, the
  picture keeps its size inside a larger black frame, as a phone's camera sees the lens). The
  service crops to a small disc and fills the black outside a larger one with each pixel's mirror
  image across the disc's edge (`app/inference/field_of_view.py`); the gate scores say so
  (`field_of_view_cropped`, `field_of_view_filled`). Fundus photographs have a round field too:
  see the limits.

| disc diameter / picture height | refused | refused, left black |
|---|---|---|
{rows}

"""
    distribution = (
        f"- **Distribution check:** {dist['method']}: Mahalanobis distance to the nearest class "
        f"mean (shared covariance, Ledoit-Wolf) on pooled features of {len(dist['blocks'])} depths "
        "of the backbone (Lee et al., 2018), standardised per depth and summed; statistics from "
        f"the train split, threshold {dist['threshold']:g} at val's 99th percentile. AUROC "
        f"against the dev set's non-dermoscopic images: Mahalanobis {auroc.get('mahalanobis')}, "
        f"energy score on the logits {auroc.get('energy')} (measured, not used).\n"
        if dist
        else "- **Distribution check:** none (the model has no features output): quality "
        "checks only.\n"
    )
    return f"""
### The intended-use gate
Every entry point refuses (422 `image_rejected`, with the reasons in plain words) what the model
cannot judge. Thresholds live in `{entry["path"]}`, refitted by `python -m conversion build`.
- **Quality checks** on a fixed {view} view of the decoded image (the model's own input picture
  where it is at least 160x120, so they cost no resize of their own): {thresholds}. Each sits halfway
  from the train split's 0.1 % tail to the end of its scale; `too_small` is the model's input.
{distribution}- **False rejects:** {fr.get("test", 0) * 100:.2f}% of the {fr.get("test_images")} test images,
  {fr.get("val", 0) * 100:.2f}% of val{full}.
{round_field}- **Dev set** (`conversion/devset.py`: packaged sample photos, LFW faces, rendered documents and
  screens, synthetic frames, and HAM10000 test images degraded):

| group | images | refused | by quality checks alone |
|---|---|---|---|
{groups}
{passed}
**Limits.** The gate is not a guarantee: a real lesion photographed badly may be refused, and an
out-of-scope lesion (or a lesion-like texture) photographed well may pass, and so may a fundus
photograph, whose round field is cropped and filled like a dermatoscope's. It learnt "dermoscopy"
from one dataset (HAM10000): other dermatoscopes may be refused more often than these figures say.
Measured (for the previous model's gate) on 300 test images altered as another device might show
them: a random colour cast of up
to 15 % per channel raised false rejects to 5.7 %, a black circular vignette to 3.0 %, a square
224x224 crop to 2.3 %, a 90 degree turn to 1.7 %, a 1024x768 upscale to 1.3 % (unaltered: 1.0 %).
Setting the threshold on such altered copies too would have let the distribution check pass 26 %
of the everyday photos, so it was not done: a clinic with another dermatoscope should check its own false-reject
rate before relying on the gate.
A clinician may choose "analyse anyway" on the web form; the result is then marked *outside
intended use* on the page and the PDF, and the choice is audited.
"""


def _localisation_rows(maps: dict[str, Any], prefix: str = "") -> str:
    return "\n".join(
        f"| {prefix}`{name}` ({'x'.join(str(d) for d in m['grid'])}) | {m['pointing'] * 100:.1f}% "
        f"| {m['mass']:.2f} |"
        for name, m in maps.items()
    )


_SHOWN_BEFORE = "multi_scale_average"  # what the service showed before Layer-CAM (issue 19)
_SHOWN_PREVIOUSLY = {"layer_cam_three_scales": "layer_cam_geometric"}  # the map it replaced


def _localisation_section() -> str:
    """How well the explanation maps point at the lesion, from models/card/localisation.json."""
    path = Path("models") / "card" / "localisation.json"
    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    rows = _localisation_rows(doc["maps"])
    base = doc["baselines"]
    shown = doc.get("shown", _SHOWN_BEFORE)
    figures = doc["maps"][shown]
    previous = _SHOWN_PREVIOUSLY.get(shown, _SHOWN_BEFORE)
    before = doc["maps"].get(previous)
    versus = (
        f" (the explanation shown before, `{previous}`: {before['pointing'] * 100:.1f}% and "
        f"{before['mass']:.2f})"
        if before and shown != previous
        else ""
    )
    points, holds = figures["pointing"] >= 0.9, figures["mass"] >= 0.65
    verdict = {
        (True, True): "It **meets both targets** (pointing >= 90 %, mass >= 0.65) on this split",
        (True, False): "It **meets the pointing target** (>= 90 %) and **misses the mass target** "
        f"(>= 0.65) on this split, by {0.65 - figures['mass']:.3f}",
        (False, True): "It **misses the pointing target** (>= 90 %) and meets the mass target "
        "(>= 0.65) on this split",
        (False, False): "It **misses the targets** (pointing >= 90 %, mass >= 0.65) on this split",
    }[points, holds]
    centre = (
        f"points at the lesion more often than the image centre ({base['centre_pointing']:.1%}), "
        "where dermoscopy puts the lesion, but not by much"
        if figures["pointing"] > base["centre_pointing"]
        else f"points at the lesion no more often than the image centre "
        f"({base['centre_pointing']:.1%}), where dermoscopy puts the lesion"
    )
    return f"""
## Explanations: do the heat maps point at the lesion?
Measured with `python -m conversion localise models/skin_lesion_cam.onnx --split {doc["split"]}` on
the {doc["split"]} split, for the predicted class's map, against lesion references made without
hand labelling: a classical segmentation (darker or differently coloured than the surrounding
skin, Otsu, morphology, the component nearest the centre). It dropped {doc["dropped"]} of
{doc["images"]} images where it plainly failed (nothing plausible found). Of the first 60 checked
by eye at 200x150 (`models/card/lesion_references.png`), 3 were dropped and about 4 of the 57 kept
are wrong or partial (a hair tuft, a neighbouring patch, a dot, a fragment of a faint lesion).
The share inside the lesion is of the map as the API returns it (its positive part, upsampled
bilinearly to the model's view), with no floor subtracted.

| map (grid) | pointing game: peak inside the lesion | share of the map inside the lesion |
|---|---|---|
{rows}
| baseline: the image centre | {base["centre_pointing"] * 100:.1f}% | |
| baseline: a uniform map | | {base["uniform_mass"]:.2f} |

{_previous_localisation()}
The service shows `{shown}`: {figures["pointing"] * 100:.1f}% and {figures["mass"]:.2f} here{versus}.
{verdict}. {_SHOWN_TEXT.get(shown, "")}
{_candidates()}
The shown map {centre}. It is a view of the model's evidence, not a lesion finder, and a
classical segmentation is not a dermatologist's outline either.
"""


_SHOWN_TEXT = {
    "layer_cam_three_scales": (
        "It is Layer-CAM (each activation weighted by its own positive gradient of the class's "
        "logit) on three blocks of each member: the last one, which the pooled head reads "
        "(`layer_cam_last`, 5x7; there the gradient is the head's weight spread over the grid), "
        "the block at stride 16 (`layer_cam`, 10x13) and the one at stride 8 (`layer_cam_fine`, "
        "19x25). The members are summed, and each activation is taken relative to its mean over "
        "the image (the evidence a place adds beyond the image's average place, which is what "
        "the pooled head reads). The three maps, each scaled to a peak of 1, are combined by "
        "their geometric mean on the 19x25 grid, so a place counts only where every scale sees "
        "evidence: the coarse last block keeps a fine block's hair or ruler mark from winning. "
        "The gradients are one ONNX backward pass, checked element by element against finite "
        "differences of the model's logits when it is built. The geometric mean is of degree "
        "one: it does not sharpen the map, so its mass inside the lesion is not a contrast "
        "setting (a product of the maps, or a power of one, raises that figure without pointing "
        "any better, and was not used)."
    ),
    "layer_cam_geometric": (
        "It is Layer-CAM (each activation weighted by its own positive gradient of the class's "
        "logit) on each member's block at stride 16 (`layer_cam`) and at stride 8 "
        "(`layer_cam_fine`), the members summed, each activation taken relative to its mean over "
        "the image (the evidence a place adds beyond the image's average place, which is what "
        "the pooled head reads); the two maps, each scaled to a peak of 1, are combined by their "
        "geometric mean on the 19x25 grid. The gradients are one ONNX backward pass, checked "
        "element by element against finite differences of the model's logits when it is built. "
        "The geometric mean is of degree one: it does not sharpen the map, so its mass inside "
        "the lesion is not a contrast setting (a product of the maps, or a power of one, "
        "raises that figure without pointing any better, and was not used)."
    ),
    "multi_scale_average": (
        "It is the last block's exact class map averaged with Grad-CAM on each member's finer "
        "block before the last stride."
    ),
}


# The ONNX run of an explanation against a prediction's, one thread, by how far back its
# backward pass goes (measured on the 3 x MobileNetV2-0.35 at 200x150, shared 2-core machine).
_RUN_COST = {"last": "~1.0x", "16": "2.0x", "8": "3.0x"}


def _candidates() -> str:
    """The val table the shown map was chosen from (models/card/localisation_candidates.json)."""
    path = Path("models") / "card" / "localisation_candidates.json"
    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    rows = "\n".join(
        f"| {c['name']} | {c['pointing'] * 100:.1f}% | {c['mass']:.2f} | "
        f"{_RUN_COST.get(c['backward_to'], '?')} |"
        for c in doc["candidates"]
    )
    kept = doc["images"] - doc["dropped"]
    return f"""
It was chosen on the **{doc["split"]}** split only ({kept} images with a reference), as the map
with the most mass inside the lesion among those pointing at it in >= 90 % of images, within the
cost budget (an explanation <= 3x a prediction); the test figures above were measured once,
after. Every candidate explains the predicted class with the model's own gradients and
activations; none mixes in a segmentation or a centre prior. Produced by
`python -m conversion localise models/skin_lesion.onnx --candidates --split val --json
models/card/localisation_candidates.json`. The cost column is the explanation graph's ONNX run
against the plain model's; end to end (`python -m benchmarks`, `explain_cost_vs_predict`, decode
and overlay included) the three-scale map measured 2.71x a prediction (2-core Intel Xeon with
AVX-512 VNNI, 2026-12-06); the two-scale one before it 2.62x and 2.76x in two runs, and the
multi-scale Grad-CAM before that 2.08x and 2.16x (2-core AMD EPYC). The last row sharpens a map
(degree 3): its higher mass comes from contrast alone (a product of the members' maps scores the
same), so such maps were not candidates.

| candidate ({doc["split"]}) | pointing | share inside | ONNX run vs a prediction's |
|---|---|---|---|
{rows}
| baseline: the image centre | {doc["baselines"]["centre_pointing"] * 100:.1f}% | | |
| baseline: a uniform map | | {doc["baselines"]["uniform_mass"]:.2f} | |
{_centred_candidates()}"""


def _centred_candidates() -> str:
    """The same sweep explaining the logit minus the mean logit, a lever measured on the
    ensemble this model replaced and not kept (``replaced/localisation_candidates_centred.json``
    beside that ensemble's own plain sweep)."""
    folder = Path("models") / "card" / REPLACED
    path = folder / "localisation_candidates_centred.json"
    localisation = folder / "localisation.json"
    if not (path.is_file() and localisation.is_file()):
        return ""
    centred = {c["name"]: c for c in json.loads(path.read_text())["candidates"]}
    plain = json.loads((folder / "localisation_candidates.json").read_text())
    shown_map = json.loads(localisation.read_text()).get("shown", _SHOWN_BEFORE)
    pairs = [(c, centred[c["name"]]) for c in plain["candidates"] if c["name"] in centred]
    shown = next((p for p in pairs if f"`{shown_map}`" in p[0]["name"]), None)
    if shown is None:
        return ""
    gains = [after["mass"] - before["mass"] for before, after in pairs]
    return f"""
On the ensemble this model replaced (GPU members v1-v3; `{REPLACED}/`), explaining the predicted
class's logit minus the mean of the logits instead (the part of a logit the softmax reads:
evidence that raises every logit alike changes no probability), the same candidates on the same
images (`--centred`, `localisation_candidates_centred.json`) against that ensemble's own: the shown
map {shown[1]["pointing"] * 100:.1f}% and {shown[1]["mass"]:.3f} (the logit: \
{shown[0]["pointing"] * 100:.1f}% and {shown[0]["mass"]:.3f}), and mass moved by \
{min(gains):+.3f} to {max(gains):+.3f} over the candidates. Not kept: no difference.
"""


def _previous_localisation() -> str:
    path = Path("models") / "card" / "previous_localisation.json"
    if not path.is_file():
        return ""
    rows = _localisation_rows(json.loads(path.read_text())["maps"], "previous model, ")
    return f"""
The model this one replaced (MobileNet-0.25 at 160x120), same split and method
(`previous_localisation.json`; its shown map was `fine_maps`):

| map (grid) | pointing game | share inside the lesion |
|---|---|---|
{rows}
"""


def _architecture(cfg: dict[str, Any]) -> str:
    if not cfg.get("members"):
        return (
            f"`{cfg['arch']}` (ImageNet-pretrained backbone from Keras Applications), "
            "global-average-pooling + dense head (kept so class-activation maps need no "
            "retraining), temperature folded into the dense layer before the softmax."
        )
    members = cfg["members"]
    return (
        f"an ensemble of {len(members)} ImageNet-pretrained `{members[0]['arch']}` backbones "
        "(Keras Applications; "
        + ", ".join(f"{m['name']} seed {m['seed']}" for m in members)
        + "; where each was trained: the members' tables below) in **one graph**: their last feature maps are concatenated and read by one "
        "global-average-pooling + dense head whose kernel is the members' kernels stacked and "
        "divided by their number, so the logits are exactly the mean of the members' logits "
        "(checked when the model is assembled). One `session.run` serves all members, and the "
        "gate, calibration and explanations see one model. Temperature folded into the dense "
        "layer before the softmax."
    )


def _issue17_section(metrics: dict[str, Any], training: dict[str, Any]) -> str:
    """Levers measured on val, the previous model beside this one on test, INT8 recipes."""
    card = Path("models/card")
    out = []
    levers_path = card / "levers.json"
    if levers_path.is_file():
        lev = json.loads(levers_path.read_text())

        def recipe(c: dict[str, Any]) -> str:
            if not c.get("strong_aug", True) and not c.get("mix_prob"):
                return "plain (flips, rotation, zoom, shift, colour jitter)"
            return "full (+ MixUp/CutMix, illuminant, vignette, hairs, label smoothing)"

        rows = "\n".join(
            f"| {name} | `{m['config']['arch']}` | {m['config']['size'][0]}x"
            f"{m['config']['size'][1]} | {recipe(m['config'])} | {m['config']['seed']} | "
            f"{m['epochs']} | {m['val_bma']:.3f} | {m['val_auc']:.3f} |"
            for name, m in lev["members"].items()
        )
        ens = "\n".join(
            f"| {name} | {', '.join(e['members'])} | {e['val_bma']:.3f} | {e['val_auc']:.3f} |"
            for name, e in lev["ensembles"].items()
        )
        out.append(f"""## What was tried for this model (issue 17), on the val split
All members trained at once on one GPU lease (PyTorch backend, `python -m training.portable
fleet`, plan `training/plans/gpu.json`), each with a 290 s budget that fixed its cosine schedule
after two epochs (AdamW, warm-up, batch 64, class-balanced nevus sampling, square-root class
weights). Best epoch by val BMA. Figures from `python -m training levers {lev["run"]}`.

| member | backbone | input | recipe | seed | epochs | val BMA | val AUC |
|---|---|---|---|---|---|---|---|
{rows}

| ensemble (mean of logits) | members | val BMA | val AUC |
|---|---|---|---|
{ens}

- **Native resolution** paid: MobileNet-0.25 at 200x150 against 160x120, same seed and recipe
  (m1 against a_160x120).
- **The heavier recipe did not pay in these short schedules**: a_plain beat m1 on val BMA.
  MixUp/CutMix and the artefact augmentations usually need longer training than 27 epochs.
- **Backbone**: MobileNetV2-0.35 beat MobileNet-0.25 by 4-5 BMA points at twice the cost.
- **Ensembles** paid: three MobileNetV2-0.35 members over the best single one. Mixed
  ensembles cannot share one head here (4x6 against 5x7 feature grids at 200x150).
- **Distillation** was not tried then: the GPU lease (15 minutes in all) was spent on the
  members. A later CPU member distilled from the shipped trio (v7, below) did not pay.
- Flip test-time augmentation did not help the earlier model (below) and was not repeated.
""")
    out.append(_head_section(training, card / REPLACED))
    out.append(_cpu_member_section(card / "levers_cpu.json", training))
    for member in LATER_MEMBERS:  # a member not yet weighed has no record and no section
        if section := _later_member_section(card / f"levers_{member}.json", member):
            out.append(section)
    out.append(_finetune_section(card / REPLACED / "finetune.json", training))
    out.append(_adjustment_section(training))
    previous_path = card / "previous_metrics.json"
    if previous_path.is_file():
        prev = json.loads(previous_path.read_text())
        columns = [prev]
        heads = ["previous model (95% CI)"]
        replaced_path = card / REPLACED / "metrics.json"
        if replaced_path.is_file():
            columns.append(json.loads(replaced_path.read_text()))
            heads.append("the ensemble it replaced, GPU members v1-v3 (95% CI)")
        columns.append(metrics)
        heads.append("this model (95% CI)")

        def cell(m: dict[str, Any], k: str) -> str:
            return f"{m['point'][k]:.3f} ({m['ci95'][k][0]:.3f} – {m['ci95'][k][1]:.3f})"

        lines = "\n".join(
            f"| {NAMES[k]} | " + " | ".join(cell(m, k) for m in columns) + " |" for k in NAMES
        )
        fullres = " | ".join(f"{m['fullres']['top1_agreement']:.3f}" for m in columns)
        out.append(f"""## This model beside the one it replaced (same test split)
The previous model was MobileNet-0.25 at 160x120 (CPU-trained, `previous_metrics.json`).

| metric | {" | ".join(heads)} |
|---|{"---|" * len(heads)}
{lines}
| full-resolution top-1 agreement (44 originals) | {fullres} |
""")
    sweep_path = card / "int8_sweep.json"
    if sweep_path.is_file():
        sw = json.loads(sweep_path.read_text())
        rows = "\n".join(
            f"| {r['recipe']} | {r['top1_agreement']:.3f} | "
            f"{'passed' if r['gates_passed'] else 'failed: ' + ', '.join(g.removeprefix('fp32_int8.') for g in r['failed_gates'])} | "
            f"{r['speedup']['batch1']:.2f}x | {r['speedup']['batch8']:.2f}x |"
            for r in sw["recipes"]
        )
        vnni = "with" if sw["cpu"]["avx512_vnni"] else "**without**"
        amx = " and AMX-INT8" if sw["cpu"].get("amx_int8") else ""
        out.append(f"""## INT8 (`python -m conversion int8-sweep`, val split, one thread)
CPU: {sw["cpu"]["model"]}, {vnni} AVX512-VNNI{amx}. Needed: the build's gates and at least
{sw["needed"]["speedup"]["batch1"]}x at batch 1 and {sw["needed"]["speedup"]["batch8"]}x at batch 8.

| recipe | top-1 agreement | gates | speed-up, batch 1 | speed-up, batch 8 |
|---|---|---|---|---|
{rows}

{int8_diagnosis(sw["recipes"])}
**Verdict: {sw["verdict"]}.** Sweeps on other CPUs are in `benchmarks/RESULTS.md`. The FP16 file
for the CUDA provider is described below.
""")
    return "\n".join(out)


def int8_diagnosis(rows: list[dict[str, Any]]) -> str:
    """What the sweep's diagnosis rows (``conversion.int8_sweep``) say: whether 8-bit weights or
    8-bit activations cost the agreement (both keep 16-bit activations; only the weights differ)."""

    def agreement(weights: str) -> float | None:
        found = [r for r in rows if "(diagnosis)" in r["recipe"] and weights in r["recipe"]]
        return found[0]["top1_agreement"] if found else None

    w8, w16 = agreement("8-bit weights"), agreement("16-bit weights")
    if w8 is None or w16 is None:
        return ""
    cause = (
        "the agreement is lost in the 8-bit weights, not in the activations. Per-channel 8-bit "
        "post-training quantisation of these members' weights is too coarse; training with "
        "quantisation in the loop (QAT) or learned rounding (AdaRound) are the known remedies, "
        "not tried here, and INT8 would still have to be 1.3x faster than FP32 at batch 1"
        if w16 >= 0.98 > w8
        else "the diagnosis does not single out the weights"
    )
    return f"""
The diagnosis rows are not candidates. With 16-bit activations, 8-bit weights agree
{w8:.3f} with FP32 and 16-bit weights {w16:.3f}: {cause}.
"""


def _cpu_member_section(path: Path, training: dict[str, Any]) -> str:
    """A whole member trained on this CPU beside the GPU members it could replace, when its
    record (``python -m training levers`` over the unpacked members and the new one) is here."""
    if not path.is_file():
        return ""
    lev = json.loads(path.read_text())
    shipped = [m["name"] for m in training["config"].get("members", [])]

    def trained(m: dict[str, Any]) -> str:
        where = "this CPU (TensorFlow)" if m.get("backend") == "tensorflow" else "GPU (PyTorch)"
        cut = m["epochs"] < m["config"].get("max_epochs", m["epochs"])
        return where + (", schedule cut by the budget" if cut else ", whole schedule")

    rows = "\n".join(
        f"| {name} | {trained(m)} | {m['config']['seed']} | {m['epochs']} | {m['minutes']} | "
        f"{m['val_bma']:.3f} | {m['val_auc']:.3f} |"
        for name, m in lev["members"].items()
    )
    ens = "\n".join(
        f"| {name} | {', '.join(e['members'])} | {e['val_bma']:.3f} | {e['val_auc']:.3f} | "
        f"{'**shipped**' if sorted(e['members']) == sorted(shipped) else ''} |"
        for name, e in lev["ensembles"].items()
    )
    return f"""## A whole member trained on this CPU (val split)
The GPU members stopped after 17-18 of 60 planned epochs. `python -m training.portable member`
trains one MobileNetV2-0.35 member with the same recipe on the TensorFlow backend. An epoch took
about a minute ({lev.get("cpu", "this CPU")}), so the whole 60-epoch cosine schedule fits in about
an hour. `python -m training unpack` turned the first shipped ensemble (before its
joint head) back into its members so the new one could take a place. The rule, set before v4's
figures were seen: v4 replaces the member whose removal leaves the best val macro AUC, if that
triple beats the GPU triple on both val BMA and val macro AUC (mean of the members' logits,
before the head and the calibration). Four members would not fit the 6 ms budget.

| member | trained | seed | epochs | minutes | val BMA | val AUC |
|---|---|---|---|---|---|---|
{rows}

| ensemble (mean of logits) | members | val BMA | val AUC | |
|---|---|---|---|---|
{ens}

v1-v3 here are the unpacked members, each with the merged head's mean bias (its own cannot be
split off), scored here, so their figures differ a little from the fleet's table above (logits
saved on the GPU machine); the trio of them gives exactly the first shipped ensemble's logits. Each member's epoch is its best by val BMA, over 60 epochs for v4
and 17-18 for the others, which favours v4 a little by selection. The test split was read once,
after the choice (the comparison below).
"""


SHIPPED_TRIO = "v4 in place of v1"  # training/ensemble.py ENSEMBLES: the trio shipped since v4


# CPU members after v4, each weighed by a rule written before its figures
LATER_MEMBERS = {"v5": "a fifth", "v6": "a sixth", "v7": "a seventh", "v8": "an eighth"}


def _alone_reading(new: dict[str, Any], shipped: dict[str, Any]) -> tuple[str, bool]:
    """A distilled member's second reading (training/plans/cpu_v7.json): alone, at a third of
    the trio's cost, it replaces the trio only if it matches it on both val BMA and AUC.
    Returns a line for the section and whether it passes."""
    cfg = new["config"]
    wins = all(new[k] >= shipped[k] for k in ("val_bma", "val_auc"))
    outcome = (
        "matches the shipped trio on both val BMA and AUC: it would replace it."
        if wins
        else f"does not match the shipped trio (val BMA {new['val_bma']:.4f} against "
        f"{shipped['val_bma']:.4f}, AUC {new['val_auc']:.4f} against "
        f"{shipped['val_auc']:.4f}), so it does not replace it alone."
    )
    text = (
        f"Distilled from `{cfg['teacher']}` (the shipped trio): each target was "
        f"{cfg['distill_weight']:.0%} the teacher's probabilities at temperature "
        f"{cfg['distill_temperature']:g} and the rest the smoothed label. Alone, a one-member "
        f"model at a third of the trio's serving cost, it {outcome}\n"
    )
    return text, wins


def _later_member_section(path: Path, member: str) -> str:
    """A later CPU member weighed against the shipped trio by a rule set before its figures
    (``levers_vN.json``: ``python -m training levers`` over the unpacked, unblended and new
    members, with the rule and a remark; the verdict is worked out here from its figures)."""
    if not path.is_file():
        return ""
    lev = json.loads(path.read_text())
    new = lev["members"][member]
    shipped = lev["ensembles"][SHIPPED_TRIO]
    tried = {k: e for k, e in lev["ensembles"].items() if member in e["members"]}
    rows = "\n".join(
        f"| {name} | {', '.join(e['members'])} | {e['val_bma']:.3f} | {e['val_auc']:.4f} |"
        for name, e in {"shipped": shipped, **tried}.items()
    )
    sources = "\n".join(f"- {who}: {how}" for who, how in lev["members_from"].items())
    best = max(tried, key=lambda k: tried[k]["val_auc"])  # the rule's pick: the best val AUC
    wins = all(tried[best][k] > shipped[k] for k in ("val_bma", "val_auc"))
    alone, alone_wins = (
        _alone_reading(new, shipped) if new["config"].get("teacher") else ("", False)
    )
    best_bma, best_auc = tried[best]["val_bma"], tried[best]["val_auc"]
    if wins:
        outcome = f"beats the shipped trio on val BMA and AUC: {member} goes on to the pipeline"
    else:
        outcome = (
            f"does not beat the shipped trio on both (val BMA {best_bma:.4f} against "
            f"{shipped['val_bma']:.4f}, AUC {best_auc:.4f} against {shipped['val_auc']:.4f})"
        ) + (
            f"; {member} alone goes on to the pipeline"
            if alone_wins
            else ": the shipped model stays"
        )
    verdict = f"{best} leaves the best val AUC ({best_auc:.4f}) and {outcome}"
    kept = wins or alone_wins
    return f"""### {LATER_MEMBERS[member].capitalize()} member ({member}), {"kept" if kept else "not kept"}
Trained on another CPU ({lev["cpu"]}), seed {new["config"]["seed"]}, {new["epochs"]} epochs in
{new["minutes"]} minutes: val BMA {new["val_bma"]:.3f}, macro AUC {new["val_auc"]:.3f} (v4:
{lev["members"]["v4"]["val_bma"]:.3f}, {lev["members"]["v4"]["val_auc"]:.3f}). {alone}The members beside it:
{sources}

The unblended v4 alone scores as it did when it was trained, and the shipped trio as before
within 0.001 (each member now carries the mean bias). Rule, written before {member}'s figures:
{lev["rule"]}

| trio (mean of logits) | members | val BMA | val AUC |
|---|---|---|---|
{rows}

Verdict: **{verdict}.** {lev["remark"]}
"""


def _finetune_section(path: Path, training: dict[str, Any]) -> str:
    """The CPU fine-tune of the members' tops (``python -m training finetune``), when its
    record is in the card: each run's chosen, best-AUC and last epochs on val against the model
    it started from."""
    if not path.is_file():
        return ""
    tried = json.loads(path.read_text())
    first = tried["runs"][0]
    before = first["before"]
    rows = []
    for run in tried["runs"]:
        history = run["history"]
        shown: dict[int, list[str]] = {}
        best_auc = max(history, key=lambda r: r["val_macro_auc"])["epoch"]
        for epoch, why in (
            (run["best_epoch"], "best by the criterion"),
            (best_auc, "highest val macro AUC"),
            (history[-1]["epoch"], "last"),
        ):
            shown.setdefault(epoch, []).append(why)
        for epoch in sorted(shown):
            r = history[epoch - 1]
            rows.append(
                f"| {run['config']['lr']:g} | {epoch} of {len(history)} | {r['val_bce']:.3f} | "
                f"{r['val_bma']:.3f} | {r['val_macro_auc']:.4f} | "
                f"{r['val_mel_specificity']:.3f} | {', '.join(shown[epoch])} |"
            )
    table = "\n".join(rows)
    top_auc = max(r["val_macro_auc"] for run in tried["runs"] for r in run["history"])
    after_one = ", ".join(f"{run['history'][0]['val_macro_auc']:.4f}" for run in tried["runs"])
    kept = "kept" if "finetune" in training else f"**{tried['verdict']}**"
    return f"""## Fine-tuning the replaced ensemble's tops on this CPU (val split), {kept}
The members stopped after 17-18 of 60 planned epochs, and no GPU was lent in later sessions.
`python -m training finetune` cuts each MobileNetV2 member after `{first["cut"]}` (stride 16),
caches the frozen bottoms' activations for the train images and {first["config"]["views"] - 1}
augmented views of each (the members' own augmentation), and trains the three tops (blocks
13-16 and `Conv_1`, BatchNorm frozen) and the shared head together on them, one view per image
and epoch: 11 s an epoch on {tried["cpu"]}, against about a minute for a whole member's epoch
(previous section). The epoch is
chosen by val class-balanced cross-entropy; the other figures are as `finalise` would calibrate
them, and every epoch is in `{REPLACED}/{path.name}`. The model it starts from (the ensemble
this model replaced, GPU members v1-v3, as shipped then) has val
balanced cross-entropy {before["val_bce"]:.3f}, BMA {before["val_bma"]:.3f}, macro AUC
{before["val_macro_auc"]:.4f} and melanoma specificity {before["val_mel_specificity"]:.3f}.

| peak learning rate | epoch | val balanced CE | val BMA | val macro AUC | val melanoma specificity at 85 % sensitivity | |
|---|---|---|---|---|---|---|
{table}

The best val macro AUC of any epoch is {top_auc:.4f}, against {before["val_macro_auc"]:.4f} for
the model it started from; after the first epoch it was already {after_one}. The tops were
trained on these same train images, so more training on them, however the pictures the frozen
bottoms see are augmented, fits train rather than val. The test split was not read for it.
"""


# The records of the ensemble this model replaced (GPU members v1-v3, as shipped until v4 took
# v1's place): its test figures, training summary and the levers measured on it.
REPLACED = "replaced"


def _head_rows(head: dict[str, Any], chosen: str) -> str:
    """One table row per head of a ``python -m training head`` record's val table."""

    def name(c: float | None) -> str:
        return "the members' mean head alone" if c is None else f"blend, C = {c:g}"

    return "\n".join(
        f"| {name(r['c'])} | {r['tau']:.2f} | {r['bma']:.3f} | {r['macro_auc']:.3f} | "
        f"{r['mel_specificity']:.3f} |" + (f" {chosen} |" if r["c"] == head["c"] else " |")
        for r in head["val"]
    )


def _chosen_row(head: dict[str, Any]) -> dict[str, Any]:
    """The val row of the C a ``python -m training head`` record chose."""
    return next(r for r in head["val"] if r["c"] == head["c"])


def _head_section(training: dict[str, Any], replaced: Path) -> str:
    """The joint head (``python -m training head``): what it is, its val table, and the
    flipped-train-images lever (``--flips``) beside it when its record is in the card."""
    head = training.get("head")
    if not head:
        return ""
    rows = _head_rows(head, "**chosen**")
    flips = ""
    flips_path = replaced / "head_flips.json"  # measured on the replaced ensemble
    if flips_path.is_file():
        tried = json.loads(flips_path.read_text())
        its_head = json.loads((replaced / "training.json").read_text())["head"]
        best, kept = _chosen_row(tried), _chosen_row(its_head)
        blends = tried["val"][1:]

        def span(key: str) -> str:
            return f"{min(r[key] for r in blends):.3f}-{max(r[key] for r in blends):.3f}"

        verdict = "**kept**" if best["bma"] > kept["bma"] else "**not kept**"
        alone = tried["val"][0]["bma"]
        flips = f"""
Tried on val, on the ensemble this model replaced (GPU members v1-v3): the regression fitted on
the train images and their three flips (`--flips`, 4 x the features; `{REPLACED}/{flips_path.name}`),
{verdict}. Its best blend by val BMA is {best["bma"]:.3f} (C = {tried["c"]:g}), against
{kept["bma"]:.3f} for that ensemble's chosen head and {alone:.3f} for its members' mean head alone. Across C its macro AUC was {span("macro_auc")}
(its chosen head {kept["macro_auc"]:.3f}) and its melanoma specificity {span("mel_specificity")}
(its chosen head {kept["mel_specificity"]:.3f}). BMA is the criterion, as for the head itself.

| head, flipped train images | tau | val BMA | val macro AUC | val melanoma specificity at 85 % sensitivity | |
|---|---|---|---|---|---|
{_head_rows(tried, "best BMA")}
"""
    share = head["members_share"]
    return f"""## The joint head (val split)
The members' heads each read only their own backbone; their mean was the first head. A
multinomial logistic regression on all {len(training["config"].get("members", [])) or "the"} members' pooled features at once, fitted on the
**train** split's images (scikit-learn, standardised features, folded into the Dense layer), can
weigh one member's evidence against another's. The head shipped is a blend: {share:g} x the
members' mean head plus {1 - share:g} x the joint one, each scaled by its own temperature on val
first. The blend is one Dense layer, so the graph, its cost, the gate's features and the
explanation model keep their shape. C (the regression's inverse regularisation) is the one with
the best **val** BMA after the usual logit adjustment. The share, and the plain (not
class-weighted) regression, came from a first look on val: shares 0.25, 0.5 and 0.75 and
square-root class weights were tried with features from the ONNX model; 0.5 was kept as the even
split and not tuned further.
`python -m training head models/skin_lesion.h5`; each row as `finalise` would calibrate it:

| head | tau | val BMA | val macro AUC | val melanoma specificity at 85 % sensitivity | |
|---|---|---|---|---|---|
{rows}

Train features come from backbones trained on the same images, so the regression alone fits
train far better than val; the blend and the choice of C on val keep that in check. The test
split was read once, after the choice (the comparison table below).
{flips}"""


def _adjustment_section(training: dict[str, Any]) -> str:
    """The logit adjustment's tau, chosen on val, and what it did on test."""
    fit = training.get("logit_adjustment")
    if not fit:
        return ""
    rows = "\n".join(
        f"| {r['tau']:.2f} | {r['bma']:.3f} | {r['macro_auc']:.3f} | "
        f"{r.get('mel_specificity', float('nan')):.3f} |"
        + (" **chosen** |" if r["tau"] == fit["tau"] else " |")
        for r in fit["val"]
    )
    return f"""## Logit adjustment for the class prior (val split)
The ensemble's logits get `-tau * log(prior)` added (Menon et al., 2021, post-hoc logit
adjustment; prior: the train split's class shares), folded into the Dense bias before the
temperature (`python -m training adjust`). Balanced accuracy rewards every class equally, and
the adjustment moves close calls from nevus towards the rarer classes. tau is the one with the
highest **val** BMA whose val macro AUC stays within {fit["max_auc_loss"]} of the unadjusted
model's and whose melanoma specificity (temperature refitted, threshold set for the shipped
sensitivity) stays within {fit["max_mel_specificity_loss"]}: neither the probabilities' ranking
nor the melanoma operating point may pay for it.

| tau | val BMA | val macro AUC | val melanoma specificity | |
|---|---|---|---|---|
{rows}

What it costs: the macro AUC and the melanoma specificity at the same sensitivity fall a
little (val, this table). Temperature and the melanoma threshold were refitted on val after it.

Disclosure: for the first ensemble (GPU members v1-v3, mean head), the first version of the
rule had only the AUC bound and chose tau 0.20. Its test
figures were seen (BMA 0.700, macro AUC 0.942, melanoma 0.836 / 0.695, ECE 0.051) before the
melanoma-specificity bound was added, so that bound was not chosen blind to the test split; it
is there because the melanoma flag is the output a clinician acts on.
"""


def _reproduce(cfg: dict[str, Any], manifest: dict[str, Any]) -> str:
    preferred = manifest.get("preferred", "skin_lesion.onnx")
    tail = f"""python -m conversion build models/skin_lesion.h5 -o models --triton models/triton
python -m conversion cam models/skin_lesion.onnx
python -m training card models/{preferred} --out models/card --write-card
python -m benchmarks accuracy models/{preferred} --images ../shared/data/ham10000/images --labels training/split.csv --split test
```"""
    if cfg.get("members"):
        names = " ".join(f"runs/mixed/{m['name']}" for m in cfg["members"])
        return f"""GPU members on a GPU machine with PyTorch (Keras 3 on the torch backend), the CPU member and
the rest here:
```bash
python -m training pack -o .carry/ham     # train + val JPEGs, byte-identical
KERAS_BACKEND=torch python -m training.portable fleet --data .carry/ham --weights ../shared/weights \\
    --plan training/plans/gpu.json --budget-s 290 -o runs/gpu
python -m training ensemble runs/gpu/v1 runs/gpu/v2 runs/gpu/v3 -o runs/gpu_ensemble.h5  # as first shipped
python -m training unpack runs/gpu_ensemble.h5 -o runs/mixed    # or: git show af5f802:models/skin_lesion.h5
python -m training.portable member --data .carry/ham --weights ../shared/weights --budget-s 5100 \\
    -o runs/mixed/v4 --config '{{"name": "v4", "arch": "mobilenetv2_035", "size": [200, 150], "max_epochs": 60, "seed": 4}}'
python -m training levers runs/mixed -o models/card/levers_cpu.json
python -m training ensemble {names} -o models/skin_lesion.h5
python -m training head models/skin_lesion.h5
{tail}
Per-member histories and the ensemble's calibration: `models/skin_lesion.training.json`."""
    return f"""```bash
python -m training train --arch {cfg["arch"]} --size {cfg["size"][0]}x{cfg["size"][1]} --epochs {cfg.get("epochs", "?")} -o models/skin_lesion.h5
{tail}"""


def render(
    metrics: dict[str, Any],
    training: dict[str, Any],
    comparison: list[dict[str, Any]],
    manifest: dict[str, Any],
) -> str:
    point, ci = metrics["point"], metrics["ci95"]
    cfg = training["config"]
    rows = "\n".join(
        f"| {NAMES[k]} | {point[k]:.3f} | {ci[k][0]:.3f} – {ci[k][1]:.3f} | {_met(k, point[k])} |"
        for k in NAMES
    )
    per_class = "\n".join(
        f"| {c} | {v['support']} | {v['recall']:.3f} | {v['precision']:.3f} | {v['auc']:.3f} |"
        for c, v in metrics["per_class"].items()
    )
    cmp_rows = "\n".join(
        f"| {r['arch']} | {r['input']} | {'ImageNet' if r['pretrained'] else 'scratch'} | "
        f"{r['epochs']} | {r['best_val_bma']:.3f} | {r['onnx_fp32_ms_batch1']:.2f} | "
        f"{r['onnx_fp32_ms_batch8'] / 8:.2f} | {r['onnx_bytes'] / 1e6:.2f} | {r['train_minutes']} |"
        for r in comparison
    )

    def described(kind: str, entry: dict[str, Any]) -> str:
        if kind == "int8":
            return _quantised(entry, manifest)
        if kind == "cam":
            return "fp32 + class and Layer-CAM maps, for explanations only"
        if kind == "fp16":
            check = entry.get("check", {})
            return (
                "half precision for the CUDA provider; top-1 agreement with FP32 "
                f"{check.get('top1_agreement', float('nan')):.3f} on {check.get('images', '?')} "
                "val images, checked on the CPU only"
            )
        if kind == "gate":
            return f"intended-use gate thresholds, {entry.get('mode', '')}"
        return kind

    files = "\n".join(
        f"| `{entry['path']}` ({described(kind, entry)}) | "
        f"{entry['size'] / 1e6:.2f} MB | `{entry['sha256']}` |"
        for kind, entry in manifest.get("files", {}).items()
    )
    source = manifest.get("source", {})
    if source.get("sha256"):
        files += f"\n| `{source.get('file', source.get('path', 'source .h5'))}` (Keras HDF5) | "
        h5 = Path("models") / source.get("file", "")
        size = h5.stat().st_size if h5.is_file() else 0
        files += f"{size / 1e6:.2f} MB | `{source['sha256']}` |"
    fr = metrics["fullres"]
    missed = [NAMES[k] for k in TARGETS if _met(k, point[k]).endswith("**MISSED**")]
    gap_close = (
        "What would close the remaining gap: the member trained for all 60 epochs (v4) beat each "
        "GPU member cut to 17-18 on val, but three later CPU members (v5, cut to 37 epochs; v6, "
        "all 60 in BF16 math; v8, all 60 in FP32, v4's recipe) did not improve the trio, so one "
        "seed's luck weighs about as much as the schedule, and a member distilled from the trio "
        "(v7) lost AUC. Several whole-schedule seeds to "
        "choose from on val (a GPU lease; 40-70 minutes each here), a teacher that has not "
        "seen the images it labels (out-of-fold), and the 600x450 originals at a higher input "
        "size."
        if missed
        else "All issue targets are met on the test split; the external set is still unmeasured."
    )
    gap = (
        "All acceptance targets of the model issue are met on the test split."
        if not missed
        else "**Targets missed on the test split:** " + "; ".join(missed) + ". See *Known limits*."
    )
    return f"""# Model card: `{metrics["model"]}`

> **A second opinion, not a diagnosis.** This model classifies *dermoscopic* images of
> pigmented skin lesions into 7 HAM10000 classes. It must not be used on its own to decide
> care, on clinical or phone photos, or on populations it was not tested on.

## Model details
- Architecture: {_architecture(cfg)}
- Input: {cfg["size"][0]}x{cfg["size"][1]} RGB (width x height), float32 pixels in [0, 255];
  the model scales them itself (a `Rescaling` layer).
- Output: calibrated probabilities over `akiec, bcc, bkl, df, nv, vasc, mel`.
- Files (see `models/manifest.json`; the server loads the one marked `preferred`,
  `{manifest.get("preferred", "?")}`):

| file | size | sha256 |
|---|---|---|
{files}

{_int8_gate_note(manifest)}- Licence of the weights: trained on HAM10000 (CC BY-NC-SA 4.0), so **non-commercial use only**,
  share-alike, with attribution. Backbone weights: Apache-2.0.

## Intended use
- **Primary use:** a second opinion for clinicians looking at dermoscopic images of skin lesions.
- **Out of scope:** diagnosis; clinical (non-dermoscopic) photos; phone photos (not validated);
  lesions outside the 7 classes; children; non-pigmented lesions; screening without a clinician.
{_gate_section(manifest)}{_localisation_section()}
{_issue17_section(metrics, training)}
## Factors
HAM10000 comes from two sites (Vienna, Queensland) and is **mostly light skin**. Performance on
darker skin types, other dermatoscopes and other sites is unknown. df and vasc have fewer than
150 images each, so their figures have wide intervals.

## Preprocessing contract
One function, `app.inference.preprocess.preprocess`, serves training data, evaluation,
calibration, INT8 calibration and serving: decode (OpenCV, EXIF orientation applied, reduced
JPEG decoding when the image is at least 2x the input), centre-crop to the model's 4:3 aspect,
resize with `INTER_AREA` first to the resolution the training images were stored at (200x150,
metadata `resample_via`) and then to the input size, RGB, float32 in [0, 255]. The ONNX file's metadata carries the input
size, layout, colour order, scaling, labels, temperature and melanoma threshold.

## Data and split
- Training data: HAM10000 at 200x150 (10,015 images, 7,470 lesions), split **by lesion** into
  train / val / test (~70/15/15 of lesions, stratified by class, seed fixed), committed as
  `training/split.csv`; a test proves that no lesion is in two parts.
- Evaluation data: the test split, {metrics["n"]} images of {metrics["n_lesions"]} lesions, never
  used for training, model selection, calibration or the threshold.{_int8_selection_note(manifest)}

## Metrics (test split)
95% intervals are percentile bootstrap intervals over **lesions** (1,000 rounds), because
images of one lesion are not independent.

| metric | value | 95% CI | issue target |
|---|---|---|---|
{rows}

{gap}

Per class (test split):

| class | n | recall | precision | one-vs-rest AUC |
|---|---|---|---|---|
{per_class}

![confusion matrix](card/confusion_matrix.png) ![ROC](card/roc.png)

## Calibration
Temperature T = {metrics["temperature"]:.3f}, fitted on the **val split only** (negative
log-likelihood), then folded into the dense layer. ECE (15 bins) on test:
{metrics["ece_before_calibration"]:.3f} before, {point["ece"]:.3f} after.
On val: {training["val_ece_before"]:.3f} before, {training["val_ece_after"]:.3f} after.

![reliability diagram](card/reliability.png)

## Melanoma operating point
The service reports the top class, and separately flags melanoma when
P(mel) ≥ **{metrics["mel_threshold"]:.4f}**. The threshold was chosen on val as the largest
giving sensitivity ≥ 0.85 there (val: sensitivity {training["val_mel_sensitivity"]:.3f},
specificity {training["val_mel_specificity"]:.3f}). On test: sensitivity
{point["mel_sensitivity"]:.3f}, specificity {point["mel_specificity"]:.3f}; specificity at 95%
sensitivity {point["mel_specificity_at_95_sensitivity"]:.3f}.

## Full-resolution inputs
Training saw 200x150 copies; the service receives 600x450 originals. On the
{fr["n"]} originals of `data/fullres`, predicting from the original and from its 200x150 copy
agreed on the top class for **{100 * fr["top1_agreement"]:.1f}%**, with a mean absolute
probability difference of {fr["mean_abs_prob_diff"]:.4f} (max {fr["max_abs_prob_diff"]:.3f}).
The issue's aim is ≥ 95%. With the first MobileNet-0.25 model (trained without `--degrade`),
resizing uploads straight to the input size gave 84.1% (37/44) and resampling through the
200x150 training resolution gave 93.2% (41/44). This ensemble takes 200x150 itself. Resampled
straight to it, originals agreed with their copies on 39/44, and the gate's distribution check
refused 12 of the 44 (their copies: 1): the copies are JPEGs at quality 75, and a clean resample
looks unlike them to this model. Uploads larger than 200x150 are now resampled to it and
compressed once at quality 75 as the copies were (`preprocess.as_stored`, about 0.3 ms), which
gives the figure above (measured with quality 90: 42/44, also 1 refused). The dataset's copies carry
JPEG artefacts at 200x150 that uploads do not, so a second run trained with JPEG re-compression
and rescaling augmentation (`--degrade`): it reached val BMA 0.626 (against 0.612) but only
86.4% (38/44) full-resolution agreement and val melanoma specificity 0.673 (against 0.756) at
the same sensitivity, so it was not shipped. On 44 images one flip is 2.3 points: these
agreement figures are noisy, and more originals are needed to measure the gap properly.

## Earlier model selection (the MobileNet-0.25 at 160x120 this model replaced)
Candidates trained with the same recipe (balanced nv sampling + square-root class weights,
dermoscopy augmentation: flips, any rotation, zoom, shift, brightness, contrast, saturation, hue),
chosen by validation BMA and single-thread ONNX FP32 latency (`python -m training compare`,
interleaved timing on one thread, `training/comparison.json`). The from-scratch CNN was stopped
after 2 of its 4 planned epochs to free the shared CPU: it had val BMA 0.296 after two epochs,
against 0.433 for the pretrained MobileNet-0.25 after two.

| backbone | input | init | epochs | best val BMA | ms, batch 1 | ms/img, batch 8 | ONNX MB | train min |
|---|---|---|---|---|---|---|---|---|
{cmp_rows}

Input size: the training images are 200x150, so anything above that only interpolates. On this
2-core CPU (measured before training, random data, batch 64), MobileNetV2-0.35 trained at 73 img/s
at 160x120, 34 img/s at 192x144 and 18 img/s at 224x168; MobileNet-0.25 at 83 img/s at 192x144;
the small CNN at 40 img/s at 128x96. 160x120 keeps the 4:3 aspect of the data and is the largest
size at which every candidate's full schedule fitted the 2-hour training budget while the
machine was shared; single-thread latency is far below the 5 ms budget at every size.
MobileNet-0.25 was chosen: the best validation BMA and the fastest ONNX model of the three.

## Known limits
- Accuracy is well below the ISIC 2018 leaders (BMA 0.845 with large ensembles at full
  resolution): these are small models at 200x150.
- HAM10000 is mostly light skin; df and vasc have fewer than 150 images each.
- Not checked on phone photos or clinical photos.
- {gap_close}

## How to reproduce
{_reproduce(cfg, manifest)}
Training log and per-epoch validation figures: `models/skin_lesion.training.json`.
"""


def write_card(
    metrics_json: Path, training_json: Path, comparison_json: Path, manifest_json: Path, out: Path
) -> None:
    manifest = json.loads(manifest_json.read_text())
    comparison = json.loads(comparison_json.read_text()) if comparison_json.is_file() else []
    out.write_text(
        render(
            json.loads(metrics_json.read_text()),
            json.loads(training_json.read_text()),
            comparison,
            manifest,
        )
    )
