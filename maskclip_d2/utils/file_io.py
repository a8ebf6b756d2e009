"""Files written whole or not at all."""
import contextlib
import json
import os
import tempfile
import threading

__all__ = ["atomic_write", "atomic_write_with_companion", "write_json_atomic", "new_file_mode"]


@contextlib.contextmanager
def atomic_write(path):
    """Yields a temporary path beside ``path`` to write to; once the block completes, the
    file is renamed to ``path``, so ``path`` never holds half a file. If the block raises,
    the temporary file is removed and ``path`` is left as it was. The folder is created.
    Each call has a temporary file of its own (``.<name>.<random>.partial``): two writers of
    one path never share one, and no other file is touched.

        with atomic_write("out/result.json") as tmp:
            with open(tmp, "w") as f:
                json.dump(result, f)
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())  # mkstemp's file is private (0600); open()'s is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write_with_companion(path, suffix):
    """Like ``atomic_write`` for a file that names a companion file ``path + suffix`` (an ONNX
    graph and its external weights, ``x.onnx`` + ``x.onnx.data``): yields a path inside a
    private temporary folder beside ``path`` with ``path``'s file name, so that what the
    block writes names the companion by its final name; once the block completes, the
    companion (if written) is renamed into place, then the file, so the file that refers to
    the companion appears last and whole. If the block raises, nothing is left behind and
    ``path`` and its companion are as they were."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial") as tmp:
        staged = os.path.join(tmp, os.path.basename(path))
        yield staged
        for name, target in ((staged + suffix, path + suffix), (staged, path)):
            if os.path.exists(name):
                os.chmod(name, new_file_mode())
                os.replace(name, target)


def new_file_mode():
    """The mode ``open()`` gives a new file: 0666 less the process's umask, read from
    ``/proc/self/status`` (Linux) without changing it; elsewhere by setting and restoring it,
    under a lock (the umask is the process's, shared by its threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # read by setting it: a strict one for that instant
        os.umask(umask)
    return 0o666 & ~umask


_UMASK_LOCK = threading.Lock()


def write_json_atomic(obj, path):
    """Write ``obj`` as JSON so that ``path`` exists only once it is complete."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)
