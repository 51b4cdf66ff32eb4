"""What a resumed pretraining run needs beyond the model and optimizer.

A run killed at any point and started again with the same command must end
with the same parameters as one never interrupted. SpeechBrain checkpoints
the modules, optimizer, scheduler, epoch counter and data-loader position;
this module adds the rest:

- :class:`RandomState`: the Python, NumPy, torch and CUDA generators, per
  process (augmentations, dropout and the choice of negatives draw from
  them, and under DDP every rank has its own stream);
- :class:`PerRankState`: any small per-process state (counters; the
  position in the noise collection, ``s3l_plugin.data.noise.NoiseStream``);
- :class:`AtomicCheckpointer`: a checkpoint becomes visible only once all
  of its files are written, so a kill during a save leaves the previous
  checkpoint as the one to resume from (declared in the recipes' YAML);
- resume from the newest checkpoint that loads completely
  (:meth:`AtomicCheckpointer.recover_if_possible`): every file is read
  back before any is loaded, and a checkpoint with a file that cannot be
  (damaged, or holding objects other than tensors and plain data, which
  are never unpickled) is named in a warning and passed over for the
  older one; with none usable the run stops (:class:`CheckpointLoadError`),
  never starts afresh silently;
- a checkpoint written by another architecture stops the run at start-up
  with a clear message (:class:`CheckpointMismatchError`,
  :func:`state_dict_difference`).
"""

import itertools
import json
import logging
import os
import pickle
import random
import shutil

import numpy
import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_LOAD_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from s3l_plugin.distributed import rank_and_world_size

logger = logging.getLogger(__name__)

# torch.save writes zip files.
ZIP_MAGIC = b"PK\x03\x04"

# A checkpoint is written in this sub-folder of the checkpoints folder and
# moved out of it once complete. SpeechBrain lists only the folders holding
# a meta file directly, so it never sees a checkpoint being written.
STAGING_FOLDER = ".incomplete"


class CheckpointMismatchError(ValueError):
    """A checkpoint that this model cannot load (another architecture)."""


class CheckpointLoadError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file.

    Arguments
    ---------
    message : str
        ``cannot resume from <file>: <problem>``, and what to do.
    problem : str
        What is wrong with the file.
    """

    def __init__(self, message, problem=""):
        super().__init__(message)
        self.message = message
        self.problem = problem


# What a user can do when no checkpoint can be resumed.
START_AFRESH = (
    "pass --restart to move the checkpoints aside and start afresh, or use "
    "another --output_folder"
)


def load_error(path, error):
    """The :class:`CheckpointLoadError` for ``path``, which ``error`` stopped.

    Arguments
    ---------
    path : str or pathlib.Path
        The checkpoint file.
    error : Exception
        What reading it raised.

    Returns
    -------
    CheckpointLoadError

    Example
    -------
    >>> load_error("save/CKPT+1/counter.ckpt", ValueError("bad int"))
    CheckpointLoadError('cannot resume from save/CKPT+1/counter.ckpt: Val...')
    """
    if isinstance(error, pickle.UnpicklingError):
        # torch.load(weights_only=True) refused it. torch's own message
        # suggests weights_only=False, which would run the file's code.
        problem = (
            "it holds objects other than tensors and plain data, which are "
            "never unpickled (a damaged or tampered file)"
        )
    else:
        # The first sentence: torch's own messages go on with advice.
        detail = str(error).strip().splitlines()
        problem = f"{type(error).__name__}" + (
            f": {detail[0].split('. ')[0]}" if detail else ""
        )
    return CheckpointLoadError(f"cannot resume from {path}: {problem}", problem)


class PerRankState:
    """Checkpoints a small state of every process in one file.

    Under DDP each rank has its own state (random generators, positions in
    streams whose consumption depends on the rank's batches). Saving gathers
    all of them to the main process, which writes them; loading gives each
    rank its own. A checkpoint written with another number of processes is
    loaded from rank 0's entry, with a warning (the run then goes on, but
    not exactly as it would have).

    Arguments
    ---------
    get_state : callable
        Returns this process's state: what ``torch.load(...,
        weights_only=True)`` reads back (tensors, numbers, strings, lists,
        dicts).
    set_state : callable
        Restores a state returned by ``get_state``.

    Example
    -------
    >>> import tempfile
    >>> counters = {"skipped": 3}
    >>> state = PerRankState(
    ...     lambda: dict(counters), lambda saved: counters.update(saved)
    ... )
    >>> path = os.path.join(tempfile.mkdtemp(), "counters.ckpt")
    >>> state.save(path)
    >>> counters["skipped"] = 7
    >>> state.load(path)
    >>> counters["skipped"]
    3
    """

    def __init__(self, get_state=None, set_state=None):
        self._get_state = get_state
        self._set_state = set_state

    def get_state(self):
        """This process's state."""
        return self._get_state()

    def set_state(self, state):
        """Restores this process's state."""
        self._set_state(state)

    @mark_as_saver
    def save(self, path):
        """Gathers every rank's state; the main process writes them."""
        rank, world_size = rank_and_world_size()
        state = self.get_state()
        states = [state]
        if world_size > 1:
            states = [None] * world_size
            torch.distributed.all_gather_object(states, state)
        if rank == 0:
            torch.save({"ranks": states}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores this rank's state from ``path``."""
        del end_of_epoch  # the state is the same at an epoch's end
        states = torch.load(path, weights_only=True)["ranks"]
        rank, world_size = rank_and_world_size()
        if len(states) != world_size:
            logger.warning(
                "%s was written by %d processes, this run has %d: every "
                "rank resumes from rank 0's state, so the run will not "
                "continue exactly as it would have",
                path,
                len(states),
                world_size,
            )
            rank = 0
        self.set_state(states[rank])


# Every rank must run the saver: it gathers the states. Subclasses find
# these hooks through their method resolution order.
register_checkpoint_hooks(PerRankState, save_on_main_only=False)


class RandomState(PerRankState):
    """Saves and restores the Python, NumPy, torch and CUDA generators.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> state = RandomState()
    >>> state.save(path)
    >>> first = torch.rand(3)
    >>> state.load(path)
    >>> torch.equal(first, torch.rand(3))
    True
    """

    def get_state(self):
        """The generators' states, as tensors and numbers."""
        version, words, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = numpy.random.get_state()
        return {
            "python": [version, list(words), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype("int64")), position]
            + [has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all()
            if torch.cuda.is_available()
            else [],
        }

    def set_state(self, state):
        """Sets the generators to ``state``."""
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words), gauss))
        kind, keys, position, has_gauss, cached = state["numpy"]
        keys = keys.numpy().astype(numpy.uint32)
        numpy.random.set_state((kind, keys, position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


@register_checkpoint_hooks
class TrainingOptions:
    """The options a run trains with, checkpointed (JSON) for comparison.

    A resumed run compares its own options with ``saved``, those of the
    checkpoint it resumed (``s3l_plugin.config.check_resumed_options``).

    Arguments
    ---------
    options : dict
        Plain data (``s3l_plugin.config.training_options``).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "options.ckpt")
    >>> TrainingOptions({"lr": 0.1}).save(path)
    >>> resumed = TrainingOptions({"lr": 0.2})
    >>> resumed.load(path)
    >>> resumed.saved
    {'lr': 0.1}
    """

    def __init__(self, options):
        self.options = options
        self.saved = None  # until a checkpoint is loaded

    @mark_as_saver
    def save(self, path):
        """Writes the run's options."""
        with open(path, "w", encoding="utf-8") as fout:
            json.dump(self.options, fout, sort_keys=True)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Reads the checkpoint's options into ``saved``."""
        del end_of_epoch  # the same at an epoch's end
        with open(path, encoding="utf-8") as fin:
            self.saved = json.load(fin)


class AtomicCheckpointer(Checkpointer):
    """A Checkpointer whose checkpoints appear only once complete.

    SpeechBrain writes a checkpoint's meta file (which makes the folder a
    checkpoint) first and the parameter files after; a process killed in
    between leaves a checkpoint that cannot be loaded and, being the most
    recent, is the one a rerun tries. Here every checkpoint is written in
    the ``.incomplete`` sub-folder (SpeechBrain's own ``save_checkpoint``,
    pointed there through ``checkpoints_dir``), flushed to disk, and then
    moved into the checkpoints folder with one rename.

    Arguments
    ---------
    *args, **kwargs
        As for ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import tempfile
    >>> checkpointer = AtomicCheckpointer(
    ...     tempfile.mkdtemp(), {"layer": torch.nn.Linear(2, 2)}
    ... )
    >>> checkpoint = checkpointer.save_checkpoint()
    >>> sorted(os.listdir(checkpoint.path))
    ['CKPT.yaml', 'layer.ckpt']
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed = None  # the checkpoint recover_if_possible loaded

    def save_checkpoint(self, *args, **kwargs):
        """Saves as ``Checkpointer.save_checkpoint``, all or nothing."""
        final_dir = self.checkpoints_dir
        self.checkpoints_dir = final_dir / STAGING_FOLDER
        try:
            checkpoint = super().save_checkpoint(*args, **kwargs)
        finally:
            self.checkpoints_dir = final_dir
        if checkpoint is not None:  # the main process
            staged = checkpoint.path
            for name in os.listdir(staged):
                _fsync(os.path.join(staged, name))
            _fsync(staged)
            # Names are timestamps to the second: two saves in one second
            # are told apart by a suffix (SpeechBrain orders by unixtime).
            final = final_dir / staged.name
            for index in itertools.count(1):
                if not final.exists():
                    break
                final = final_dir / f"{staged.name}+{index:02d}"
            os.replace(staged, final)
            _fsync(final_dir)
            checkpoint = Checkpoint(
                final,
                checkpoint.meta,
                {
                    name: final / path.name
                    for name, path in checkpoint.paramfiles.items()
                },
            )
        # Every rank must see the new checkpoint before going on: the
        # deletion that follows in save_and_keep_only lists checkpoints on
        # each rank and broadcasts once per deleted one.
        ddp_barrier()
        return checkpoint

    def list_checkpoints(self):
        """SpeechBrain's list, without the folders whose meta file is bad.

        Each ``CKPT.yaml`` is read with ``yaml.safe_load`` and checked
        (:func:`check_meta_file`); a folder whose meta file is not a
        checkpoint's is left out here (SpeechBrain would stop on it) and
        named by :meth:`recover_if_possible`.

        Returns
        -------
        list of Checkpoint
        """
        checkpoints = []
        for folder in sorted(self.checkpoints_dir.iterdir()):
            meta_file = folder / METAFNAME
            if not (
                folder.name.startswith(CKPT_PREFIX) and meta_file.is_file()
            ):
                continue
            try:
                meta = check_meta_file(meta_file)
            except CheckpointLoadError:
                continue
            paramfiles = {
                path.stem: path
                for path in folder.iterdir()
                if path.suffix == PARAMFILE_EXT
            }
            checkpoints.append(Checkpoint(folder, meta, paramfiles))
        return checkpoints

    def unlisted_folders(self):
        """Checkpoint folders that :meth:`list_checkpoints` leaves out.

        Returns
        -------
        list of str
            For each folder, why: it has no ``CKPT.yaml``, or what is wrong
            in it.
        """
        unlisted = []
        for folder in sorted(self.checkpoints_dir.iterdir()):
            if not (folder.is_dir() and folder.name.startswith(CKPT_PREFIX)):
                continue
            meta_file = folder / METAFNAME
            if not meta_file.is_file():
                unlisted.append(f"cannot resume from {folder}: no {METAFNAME}")
                continue
            try:
                check_meta_file(meta_file)
            except CheckpointLoadError as error:
                unlisted.append(error.message)
        return unlisted

    def check_checkpoint(self, checkpoint):
        """Reads every file of ``checkpoint`` back, changing nothing.

        So that a damaged checkpoint is found before any of its files is
        loaded into the run (a half-loaded one would leave some of its
        state behind when an older checkpoint is loaded instead). Files
        written by ``torch.save`` are read (memory-mapped) with
        ``weights_only=True``, and the modules' against their state dicts;
        the others (SpeechBrain's counters) must be plain YAML.

        Arguments
        ---------
        checkpoint : Checkpoint
            From :meth:`list_checkpoints`.

        Raises
        ------
        CheckpointLoadError
            Naming a missing or unreadable file.
        CheckpointMismatchError
            If a module file was written by another architecture.
        """
        for name, obj in self.recoverables.items():
            path = checkpoint.paramfiles.get(name)
            if path is None:
                if self.optional_recoverables.get(name) or "dataloader" in name:
                    continue  # as SpeechBrain's load_checkpoint
                raise load_error(
                    checkpoint.path / f"{name}{PARAMFILE_EXT}",
                    FileNotFoundError("the file is missing"),
                )
            saved = _read_back(path)
            if isinstance(obj, torch.nn.Module):
                problem = state_dict_difference(saved, obj.state_dict())
                if problem:
                    raise CheckpointMismatchError(
                        f"the checkpoint {checkpoint.path} does not fit this "
                        f"model ({name}: {problem}); it was written by "
                        "another configuration: pass --restart to move its "
                        "checkpoints aside and start afresh, or use another "
                        "--output_folder"
                    )

    def recover_if_possible(
        self,
        importance_key=None,
        max_key=None,
        min_key=None,
        ckpt_predicate=None,
    ):
        """Loads the best checkpoint that loads completely, if there is one.

        As ``Checkpointer.recover_if_possible`` (the same choice of
        checkpoint), except that a checkpoint whose files cannot be read
        back is passed over, with a warning naming it and why, for the
        next one in the same order (the older one, by default).

        Arguments
        ---------
        importance_key, max_key, min_key, ckpt_predicate
            As for ``Checkpointer.recover_if_possible``.

        Returns
        -------
        Checkpoint or None
            The checkpoint loaded (also kept in ``self.resumed``); None if
            there is none to load.

        Raises
        ------
        CheckpointLoadError
            If checkpoints exist but none can be loaded, or if the
            checkpoints folder holds checkpoint folders none of which has
            a valid ``CKPT.yaml`` (never a silent start from scratch).
        CheckpointMismatchError
            If a checkpoint was written by another architecture.
        """
        for problem in self.unlisted_folders():
            logger.warning("%s; the folder is ignored", problem)
        candidates = self.find_checkpoints(
            importance_key, max_key, min_key, ckpt_predicate
        )
        failures = []
        for checkpoint in candidates:
            try:
                self.check_checkpoint(checkpoint)
                self.load_checkpoint(checkpoint)
            except CheckpointLoadError as error:
                failures.append(error)
                logger.warning("%s; trying the next checkpoint", error)
                continue
            self.resumed = checkpoint
            return checkpoint
        if failures:
            older = ""
            if len(failures) > 1:
                older = f"; nor from the other {len(failures) - 1}"
            raise CheckpointLoadError(
                f"{failures[0].message}{older}; {START_AFRESH}",
                failures[0].problem,
            )
        unlisted = self.unlisted_folders()
        if unlisted and ckpt_predicate is None and not (max_key or min_key):
            raise CheckpointLoadError(
                f"{unlisted[-1]} ({self.checkpoints_dir} holds "
                f"{len(unlisted)} checkpoint folders, none with a valid "
                f"{METAFNAME}); {START_AFRESH}"
            )
        logger.info("No checkpoint to resume from: training starts afresh")
        return None

    def load_checkpoint(self, checkpoint):
        """Loads as ``Checkpointer.load_checkpoint``, naming a bad file.

        Each recoverable's load hook (its own, or SpeechBrain's default for
        its type) runs as usual; whatever stops one becomes a
        :class:`CheckpointLoadError` naming the file.

        Arguments
        ---------
        checkpoint : Checkpoint
            The checkpoint to load.
        """
        own_hooks = self.custom_load_hooks
        hooks = {}
        for name, obj in self.recoverables.items():
            hook = own_hooks.get(name) or get_default_hook(
                obj, DEFAULT_LOAD_HOOKS
            )
            if hook is not None:
                hooks[name] = _naming_load_hook(hook)
        self.custom_load_hooks = hooks
        try:
            super().load_checkpoint(checkpoint)
        finally:
            self.custom_load_hooks = own_hooks

    def remove_incomplete(self):
        """Deletes what a killed save left in the ``.incomplete`` folder.

        Returns
        -------
        list of str
            The checkpoint folders removed.
        """
        staging = self.checkpoints_dir / STAGING_FOLDER
        if not if_main_process() or not staging.is_dir():
            return []
        removed = [str(path) for path in sorted(staging.iterdir())]
        for path in removed:
            logger.warning(
                "Removing %s: a checkpoint whose save was interrupted", path
            )
        shutil.rmtree(staging)
        return removed


def _naming_load_hook(hook):
    """``hook``, raising :class:`CheckpointLoadError` on any failure."""

    def load(obj, path, end_of_epoch):
        try:
            hook(obj, path, end_of_epoch)
        except CheckpointLoadError:
            raise
        except Exception as error:
            raise load_error(path, error) from error

    return load


def check_meta_file(path):
    """Checks a checkpoint's ``CKPT.yaml`` (plain YAML, safely read).

    Arguments
    ---------
    path : pathlib.Path
        The meta file.

    Returns
    -------
    dict
        The meta data.

    Raises
    ------
    CheckpointLoadError
        If it is not a mapping holding ``unixtime`` and ``end-of-epoch``.
    """
    try:
        with open(path, encoding="utf-8") as fin:
            meta = yaml.safe_load(fin)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise load_error(path, error) from error
    if not isinstance(meta, dict) or not {"unixtime", "end-of-epoch"} <= set(
        meta
    ):
        raise load_error(
            path, ValueError("not a checkpoint's meta data (unixtime...)")
        )
    return meta


def _read_back(path):
    """What ``path`` holds: a ``torch.save`` file, or else plain YAML."""
    try:
        with open(path, "rb") as fin:
            torch_file = fin.read(4) == ZIP_MAGIC
        if torch_file:
            saved = torch.load(
                path, map_location="cpu", weights_only=True, mmap=True
            )
        else:
            with open(path, encoding="utf-8") as fin:
                saved = yaml.safe_load(fin)
    except UnicodeDecodeError as error:
        problem = ValueError("neither a torch.save file nor text (damaged)")
        raise load_error(path, problem) from error
    except Exception as error:
        raise load_error(path, error) from error
    if saved is None:
        raise load_error(path, ValueError("the file is empty"))
    return saved


def _fsync(path):
    """Flushes a file or folder to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def state_dict_difference(saved, expected):
    """What keeps ``saved`` from loading strictly where ``expected`` is.

    The one state-dict check of the project (resume and pretrained
    encoders alike).

    Arguments
    ---------
    saved : dict
        The state dict read from a file.
    expected : dict
        The model's own state dict.

    Returns
    -------
    str
        One line listing the missing keys, unexpected keys and shape
        mismatches (the first five of each); empty if they fit.

    Example
    -------
    >>> state_dict_difference({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    '1 shape mismatches: w (2,) vs model (3,)'
    """
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    shapes = [
        f"{key} {tuple(saved[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in saved
        and tuple(getattr(saved[key], "shape", ())) != tuple(value.shape)
    ]
    problems = []
    for name, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            shown = ", ".join(items[:5])
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {name}: {shown}{more}")
    return "; ".join(problems)
