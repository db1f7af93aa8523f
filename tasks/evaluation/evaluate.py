"""Evaluate a registered model: calibrated thresholds, its protocol's splits, the official LFW
protocols and N-way one-shot accuracy on held-out identities (plain functions, no Prefect).

Thresholds are chosen on the validation split only and applied unchanged to everything else.
Outputs go to ``models/<version>/evaluation/``; ``report.json`` is written last and records the
evaluation settings, so a re-run with the same settings reuses it.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import model
from model.scoring import PairScorer
from storage import Storage, catalog, open_storage
from storage.manifests import same_inputs
from tasks.data.chip_store import ChipStoreError
from tasks.data.pairs import images_in, pairs_showing, people_in
from tasks.data.prepared import (
    IndexSummary,
    PairsTable,
    faces_fingerprint,
    load_faces,
    load_index,
    pairs_exist,
    read_index_summary,
    read_pairs,
    uses_chips,
    with_faces,
)
from tasks.data.steps import ExtractedImagesError, read_photo_function
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.embedded import EmbeddedImages
from tasks.evaluation.fingerprint import check_model_data
from tasks.evaluation.identification import identify
from tasks.evaluation.metrics import (
    accuracy_threshold,
    classification_metrics,
    far_threshold,
    open_set_curve,
    roc_metrics,
    score_histogram,
    tenfold_accuracy,
    view1_metrics,
)
from tasks.evaluation.oneshot import draw_nway_tasks, nway_accuracy
from tasks.evaluation.plots import pair_grid_png, roc_png, score_histogram_png
from tasks.evaluation.report import report_markdown
from tasks.evaluation.untouched import sample_photos
from tasks.evaluation.yardstick import lfw_view1, yardstick_fingerprint
from tasks.held_out import images_of_held_out_people
from tasks.images import face_input
from tasks.registry import load_scorer, read_champion, read_manifest, read_model_people, read_report

EVAL_FORMAT = 5  # 2: per-pair test outcomes, identification, the flip setting; 3: View 1 at the validation
# threshold; 4: a reference beside the model, embedding throughput, what the model learned from;
# 5: the open-set threshold curve (every different-person validation pair)


@dataclass
class EvalResult:
    version: str
    report: dict
    report_key: str
    markdown: str
    reused: bool = False
    files: dict[str, str] = field(default_factory=dict)  # name -> storage key


def _rows(pairs: pd.DataFrame, row_of: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    return row_of[pairs["left_image"]].to_numpy(), row_of[pairs["right_image"]].to_numpy()


def _split_report(labels, scores, thresholds: dict[str, float], far_targets) -> dict:
    out = classification_metrics(labels, scores, thresholds["accuracy"])
    out["accuracy_at_0.5"] = classification_metrics(labels, scores, 0.5)["accuracy"]
    out["far_threshold"] = classification_metrics(labels, scores, thresholds["far"])
    if 0 < int(np.sum(labels)) < len(labels):
        roc = roc_metrics(labels, scores, far_targets)
        out.update({k: roc[k] for k in ("auc", "eer", "tar_at_far", "far_resolution")})
    out["histogram"] = score_histogram(labels, scores)
    return out


def _error_grids(split: pd.DataFrame, scores: np.ndarray, threshold: float, tensors: np.ndarray,
                 row_of: pd.Series) -> dict[str, bytes]:
    """False positives (most confident first) and false negatives (least confident first), up to 20."""
    same = split["same"].to_numpy().astype(bool)
    grids = {}
    for name, wrong, order in (("false_positives", ~same & (scores >= threshold), -1),
                               ("false_negatives", same & (scores < threshold), 1)):
        idx = np.flatnonzero(wrong)
        idx = idx[np.argsort(order * scores[idx], kind="stable")][:20]
        chosen = split.iloc[idx]
        left, right = _rows(chosen, row_of)
        captions = [f"{a[:14]} | {b[:14]}" if a != b else a[:28]
                    for a, b in zip(chosen["left_person"], chosen["right_person"])]
        grids[name] = pair_grid_png(tensors[left], tensors[right], scores[idx], captions,
                                    f"{name.replace('_', ' ')} at threshold {threshold:.3f} "
                                    f"({int(wrong.sum())} in all; up to 20 shown)")
    return grids


@dataclass
class EvaluationData:
    """What every embedder is scored on: the protocol's pairs, the official ones, the held-out people
    (one-shot and identification) and the seeded N-way tasks."""

    pairs: pd.DataFrame
    official: pd.DataFrame | None
    held_out: dict[str, list[str]]
    row_of: pd.Series
    dataset: str
    protocol: str
    tasks: dict = field(default_factory=dict)

    def needed_rows(self) -> np.ndarray:
        row_of = self.row_of
        needed = [row_of[self.pairs["left_image"]], row_of[self.pairs["right_image"]]]
        if self.official is not None:
            needed += [row_of[self.official["left_image"]], row_of[self.official["right_image"]]]
        for t in self.tasks.values():
            needed += [row_of[t.query], row_of[t.support.reshape(-1)]]
        needed.append(row_of[[image for images in self.held_out.values() for image in images]])  # identification
        return np.unique(np.concatenate([np.asarray(n) for n in needed]))


def score_model(emb, head, data: EvaluationData, config: EvalConfig) -> dict:
    """Thresholds (validation only), the protocol's splits, the official protocols, N-way one-shot
    and identification, for one embedder: ``emb`` gives its embeddings (``plain``) and pair scores
    (``scores``), ``head`` scores them against a gallery."""
    pairs, official, row_of = data.pairs, data.official, data.row_of

    def split_scores(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return frame["same"].to_numpy().astype(int), emb.scores(*_rows(frame, row_of))

    by_split = {s: pairs[pairs["split"] == s] for s in ("train", "validation", "test") if (pairs["split"] == s).any()}
    if "validation" not in by_split:
        raise ValueError(f"{data.protocol} has no validation split to calibrate thresholds on")
    scored = {s: split_scores(f) for s, f in by_split.items()}
    val_labels, val_scores = scored["validation"]
    thresholds = {"accuracy": accuracy_threshold(val_labels, val_scores),
                  "far": far_threshold(val_labels, val_scores, config.calibrate_far),
                  "far_target": config.calibrate_far, "calibrated_on": f"{data.dataset}/{data.protocol}/validation",
                  "open_set": open_set_curve(validation_different_scores(emb, by_split["validation"], row_of))}
    splits = {s: _split_report(*scored[s], thresholds, config.far_targets) for s in scored}
    if "test" in splits:  # each test pair right (1) or wrong (0), in pair order: promotion compares models pair by pair
        test_labels, test_scores = scored["test"]
        splits["test"]["correct"] = "".join("1" if ok else "0" for ok in
                                            (test_scores >= thresholds["accuracy"]) == (test_labels == 1))

    curves = {f"{data.protocol} test": roc_metrics(*scored["test"])} if "auc" in splits.get("test", {}) else {}
    report_official = None
    if official is not None and {"dev_train", "dev_test", "view2"} <= set(official["split"]):
        trained_people = people_in(pairs[pairs["split"] == "train"])
        dev_train, dev_test, view2 = (official[official["split"] == s] for s in ("dev_train", "dev_test", "view2"))
        y_tr, s_tr = split_scores(dev_train)
        y_te, s_te = split_scores(dev_test)
        y_v2, s_v2 = split_scores(view2)
        v1 = view1_metrics(y_tr, s_tr, y_te, s_te, thresholds["accuracy"], config.far_targets)
        v2_roc = roc_metrics(y_v2, s_v2, config.far_targets)
        v2 = {**tenfold_accuracy(y_v2, s_v2, view2["fold"].to_numpy()), "auc": v2_roc["auc"], "eer": v2_roc["eer"]}
        overlap = {"view1_test_pairs_with_trained_person": float(pairs_showing(dev_test, trained_people).mean()),
                   "view2_pairs_with_trained_person": float(pairs_showing(view2, trained_people).mean())}
        report_official = {"view1": v1, "view2": v2, "overlap": overlap}
        curves["LFW View 1 test"] = roc_metrics(y_te, s_te)
        curves["LFW View 2 (all folds)"] = v2_roc

    identification = identify(head, lambda images: emb.plain(row_of[list(images)].to_numpy()), data.held_out,
                              thresholds)
    one_shot = {}
    for n, t in data.tasks.items():
        scores = emb.scores(np.broadcast_to(row_of[t.query].to_numpy()[:, None], t.support.shape),
                            row_of[t.support.reshape(-1)].to_numpy().reshape(t.support.shape))
        one_shot[str(n)] = nway_accuracy(scores, t.answer)
    return {"thresholds": thresholds, "splits": splits, "official": report_official, "one_shot": one_shot,
            "identification": identification, "curves": curves, "by_split": by_split, "scores": scored}


def validation_different_scores(emb, validation: pd.DataFrame, row_of: pd.Series, limit: int = 2_000_000
                                ) -> np.ndarray:
    """Scores of every different-person pair of the validation images (not only the pairs table's):
    the hundreds of thousands a gallery-sized false-accept rate needs (seeded sample above ``limit``)."""
    images = images_in(validation)
    rows, people = row_of[images["image"]].to_numpy(), pd.factorize(images["person"])[0]
    left, right = np.triu_indices(len(rows), k=1)
    different = people[left] != people[right]
    left, right = left[different], right[different]
    if len(left) > limit:
        keep = np.random.default_rng(0).choice(len(left), limit, replace=False)
        left, right = left[keep], right[keep]
    return np.concatenate([emb.scores(rows[left[i:i + 100_000]], rows[right[i:i + 100_000]])
                           for i in range(0, len(left), 100_000)])


def evaluate_untouched(store: Storage, data: EvaluationData, scorer: PairScorer, preprocess,
                       config: EvalConfig, tensors: np.ndarray, manifest: dict, photos: list[bytes],
                       log: Callable[[str], None]) -> dict:
    """The pretrained network untouched by the fine-tuning on exactly the model's faces, pairs, tasks
    and people (with the model's flip), its P(same) a cosine head fitted on validation only; and the
    model's throughput against dlib-bin's own pipeline on the same photos."""
    from tasks.evaluation.untouched import UntouchedEmbeddings, throughput_against_dlib

    untouched = UntouchedEmbeddings.for_rows(store, manifest["network"], manifest["pretrained"], tensors,
                                             data.needed_rows(), scorer.flip, log)
    validation = data.pairs[data.pairs["split"] == "validation"]
    untouched.calibrate(validation["same"].to_numpy().astype(int), *_rows(validation, data.row_of))
    scored = score_model(untouched, untouched.head, data, config)
    for unused in ("by_split", "scores"):
        scored.pop(unused)
    return {**untouched.describe(), **scored, "throughput": throughput_against_dlib(scorer, preprocess, photos, log)}


def stale_champion(store: Storage, version: str | None, dataset: str, protocol: str
                   ) -> tuple[str | None, str | None]:
    """For the champion ``version``: (it, None) when its report was scored on other pairs or tensors of
    ``dataset`` / ``protocol`` than today's (the data grew) and it can be scored again on them without
    breaking what it held out; (None, why not) when it cannot; (None, None) when nothing is stale."""
    from tasks.evaluation.fingerprint import DataFingerprintError

    report = read_report(store, version) if version else None
    if not report:  # none, or made champion by hand and never scored: the decision says so
        return None, None
    manifest = read_manifest(store, version)
    if (manifest["config"]["dataset"], manifest["config"]["protocol"]) != (dataset, protocol):
        return None, None
    pairs, summary = read_pairs(store, dataset, protocol), read_index_summary(store, dataset)
    try:
        faces_sha256, preprocess = faces_fingerprint(store, summary, uses_chips(manifest.get("preprocess")))
    except ChipStoreError as err:
        return None, str(err)
    scored = report.get("data", {})
    # a report that does not name its photos (made before reports did) cannot be compared with a model of
    # other faces on the same photos: scored again, it can
    if (scored.get("pairs_sha256"), scored.get("tensors_sha256")) == (pairs.sha256, faces_sha256) and \
            scored.get("index_sha256"):
        return None, None
    try:
        check_model_data(version, manifest, pairs, faces_sha256, read_model_people(store, version), preprocess)
    except DataFingerprintError as err:
        return None, str(err)
    return version, None


@dataclass
class EvaluationInputs:
    """What a model is evaluated on, read once: the settings and data fingerprints decide reuse."""

    version: str
    manifest: dict
    config: EvalConfig
    report_key: str
    dataset: str
    protocol: str
    protocol_pairs: PairsTable
    official_pairs: PairsTable | None
    summary: IndexSummary
    chips: bool  # dlib's aligned chips, or the tensor store's crops
    preprocess: dict
    learned: dict | None  # whom it learned from, warm-start sources included
    wanted: dict  # the report's inputs: equal ones mean a stored report can be reused


@dataclass
class LoadedData:
    data: EvaluationData
    index: pd.DataFrame
    tensors: np.ndarray
    missing_faces: np.ndarray


def evaluation_inputs(store: Storage, version: str, config: EvalConfig) -> EvaluationInputs:
    manifest = read_manifest(store, version)
    dataset, protocol = manifest["config"]["dataset"], manifest["config"]["protocol"]
    protocol_pairs = read_pairs(store, dataset, protocol)
    official_pairs = (read_pairs(store, dataset, "lfw_official")
                      if config.official and pairs_exist(store, dataset, "lfw_official") else None)
    summary = read_index_summary(store, dataset)
    chips = uses_chips(manifest.get("preprocess"))
    faces_sha256, preprocess = faces_fingerprint(store, summary, chips)
    learned = read_model_people(store, version)
    check_model_data(version, manifest, protocol_pairs, faces_sha256, learned, preprocess)
    wanted = {"format": EVAL_FORMAT, "eval_key": config.key(), "model_files": manifest["files"],
              # the pretrained file the untouched network is rebuilt from (None: not scored)
              "untouched_scored": (manifest["pretrained"]["sha256"] if config.untouched and manifest.get("pretrained")
                                   else None),
              "precision": model.precision(),
              "data": {"pairs_sha256": protocol_pairs.sha256,
                       "yardstick_pairs_sha256": (yardstick_fingerprint(store, dataset, chips) if config.official
                                                  else None),
                       "official_pairs_sha256": official_pairs.sha256 if official_pairs else None,
                       "tensors_sha256": faces_sha256, "index_sha256": summary.index_sha256}}
    return EvaluationInputs(version, manifest, config, catalog.report_key(version, config.tta_passes), dataset,
                            protocol, protocol_pairs, official_pairs, summary, chips, preprocess, learned, wanted)


def load_evaluation_data(store: Storage, inputs: EvaluationInputs, log: Callable[[str], None]) -> LoadedData:
    """The faces, the pairs that have them, the held-out people and the seeded N-way tasks."""
    config = inputs.config
    pairs = inputs.protocol_pairs.frame
    official = inputs.official_pairs.frame if inputs.official_pairs else None
    index = load_index(store, inputs.summary)
    faces = load_faces(store, inputs.summary, index, inputs.chips)
    if len(faces.missing):  # photos the chip store found no face in: their pairs are not scored
        pairs = with_faces(pairs, index, faces.missing)
        official = with_faces(official, index, faces.missing) if official is not None else None
        log(f"{len(faces.missing)} photos have no face input (the chip store's error rows say why): the pairs and "
            "identification sets that show them are left out")
    row_of = pd.Series(index["row"].to_numpy(), index=index["image_id"].to_numpy())
    # who was seen comes from every pair, those without a face too: leaving pairs out never makes a
    # trained-on person held out
    held_out = images_of_held_out_people(index[~index["row"].isin(faces.missing)], inputs.protocol_pairs.frame,
                                         inputs.learned)
    data = EvaluationData(pairs, official, held_out, row_of, inputs.dataset, inputs.protocol)
    for n in config.nway:
        try:
            data.tasks[n] = draw_nway_tasks(data.held_out, n, config.nway_tasks, config.seed + n)
        except ValueError as err:
            log(f"{n}-way one-shot skipped: {err}")
    return LoadedData(data, index, faces.tensors, faces.missing)


def score_everything(store: Storage, inputs: EvaluationInputs, loaded: LoadedData,
                     log: Callable[[str], None]) -> dict:
    """The model on every protocol, the LFW yardstick beside a folder dataset, and the untouched
    pretrained network on the same faces: the report's measured part (curves and per-split scores
    kept for the figures)."""
    config, data = inputs.config, loaded.data
    scorer = load_scorer(store, inputs.version, config.flip)
    t0 = time.perf_counter()
    emb = EmbeddedImages(scorer, loaded.tensors, data.needed_rows(), config.tta_passes, config.seed)
    embed_seconds = time.perf_counter() - t0
    log(f"embedded {len(emb.rows)} images x {config.tta_passes + 1} pass(es) in {embed_seconds:.1f} s")
    scored = score_model(emb, scorer, data, config)
    yardstick = None
    if inputs.wanted["data"]["yardstick_pairs_sha256"]:  # a folder dataset beside a prepared LFW: View 1 nightly
        learned = inputs.learned
        trained_people = (set(learned.get("train", [])) if learned is not None else
                          people_in(data.pairs[data.pairs["split"] == "train"]))
        yardstick = lfw_view1(store, scorer, inputs.preprocess, scored["thresholds"]["accuracy"], trained_people,
                              config.far_targets, config.seed)
    untouched = None
    if inputs.wanted["untouched_scored"]:
        try:
            photos = sample_photos(loaded.index, data.needed_rows(), read_photo_function(inputs.dataset))
        except (ExtractedImagesError, FileNotFoundError) as err:  # no photos here: no throughput, say why
            photos = []
            log(f"throughput not measured: {err}")
        untouched = evaluate_untouched(store, data, scorer, face_input(inputs.preprocess), config, loaded.tensors,
                                       inputs.manifest, photos, log)
    return {**scored, "yardstick": yardstick, "untouched": untouched, "flip": scorer.flip,
            "embedded_images": int(len(emb.rows)),
            "embedding_images_per_second": len(emb.rows) * (config.tta_passes + 1) / max(embed_seconds, 1e-9)}


def render_figures(inputs: EvaluationInputs, loaded: LoadedData, measured: dict) -> tuple[dict[str, bytes], dict]:
    """(the report's files: ROC, score histogram, error grids, ROC points; ``measured`` itself, the
    figures' working data taken out of it: what goes into the report)."""
    config, version = inputs.config, inputs.version
    curves, by_split, scores_by_split = measured.pop("curves"), measured.pop("by_split"), measured.pop("scores")
    thresholds, splits, untouched = measured["thresholds"], measured["splits"], measured["untouched"]
    files: dict[str, bytes] = {}
    if untouched:  # the untouched network's curves on the same pairs, in the same figure
        curves.update({f"untouched: {name}": c for name, c in untouched.pop("curves").items() if "View 2" not in name})
    if curves:
        files["roc.png"] = roc_png(curves, f"model {version}")
    if "test" in splits:
        files["scores.png"] = score_histogram_png(splits["test"]["histogram"], {
            "accuracy": thresholds["accuracy"], f"FAR {config.calibrate_far:g}": thresholds["far"]},
            f"{inputs.protocol} test: P(same) by pair kind")
        files.update({f"{k}.png": v for k, v in _error_grids(by_split["test"], scores_by_split["test"][1],
                                                             thresholds["accuracy"], loaded.tensors,
                                                             loaded.data.row_of).items()})
    roc_rows = [pd.DataFrame({"curve": name, "fpr": c["roc"]["fpr"], "tpr": c["roc"]["tpr"]})
                for name, c in curves.items()]
    if roc_rows:
        buf = io.BytesIO()
        pd.concat(roc_rows).to_csv(buf, index=False)
        files["roc.csv"] = buf.getvalue()
    return files, measured


def write_evaluation(store: Storage, inputs: EvaluationInputs, report: dict, files: dict[str, bytes]) -> EvalResult:
    """The figures and the markdown first, ``report.json`` last: its presence means the rest is complete."""
    version, passes = inputs.version, inputs.config.tta_passes
    champion_version = read_champion(store)
    champion = read_report(store, champion_version) if champion_version and champion_version != version else None
    markdown = report_markdown(report, champion)
    keys = {}
    for name, blob in files.items():
        keys[name] = catalog.evaluation_file_key(version, name, passes)
        store.write_bytes(keys[name], blob)
    keys["report.md"] = catalog.evaluation_file_key(version, "report.md", passes)
    store.write_text(keys["report.md"], markdown)
    report = json.loads(json.dumps({**report, "files": keys}))  # the stored form: fresh and reused results are equal
    store.write_json(inputs.report_key, report)
    return EvalResult(version, report, inputs.report_key, markdown, files=keys)


def summary_line(report: dict) -> str:
    official, yardstick = report["official"], report["yardstick"]
    identification = report["identification"]
    return (f"evaluated {report['version']} in {report['seconds']:.1f} s: "
            + "; ".join(f"{s} accuracy {r['accuracy']:.4f}" for s, r in report["splits"].items())
            + (f"; View 1 {official['view1']['accuracy']:.4f}; View 2 "
               f"{official['view2']['mean_accuracy']:.4f} +- {official['view2']['standard_error']:.4f}"
               if official else "")
            + (f"; LFW View 1 yardstick {yardstick['view1']['accuracy']:.4f}" if yardstick and "view1" in yardstick
               else "")
            + "".join(f"; {n}-way {r['accuracy']:.4f}" for n, r in report["one_shot"].items())
            + (f"; identification among {identification['gallery_people']} held-out people: rank-1 "
               f"{identification['rank1']:.4f}, rank-5 {identification['rank5']:.4f}" if identification else ""))


def evaluate(version: str, storage_url: str | None, config: EvalConfig = EvalConfig(),
             log: Callable[[str], None] = print) -> EvalResult:
    """Reuse a report of the same settings and data, or score, render and write a new one."""
    start = time.perf_counter()
    store = open_storage(storage_url)
    inputs = evaluation_inputs(store, version, config)
    prior = store.read_json_or_none(inputs.report_key)
    if same_inputs(prior, inputs.wanted):
        log(f"evaluation of {version} with these settings and data exists: reused")
        markdown = store.read_bytes(prior["files"]["report.md"]).decode()
        return EvalResult(version, prior, inputs.report_key, markdown, reused=True, files=prior["files"])
    loaded = load_evaluation_data(store, inputs, log)
    files, measured = render_figures(inputs, loaded, score_everything(store, inputs, loaded, log))
    report = {**inputs.wanted, "version": version, "dataset": inputs.dataset, "protocol": inputs.protocol,
              "config": config.model_dump(mode="json"), **measured, "one_shot_people": len(loaded.data.held_out),
              "photos_without_a_face": int(len(loaded.missing_faces)),
              # where the model's knowledge comes from: pretrained weights learned from outside data, or the
              # dataset alone (a model of an earlier version may name the teacher it was distilled from)
              "learned_from": inputs.manifest.get("pretrained") or inputs.manifest.get("teacher") or None,
              "compute": model.precision_summary(), "seconds": time.perf_counter() - start}
    result = write_evaluation(store, inputs, report, files)
    log(summary_line(result.report))
    return result
