"""The optimizer MaskCLIP and its proposal network train with (what ``train_net.py``'s
``Trainer.build_optimizer`` returns)."""
import torch
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer"]


def _with_full_model_gradient_clipping(optimizer_class, max_norm, norm_type):
    """``optimizer_class`` whose step first clips the norm of all gradients together
    (SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model", as Mask2Former trains; Detectron2's own
    types clip each parameter separately)."""

    class FullModelGradientClipping(optimizer_class):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = optimizer_class.__name__ + "WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model):
    """AdamW (or SGD) over the trainable parameters only: CLIP and the proposal network
    are frozen, so in stage 2 only the RMA weights are optimised."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the model has no trainable parameters (MODEL.MASKCLIP.MODE 'mask_tokens' and "
            "'baseline' are training-free: evaluate them with --eval-only)"
        )
    kind = cfg.SOLVER.OPTIMIZER.upper()
    if kind == "ADAMW":
        optimizer_class, kwargs = torch.optim.AdamW, {}
    elif kind == "SGD":
        optimizer_class, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = _with_full_model_gradient_clipping(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_class = maybe_add_gradient_clipping(cfg, optimizer_class)
    return optimizer_class(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs
    )
