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
- :func:`check_checkpoint_compatible` and :func:`state_dict_difference`: a
  checkpoint written by another architecture stops the run at start-up
  with a clear message (:class:`CheckpointMismatchError`);
- a checkpoint file that cannot be read back (damaged, or holding objects
  other than tensors and plain data, which are never unpickled) stops the
  run naming the file (:class:`CheckpointLoadError`).
"""

import itertools
import logging
import os
import pickle
import random
import shutil

import numpy
import torch
import yaml
from speechbrain.utils.checkpoints import (
    DEFAULT_LOAD_HOOKS,
    METAFNAME,
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

# A checkpoint is written in this sub-folder of the checkpoints folder and
# moved out of it once complete. SpeechBrain lists only the folders holding
# a meta file directly, so it never sees a checkpoint being written.
STAGING_FOLDER = ".incomplete"


class CheckpointMismatchError(ValueError):
    """A checkpoint that this model cannot load (another architecture)."""


class CheckpointLoadError(ValueError):
    """A checkpoint file that cannot be read back; the message names it."""


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
    CheckpointLoadError('cannot resume from save/CKPT+1/counter.ckpt: ...')
    """
    if isinstance(error, pickle.UnpicklingError):
        # torch.load(weights_only=True) refused it. torch's own message
        # suggests weights_only=False, which would run the file's code.
        problem = (
            "it holds objects other than tensors and plain data, which are "
            "never unpickled (a damaged or tampered file)"
        )
    else:
        detail = str(error).strip().splitlines()
        problem = f"{type(error).__name__}" + (
            f": {detail[0]}" if detail else ""
        )
    return CheckpointLoadError(
        f"cannot resume from {path}: {problem}; delete its checkpoint "
        "folder to resume from an older one, or use another "
        "--output_folder to start afresh"
    )


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
        """SpeechBrain's list, once every meta file is checked.

        Returns
        -------
        list of Checkpoint

        Raises
        ------
        CheckpointLoadError
            Naming a ``CKPT.yaml`` that is not a checkpoint's meta data.
        """
        for folder in self.checkpoints_dir.iterdir():
            meta = folder / METAFNAME
            if folder.is_dir() and meta.is_file():
                check_meta_file(meta)
        return super().list_checkpoints()

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


def _fsync(path):
    """Flushes a file or folder to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_checkpoint_compatible(checkpointer):
    """Checks that the latest checkpoint fits the recoverable modules.

    A save folder holding a checkpoint of another architecture (another
    ``d_model``, another number of layers...) would otherwise fail deep in
    ``recover_if_possible`` with a long ``state_dict`` error.

    Arguments
    ---------
    checkpointer : speechbrain.utils.checkpoints.Checkpointer
        With its module recoverables registered.

    Returns
    -------
    str or None
        The checkpoint folder that will be resumed, None if there is none.

    Raises
    ------
    CheckpointMismatchError
        Naming the checkpoint, the first difference and what to do.
    CheckpointLoadError
        Naming a module file that cannot be read back.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> old = Checkpointer(folder, {"model": torch.nn.Linear(2, 3)})
    >>> _ = old.save_checkpoint()
    >>> new = Checkpointer(folder, {"model": torch.nn.Linear(2, 4)})
    >>> check_checkpoint_compatible(new)
    Traceback (most recent call last):
    ...
    s3l_plugin.checkpointing.CheckpointMismatchError: the checkpoint ...
    """
    checkpoint = checkpointer.find_checkpoint()
    if checkpoint is None:
        return None
    for name, obj in checkpointer.recoverables.items():
        if not isinstance(obj, torch.nn.Module):
            continue
        path = checkpoint.paramfiles.get(name)
        if path is None:
            if checkpointer.optional_recoverables.get(name):
                continue
            problem = f"it has no {name}.ckpt"
        else:
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise load_error(path, error) from error
            problem = state_dict_difference(saved, obj.state_dict())
            problem = f"{name}: {problem}" if problem else ""
        if problem:
            raise CheckpointMismatchError(
                f"the checkpoint {checkpoint.path} does not fit this model "
                f"({problem}); it was written by another configuration: "
                "use another --output_folder, or delete "
                f"{checkpointer.checkpoints_dir} to start afresh"
            )
    return str(checkpoint.path)


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
