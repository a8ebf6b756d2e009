"""Two dependencies warn about their own deprecated calls each time they are imported, which
every command of this package would print (``--help`` included) though no user can act on it:
OpenAI's ``clip`` imports ``pkg_resources`` (setuptools: "pkg_resources is deprecated as an
API"), and ``fvcore.nn`` and ``detectron2.modeling`` apply ``torch.jit.script`` to functions
at import ("`torch.jit.script` is deprecated"). They are imported here first, with exactly
those two warnings ignored for the duration of the import only: the same calls in your own
code still warn."""
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import clip  # noqa: F401
    import fvcore.nn  # noqa: F401
    import detectron2.modeling  # noqa: F401
