"""A synthetic open-vocabulary world in which MaskCLIP is trained and measured end to end on a
CPU: the scene generator and dataset writer (``world``) and the contrastive pre-training of a
tiny CLIP on captioned scenes (``clip_pretraining``). ``tools/synthetic_world.py`` runs the study."""
from .world import CONCEPTS, Concept, render_concept_image, render_scene, write_world

__all__ = ["CONCEPTS", "Concept", "render_concept_image", "render_scene", "write_world"]
