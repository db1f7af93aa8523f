"""Gallery enrolment and bulk matching against a real S3 server (SeaweedFS; moto where a test stops
the endpoint), bad inputs, the CLI."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from storage import catalog, open_storage
from tasks.folders import validate_identity
from tasks.matching.config import MatchParams
from tasks.matching.gallery import GalleryError, enrol, read_gallery
from tasks.matching.runs import list_probes, match_shard, run_params, summarize_run
from tests.conftest import copy_models
from tests.fakes import GALLERY, jpeg, write_gallery


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def bad_input_corpus() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, the error's reason, or None when the image must give a result)."""
    good = Image.open(io.BytesIO(jpeg(7)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    grey = good.convert("L")
    frames = [grey, Image.fromarray(255 - np.asarray(grey))]  # the first frame is the one decoded
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    wide = Image.fromarray(np.asarray(good.convert("L"), np.uint16) * 257)
    return {
        "truncated.jpg": (jpeg(8)[:3000], "corrupt or truncated"),
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"this is not an image, only text named .jpg\n", "not an image"),
        "tiny.png": (_png(Image.new("L", (1, 1))), "too small"),
        "bomb.png": (_png(Image.new("1", (20000, 20000))), "decompression bomb"),
        "cmyk.jpg": (_jpeg(good.convert("CMYK")), None),
        "sixteen.png": (_png(wide), None),
        "animated.gif": (gif.getvalue(), None),
        "rotated.jpg": (_jpeg(good, exif=exif.tobytes()), None),
        "plain.jpg": (jpeg(9), None),
    }


@pytest.fixture
def s3_setup(tiny_registry, seaweed_bucket):
    """Storage, gallery and probes in one bucket of a real S3 server (SeaweedFS); the tiny champion
    model copied in."""
    s3_bucket = seaweed_bucket
    local, version, report = tiny_registry
    storage = f"s3://{s3_bucket}/siamese"
    store = open_storage(storage)
    copy_models(local, store)
    write_gallery(open_storage(f"s3://{s3_bucket}/gallery"))
    probes = open_storage(f"s3://{s3_bucket}/probes")
    for i in range(10):
        probes.write_bytes(f"batch/p{i:03d}.jpg", jpeg(200 + i))
    return {"storage": storage, "version": version, "report": report, "bucket": s3_bucket,
            "gallery": f"s3://{s3_bucket}/gallery", "probes": f"s3://{s3_bucket}/probes"}


def test_identity_names_are_validated():
    assert validate_identity("Mary_Jo O'Neill") == "Mary_Jo O'Neill"
    for bad in ("", ".", "..", "a/b", "a\\b", " padded", "tab\there"):
        with pytest.raises(GalleryError, match="invalid identity"):
            validate_identity(bad)


def test_enrol_then_reenrol_embeds_only_what_changed(s3_setup):
    s = s3_setup
    first = enrol(s["gallery"], s["version"], s["storage"], log=lambda _: None)
    assert (first.identities, first.images, first.embedded, first.kept) == (4, 8, 8, 0)
    gallery = open_storage(s["gallery"])
    gallery.write_bytes("Person_E/Person_E_0001.jpg", jpeg(999))
    gallery.write_bytes("README.txt", b"not an image: ignored")
    gallery.write_bytes("../escape.jpg".replace("../", "bad/nested/"), jpeg(5))  # not <identity>/<image>
    second = enrol(s["gallery"], s["version"], s["storage"], log=lambda _: None)
    assert (second.identities, second.images, second.embedded, second.kept) == (5, 9, 1, 8)
    assert [e["key"] for e in second.errors] == ["bad/nested/escape.jpg"]
    gallery.delete("Person_A/Person_A_0002.jpg")
    third = enrol(s["gallery"], s["version"], s["storage"], log=lambda _: None)
    assert (third.images, third.embedded, third.removed) == (8, 0, 1)
    stored = read_gallery(open_storage(s["storage"]), third.embeddings_key, third.embeddings_sha256, third.index)
    assert "Person_A/Person_A_0002.jpg" not in set(stored.keys) and stored.embeddings.shape == (8, 16)
    # the search index follows every enrolment (updated in place) and holds exactly the gallery's images
    assert first.index["key"] != second.index["key"] != third.index["key"]
    assert stored.index.size == 8 and stored.index.kind == "exact"
    cosines, ids = stored.index.search(stored.embeddings, 1)
    assert (ids[:, 0] == stored.ids).all() and np.allclose(cosines[:, 0], 1.0, atol=1e-5)


def test_a_crash_mid_shard_then_a_rerun_gives_every_probe_exactly_once(s3_setup, prefect_harness):
    from flows.match import match_flow
    from tasks.matching.prefect_tasks import cached_embedder
    from tasks.matching.thresholds import resolve_threshold

    s = s3_setup
    enrolled = enrol(s["gallery"], s["version"], s["storage"], log=lambda _: None)
    command = MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=4, threshold="accuracy")
    params = run_params(command, s["version"])
    store = open_storage(s["storage"])
    limit = resolve_threshold("accuracy", s["report"])
    run = list_probes(params, store, enrolled.embeddings_sha256, limit)
    assert (run["shards"], run["probes"]) == (3, 10)
    embedder = cached_embedder(s["storage"], s["version"])
    gallery = read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256)
    match_shard(run, 0, s["storage"], embedder, gallery, limit, log=lambda _: None)
    with pytest.raises(RuntimeError, match="injected failure"):
        match_shard(run, 1, s["storage"], embedder, gallery, limit, fail_after=2, log=lambda _: None)
    assert not store.exists(catalog.match_results_key(run["run_id"], 1))  # nothing half-written

    summary = match_flow(command, s["storage"])
    assert summary.run_id == run["run_id"]  # the same command resumes the same run
    assert summary.complete and summary.probes_with_results == 10 and summary.errors == 0
    results = pd.concat([store.read_parquet(i.key) for i in store.list(catalog.match_results_prefix(run["run_id"]))])
    assert sorted(results["probe_key"]) == [f"batch/p{i:03d}.jpg" for i in range(10)]  # once each
    assert set(results["identity"]) <= set(GALLERY) | {"Person_E", "unknown"}
    assert results["top_identities"].map(len).eq(4).all()  # top 5 of 4 identities
    again = match_flow(command, s["storage"])
    assert again.probes_with_results == 10 and again.faces == 10  # a finished run re-runs as a no-op


def test_a_new_person_or_new_probes_make_a_new_complete_run_that_includes_them(s3_setup, prefect_harness):
    from flows.match import match_flow

    s = s3_setup
    params = MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=4, top_k=5)
    first = match_flow(params, s["storage"])
    assert first.complete and first.probes == 10
    store = open_storage(s["storage"])

    def rows(summary) -> pd.DataFrame:
        return pd.concat([store.read_parquet(i.key) for i in
                          store.list(catalog.match_results_prefix(summary.run_id))]).set_index("probe_key")

    # someone is enrolled after the run: the same command must match against them too
    open_storage(s["gallery"]).write_bytes("Person_Z/Person_Z_0001.jpg", jpeg(203))  # the same photo as p003
    second = match_flow(params, s["storage"])
    assert second.run_id != first.run_id and second.complete and second.probes == 10
    assert rows(second).loc["batch/p003.jpg", "top_identities"][0] == "Person_Z"
    assert "Person_Z" not in {n for names in rows(first)["top_identities"] for n in names}

    # new probes land under the same prefix: a new run that holds every probe once, the new one too
    open_storage(s["probes"]).write_bytes("batch/p999.jpg", jpeg(203))
    third = match_flow(params, s["storage"])
    assert third.run_id != second.run_id and third.complete and third.probes_with_results == 11
    assert rows(third).loc["batch/p999.jpg", "top_identities"][0] == "Person_Z"
    # and nothing changed since: the same run, resumed as a no-op
    assert match_flow(params, s["storage"]).run_id == third.run_id


def test_a_run_whose_shards_crashed_or_were_cancelled_ends_failed_then_resumes(s3_setup, prefect_harness,
                                                                                monkeypatch):
    """A Dask worker killed mid-shard ends that task Crashed, a cancelled one Cancelled: neither is
    Failed, and the run must still end Failed (the alert fires) until every probe has its result."""
    from prefect.states import Cancelled, Crashed

    from flows.match import match_flow
    from tasks.matching import prefect_tasks

    s = s3_setup
    params = MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=4, threshold="accuracy")
    real = prefect_tasks.match_shard

    def some_shards_die(run, shard, *args, **kwargs):
        if shard == 1:
            return Crashed(message="the Dask worker running it was killed")
        if shard == 2:
            return Cancelled(message="cancelled")
        return real(run, shard, *args, **kwargs)

    monkeypatch.setattr(prefect_tasks, "match_shard", some_shards_die)
    state = match_flow(params, s["storage"], return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match=r"incomplete: 1 of 3 shards have results.*Cancelled.*Crashed"):
        state.result()
    monkeypatch.setattr(prefect_tasks, "match_shard", real)
    resumed = match_flow(params, s["storage"])
    assert resumed.complete and resumed.probes_with_results == 10


def test_a_threshold_calibrated_anew_makes_a_new_run_never_a_mix(s3_setup, prefect_harness):
    """The nightly rewrites the champion's report when it re-scores it: the same command then decides at
    another threshold, so it must be another run, not the old one's shards reported beside the new value."""
    from flows.match import match_flow

    s = s3_setup
    store = open_storage(s["storage"])
    command = MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=4, threshold="accuracy")
    first = match_flow(command, s["storage"])
    report = store.read_json_or_none(catalog.report_key(s["version"]))
    report["thresholds"]["accuracy"] = 1.0  # above every P(same): nobody is named
    store.write_json(catalog.report_key(s["version"]), report)
    second = match_flow(command, s["storage"])
    assert second.run_id != first.run_id and second.threshold == 1.0 and second.complete
    assert store.read_json_or_none(catalog.match_run_key(second.run_id))["threshold"] == 1.0
    rows = pd.concat([store.read_parquet(i.key) for i in store.list(catalog.match_results_prefix(second.run_id))])
    assert len(rows) == 10 and (rows["identity"] == "unknown").all()


def test_at_most_the_given_number_of_shards_run_at_once(s3_setup, prefect_harness, monkeypatch):
    import threading

    import flows.match as match_flow_module
    import tasks.matching.prefect_tasks as match_tasks
    from flows.match import match_flow

    shards, limit = 5, 2
    active, started, peak = [0], [0], [0]
    changed, flow_waits = threading.Condition(), threading.Event()
    original_shard, original_as_completed = match_tasks.match_shard, match_flow_module.as_completed

    # bounded_submit waits with flows.match.as_completed: a flow that waited another way would never
    # release the held shards (the test then fails after 120 s rather than passing)
    def waiting_for_a_shard(futures):  # the flow holds back the next shard until one of these ends
        with changed:
            if not flow_waits.is_set():  # the first wait: every shard submitted so far runs (none can end yet)
                assert changed.wait_for(lambda: active[0] >= len(futures), timeout=120)
            flow_waits.set()
            changed.notify_all()
        return original_as_completed(futures)

    def watched(*args, **kwargs):
        with changed:
            active[0] += 1
            started[0] += 1
            peak[0] = max(peak[0], active[0])
            changed.notify_all()
            # held until the limit's worth of shards run together and the flow waits for one of them to
            # end, or until every shard has started: a flow that submits more than the limit before it
            # first waits has them all running then, however fast or slow the threads are
            assert changed.wait_for(lambda: (active[0] >= limit and flow_waits.is_set()) or started[0] == shards,
                                    timeout=120)
        try:
            return original_shard(*args, **kwargs)
        finally:
            with changed:
                active[0] -= 1
                changed.notify_all()

    monkeypatch.setattr(match_tasks, "match_shard", watched)
    monkeypatch.setattr(match_flow_module, "as_completed", waiting_for_a_shard)
    s = s3_setup
    summary = match_flow(MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=2,
                                     concurrent_shards=limit), s["storage"])
    assert summary.complete and summary.shards == shards
    assert peak[0] == limit


def test_bad_inputs_become_one_error_row_each(s3_setup):
    s = s3_setup
    corpus = bad_input_corpus()
    probes = open_storage(f"s3://{s['bucket']}/bad")
    for name, (data, _) in corpus.items():
        probes.write_bytes(name, data)
    manifest = open_storage(f"s3://{s['bucket']}/lists")
    manifest.write_bytes("keys.txt", ("\n".join([*corpus, "missing.jpg", "plain.jpg"]) + "\n").encode())
    enrolled = enrol(s["gallery"], s["version"], s["storage"], log=lambda _: None)
    params = run_params(MatchParams(probes=f"s3://{s['bucket']}/bad", gallery=s["gallery"],
                                    probe_manifest=f"s3://{s['bucket']}/lists/keys.txt", shard_size=100), s["version"])
    store = open_storage(s["storage"])
    run = list_probes(params, store, enrolled.embeddings_sha256, 0.5)
    from tasks.matching.prefect_tasks import cached_embedder

    match_shard(run, 0, s["storage"], cached_embedder(s["storage"], s["version"]),
                read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256), 0.5, log=lambda _: None)
    rows = store.read_parquet(catalog.match_results_key(run["run_id"], 0))
    assert sorted(rows["probe_key"]) == sorted([*corpus, "missing.jpg"])  # each exactly once
    by_key = rows.set_index("probe_key")
    for name, (_, reason) in corpus.items():
        if reason is None:
            assert pd.isna(by_key.loc[name, "error"]) and by_key.loc[name, "identity"], name
        else:
            assert reason in by_key.loc[name, "error"], (name, by_key.loc[name, "error"])
    assert "missing" in by_key.loc["missing.jpg", "error"]
    summary = summarize_run(run, s["storage"])
    assert summary.complete and summary.errors == 6


def test_odd_keys_and_objects_the_storage_refuses_are_error_rows_never_a_failed_shard(tiny_registry, s3_bucket,
                                                                                     moto_endpoint, monkeypatch):
    """Keys that are legal in S3 (moto keeps them literally, as AWS does), an archived object
    (InvalidObjectState) and one the bucket's policy denies (AccessDenied, from a proxy in front of
    the server): each its own row, the good probes matched, the shard complete."""
    from tasks.matching.prefect_tasks import cached_embedder
    from tests.servers import S3Denying

    local, version, _ = tiny_registry
    storage, probes_url = f"s3://{s3_bucket}/siamese", f"s3://{s3_bucket}/probes"
    copy_models(local, open_storage(storage))
    gallery = open_storage(f"s3://{s3_bucket}/gallery")
    for i, person in enumerate("AB"):
        gallery.write_bytes(f"Person_{person}/1.jpg", jpeg(100 + i))
    probes = open_storage(probes_url)
    for i, key in enumerate(["good.jpg", "Bob/a\\b.jpg", "batch//x.jpg", "batch/x.jpg", "a/./b.jpg", "denied.jpg"]):
        probes.client.put_object(Bucket=s3_bucket, Key=f"probes/{key}", Body=jpeg(200 + i))  # the keys as they are
    probes.client.put_object(Bucket=s3_bucket, Key="probes/cold.jpg", Body=jpeg(210), StorageClass="GLACIER")
    proxy = S3Denying(moto_endpoint, {f"{s3_bucket}/probes/denied.jpg"}).start()
    try:
        monkeypatch.setenv("SIAMESE_S3_ENDPOINT_URL", proxy.url)
        enrolled = enrol(f"s3://{s3_bucket}/gallery", version, storage, log=lambda _: None)
        store = open_storage(storage)
        run = list_probes(run_params(MatchParams(probes=probes_url, gallery=f"s3://{s3_bucket}/gallery"), version),
                          store, enrolled.embeddings_sha256, 0.5)
        match_shard(run, 0, storage, cached_embedder(storage, version),
                    read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256, enrolled.index), 0.5,
                    log=lambda _: None)
        rows = store.read_parquet(catalog.match_results_key(run["run_id"], 0)).set_index("probe_key")
    finally:
        proxy.stop()
    assert sorted(rows.index) == sorted(["good.jpg", "Bob/a\\b.jpg", "batch//x.jpg", "batch/x.jpg", "a/./b.jpg",
                                         "denied.jpg", "cold.jpg"])  # each exactly once
    for matched in ("good.jpg", "Bob/a\\b.jpg", "batch//x.jpg", "batch/x.jpg"):
        assert pd.isna(rows.loc[matched, "error"]) and rows.loc[matched, "identity"], matched
    # two keys, two objects: a//x is never read as a/x
    assert rows.loc["batch//x.jpg", "score"] != rows.loc["batch/x.jpg", "score"]
    assert "'.' or '..' part" in rows.loc["a/./b.jpg", "error"]
    assert "AccessDenied" in rows.loc["denied.jpg", "error"]
    assert "InvalidObjectState" in rows.loc["cold.jpg", "error"]
    assert summarize_run(run, storage).complete


def test_face_detection_modes():
    from tasks.faces import faces_from_bytes
    from tasks.images import ImageDecodeError

    blank = _jpeg(Image.new("L", (200, 200), 128))
    assert len(faces_from_bytes(jpeg(7), "none")) == 1  # an aligned portrait needs no detector
    assert len(faces_from_bytes(jpeg(7), "auto")) == 1  # LFW's 250x250 frame: the training crop, no detector
    for mode in ("none", "largest", "auto"):
        with pytest.raises(ImageDecodeError, match="no face found"):  # a blank image is never a face
            faces_from_bytes(blank, mode)
    banner = _jpeg(Image.fromarray(np.tile(np.linspace(0, 255, 4000).astype(np.uint8), (30, 1))))
    with pytest.raises(ImageDecodeError, match="no face found"):  # not LFW-framed: detected, and nothing is there
        faces_from_bytes(banner, "auto")
    assert len(faces_from_bytes(banner, "none")) == 1  # told it is a portrait, it is cropped as one
    rotated = bad_input_corpus()["rotated.jpg"][0]
    upright = faces_from_bytes(jpeg(7), "none")[0].pixels
    turned = faces_from_bytes(rotated, "none")[0].pixels
    assert not np.array_equal(upright, turned)  # EXIF orientation was applied before cropping


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_match_and_verify_print_lines_and_exit_codes(tiny_registry, local_gallery, tmp_path, capfd):
    """``python -m flows.cli match`` in a process of its own (its stdout holds the result lines and
    nothing else); verify through the same ``main`` in this process, stdout and stderr caught at
    their file descriptors."""
    from flows import cli

    source, version, report = tiny_registry
    storage = str(tmp_path / "store")  # the session's registry stays as it was: the enrolment writes here
    copy_models(source, open_storage(storage))
    probe = local_gallery / "Person_B" / "Person_B_0001.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = _cli("match", "--storage", storage, "--gallery", str(local_gallery), "-m", version, str(probe),
               str(broken))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1  # one line per face, nothing else on stdout
    path, identity, score = lines[0].split(",")
    assert path == str(probe) and identity in set(GALLERY) | {"unknown"} and 0.0 <= float(score) <= 1.0
    assert f"{broken}: not an image" in out.stderr

    capfd.readouterr()
    assert cli.main(["verify", "--storage", storage, str(probe), str(probe)]) == 0
    verdict, score = capfd.readouterr().out.strip().split(",")
    threshold = report["thresholds"]["accuracy"]
    assert verdict == ("same" if float(score) >= threshold else "different")

    assert cli.main(["verify", "--storage", storage, "-m", "no-such-version", str(probe), str(probe)]) == 2
    assert "not registered" in capfd.readouterr().err


def test_dask_local_cluster_gives_the_same_results_as_the_local_run(s3_setup, prefect_harness, monkeypatch):
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    from flows.match import match_flow

    s = s3_setup
    dask_storage = f"s3://{s['bucket']}/siamese-dask"
    copy_models(s["storage"], open_storage(dask_storage))
    open_storage(dask_storage).write_bytes("models/champion.json", open_storage(s["storage"]).read_bytes(
        "models/champion.json"))
    params = MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=3)
    local = match_flow(params, s["storage"])
    # Dask workers are separate processes: they must reach this session's Prefect API (not start
    # their own) and import this repository.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.setenv("PYTHONPATH", str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = match_flow.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))(
            params, dask_storage)
    assert local.complete and on_dask.complete and on_dask.shards == 4

    def rows(storage, run_id):
        store = open_storage(storage)
        frame = pd.concat([store.read_parquet(i.key) for i in store.list(catalog.match_results_prefix(run_id))])
        return frame.sort_values("probe_key").reset_index(drop=True)

    a, b = rows(s["storage"], local.run_id), rows(dask_storage, on_dask.run_id)
    assert a["probe_key"].tolist() == b["probe_key"].tolist() and len(a) == 10
    assert a["identity"].tolist() == b["identity"].tolist()
    assert a["top_identities"].map(list).tolist() == b["top_identities"].map(list).tolist()
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5)


def test_s3_stopped_mid_match_then_restarted_loses_and_duplicates_nothing(tiny_registry, prefect_harness,
                                                                          monkeypatch):
    from moto.server import ThreadedMotoServer

    from flows.match import match_flow
    from storage.location import s3_client
    from tasks.matching import prefect_tasks
    from tasks.matching.prefect_tasks import cached_embedder
    from tests.servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("SIAMESE_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SIAMESE_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SIAMESE_S3_CONNECT_TIMEOUT", "1")
    try:
        s3_client().create_bucket(Bucket="outage")
        local, version, report = tiny_registry
        storage, gallery_url, probes_url = "s3://outage/siamese", "s3://outage/gallery", "s3://outage/probes"
        store = open_storage(storage)
        copy_models(local, store)
        for i, person in enumerate(GALLERY):
            open_storage(gallery_url).write_bytes(f"{person}/{person}_0001.jpg", jpeg(300 + i))
        for i in range(9):
            open_storage(probes_url).write_bytes(f"p{i}.jpg", jpeg(400 + i))
        enrolled = enrol(gallery_url, version, storage, log=lambda _: None)
        params = MatchParams(probes=probes_url, gallery=gallery_url, model=version, shard_size=3, threshold="accuracy")
        limit = report["thresholds"]["accuracy"]
        run = list_probes(run_params(params, version), store, enrolled.embeddings_sha256, limit)
        gallery = read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256)
        embedder = cached_embedder(local, version)
        match_shard(run, 0, storage, embedder, gallery, limit, log=lambda _: None)

        server.stop()  # the endpoint goes away in the middle of the run
        with pytest.raises(Exception, match="(?i)connect"):
            match_shard(run, 1, storage, embedder, gallery, limit, log=lambda _: None)

        # the re-run starts while S3 is still down: its first storage read fails, the endpoint comes back
        # then, and Prefect's task retry carries the run over the outage (retried at once, not after 5 s)
        real, failures = prefect_tasks.resolve_version, []

        def restarted_after_the_first_failure(*args, **kwargs):
            try:
                return real(*args, **kwargs)
            except Exception as err:
                failures.append(err)
                server._server = None
                server.start()
                raise

        monkeypatch.setattr(prefect_tasks, "resolve_version", restarted_after_the_first_failure)
        monkeypatch.setattr(prefect_tasks.resolve_model, "retry_delay_seconds", 0)
        summary = match_flow(params, storage)
        assert len(failures) == 1 and "connect" in str(failures[0]).lower()  # down when the re-run began
        assert summary.run_id == run["run_id"]  # the re-run resumes the run its first shard belongs to
        assert summary.complete and summary.shards_done == 3 and summary.errors == 0
        rows = pd.concat([store.read_parquet(i.key) for i in store.list(catalog.match_results_prefix(run["run_id"]))])
        assert sorted(rows["probe_key"]) == [f"p{i}.jpg" for i in range(9)]  # each exactly once
    finally:
        server.stop()


def test_two_concurrent_runs_never_write_into_each_other(s3_setup):
    from concurrent.futures import ThreadPoolExecutor

    from tasks.matching.prefect_tasks import cached_embedder

    s = s3_setup
    store = open_storage(s["storage"])
    enrolled = enrol(s["gallery"], s["version"], s["storage"], log=lambda _: None)
    gallery = read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256)
    embedder = cached_embedder(s["storage"], s["version"])
    runs = [list_probes(run_params(MatchParams(probes=s["probes"], gallery=s["gallery"], shard_size=5, top_k=k),
                                   s["version"]), store, enrolled.embeddings_sha256, 0.5) for k in (1, 3)]
    assert runs[0]["run_id"] != runs[1]["run_id"]

    def run_all(run):
        return [match_shard(run, i, s["storage"], embedder, gallery, 0.5, log=lambda _: None)
                for i in range(run["shards"])]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run_all, runs))
    for run, k in zip(runs, (1, 3)):
        rows = pd.concat([store.read_parquet(i.key) for i in store.list(catalog.match_results_prefix(run["run_id"]))])
        assert len(rows) == 10 and rows["top_identities"].map(len).eq(k).all()


def test_the_demo_is_scored_against_the_truth():
    from tasks.matching.demo import score_demo

    results = pd.DataFrame([
        {"probe_key": "a2.jpg", "identity": "A", "top_identities": ["A", "B"], "error": None},
        {"probe_key": "b2.jpg", "identity": "unknown", "top_identities": ["A", "B"], "error": None},
        {"probe_key": "b3.jpg", "identity": None, "top_identities": None, "error": "no face found"},
        {"probe_key": "x1.jpg", "identity": "unknown", "top_identities": ["B", "A"], "error": None},
        {"probe_key": "y1.jpg", "identity": "A", "top_identities": ["A", "B"], "error": None},
    ])
    truth = {"a2.jpg": "A", "b2.jpg": "B", "b3.jpg": "B", "x1.jpg": None, "y1.jpg": None}
    scored = score_demo(results, truth)
    assert (scored["known_probes"], scored["never_enrolled_probes"], scored["gallery_people"]) == (3, 2, 2)
    assert scored["rank1"] == pytest.approx(1 / 3) and scored["rank5"] == pytest.approx(2 / 3)
    assert scored["known_named_right"] == pytest.approx(1 / 3)
    assert scored["never_enrolled_called_unknown"] == 0.5 and scored["errors"] == 1


def test_demo_photos_sharing_a_file_name_stay_apart_and_an_earlier_demo_is_pruned(tmp_path):
    """A folder dataset's people may each have an IMG_0001.jpg: each probe keeps its own object and
    truth, and the next demo holds exactly its own held-out people (none left from an earlier one)."""
    from tasks.matching.demo import score_demo, write_demo

    photos, store = open_storage(str(tmp_path / "photos")), open_storage(str(tmp_path / "store"))
    people = ("Ann", "Bob", "Cat", "Dan")
    for seed, person in enumerate(people):
        for k in (1, 2):
            photos.write_bytes(f"{person}/IMG_000{k}.jpg", jpeg(10 * seed + k))
    index = pd.DataFrame({"image_id": [f"{p}/IMG_000{k}.jpg" for p in people for k in (1, 2)]})
    index["path"] = index["image_id"]

    def demo(held: tuple[str, ...]):
        held_out = {p: [f"{p}/IMG_0001.jpg", f"{p}/IMG_0002.jpg"] for p in held}
        batch = write_demo(store, "/data/people", index, held_out, photos)
        probes = open_storage(batch.probes_url)
        owner = {photos.read_bytes(f"{p}/IMG_0002.jpg"): p for p in held}
        # what a perfect matcher says: each stored probe named as the person its bytes show
        results = pd.DataFrame([{"probe_key": k, "identity": owner[probes.read_bytes(k)],
                                 "top_identities": [owner[probes.read_bytes(k)]], "error": None}
                                for k in batch.truth])
        return batch, score_demo(results, batch.truth)

    batch, scored = demo(("Ann", "Bob"))
    assert sorted(batch.truth.values()) == ["Ann", "Bob"]  # both IMG_0002.jpg probes, not one
    assert scored["known_probes"] == 2 and scored["rank1"] == 1.0
    batch, scored = demo(("Cat", "Dan"))
    gallery, probes = open_storage(batch.gallery_url), open_storage(batch.probes_url)
    assert {i.key.split("/")[0] for i in gallery.list("")} == {"Cat", "Dan"}  # Ann and Bob are gone
    assert sorted(i.key for i in probes.list("")) == sorted(batch.truth)
    assert scored["known_probes"] == 2 and scored["rank1"] == 1.0


def test_a_model_is_matched_with_its_own_preprocessing(tiny_mirror, tmp_path, monkeypatch):
    """A model trained on whole frames (a dataset without a crop box, like AT&T's) is fed whole
    frames by matching, not LFW's crop: the manifest says how its faces were cut."""
    from dataclasses import replace

    from tasks.data.datasets import DATASETS
    from tasks.data.steps import preprocess_for
    from tasks.images import cut_face, decode
    from tasks.matching.embedders import model_embedder
    from tasks.training.train import train
    from tests.fakes import TINY_TRAIN, prepare_tiny, tiny_spec

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", replace(tiny_spec(sums), crop_box=None))
    assert preprocess_for("tiny").crop_box is None
    storage = str(tmp_path / "store")
    prepare_tiny(storage, folder, sums)
    version = train(TINY_TRAIN.replace(epochs=1), storage, log=lambda _: None).version
    store = open_storage(storage)
    assert store.read_json(f"models/{version}/manifest.json")["preprocess"]["crop_box"] is None
    embedder = model_embedder(store, version)
    photo = jpeg(11)
    face = embedder.faces(photo, "none")[0]
    assert np.array_equal(face.pixels, cut_face(decode(photo, grey=True), None, 64))  # the whole frame
    assert face.box == (0, 0, 250, 250)
    lfw_cut = cut_face(decode(photo, grey=True), (83, 92, 166, 175), 64)
    assert not np.array_equal(face.pixels, lfw_cut)
