"""What the main job prints: its results as lines for a person, or as JSON. Pure functions of the
results (the storage only turns keys into addresses)."""
from __future__ import annotations

import json
from dataclasses import asdict

from flows.challenger import JudgedChallenger
from flows.data import DataResult
from storage import Storage, catalog
from tasks.evaluation.report import fmt, learned_from_line, report_value
from tasks.training.train import TrainResult, selection_line

SPLIT_ORDER = ["train", "validation", "test", "dev_train", "dev_test", "view2"]


def report(result: DataResult, store: Storage, seconds: float, model: TrainResult | None = None,
           evaluation: JudgedChallenger | None = None) -> str:
    """The data stages' counts and files, then the model, its evaluation, the champion decision and
    the demo matching when they ran, then the total time."""
    out = _data_lines(result, store)
    if model:
        out.append(f"model: {store.uri(catalog.model_prefix(model.version))}: trained {model.wall_seconds / 60:.1f} "
                   f"min on {model.manifest['machine']['device']}; {selection_line(model.metrics)}")
    if evaluation:
        out.append(f"evaluation: {store.uri(evaluation.report_key)}")
        out += evaluation_lines(evaluation.report)
        out.append(f"champion: {'promoted' if evaluation.decision.promote else 'kept'} ({evaluation.decision.reason})")
        if evaluation.demo:
            out.append(demo_line(evaluation.demo))
    out.append(f"total {seconds:.1f} s")
    return "\n".join(out)


def as_json(result: DataResult, model: TrainResult | None, evaluation: JudgedChallenger | None) -> str:
    return json.dumps({"data": asdict(result), "model": asdict(model) if model else None,
                       "evaluation": ({"report_key": evaluation.report_key, "report": evaluation.report,
                                       **evaluation.decision.record(), "demo": evaluation.demo}
                                      if evaluation else None)},
                      default=str, indent=2)


def _data_lines(result: DataResult, store: Storage) -> list[str]:
    idx = result.index
    out = [f"{idx.dataset}: {idx.images} images of {idx.people} people, {idx.errors} undecodable "
           f"({'index reused' if idx.reused else f'indexed in {idx.seconds:.1f} s'}); "
           f"{result.bytes_downloaded:,} bytes downloaded",
           "people by number of images:"]
    out += result.skew.lines
    for protocol, p in result.pairs.items():
        splits = ", ".join(f"{s} {c['pairs']} ({c['people']} people, {c['images']} images)"
                           for s, c in sorted(p.counts.items(), key=lambda sc: SPLIT_ORDER.index(sc[0])))
        out.append(f"{protocol}: {store.uri(p.pairs_key)} [{'reused' if p.reused else 'generated'}] {splits}")
    out.append(f"index: {store.uri(idx.index_key)}")
    out.append(f"tensors: {store.uri(idx.tensors_key)}")
    if result.chips:
        c = result.chips
        out.append(f"chips: {store.uri(catalog.chips_prefix(idx.dataset, c.store_id))}/ {c.chips} chips "
                   f"({f'{c.made_now} made in {c.seconds:.1f} s' if c.made_now else 'stored'}; {c.errors} photos "
                   f"without one)")
    return out


def evaluation_lines(report: dict) -> list[str]:
    """The numbers a user came for, each named by what it measures."""
    t, splits = report["thresholds"], report["splits"]
    out = [f"  thresholds calibrated on {t['calibrated_on']} only: P(same) >= {t['accuracy']:.4f} "
           f"(the accuracy-maximising one), >= {t['far']:.4f} (false accepts <= {t['far_target']:g})"]
    if "validation" in splits:
        out.append(f"  validation accuracy at the calibrated threshold: {splits['validation']['accuracy']:.4f}")
    if splits.get("test"):
        out.append(_test_line(splits["test"]))
    if report.get("official"):
        out.append(_official_line(report["official"]))
    if report.get("one_shot"):
        out.append(f"  one-shot on {report['one_shot_people']} held-out people: " + ", ".join(
            f"{n}-way {r['accuracy']:.4f}" for n, r in report["one_shot"].items()))
    ident = report.get("identification")
    if ident:
        out.append(f"  identification among {ident['gallery_people']} held-out people (one gallery image each): "
                   f"rank-1 {ident['rank1']:.4f}, rank-5 {ident['rank5']:.4f}")
    if report.get("untouched"):
        out += _untouched_lines(report, report["untouched"])
    out.append("  " + learned_from_line(report).replace("**", ""))
    return out


def _test_line(test: dict) -> str:
    pairs = test["support_same"] + test["support_different"]
    tar = test.get("tar_at_far", {}).get("0.001")
    return (f"  test accuracy: {test['accuracy']:.4f} ({pairs} pairs; AUC {test.get('auc', float('nan')):.4f}, "
            f"EER {test.get('eer', float('nan')):.4f}" + (f", TAR {tar:.4f} at FAR 1e-3" if tar is not None else "")
            + ")")


def _official_line(off: dict) -> str:
    at_val = off["view1"].get("accuracy_at_validation_threshold")
    return (f"  LFW View 1: {off['view1']['accuracy']:.4f}"
            + (f" ({at_val:.4f} at the validation threshold)" if at_val is not None else "")
            + f"; LFW View 2: {off['view2']['mean_accuracy']:.4f} "
            f"+- {off['view2']['standard_error']:.4f} (pairs showing a trained-on person: View 1 "
            f"{off['overlap']['view1_test_pairs_with_trained_person']:.0%}, View 2 "
            f"{off['overlap']['view2_pairs_with_trained_person']:.0%})")


def _untouched_lines(report: dict, untouched: dict) -> list[str]:
    """The fine-tuned network beside the one it started from, and their throughput."""
    compared = (("test", "splits.test.accuracy"), ("View 1", "official.view1.accuracy"),
                ("20-way", "one_shot.20.accuracy"), ("rank-1", "identification.rank1"))
    out = [f"  beside the network before fine-tuning ({untouched['name']}) on the same faces, pairs and people: "
           + ", ".join(f"{label} {fmt(report_value(report, path))} vs {fmt(report_value(untouched, path))}"
                       for label, path in compared)]
    t = untouched.get("throughput")
    if t:
        out.append(f"  throughput on the same {t['images']} photos, from bytes to embedding: "
                   f"{t['model_images_per_second']:.0f} images/s on every core vs dlib-bin's own pipeline "
                   f"{t['dlib_images_per_second']:.1f} on one core ({t['ratio']:.0f}x)")
    return out


def demo_line(demo: dict) -> str:
    """The demo batch matched by the champion: how many it named right, and how many strangers it refused."""
    return (f"matching: {demo['known_probes'] + demo['never_enrolled_probes']} photos of held-out people "
            f"matched in bulk by the champion {demo['version']} against a gallery of "
            f"{demo['gallery_people']} of them (one photo each), threshold {demo['threshold']:.4f}: "
            f"rank-1 {demo['rank1']:.4f}, rank-5 {demo['rank5']:.4f}; {demo['never_enrolled_called_unknown']:.4f} "
            f"of the {demo['never_enrolled_probes']} never-enrolled called unknown; results {demo['results']}")
