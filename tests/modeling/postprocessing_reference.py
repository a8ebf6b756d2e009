"""The straightforward post-processing that tests/modeling/test_postprocessing.py compares the
current implementation with; it lives in the package (tools/benchmark_model.py times it too)."""
from maskclip_d2.modeling.postprocessing_reference import (  # noqa: F401
    INSTANCE_THING_FILTERS,
    OVERLAP_RULES,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
