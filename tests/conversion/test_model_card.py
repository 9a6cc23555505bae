"""The model card says what the shipped files are, and its reproduce commands run."""

from __future__ import annotations

import copy
import csv
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from training.card import LATER_MEMBERS, int8_diagnosis, render

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _render(manifest: dict[str, Any] | None = None) -> str:
    return render(
        _json(MODELS / "card" / "metrics.json"),
        _json(MODELS / "skin_lesion.training.json"),
        _json(REPO / "training" / "comparison.json"),
        manifest if manifest is not None else _json(MODELS / "manifest.json"),
    )


def _row(card: str, path: str) -> str:
    (row,) = [line for line in card.splitlines() if line.startswith(f"| `{path}` (")]
    return row


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the card reads the .h5 size relative to the repository root


def test_card_matches_its_generator() -> None:
    assert (MODELS / "MODEL_CARD.md").read_text() == _render()


def test_card_int8_row_gives_real_types_and_failed_gates() -> None:
    manifest = _json(MODELS / "manifest.json")
    entry, q = manifest["files"]["int8"], manifest["quantization"]
    row = _row(_render(manifest), entry["path"])
    assert f"{q['activation_type']} activations, {q['weight_type']} weights" in row
    assert "(int8)" not in row
    assert ("gates **not passed**" in row) == (not entry["gates_passed"])


def test_card_names_failed_gates_and_test_scored_selection() -> None:
    manifest = _json(MODELS / "manifest.json")
    manifest["files"]["int8"]["gates_passed"] = False
    manifest["quantization"].pop("selection", None)  # as written by the build that shipped
    card = _render(manifest)
    assert "A16W8: uint16 activations" in _row(card, "skin_lesion_int8.onnx")
    failed = [g["name"] for g in manifest["gates"] if not g["passed"]]
    assert failed and all(name.removeprefix("fp32_int8.") in card for name in failed)
    assert "**did not pass** its accuracy gates" in card
    assert "scored its quantisation attempts" in card and "on the **test** split" in card


def test_card_after_a_val_selected_build_that_passed() -> None:
    manifest = copy.deepcopy(_json(MODELS / "manifest.json"))
    manifest["files"]["int8"]["gates_passed"] = True
    manifest["quantization"] |= {"activation_type": "uint8", "weight_type": "int8"}
    manifest["quantization"]["selection"] = {"split": "val", "images": 1500, "chosen_attempt": 0}
    card = _render(manifest)
    row = _row(card, "skin_lesion_int8.onnx")
    assert "A8W8: uint8 activations, int8 weights; accuracy gates passed" in row
    assert "did not pass" not in card and "on the **test** split" not in card
    assert "chosen among its quantisation attempts on the val split" in card


def test_card_reproduce_accuracy_command_parses_and_names_real_files() -> None:
    from benchmarks.__main__ import parser

    (line,) = [
        line for line in _render().splitlines() if line.startswith("python -m benchmarks accuracy ")
    ]
    args = parser().parse_args(shlex.split(line)[3:])
    assert (REPO / args.model).is_file()
    assert (REPO / args.labels).is_file(), f"{args.labels} does not exist"
    with (REPO / args.labels).open(newline="") as fh:
        assert any(r.get("split") == args.split for r in csv.DictReader(fh))


def test_card_shows_the_joint_head_chosen_on_val_beside_the_mean_head() -> None:
    head = _json(MODELS / "skin_lesion.training.json")["head"]
    card = _render()
    section = card.split("## The joint head (val split)")[1].split("\n## ")[0]
    section = section.split("Tried on val, on the ensemble")[0]  # the flips lever's table follows
    rows = [line for line in section.splitlines() if line.startswith(("| blend", "| the members"))]
    assert len(rows) == len(head["val"])
    (chosen,) = [line for line in rows if "**chosen**" in line]
    assert f"C = {head['c']:g} " in chosen
    assert f"| {max(r['bma'] for r in head['val'][1:]):.3f} |" in chosen  # the best val BMA
    comparison = card.split("## This model beside the one it replaced")[1].split("\n## ")[0]
    assert "the ensemble it replaced, GPU members v1-v3" in comparison
    replaced = _json(MODELS / "card" / "replaced" / "metrics.json")["point"]
    (auc_row,) = [line for line in comparison.splitlines() if line.startswith("| macro one-vs")]
    assert f"| {replaced['auc_macro_ovr']:.3f} (" in auc_row


def test_card_shows_the_flipped_train_images_lever_and_whether_it_was_kept() -> None:
    # measured on the ensemble this model replaced, against that ensemble's own chosen head
    head = _json(MODELS / "card" / "replaced" / "training.json")["head"]
    tried = _json(MODELS / "card" / "replaced" / "head_flips.json")
    section = _render().split("## The joint head (val split)")[1].split("\n## ")[0]
    text = section.split("Tried on val, on the ensemble this model replaced")[1]
    rows = [line for line in text.splitlines() if line.startswith(("| blend", "| the members"))]
    assert len(rows) == len(tried["val"])
    (best,) = [line for line in rows if "best BMA" in line]
    assert f"| {max(r['bma'] for r in tried['val'][1:]):.3f} |" in best
    verdict = "**kept**" if _chosen_bma(tried) > _chosen_bma(head) else "**not kept**"
    assert verdict in text.split("\n\n")[0]


def _chosen_bma(record: dict[str, Any]) -> float:
    """The val BMA of the C a ``python -m training head`` record chose."""
    return float(next(r["bma"] for r in record["val"] if r["c"] == record["c"]))


def test_card_names_the_dev_set_images_the_gate_let_through() -> None:
    gate = _json(MODELS / "skin_lesion_gate.json")
    accepted = gate["figures"]["accepted_dev_items"]
    card = _render()
    if accepted:
        (line,) = [x for x in card.splitlines() if x.startswith("Dev-set images the gate let")]
        assert all(f"`{name}`" in line for name in accepted)
    else:
        assert "The gate let no dev-set image through." in card


def test_card_shows_the_cpu_fine_tune_of_the_tops_and_its_verdict() -> None:
    tried = _json(MODELS / "card" / "replaced" / "finetune.json")
    training = _json(MODELS / "skin_lesion.training.json")
    section = _render().split("## Fine-tuning the replaced ensemble's tops")[1].split("\n## ")[0]
    assert ("kept" if "finetune" in training else "**not kept**") in section.splitlines()[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and " of " in line]
    for run in tried["runs"]:
        lr = f"| {run['config']['lr']:g} |"
        chosen = [r for r in rows if r.startswith(lr) and "best by the criterion" in r]
        assert len(chosen) == 1 and f"| {run['best_epoch']} of {len(run['history'])} |" in chosen[0]
        assert any(r.startswith(lr) and r.endswith("last |") for r in rows)
    best = max(r["val_macro_auc"] for run in tried["runs"] for r in run["history"])
    assert (
        f"any epoch is {best:.4f}, against {tried['runs'][0]['before']['val_macro_auc']:.4f}"
        in section
    )


def test_card_gives_the_round_field_false_rejects_from_the_gate_file() -> None:
    fr = _json(MODELS / "skin_lesion_gate.json")["figures"]["false_rejects"]
    section = _render().split("round field of view:**")[1].split("- **Dev set**")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(fr["round_field"])
    for row, (key, rate) in zip(rows, fr["round_field"].items(), strict=True):
        left_black = fr["round_field_left_black"][key]
        ratio = key.removeprefix("round_field_")
        assert row == f"| {ratio} | {rate * 100:.1f}% | {left_black * 100:.1f}% |"


def test_card_shows_the_cpu_member_and_marks_the_shipped_trio() -> None:
    lev = _json(MODELS / "card" / "levers_cpu.json")
    shipped = [m["name"] for m in _json(MODELS / "skin_lesion.training.json")["config"]["members"]]
    section = _render().split("## A whole member trained on this CPU")[1].split("\n## ")[0]
    member_rows = [line for line in section.splitlines() if re.match(r"\| v\d \|", line)]
    assert len(member_rows) == len(lev["members"])
    (v4,) = [line for line in member_rows if line.startswith("| v4 |")]
    assert f"| {lev['members']['v4']['val_auc']:.3f} |" in v4
    record = lev["members"]["v4"]
    assert ("whole schedule" in v4) == (record["epochs"] == record["config"]["max_epochs"])
    assert ("this CPU (TensorFlow)" in v4) == (record["backend"] == "tensorflow")
    (marked,) = [line for line in section.splitlines() if "**shipped**" in line]
    assert f"| {', '.join(sorted(shipped))} |" in marked


@pytest.mark.parametrize("member", sorted(LATER_MEMBERS))
def test_card_applies_a_later_member_s_rule_to_its_record(member: str) -> None:
    # the rule (training/plans/cpu_vN.json): vN in the trio with the best val AUC, kept only if
    # that trio beats the shipped one on both val BMA and AUC
    path = MODELS / "card" / f"levers_{member}.json"
    if not path.is_file():
        pytest.skip(f"no record for {member}")
    lev = _json(path)
    shipped = lev["ensembles"]["v4 in place of v1"]
    assert sorted(shipped["members"]) == sorted(
        m["name"] for m in _json(MODELS / "skin_lesion.training.json")["config"]["members"]
    )
    tried = [e for e in lev["ensembles"].values() if member in e["members"]]
    best = max(tried, key=lambda e: e["val_auc"])
    wins = best["val_bma"] > shipped["val_bma"] and best["val_auc"] > shipped["val_auc"]
    # a distilled member (cpu_v7.json) is also read alone: kept if it matches the trio on both
    alone = lev["members"][member]
    distilled = bool(alone["config"].get("teacher"))
    alone_wins = distilled and all(alone[k] >= shipped[k] for k in ("val_bma", "val_auc"))
    title = f"### {LATER_MEMBERS[member].capitalize()} member ({member}), "
    section = _render().split(title)[1].split("\n## ")[0].split("\n### ")[0]
    assert section.startswith("kept" if wins or alone_wins else "not kept")
    assert f"leaves the best val AUC ({best['val_auc']:.4f})" in section
    assert ("the shipped model stays" in section) is not (wins or alone_wins)
    assert ("Distilled from" in section) is distilled
    assert ("alone goes on to the pipeline" in section) is (alone_wins and not wins)


def test_the_int8_diagnosis_names_the_weights_only_when_16_bit_weights_recover_agreement() -> None:
    def rows(w8: float, w16: float) -> list[dict[str, Any]]:
        return [
            {"recipe": "QDQ minmax, last FP32", "top1_agreement": 0.91},
            {"recipe": "16-bit activations, 8-bit weights (diagnosis)", "top1_agreement": w8},
            {"recipe": "16-bit activations, 16-bit weights (diagnosis)", "top1_agreement": w16},
        ]

    assert "lost in the 8-bit weights" in int8_diagnosis(rows(0.915, 0.998))
    assert "lost in the 8-bit weights" in int8_diagnosis(rows(0.915, 0.998)[::-1])
    assert "does not single out" in int8_diagnosis(rows(0.915, 0.95))
    assert int8_diagnosis(rows(0.915, 0.998)[:2]) == ""
