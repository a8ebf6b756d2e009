from .file_io import atomic_write, write_json_atomic
