"""Unreadable training images: each FILE is reported once, skipped from then on, and limited.

The policy (see also ``detgn/data/mapper.py``): a worker that
fails to read an image returns a :class:`BadImage` marker instead of raising. The main
process drops it from its batch (a batch left empty is skipped) and records the FILE
in a :class:`BadImageTracker`: it is warned about once (file, image id, reason), and
from then on it is left out of every batch before the batch goes to a worker, so it
is never read again -- not in later epochs, not by other workers, not by other
processes (they exchange newly found files every few iterations and at every
checkpoint), not after ``--resume`` (the tracker is saved in checkpoints). What
counts is distinct files: training stops with :class:`TooManyBadImagesError` (its
message lists the files and what to do, no traceback) once more files have failed
than the larger of ``DATALOADER.MAX_BAD_IMAGES`` and ``DATALOADER.MAX_BAD_IMAGES_FRACTION``
of the training set, or when no readable image is left; with one process at once,
with several at the next exchange, on all processes together. The skipped files are
summarised at the end of training (log, ``metrics.json``). A file repaired during a
run stays skipped until a new run (a new OUTPUT_DIR) starts.

Augmentation is seeded by each sample's position in the stream, so a skipped file
does not change any other sample. Exact resume holds with bad images too: the
tracker records the stream position of the next batch each time a batch is yielded
(skipped batches make it run ahead of the iteration), and a resumed loader starts
there.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from detgn.utils import comm
from detgn.utils.errors import UserError

from .samplers import TrainBatchSampler

logger = logging.getLogger(__name__)

__all__ = ["BadImage", "BadImageTracker", "LoaderPosition", "SkipKnownBad", "TooManyBadImagesError"]


class TooManyBadImagesError(UserError, RuntimeError):
    """More distinct training image files failed to read than the limits allow (see :class:`BadImageTracker`)."""


class BadImage:
    """Marker a worker returns for an image that failed to read (recorded in the main process)."""

    __slots__ = ("file_name", "image_id", "message")

    def __init__(self, file_name: Optional[str], image_id: Any, message: str):
        self.file_name, self.image_id, self.message = file_name, image_id, message

    def __repr__(self) -> str:
        return f"BadImage({self.file_name!r}, image_id={self.image_id!r})"


_VALIDATE_HINT = "python tools/validate_dataset.py --json <instances.json> --images <image folder>"
_SHOWN = 10  # files named in the error and the summary line


def _plain_id(image_id: Any) -> Any:
    """An image id as a plain int or str (checkpoints load with ``weights_only=True``)."""
    if image_id is None or isinstance(image_id, (int, str)):
        return image_id
    try:
        return int(image_id)
    except (TypeError, ValueError):
        return str(image_id)


class LoaderPosition:
    """Where a training loader is in its stream, for exact resume when batches were skipped.

    Each time the loader yields a batch it records (:meth:`note`) the iteration of the next
    batch and the sampler batch to read it from; skipped batches make the position run ahead
    of the iteration. :meth:`state` is every rank's position (gathered by the tracker's
    sync), and a loader built at the saved iteration starts there (:meth:`resume_batch`).
    """

    def __init__(self):
        self.local: Optional[Dict[str, int]] = None  # this rank's position
        self.gathered: Optional[List[Dict[str, int]]] = None  # every rank's, from the last sync
        self.saved: Optional[Dict[str, Any]] = None  # the state restored from a checkpoint

    def note(self, *, iteration: int, position: int, world_size: int, batch_size: int) -> None:
        """The loader yielded a batch: ``iteration`` is read next, from sampler batch ``position``."""
        self.local = {"iteration": int(iteration), "position": int(position), "world_size": int(world_size),
                      "batch_size": int(batch_size)}

    def resume_batch(self, start_batch: int, *, rank: int, world_size: int, batch_size: int) -> int:
        """The sampler batch a loader whose first yielded batch is number ``start_batch`` reads
        first: the saved position when the restored state was saved at that batch with this world
        and batch size, else ``start_batch`` (no bad images were skipped, or nothing is known)."""
        saved = self.saved
        if not saved:
            return start_batch
        if (saved.get("iteration"), saved.get("world_size"), saved.get("batch_size")) == (
            start_batch, world_size, batch_size
        ) and len(saved.get("positions", ())) == world_size:
            position = int(saved["positions"][rank])
            if position != start_batch:
                logger.info("The data loader resumes at stream batch %d for iteration %d (%d batch(es) were "
                            "skipped for unreadable images)", position, start_batch, position - start_batch)
            return position
        logger.info(
            "The saved data loader position (iteration %s, %s process(es) x %s images) does not fit this run "
            "(iteration %d, %d x %d): the loader starts at batch %d of the stream",
            saved.get("iteration"), saved.get("world_size"), saved.get("batch_size"), start_batch, world_size,
            batch_size, start_batch,
        )
        return start_batch

    def state(self) -> Optional[Dict[str, Any]]:
        """What a checkpoint records (every rank's position at one iteration), or None when unknown."""
        local = self.local
        if local is None:  # no batch yielded since the state was restored: keep what was restored
            return dict(self.saved) if self.saved else None
        if local["world_size"] == 1:
            positions = [local["position"]]
        else:
            g = self.gathered
            # Only a position set gathered at this very iteration describes the checkpoint.
            if not g or len(g) != local["world_size"] or any(x is None or x["iteration"] != local["iteration"]
                                                             for x in g):
                return None
            positions = [x["position"] for x in g]
        return {"iteration": local["iteration"], "world_size": local["world_size"],
                "batch_size": local["batch_size"], "positions": positions}


class BadImageTracker:
    """The training files known to be unreadable, the limit on them, and the loader's position.

    One per training run: the caller creates it, passes it to the loader factory
    (:func:`build_detection_train_loader`, ``bad_images=``) and registers it as a
    checkpointable (:func:`detgn.engine.build_trainer` does, given ``bad_images=``), so
    ``--resume`` restores it before the loader is built. A loader given no tracker makes
    its own.

    - Files are keyed by the record's ``file_name`` (stable across resume whatever the
      record order), each with its image id, the error message, the iteration at which it
      was found and the rank that found it.
    - Limit: training stops once more distinct files have failed than
      ``max(max_bad_images, floor(max_fraction * dataset_size))``, or when every file of
      the training set has failed. In a one-process run :meth:`report` raises at once; with
      several processes the check happens in :meth:`sync`, which every process calls at the
      same iteration, so all stop together.
    - Several processes: :meth:`sync` (a collective) exchanges the files found since the
      last call and every rank's loader position. Call it at fixed iterations on all ranks
      (:class:`detgn.engine.hooks.BadImageSync`); the :class:`~detgn.checkpoint.Checkpointer`
      calls it, as ``sync_state()``, on every process before a save.
    - Exact resume: the loader's :class:`LoaderPosition` (the iteration of the next batch and
      the sampler batch to read it from; skipped batches make the position run ahead of the
      iteration). :meth:`state_dict` saves every rank's position, and a loader built at the
      saved iteration starts there (:meth:`resume_batch`).

    ``state_dict()`` holds plain Python values only.
    """

    def __init__(self, *, max_bad_images: int = 10, max_fraction: float = 0.0):
        if int(max_bad_images) < 0:
            raise ValueError(f"max_bad_images must be >= 0, got {max_bad_images}")
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.max_bad_images = int(max_bad_images)
        self.max_fraction = float(max_fraction)
        self.dataset_size: Optional[int] = None  # distinct training files, set by the loader
        self.validate_hint = _VALIDATE_HINT
        self.raise_at_once = True  # one process: raise in report(); several: in sync()
        self._files: Dict[str, Dict[str, Any]] = {}
        self._unshared: List[str] = []  # found here since the last sync
        self._position = LoaderPosition()

    @classmethod
    def from_config(cls, cfg) -> "BadImageTracker":
        """Limits from ``DATALOADER.MAX_BAD_IMAGES`` and ``DATALOADER.MAX_BAD_IMAGES_FRACTION``."""
        try:
            return cls(max_bad_images=cfg.DATALOADER.MAX_BAD_IMAGES,
                       max_fraction=cfg.DATALOADER.MAX_BAD_IMAGES_FRACTION)
        except ValueError as e:
            from detgn.config import ConfigError  # here: detgn.config is not needed to load data

            raise ConfigError(
                f"DATALOADER.MAX_BAD_IMAGES must be >= 0 and DATALOADER.MAX_BAD_IMAGES_FRACTION in [0, 1] ({e})"
            ) from None

    # -- queries --------------------------------------------------------------
    @property
    def num_bad_images(self) -> int:
        """Distinct files known to be unreadable."""
        return len(self._files)

    def _by_fraction(self) -> int:
        return int(self.max_fraction * self.dataset_size + 1e-9) if self.dataset_size else 0

    @property
    def limit(self) -> int:
        """The most distinct bad files allowed (before the "no readable image left" cap)."""
        return max(self.max_bad_images, self._by_fraction())

    def is_bad(self, file_name: Any) -> bool:
        return file_name in self._files

    def entries(self) -> List[Dict[str, Any]]:
        """The known files in the order they were found: ``{"file_name", "image_id", "message",
        "iteration", "rank"}`` each."""
        items = sorted(self._files.items(), key=lambda kv: (kv[1]["iteration"], kv[1]["rank"], kv[0]))
        return [{"file_name": k, **v} for k, v in items]

    @property
    def bad_files(self) -> List[str]:
        return [e["file_name"] for e in self.entries()]

    def summary(self) -> Dict[str, Any]:
        """``{"count": n, "files": [file names in the order found]}`` (for the run's results)."""
        files = self.bad_files
        return {"count": len(files), "files": files}

    def _limit_text(self) -> str:
        size = self.dataset_size
        frac = (f"DATALOADER.MAX_BAD_IMAGES_FRACTION={self.max_fraction:g} x {size} = "
                f"{self._by_fraction()}" if size else
                f"DATALOADER.MAX_BAD_IMAGES_FRACTION={self.max_fraction:g}")
        return f"the larger of DATALOADER.MAX_BAD_IMAGES={self.max_bad_images} and {frac}"

    def _over_limit(self) -> bool:
        n = len(self._files)
        return n > self.limit or (self.dataset_size is not None and n >= self.dataset_size)

    def error(self) -> TooManyBadImagesError:
        """The error for the current state (see :meth:`check`)."""
        n, size = len(self._files), self.dataset_size
        of = f" of {size}" if size else ""
        if size is not None and n >= size:
            head = f"All {n}{of} training image files failed to read: nothing is left to train on."
        else:
            head = (f"{n}{of} distinct training image files failed to read, more than the limit of {self.limit} "
                    f"({self._limit_text()}).")
        lines = [head, "Unreadable files (left out of training from their first failed read on):"]
        for e in self.entries()[:_SHOWN]:
            msg, name = e["message"], e["file_name"]
            lines.append(f"  {msg}" if name in msg else f"  {name} (image id {e['image_id']}): {msg}")
        if n > _SHOWN:
            lines.append(f"  ... and {n - _SHOWN} more")
        lines.append(
            f"Every unreadable file of a dataset is listed by {self.validate_hint}. Fix or remove them (then "
            "start a new run: a resumed run keeps skipping them), or raise DATALOADER.MAX_BAD_IMAGES / "
            "DATALOADER.MAX_BAD_IMAGES_FRACTION."
        )
        return TooManyBadImagesError("\n".join(lines))

    def check(self) -> None:
        """Raise :class:`TooManyBadImagesError` if the known files exceed the limit."""
        if self._over_limit():
            raise self.error()

    # -- updates --------------------------------------------------------------
    def attach(self, file_names: Sequence[str], *, world_size: int, validate_hint: Optional[str] = None) -> None:
        """Called by the loader factory with its records' file names."""
        names = set(file_names)
        self.dataset_size = len(names)
        self.raise_at_once = world_size <= 1
        if validate_hint:
            self.validate_hint = validate_hint
        gone = [f for f in self._files if f not in names]
        if gone:
            logger.info(
                "%d file(s) recorded as unreadable are not among this run's training images (moved or removed "
                "from the dataset?) and are forgotten: %s", len(gone), ", ".join(gone[:_SHOWN]),
            )
            for f in gone:
                del self._files[f]
        if self._files:
            logger.info(
                "%d training image file(s) that failed to read earlier in this run are skipped without reading: %s%s",
                len(self._files), ", ".join(self.bad_files[:_SHOWN]), " ..." if len(self._files) > _SHOWN else "",
            )
        self.check()  # e.g. resumed with a lower limit; the same on every rank

    def report(self, bad: BadImage, iteration: int, rank: int = 0) -> bool:
        """Record a failed read found while assembling the batch of ``iteration``.

        Returns False (logged at debug level only) when the file was already known: it was
        in a batch sent to a worker before it became known. A new file is warned about;
        with one process, one file too many raises :class:`TooManyBadImagesError` here.
        """
        name = str(bad.file_name) if bad.file_name is not None else f"<image id {bad.image_id}>"
        if name in self._files:
            logger.debug("Dropping %s again (already known to be unreadable; read before that was known)", name)
            return False
        self._files[name] = {
            "image_id": _plain_id(bad.image_id), "message": str(bad.message), "iteration": int(iteration),
            "rank": int(rank),
        }
        self._unshared.append(name)
        if self._over_limit() and self.raise_at_once:
            raise self.error()
        n, limit = len(self._files), self.limit
        if n > limit:
            tail = f"{n} distinct files, more than the limit of {limit}: training stops at the next check"
        else:
            tail = f"{n} of at most {limit} distinct files; it is skipped from now on"
        msg = str(bad.message)
        what = msg if name in msg else f"{name} (image id {bad.image_id}): {msg}"  # ImageReadError names both
        logger.warning("Skipping training image %s [%s]", what, tail)
        return True

    def note_position(self, *, iteration: int, position: int, world_size: int, batch_size: int) -> None:
        """The loader yielded a batch (see :meth:`LoaderPosition.note`)."""
        self._position.note(iteration=iteration, position=position, world_size=world_size, batch_size=batch_size)

    def resume_batch(self, start_batch: int, *, rank: int, world_size: int, batch_size: int) -> int:
        """The sampler batch a loader starting at batch ``start_batch`` reads first
        (see :meth:`LoaderPosition.resume_batch`)."""
        return self._position.resume_batch(start_batch, rank=rank, world_size=world_size, batch_size=batch_size)

    def _merge(self, name: str, entry: Dict[str, Any]) -> None:
        old = self._files.get(name)
        if old is None or (entry["iteration"], entry["rank"]) < (old["iteration"], old["rank"]):
            if old is None:
                logger.debug("Rank %s found %s unreadable; it is skipped here from now on", entry["rank"], name)
            self._files[name] = dict(entry)

    def sync(self) -> None:
        """Collective: share the files found since the last call and the loader positions, then
        :meth:`check` (the same union on every rank, so all raise together). Every process
        must call it at the same iteration; with one process it only checks."""
        if comm.get_world_size() > 1:
            mine = {"files": {f: self._files[f] for f in self._unshared if f in self._files},
                    "loader": self._position.local}
            gathered = comm.all_gather(mine)
            for g in gathered:
                for name, entry in g["files"].items():
                    self._merge(name, entry)
            self._position.gathered = [g["loader"] for g in gathered]
        self._unshared.clear()
        self.check()

    sync_state = sync  # the Checkpointer's hook: called on every process before a save

    # -- checkpointing --------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"version": 1, "files": {k: dict(v) for k, v in self._files.items()}}
        loader = self._position.state()
        if loader is not None:
            state["loader"] = loader
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        files = state.get("files", {})
        self._files = {
            str(k): {"image_id": _plain_id(v.get("image_id")), "message": str(v.get("message", "")),
                     "iteration": int(v.get("iteration", 0)), "rank": int(v.get("rank", 0))}
            for k, v in files.items()
        }
        self._unshared = []
        self._position.saved = dict(state["loader"]) if state.get("loader") else None

    def copy_known_files(self) -> "BadImageTracker":
        """A new tracker, same limits, that skips the files this one knows but holds no loader
        position: for a second loader over the training set (PreciseBN's), which must not
        move the position this one checkpoints."""
        other = BadImageTracker(max_bad_images=self.max_bad_images, max_fraction=self.max_fraction)
        other.load_state_dict({"files": self.state_dict()["files"]})
        return other

    # -- reporting ------------------------------------------------------------
    def log_summary(self) -> None:
        """One line naming the skipped files (nothing when there are none)."""
        n = len(self._files)
        if n:
            more = f" and {n - _SHOWN} more" if n > _SHOWN else ""
            logger.warning(
                "%d training image file(s) failed to read and were left out from then on: %s%s",
                n, ", ".join(self.bad_files[:_SHOWN]), more,
            )


class SkipKnownBad:
    """The sampler's batches (numbered from its ``start_batch``) without the samples of known-bad files.

    Runs in the main process (DataLoader workers only receive these keys), so a file is
    left out from the first batch dispatched after it became known. Keys are
    ``(index, position, batch number)``; a batch left empty is not dispatched.
    """

    def __init__(self, batch_sampler: TrainBatchSampler, records: List[dict], tracker: BadImageTracker):
        self.batch_sampler, self.records, self.tracker = batch_sampler, records, tracker

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        names = [r.get("file_name") for r in self.records]
        tracker = self.tracker
        for number, batch in enumerate(self.batch_sampler, start=self.batch_sampler.start_batch):
            keys = [(i, p, number) for i, p in batch if not tracker.is_bad(names[i])]
            if keys:
                yield keys
            elif tracker.dataset_size is not None and tracker.num_bad_images >= tracker.dataset_size:
                # Nothing readable is left: stop rather than spin forever. (With several
                # processes the limit check at the sync comes first unless the limits allow
                # the whole set; then this rank stops alone.)
                raise tracker.error()
