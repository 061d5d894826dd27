"""Unreadable training files: found once, skipped from then on, limited by distinct files.

The user's report: 4 truncated / non-image files among 10 training images, 2 loader
workers: every epoch read, warned about and counted the same files again, and training
stopped after < 3 epochs. Here each file is read once (plus at most once more inside
the workers' prefetch window), warned about and counted once; the limit is on distinct
files (MAX_BAD_IMAGES, MAX_BAD_IMAGES_FRACTION); the tracker state survives a
checkpoint and a resumed loader continues the uninterrupted stream without reading the
known files; processes exchange their findings (threads standing in for ranks, and a
real 2-process gloo run).
"""
import itertools
import logging
import os
import threading
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detgn.data import BadImageTracker, DatasetMapper, TooManyBadImagesError
from detgn.data.build import BadImage, make_train_loader
from detgn.data.samplers import TrainBatchSampler
from detgn.utils import comm

NUM_IMAGES = 10
BAD = {1: "truncated", 4: "text", 6: "empty", 8: "truncated"}  # record index -> how it is broken


class CountingMapper:
    """The real training mapper, appending the file name of every read to ``log_path``
    (from any worker process: one short O_APPEND write per read)."""

    takes_rng = True  # forwards each sample's generator to the real mapper

    def __init__(self, log_path):
        self.log_path = str(log_path)
        self.inner = DatasetMapper(is_train=True, min_size_train=(24, 32, 40), max_size_train=64, mask_on=False)

    def __call__(self, record, rng=None):
        with open(self.log_path, "a") as f:
            f.write(record["file_name"] + "\n")
        return self.inner(record, rng=rng)


def reads(log_path) -> Counter:
    p = Path(log_path)
    return Counter(p.read_text().splitlines()) if p.exists() else Counter()


def make_records(root: Path, bad=BAD):
    """10 records of small JPEGs with one box each; the indices in ``bad`` are broken files."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(NUM_IMAGES):
        h, w = (30, 40) if i % 3 else (40, 30)
        img = np.random.default_rng(i).integers(0, 255, (h, w, 3)).astype(np.uint8)
        data = cv2.imencode(".jpg", img)[1].tobytes()
        kind = bad.get(i)
        if kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "text":
            data = b"<html>404 not found</html>"
        elif kind == "empty":
            data = b""
        path = root / f"{i:04d}.jpg"
        path.write_bytes(data)
        records.append({
            "file_name": str(path), "image_id": 100 + i, "height": h, "width": w,
            "annotations": [{"bbox": [2.0, 3.0, 15.0, 12.0], "category_id": 0, "iscrowd": 0}],
        })
    return records


def loader_for(records, log_path, *, workers=0, start_iter=0, tracker=None, rank=0, world_size=1, **limits):
    return make_train_loader(
        records, mapper=CountingMapper(log_path), batch_size=1, seed=5, num_workers=workers,
        start_batch=start_iter, bad_images=tracker, rank=rank, world_size=world_size, **limits,
    )


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def summary(batches):
    return [[(d["image_id"], tuple(d["image"].shape), int(d["image"].sum()),
              d["instances"].gt_boxes.tensor.flatten().tolist()) for d in b] for b in batches]


def skip_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("Skipping training image")]


@pytest.mark.parametrize("workers", [0, 2])
def test_users_scenario_each_bad_file_read_warned_and_counted_once(tmp_path, caplog, workers):
    records = make_records(tmp_path / "images")
    bad_files = {records[i]["file_name"] for i in BAD}
    log = tmp_path / "reads.txt"
    loader = loader_for(records, log, workers=workers, max_bad_images=4)
    with caplog.at_level(logging.WARNING, logger="detgn.data"):
        batches = take(loader, 40)  # 6 readable images a epoch: > 6 epochs
    ids = {d["image_id"] for b in batches for d in b}
    assert ids == {100 + i for i in range(NUM_IMAGES) if i not in BAD}
    assert loader.num_bad_images == 4 and set(loader.bad_files) == bad_files
    warnings = skip_warnings(caplog)
    assert len(warnings) == 4
    for f in bad_files:
        assert sum(f in w for w in warnings) == 1
    assert "4 of at most 4 distinct files; it is skipped from now on" in warnings[-1]
    counts = reads(log)
    for f in bad_files:
        # Once; with workers, at most once more: a batch sent to a worker before the file was known.
        assert counts[f] == 1 if workers == 0 else 1 <= counts[f] <= 2, (f, counts[f])
    assert min(counts[r["file_name"]] for i, r in enumerate(records) if i not in BAD) >= 6


@pytest.mark.parametrize("workers", [0, 2])
def test_one_distinct_file_too_many_stops_once_naming_the_files(tmp_path, caplog, workers):
    records = make_records(tmp_path / "images")
    loader = loader_for(records, tmp_path / "reads.txt", workers=workers, max_bad_images=3)
    with caplog.at_level(logging.WARNING, logger="detgn.data"):
        it = iter(loader)
        with pytest.raises(TooManyBadImagesError) as info:
            for _ in range(40):
                next(it)
        with pytest.raises(StopIteration):  # the error comes once; the stream is over
            next(it)
    msg = str(info.value)
    assert msg.startswith("4 of 10 distinct training image files failed to read, more than the limit of 3")
    assert "DATALOADER.MAX_BAD_IMAGES=3" in msg and "DATALOADER.MAX_BAD_IMAGES_FRACTION=0 x 10 = 0" in msg
    for i in BAD:
        assert records[i]["file_name"] in msg
    assert "tools/validate_dataset.py --json" in msg and "raise DATALOADER.MAX_BAD_IMAGES" in msg
    assert len(skip_warnings(caplog)) == 3


def test_fraction_limit(tmp_path):
    one = make_records(tmp_path / "one", bad={4: "text"})
    loader = loader_for(one, tmp_path / "r1.txt", max_bad_images=0, max_bad_images_fraction=0.1)
    assert len(take(loader, 30)) == 30 and loader.num_bad_images == 1  # 0.1 x 10 = 1 file allowed
    two = make_records(tmp_path / "two", bad={4: "text", 7: "truncated"})
    loader = loader_for(two, tmp_path / "r2.txt", max_bad_images=0, max_bad_images_fraction=0.1)
    with pytest.raises(TooManyBadImagesError, match="2 of 10 distinct .* limit of 1 .*MAX_BAD_IMAGES_FRACTION=0.1"):
        take(loader, 30)


def test_every_file_bad_stops_instead_of_spinning(tmp_path):
    records = make_records(tmp_path / "images", bad={i: "text" for i in range(NUM_IMAGES)})
    loader = loader_for(records, tmp_path / "reads.txt", max_bad_images=100)
    with pytest.raises(TooManyBadImagesError, match="All 10 of 10 training image files failed"):
        take(loader, 1)


def test_skipping_changes_no_other_sample(tmp_path):
    """Augmentation is keyed by stream position: with bad files the readable samples are
    exactly those of an all-readable set at the same positions."""
    good = make_records(tmp_path / "good", bad={})
    bad = make_records(tmp_path / "bad")
    full = summary(take(loader_for(good, tmp_path / "r1.txt"), 30))
    skipped = summary(take(loader_for(bad, tmp_path / "r2.txt", max_bad_images=4), 18))
    assert skipped == [b for b in full if b[0][0] - 100 not in BAD][:18]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_continues_the_stream_without_reading_known_files(tmp_path, workers):
    records = make_records(tmp_path / "images")
    bad_files = {records[i]["file_name"] for i in BAD}
    tracker = BadImageTracker(max_bad_images=4)
    it = iter(loader_for(records, tmp_path / "a.txt", workers=workers, tracker=tracker))
    for _ in range(12):  # two epochs: every bad file found
        next(it)
    state = tracker.state_dict()  # as a checkpoint after iteration 11 holds it
    rest = summary([next(it) for _ in range(12)])
    assert set(state["files"]) == bad_files
    loader_state = dict(state["loader"])
    position = loader_state.pop("positions")[0]
    assert loader_state == {"iteration": 12, "world_size": 1, "batch_size": 1}
    assert position > 12  # skipped batches: the stream ran ahead of the iteration

    resumed_tracker = BadImageTracker(max_bad_images=4)
    resumed_tracker.load_state_dict(state)
    log = tmp_path / "b.txt"
    resumed = loader_for(records, log, workers=0, start_iter=12, tracker=resumed_tracker)
    assert summary(take(resumed, 12)) == rest
    assert not set(reads(log)) & bad_files
    # Without the saved position (the old behaviour) the stream would be shifted.
    plain = loader_for(records, tmp_path / "c.txt", start_iter=12, tracker=BadImageTracker(max_bad_images=4))
    assert summary(take(plain, 12)) != rest


def test_state_survives_a_real_checkpoint(tmp_path):
    from detgn.checkpoint import Checkpointer

    records = make_records(tmp_path / "images")
    tracker = BadImageTracker(max_bad_images=4)
    take(loader_for(records, tmp_path / "a.txt", tracker=tracker), 9)
    assert tracker.num_bad_images == 4
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(model, str(tmp_path / "out"))
    ck.add_checkpointable("bad_images", tracker)
    path = ck.save("model_0000008", iteration=9)
    assert Path(path).name == "model_0000008.pth"  # (the file was once named for the last checkpointable)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    assert raw["bad_images"] == tracker.state_dict()
    assert [raw["bad_images"]["files"][f]["image_id"] for f in tracker.bad_files] == [
        e["image_id"] for e in tracker.entries()]
    restored = BadImageTracker(max_bad_images=4)
    ck2 = Checkpointer(torch.nn.Linear(2, 2), str(tmp_path / "out"))
    ck2.add_checkpointable("bad_images", restored)
    assert ck2.resume_or_load("", resume=True).start_iter == 9
    assert restored.state_dict() == tracker.state_dict()
    assert restored.resume_batch(9, rank=0, world_size=1, batch_size=1) == raw["bad_images"]["loader"]["positions"][0]
    # Another world size or batch size: the old behaviour (start at the iteration).
    assert restored.resume_batch(9, rank=0, world_size=1, batch_size=2) == 9
    # A resumed run with a lower limit stops when the loader is built, naming the files.
    lower = BadImageTracker(max_bad_images=2)
    lower.load_state_dict(raw["bad_images"])
    with pytest.raises(TooManyBadImagesError, match="4 of 10"):
        loader_for(records, tmp_path / "b.txt", start_iter=9, tracker=lower)


def test_files_not_in_this_training_set_are_forgotten(tmp_path, caplog):
    records = make_records(tmp_path / "images")
    tracker = BadImageTracker(max_bad_images=4)
    tracker.load_state_dict({"version": 1, "files": {
        "/elsewhere/x.jpg": {"image_id": 1, "message": "gone", "iteration": 0, "rank": 0},
        records[4]["file_name"]: {"image_id": 104, "message": "bad", "iteration": 3, "rank": 0},
    }})
    with caplog.at_level(logging.INFO, logger="detgn.data"):
        loader = loader_for(records, tmp_path / "r.txt", tracker=tracker)
    assert tracker.bad_files == [records[4]["file_name"]]
    assert any("not among this run's training images" in r.getMessage() for r in caplog.records)
    take(loader, 15)
    assert reads(tmp_path / "r.txt")[records[4]["file_name"]] == 0


# ----------------------------------------------------------------------------- #
# Several processes
# ----------------------------------------------------------------------------- #
class _ThreadComm:
    """``comm.all_gather`` across threads standing in for ranks (rank = thread-local)."""

    def __init__(self, world_size):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots = [None] * world_size
        self.local = threading.local()

    def all_gather(self, obj):
        self.slots[self.local.rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


def _two_fake_ranks(tmp_path, monkeypatch, *, max_bad_images):
    """Two "ranks" as threads sharing a fake all_gather: records, the comm, trackers, loader iterators."""
    records = make_records(tmp_path / "images")
    fake = _ThreadComm(2)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", fake.all_gather)
    trackers = [BadImageTracker(max_bad_images=max_bad_images) for _ in range(2)]
    loaders = [loader_for(records, tmp_path / f"r{r}.txt", tracker=trackers[r], rank=r, world_size=2)
               for r in range(2)]
    return records, fake, trackers, [iter(ld) for ld in loaders]


def test_sync_merges_files_and_positions_and_stops_all_ranks_together(tmp_path, monkeypatch):
    records, fake, trackers, iters = _two_fake_ranks(tmp_path, monkeypatch, max_bad_images=3)
    errors = [None, None]
    synced_after = [[], []]

    def run(rank):
        fake.local.rank = rank
        try:
            for step in range(40):
                next(iters[rank])
                if (step + 1) % 2 == 0:  # every 2 iterations, as BadImageSync does every 20
                    trackers[rank].sync()
                    synced_after[rank].append((step + 1, set(trackers[rank].bad_files)))
        except TooManyBadImagesError as e:
            errors[rank] = (step, str(e))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Over the limit (4 > 3): both ranks stop at the same sync with the same message
    # (neither raised alone in its loader: that would leave the other waiting).
    assert errors[0] is not None and errors[0] == errors[1], errors
    assert synced_after[0] == synced_after[1]  # identical knowledge after every sync
    assert set(trackers[0].bad_files) == {records[i]["file_name"] for i in BAD}
    assert trackers[0].state_dict()["files"] == trackers[1].state_dict()["files"]


def test_sync_gathers_every_ranks_position_for_the_checkpoint(tmp_path, monkeypatch):
    records, fake, trackers, iters = _two_fake_ranks(tmp_path, monkeypatch, max_bad_images=4)
    rest = [None, None]
    saved = []

    def run(rank):
        fake.local.rank = rank
        for _ in range(8):
            next(iters[rank])
        trackers[rank].sync_state()  # what Checkpointer.save calls on every process
        if rank == 0:
            saved.append(trackers[0].state_dict())  # what rank 0 then writes
        rest[rank] = summary([next(iters[rank]) for _ in range(6)])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    state = saved[0]
    loader_state = state["loader"]
    assert loader_state["world_size"] == 2 and loader_state["iteration"] == 8 and len(loader_state["positions"]) == 2
    # Without a sync at the current iteration, no (stale) positions are saved.
    assert "loader" not in trackers[0].state_dict()
    # Each rank resumes at its own position and continues its own stream, reading no known file.
    known = set(state["files"])
    for rank in range(2):
        t = BadImageTracker(max_bad_images=4)
        t.load_state_dict(state)
        log = tmp_path / f"resumed{rank}.txt"
        resumed = loader_for(records, log, start_iter=8, tracker=t, rank=rank, world_size=2)
        assert summary(take(resumed, 6)) == rest[rank]
        assert not set(reads(log)) & known


def _gloo_worker(records, out_dir):
    """One rank of a 2-process run: 24 iterations with a sync every 2, reads logged per rank."""
    from detgn.engine import init_distributed

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    rank = info.rank
    tracker = BadImageTracker(max_bad_images=4)
    it = iter(loader_for(records, os.path.join(out_dir, f"reads{rank}.txt"), tracker=tracker, rank=rank,
                         world_size=info.world_size))
    for step in range(24):
        next(it)
        if (step + 1) % 2 == 0:
            tracker.sync()
            with open(os.path.join(out_dir, f"reads{rank}.txt"), "a") as f:
                f.write(f"SYNC {step + 1} " + "|".join(sorted(tracker.bad_files)) + "\n")
    torch.save({"files": sorted(tracker.bad_files)}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_process_gloo_a_file_found_on_one_rank_is_not_read_by_the_other(tmp_path, monkeypatch):
    from detgn.engine import launch

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    records = make_records(tmp_path / "images")
    launch(_gloo_worker, 2, args=(records, str(tmp_path)))
    bad_files = {records[i]["file_name"] for i in BAD}
    for rank in range(2):
        assert set(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["files"]) == bad_files
    # Per rank: the reads of each bad file, and when the rank learned about it (a SYNC line).
    first_read = {}
    for rank in range(2):
        known, read_after_known = set(), []
        for line in (tmp_path / f"reads{rank}.txt").read_text().splitlines():
            if line.startswith("SYNC "):
                known = set(line.split(" ", 2)[2].split("|")) if line.count(" ") >= 2 else set()
            elif line in bad_files:
                first_read.setdefault(line, set()).add(rank)
                if line in known:
                    read_after_known.append(line)
        assert not read_after_known, (rank, read_after_known)
    # Without the exchange each of these files would have been read by both ranks: every
    # one is in both ranks' shares of the 24 batches.
    in_share = [{records[i]["file_name"] for b in itertools.islice(
        TrainBatchSampler(NUM_IMAGES, batch_size=1, seed=5, rank=r, world_size=2), 24) for i, _ in b}
        for r in range(2)]
    assert bad_files <= in_share[0] & in_share[1]
    assert all(len(ranks) == 1 for ranks in first_read.values()), first_read


def test_hooks_sync_at_fixed_iterations_count_and_record(tmp_path, monkeypatch, caplog):
    import json
    from types import SimpleNamespace

    from detgn.engine.hooks import BadImageRecord, BadImageSync
    from detgn.utils.events import EventStorage

    tracker = BadImageTracker(max_bad_images=4)
    tracker.attach(["a.jpg", "b.jpg", "c.jpg"], world_size=2)
    synced = []
    monkeypatch.setattr(tracker, "sync", lambda: synced.append(trainer.iter + 1))
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    trainer = SimpleNamespace(iter=0, start_iter=0, max_iter=45, storage=EventStorage(0))
    sync, record = BadImageSync(tracker, period=20), BadImageRecord(tracker, str(tmp_path / "metrics.json"))
    sync.trainer = record.trainer = trainer
    for trainer.iter in range(45):
        trainer.storage.iter = trainer.iter
        if trainer.iter == 30:
            tracker.report(BadImage("b.jpg", 2, "b.jpg: not a decodable image"), trainer.iter, rank=1)
        sync.after_step()
    assert synced == [20, 40]  # the same iterations on every rank
    assert trainer.storage.history("bad_images")[29:32] == [(29, 0.0), (30, 1.0), (31, 1.0)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detgn.data"):
        sync.after_train()
        record.after_train()
    assert [r.getMessage() for r in caplog.records] == [
        "1 training image file(s) failed to read and were left out from then on: b.jpg"]
    line = json.loads((tmp_path / "metrics.json").read_text())
    assert line == {"iteration": 44, "skipped_images": {"count": 1, "files": ["b.jpg"]}}
