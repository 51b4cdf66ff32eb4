"""Runs a recipe with the test suite's hooks: ``hooked_recipe.py RECIPE ARGS``.

The hooks live here, not in the library: the recipe's Brain is replaced by
a subclass (:func:`with_test_hooks`) before its ``main`` runs.

- ``S3L_TEST_CRASH_AFTER_STEPS=N`` ends the process abruptly (as ``kill
  -9`` would: no clean-up, no save) right after optimizer step N;
- ``S3L_TEST_SLOW_SAVE=FILE`` makes every checkpoint save pause for a
  moment halfway through its files, with ``FILE`` existing meanwhile (a
  test kills the process then: a kill during a save);
- ``S3L_TEST_DUMP_DIR=DIR`` makes every process write, at the end, the
  state dicts of its modules, the ids of its training batches (with their
  epoch) and its counters to ``DIR/rank<R>.pt``.
"""

import importlib.util
import logging
import os
import sys
import time

import torch

CRASH_ENV = "S3L_TEST_CRASH_AFTER_STEPS"
DUMP_ENV = "S3L_TEST_DUMP_DIR"
SLOW_SAVE_ENV = "S3L_TEST_SLOW_SAVE"
CRASH_EXIT_CODE = 86


def with_test_hooks(brain_class):
    """``brain_class`` plus the batch log and the crash hook.

    Arguments
    ---------
    brain_class : type
        A subclass of ``s3l_plugin.training.S3LBrain``.

    Returns
    -------
    type
        Its subclass; ``batch_log`` lists ``(epoch, ids)`` per batch.
    """

    class Hooked(brain_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_log = []
            self.crash_after = int(os.environ.get(CRASH_ENV) or 0)
            if os.environ.get(SLOW_SAVE_ENV) and self.checkpointer:
                self.checkpointer.add_recoverable(
                    "slow_save",
                    SlowSave(os.environ[SLOW_SAVE_ENV]),
                    custom_load_hook=SlowSave.load,
                    custom_save_hook=SlowSave.save,
                )

        def on_fit_batch_start(self, batch, should_step):
            epoch = self.hparams.epoch_counter.current
            self.batch_log.append((epoch, list(batch.id)))
            super().on_fit_batch_start(batch, should_step)

        def on_fit_batch_end(self, batch, outputs, loss, should_step):
            super().on_fit_batch_end(batch, outputs, loss, should_step)
            stepped = should_step and self.stepped
            if stepped and 0 < self.crash_after <= self.optimizer_step:
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)

    Hooked.__name__ = brain_class.__name__
    return Hooked


class SlowSave:
    """A recoverable whose save takes a while, announced in ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def save(self, path):
        with open(self.marker, "w", encoding="utf-8") as out:
            out.write(str(path))
        time.sleep(0.3)
        os.remove(self.marker)
        with open(path, "w", encoding="utf-8") as out:
            out.write("1\n")

    def load(self, path, end_of_epoch):
        pass


def load_recipe(path):
    """Imports a recipe script as a module, its Brain with the test hooks.

    Arguments
    ---------
    path : str
        E.g. ``recipes/LibriSpeech/pretrain.py``.

    Returns
    -------
    module
    """
    from s3l_plugin.training import S3LBrain

    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    name = "recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[name] = recipe  # found by inspect, as a script would be
    spec.loader.exec_module(recipe)
    for attribute, value in list(vars(recipe).items()):
        if (
            isinstance(value, type)
            and issubclass(value, S3LBrain)
            and value.__module__ == recipe.__name__
        ):
            setattr(recipe, attribute, with_test_hooks(value))
    return recipe


def dump(brain, folder):
    """Writes this rank's modules, batches and counters to ``folder``."""
    from s3l_plugin.distributed import rank_and_world_size, unwrap_module

    os.makedirs(folder, exist_ok=True)
    rank = rank_and_world_size()[0]
    state = {
        name: unwrap_module(module).state_dict()
        for name, module in brain.modules.items()
    }
    state.update(
        rank=rank,
        batches=brain.batch_log,
        optimizer_step=brain.optimizer_step,
        skipped_audio=brain.skipped_audio,
        nonfinite_steps=brain.nonfinite_steps,
    )
    torch.save(state, os.path.join(folder, f"rank{rank}.pt"))


if __name__ == "__main__":
    from s3l_plugin.config import run_cli

    recipe = load_recipe(sys.argv[1])
    brain = run_cli(recipe.main, sys.argv[2:])
    if os.environ.get(DUMP_ENV):
        dump(brain, os.environ[DUMP_ENV])
