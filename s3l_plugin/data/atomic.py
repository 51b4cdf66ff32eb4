"""Atomic file writing: a file appears complete or not at all.

An interrupted run must never leave a half-written file under its final
name, where a later run would take it as done.
"""

import contextlib
import os


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path that is renamed to ``path`` on success.

    The temporary file sits in the same folder (so the rename is atomic on
    POSIX file systems) and is removed if the block raises. Writers must
    name the file format explicitly: the temporary name has no extension.

    Arguments
    ---------
    path : str
        Final file path; its folder must exist.

    Yields
    ------
    str
        Where to write.

    Example
    -------
    >>> import tempfile
    >>> final = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_path(final) as tmp:
    ...     _ = open(tmp, "w").write("done")
    >>> open(final).read()
    'done'
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp_path = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_text_atomic(path, text):
    """Writes ``text`` (UTF-8) to ``path`` atomically.

    Arguments
    ---------
    path : str
        Final file path.
    text : str
        Content.

    Example
    -------
    >>> import tempfile
    >>> final = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text_atomic(final, "hi\\n")
    >>> open(final).read()
    'hi\\n'
    """
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "w", encoding="utf-8") as out:
            out.write(text)
