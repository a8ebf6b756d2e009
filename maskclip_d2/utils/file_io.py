"""Files written whole or not at all."""
import contextlib
import json
import os

__all__ = ["atomic_write", "write_json_atomic"]


@contextlib.contextmanager
def atomic_write(path):
    """Yields a temporary path beside ``path`` to write to; once the block completes, the
    file is renamed to ``path``, so ``path`` never holds half a file. If the block raises,
    the temporary file is removed and ``path`` is left as it was. The folder is created.

        with atomic_write("out/result.json") as tmp:
            with open(tmp, "w") as f:
                json.dump(result, f)
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.partial"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(obj, path):
    """Write ``obj`` as JSON so that ``path`` exists only once it is complete."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)
