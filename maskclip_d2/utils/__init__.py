from .file_io import atomic_write, new_file_mode, write_json_atomic
