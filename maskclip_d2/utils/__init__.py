from .file_io import atomic_write, atomic_write_with_companion, new_file_mode, write_json_atomic
