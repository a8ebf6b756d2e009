from helpers.tiny_datasets import isolated_catalogs  # noqa: F401  (autouse fixture)
