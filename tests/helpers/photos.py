"""The tiny random model's config and scikit-image's photographs as image files: what the demo,
the web app and the mask-file tests feed the model."""
import os

import skimage.data
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny", "maskclip_tiny.yaml")
VOCAB = "person, astronaut; cat; coffee cup; sky; grass"
CLASSES = ["person, astronaut", "cat", "coffee cup", "sky", "grass"]


def photo_file(folder, name, array=None, mode=None, fmt="PNG", suffix=".png"):
    """Writes scikit-image's photograph ``name`` (or ``array``) into ``folder``; its path."""
    image = Image.fromarray(getattr(skimage.data, name)() if array is None else array)
    if mode:
        image = image.convert(mode)
    path = os.path.join(folder, name + suffix)
    image.save(path, format=fmt)
    return path
