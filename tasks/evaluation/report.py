"""The human-readable evaluation report (markdown) and its rows for a Prefect table artifact."""
from __future__ import annotations


def fmt(v, digits=4) -> str:
    """A number for a report table; "-" where there is none."""
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report_markdown(report: dict, champion: dict | None = None) -> str:
    """The human-readable report: the metrics table, the official protocols, one-shot, comparison."""
    t = report["thresholds"]
    lines = [f"# Evaluation of model `{report['version']}`", "",
             f"Trained on `{report['dataset']}/{report['protocol']}`. Thresholds chosen on its validation split "
             f"only: accuracy-maximising **{t['accuracy']:.4f}**; FAR <= {t['far_target']:g}: **{t['far']:.4f}**. "
             f"Test-time augmentation passes: {report['config']['tta_passes']}. "
             + learned_from_line(report), "",
             "| split | pairs | accuracy | error | precision | recall | F1 | accuracy at 0.5 | AUC | EER | "
             + " | ".join(f"TAR@FAR={f:g}" for f in report["config"]["far_targets"]) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(report["config"]["far_targets"])]
    for name, s in report["splits"].items():
        tars = " | ".join(fmt(s.get("tar_at_far", {}).get(f"{f:g}")) for f in report["config"]["far_targets"])
        lines.append(f"| {name} | {s['support_same'] + s['support_different']} | {s['accuracy']:.4f} | "
                     f"{s['error']:.4f} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
                     f"{s['accuracy_at_0.5']:.4f} | {fmt(s.get('auc'))} | {fmt(s.get('eer'))} | {tars} |")
    test = report["splits"].get("test")
    if test:
        c = test["confusion"]
        lines += ["", "Test confusion matrix (rows: truth; columns: predicted):", "",
                  "| | predicted different | predicted same |", "|---|---:|---:|",
                  f"| different | {c['tn']} | {c['fp']} |", f"| same | {c['fn']} | {c['tp']} |", "",
                  f"TAR at FAR = 1e-3 can only be read at FAR = 0 below one false accept in "
                  f"{round(1 / test['far_resolution'])} different pairs."]
    off = report.get("official")
    if off:
        v1, v2 = off["view1"], off["view2"]
        lines += ["", "## Official LFW protocols", "",
                  f"- **View 1**: threshold {v1['threshold']:.4f} chosen on pairsDevTrain ({v1['train_pairs']} pairs), "
                  f"pairsDevTest accuracy **{v1['accuracy']:.4f}** ({v1['test_pairs']} pairs), AUC {v1['auc']:.4f}, "
                  f"EER {v1['eer']:.4f}."
                  + (f" At the threshold calibrated on this model's validation split (people it never trained on, "
                     f"where DevTrain shows people it did): **{v1['accuracy_at_validation_threshold']:.4f}**."
                     if "accuracy_at_validation_threshold" in v1 else ""),
                  f"- **View 2** (10 folds, threshold chosen on the other 9): mean accuracy "
                  f"**{v2['mean_accuracy']:.4f} +- {v2['standard_error']:.4f}** (standard error); AUC over all "
                  f"6,000 pairs {v2['auc']:.4f}.",
                  f"- Identities the model trained on: {off['overlap']['view1_test_pairs_with_trained_person']:.1%} "
                  f"of View 1 test pairs and {off['overlap']['view2_pairs_with_trained_person']:.1%} of View 2 pairs "
                  f"show a person from the model's training split. LFW's strict View 2 protocol trains a "
                  f"model per fold; this is one model scored on all folds, so read View 2 as an upper bound "
                  f"whenever that share is above zero."]
    yard = report.get("yardstick")
    if yard and "view1" in yard:
        v1 = yard["view1"]
        lines += ["", "## Yardstick: LFW View 1", "",
                  f"The same {v1['test_pairs']} pairsDevTest pairs every night, whatever the dataset did: accuracy "
                  f"**{v1['accuracy']:.4f}** at the threshold chosen on pairsDevTrain, "
                  f"{v1['accuracy_at_validation_threshold']:.4f} at this model's validation threshold; AUC "
                  f"{v1['auc']:.4f}. {yard['test_pairs_with_trained_person']:.1%} of these pairs show a person (by "
                  f"name) from the model's training split."]
    elif yard:
        lines += ["", f"LFW View 1 yardstick skipped: {yard['skipped']}."]
    if report.get("one_shot"):
        lines += ["", "## N-way one-shot identification on held-out identities", "",
                  f"{report['one_shot_people']} identities with no image in the model's training or validation "
                  f"split; one support image per identity, the query never its own support.", "",
                  "| N | tasks | accuracy | standard error | chance |", "|---:|---:|---:|---:|---:|"]
        for r in report["one_shot"].values():
            lines.append(f"| {r['n_way']} | {r['tasks']} | **{r['accuracy']:.4f}** | {r['standard_error']:.4f} | "
                         f"{r['chance']:.4f} |")
    ident = report.get("identification")
    if ident:
        lines += ["", "## One-shot identification among the held-out people", "",
                  f"A gallery of one image each of {ident['gallery_people']} held-out people; "
                  f"{ident['known_probes']} other images of theirs as probes, and {ident['never_enrolled_probes']} "
                  f"images of held-out people never enrolled.", "",
                  f"- rank-1 **{ident['rank1']:.4f}**, rank-5 **{ident['rank5']:.4f}** (chance "
                  f"{ident['chance_rank1']:.4f})"]
        for name in ("accuracy", "far"):
            rejected = ident.get(f"never_enrolled_rejected_at_{name}")
            lines.append(f"- at the {name} threshold: {ident[f'known_named_and_accepted_at_{name}']:.4f} of the known "
                         f"named right and accepted" + (f", {rejected:.4f} of the never-enrolled rejected as unknown"
                                                        if rejected is not None else ""))
    if report.get("untouched"):
        lines += untouched_section(report)
    if champion:
        lines += ["", f"## Against the champion `{champion['version']}`", "",
                  "| metric | this model | champion |", "|---|---:|---:|"]
        for label, path in COMPARED:
            lines.append(f"| {label} | {fmt(report_value(report, path))} | {fmt(report_value(champion, path))} |")
    lines += ["", "Figures: `roc.png`, `scores.png`, `false_positives.png`, `false_negatives.png` beside this "
                  "report."]
    return "\n".join(lines) + "\n"


def learned_from_line(report: dict) -> str:
    """Whether a model learned from outside data: the first thing to know before comparing it."""
    source = report.get("learned_from")
    if source and source.get("learned_from"):  # pretrained weights it started from, fine-tuned here
        return (f"**Learned from outside data**: started from `{source['name']}` ({source['package']}), "
                f"{source['learned_from']}; fine-tuned on {report['dataset']}.")
    if source:
        return (f"**Learned from outside data**: distilled from the teacher `{source['name']}` (dlib "
                f"{source.get('dlib')}, pretrained on faces outside {report['dataset']}).")
    return f"Learned from {report['dataset']} alone."


def untouched_section(report: dict) -> list[str]:
    """The fine-tuned model and the pretrained network it started from, on the same faces and pairs."""
    untouched = report["untouched"]
    lines = ["", f"## Beside `{untouched['name']}`: the network before fine-tuning", "",
             f"The same faces, pairs, N-way tasks and identification sets, the same test-time flip "
             f"({untouched['flip']}); its P(same) is a cosine head fitted on the validation pairs only, its thresholds "
             f"calibrated there like the model's.", "",
             "| metric | this model | untouched |", "|---|---:|---:|"]
    for label, path in [("validation accuracy", "splits.validation.accuracy"), *COMPARED]:
        lines.append(f"| {label} | {fmt(report_value(report, path))} | {fmt(report_value(untouched, path))} |")
    tar = [(r.get("splits", {}).get("test", {}).get("tar_at_far", {}).get("0.001")) for r in (report, untouched)]
    lines.append(f"| test TAR at FAR 1e-3 | {fmt(tar[0])} | {fmt(tar[1])} |")
    t = untouched.get("throughput")
    if t:
        lines += ["", f"Throughput on the same {t['images']} photos in this run, from the file's bytes to the "
                      f"embedding: this model **{t['model_images_per_second']:.0f} images/s**"
                      f"{' (with the mirror image)' if t['model_flip'] else ''} on every core, dlib-bin's own "
                      f"pipeline **{t['dlib_images_per_second']:.1f} images/s** on one core: **{t['ratio']:.0f}x**."]
    return lines


COMPARED = [("test accuracy", "splits.test.accuracy"), ("test AUC", "splits.test.auc"),
            ("test EER", "splits.test.eer"), ("View 1 accuracy", "official.view1.accuracy"),
            ("View 2 mean accuracy", "official.view2.mean_accuracy"),
            ("5-way one-shot", "one_shot.5.accuracy"), ("20-way one-shot", "one_shot.20.accuracy"),
            ("identification rank-1", "identification.rank1"), ("identification rank-5", "identification.rank5")]


def report_value(report: dict | None, path: str):
    """A report's value at a dotted path (``splits.test.accuracy``); None where it has none."""
    value = report
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def metrics_rows(report: dict) -> list[dict]:
    """One row per split and for LFW View 1: the table artifact of an evaluation."""
    rows = [{"set": f"{report['protocol']} {name}", "pairs": s["support_same"] + s["support_different"],
             "accuracy": round(s["accuracy"], 4), "precision": round(s["precision"], 4),
             "recall": round(s["recall"], 4), "f1": round(s["f1"], 4), "auc": round(s.get("auc", float("nan")), 4),
             "eer": round(s.get("eer", float("nan")), 4)}
            for name, s in report["splits"].items()]
    off = report.get("official")
    if off:
        v1 = off["view1"]
        rows.append({"set": "LFW View 1 test", "pairs": v1["test_pairs"], "accuracy": round(v1["accuracy"], 4),
                     "precision": round(v1["precision"], 4), "recall": round(v1["recall"], 4),
                     "f1": round(v1["f1"], 4), "auc": round(v1["auc"], 4), "eer": round(v1["eer"], 4)})
    yard = (report.get("yardstick") or {}).get("view1")
    if yard:
        rows.append({"set": "LFW View 1 test (yardstick)", "pairs": yard["test_pairs"],
                     "accuracy": round(yard["accuracy"], 4), "precision": round(yard["precision"], 4),
                     "recall": round(yard["recall"], 4), "f1": round(yard["f1"], 4), "auc": round(yard["auc"], 4),
                     "eer": round(yard["eer"], 4)})
    return rows
