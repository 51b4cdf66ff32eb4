"""One run per output folder: a lock file naming the process holding it.

Two runs writing the same checkpoints would delete each other's (one dies
with SpeechBrain's "Checkpoint does not appear valid for deletion"), or
resume from a checkpoint the other is still writing. The main process of a
run therefore holds ``<output_folder>/.s3l_run.lock`` (its PID, host and
start time) until it exits; a second run stops at once naming the holder.
A lock left by a process that died without cleaning up (``kill -9``, a
crashed node) is taken over, with a warning, once its PID is gone from
this host.

``filelock`` (``fcntl`` locks) cannot say who holds a folder and behaves
differently across network file systems; a lock file holding the PID does
both.
"""

import atexit
import json
import logging
import os
import socket
import time

from s3l_plugin.config import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".s3l_run.lock"


class OutputFolderLock:
    """The lock of one output folder, held by this process.

    Arguments
    ---------
    folder : str
        The output folder (created if missing).

    Example
    -------
    >>> import tempfile
    >>> lock = OutputFolderLock(tempfile.mkdtemp()).acquire()
    >>> lock.holder()["pid"] == os.getpid()
    True
    >>> lock.release()
    >>> os.path.exists(lock.path)
    False
    """

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def acquire(self):
        """Takes the lock, or stops naming the process that holds it.

        A lock held by this process is kept (a recipe's ``main`` called
        twice in one process); one whose PID is gone from this host is
        taken over with a warning.

        Returns
        -------
        OutputFolderLock
            ``self``, released when the process exits.

        Raises
        ------
        ConfigError
            If another live process (or one on another host, whose life
            cannot be checked) holds the folder.
        """
        os.makedirs(self.folder, exist_ok=True)
        mine = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        while not self._create(mine):
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile: try again
            if self._is_me(holder):
                break
            if not self._is_dead(holder):
                raise ConfigError(
                    f"the output folder {self.folder} is in use by process "
                    f"{holder.get('pid')} on {holder.get('host')} (since "
                    f"{holder.get('started')}): wait for it to end or use "
                    f"another --output_folder (if no run uses the folder, "
                    f"delete {self.path})"
                )
            self._take_over(holder)
        self.held = True
        atexit.register(self.release)
        return self

    def holder(self):
        """What the lock file says: ``pid``, ``host``, ``started``.

        Returns
        -------
        dict or None
            None if there is no lock file.

        Raises
        ------
        ConfigError
            If the lock file cannot be read.
        """
        try:
            with open(self.path, encoding="utf-8") as fin:
                holder = json.load(fin)
            int(holder["pid"])
            return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"cannot tell which run holds {self.folder}: the lock file "
                f"{self.path} is unreadable ({error}); delete it if no run "
                "uses the folder"
            ) from error

    def release(self):
        """Removes the lock file if this process holds it."""
        if not self.held:
            return
        self.held = False
        try:
            holder = self.holder()
        except ConfigError:
            return
        if holder is not None and self._is_me(holder):
            os.remove(self.path)

    def _create(self, content):
        # Written aside, then linked into place: the lock appears complete,
        # and only if no other run's lock is there (link never replaces).
        staged = f"{self.path}.{os.getpid()}"
        with open(staged, "w", encoding="utf-8") as out:
            json.dump(content, out)
        try:
            os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(staged)

    def _take_over(self, stale):
        # Moved aside first: if another run took it over in between, the
        # file moved is that run's lock, and is put back.
        moved = f"{self.path}.stale.{os.getpid()}"
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        with open(moved, encoding="utf-8") as fin:
            taken = json.load(fin)
        if taken != stale:
            os.rename(moved, self.path)
            return
        os.remove(moved)
        logger.warning(
            "Taking over the lock of %s from process %s on %s (since %s), "
            "which is gone: a run that ended without cleaning up",
            self.folder,
            stale["pid"],
            stale["host"],
            stale.get("started"),
        )

    @staticmethod
    def _is_me(holder):
        return (
            holder.get("host") == socket.gethostname()
            and int(holder["pid"]) == os.getpid()
        )

    @staticmethod
    def _is_dead(holder):
        if holder.get("host") != socket.gethostname():
            return False  # cannot be checked from here
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False
