"""One ``register_<dataset>.py`` per benchmark; importing this package registers them all
under ``$DETECTRON2_DATASETS`` (default ``datasets``). Each module has a
``register_all_<dataset>(root)`` to register again under another root. Registering reads
no file of the dataset (the class names ship with the package, ``..vocabularies``), so it
works without the data; loading a dataset that is not prepared raises one error naming the
missing folder and the prepare command.

Your own data: ``register_panoptic_dataset``, ``register_semantic_dataset`` and
``register_instance_dataset`` (``register_custom.py``)."""
from . import (  # noqa: F401
    register_ade20k_150,
    register_ade20k_full,
    register_coco_ovd,
    register_coco_panoptic,
    register_lvis,
    register_pascal_context,
)
from .register_custom import (  # noqa: F401
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
