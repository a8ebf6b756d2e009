from .file_io import atomic_write
