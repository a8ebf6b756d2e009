#!/usr/bin/env python
"""Train and evaluate MaskCLIP (and its class-agnostic proposal network) with Detectron2.

    python train_net.py --config-file configs/coco/maskclip_vitl14_336.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume

Only Detectron2's ``build_*`` hooks are overridden; everything else is ``DefaultTrainer``.
"""
import json
import logging
import os
from collections import OrderedDict

import torch

import maskclip_d2  # noqa: F401  (before Detectron2: imports its dependencies without deprecation noise)
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from maskclip_d2.checkpoint import StrictCheckpointer, TrainingCheckpointer
from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.data.dataset_mappers import COCOPanopticLSJDatasetMapper
from maskclip_d2.evaluation import build_evaluator
from maskclip_d2.utils import atomic_write
from maskclip_d2.modeling.maskclip import vocabulary_from_metadata
from maskclip_d2.solver import build_optimizer
from maskclip_d2.modeling.inference_dtype import add_dtype_argument, dtype_opts


class Trainer(DefaultTrainer):
    def build_hooks(self):
        """Detectron2's hooks, with checkpoints written and resumed by ``TrainingCheckpointer``:
        loading is strict except an ImageNet backbone file and class heads of another class
        count (logged), and frozen weights stay out of the files when the config names them
        (CLIP's, the proposal network's; MODEL.MASKCLIP.FROZEN_WEIGHTS_IN_CHECKPOINTS keeps
        them in)."""
        self.checkpointer = TrainingCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, then a check that every process starts at the same iteration:
        with several machines, each reads OUTPUT_DIR's last_checkpoint, so OUTPUT_DIR must be
        storage all machines share."""
        super().resume_or_load(resume=resume)
        starts = comm.all_gather(self.start_iter)
        if len(set(starts)) > 1:
            raise RuntimeError(
                f"the training processes would start at different iterations {starts} (rank "
                f"order): some found no checkpoint in OUTPUT_DIR {self.cfg.OUTPUT_DIR}. With "
                "several machines, OUTPUT_DIR must be on storage they all share."
            )

    @classmethod
    def build_train_loader(cls, cfg):
        """INPUT.DATASET_MAPPER_NAME: "coco_panoptic_lsj" (every panoptic segment with its
        class: MaskCLIP, the class-agnostic Mask2Former) or "coco_panoptic_lsj_class_agnostic"
        (every segment of one class "object": the class-agnostic Mask R-CNN of stage 1)."""
        name = cfg.INPUT.DATASET_MAPPER_NAME
        mappers = {"coco_panoptic_lsj": False, "coco_panoptic_lsj_class_agnostic": True}
        if name not in mappers:
            raise ValueError(
                f"unknown INPUT.DATASET_MAPPER_NAME {name!r} (known: {', '.join(mappers)})"
            )
        mapper = COCOPanopticLSJDatasetMapper(cfg, is_train=True, class_agnostic=mappers[name])
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader; with ground-truth masks as proposals
        (MODEL.MASKCLIP.PROPOSAL_NETWORK "gt", the paper's Table 7) the inputs must keep their
        ground truth: the panoptic mapper, without augmentation."""
        if cfg.MODEL.MASKCLIP.PROPOSAL_NETWORK != "gt":
            return super().build_test_loader(cfg, dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type != "coco_panoptic_seg":
            raise ValueError(
                f"MODEL.MASKCLIP.PROPOSAL_NETWORK 'gt' reads ground-truth masks from panoptic "
                f"annotations; test dataset '{dataset_name}' has evaluator_type "
                f"{evaluator_type!r}: use a panoptic dataset (e.g. ade20k_panoptic_val)"
            )
        mapper = COCOPanopticLSJDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """``maskclip_d2.solver.build_optimizer``: AdamW (or SGD) over the trainable parameters."""
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates every test dataset with its own vocabulary (from its metadata)."""
        core = model.module if hasattr(model, "module") else model
        results = OrderedDict()
        training_vocabulary = (list(core.vocabulary), core.is_thing.tolist()) if hasattr(core, "vocabulary") else None
        for i, name in enumerate(cfg.DATASETS.TEST):
            if hasattr(core, "set_vocabulary_from_metadata"):
                core.set_vocabulary_from_metadata(MetadataCatalog.get(name))
            one = cfg.clone()
            one.defrost()
            one.DATASETS.TEST = (name,)
            evaluator = None if evaluators is None else [evaluators[i]]
            results[name] = super().test(one, model, evaluator)
        if training_vocabulary is not None:
            core.set_vocabulary(*training_vocabulary)
        if len(results) == 1:  # as DefaultTrainer.test: one dataset's results unwrapped
            results = list(results.values())[0]
        return results


def cpu_threads_per_process(cfg, processes_per_machine, environ=os.environ):
    """On the CPU, the machine's cores shared among its training processes: each process
    gets cores // processes torch threads (N processes x all cores each ran 2x slower than
    one thread each). Left alone when OMP_NUM_THREADS is set, on a GPU, or with one process.
    Returns the thread count set, or None."""
    if "OMP_NUM_THREADS" in environ or cfg.MODEL.DEVICE != "cpu" or processes_per_machine < 2:
        return None
    threads = max(1, (os.cpu_count() or 1) // processes_per_machine)
    torch.set_num_threads(threads)
    return threads


def setup(args):
    cfg = get_maskclip_cfg(args.config_file, list(args.opts) + dtype_opts(args))
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="maskclip_d2")
    threads = cpu_threads_per_process(cfg, args.num_gpus)
    if threads is not None:
        logging.getLogger("maskclip_d2").info(
            f"{args.num_gpus} CPU processes on this machine: {threads} torch thread(s) each "
            "(set OMP_NUM_THREADS to choose)")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if cfg.TEST.AUG.ENABLED:
            raise ValueError("TEST.AUG is not supported by MaskCLIP")
        model = Trainer.build_model(cfg)
        StrictCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if hasattr(model, "fix_vocabularies"):  # embed every test vocabulary, then free the text tower
            model.fix_vocabularies(
                [vocabulary_from_metadata(MetadataCatalog.get(name))[0] for name in cfg.DATASETS.TEST]
            )
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        if comm.is_main_process():
            # the numbers the log prints, for scripts (tools/synthetic_world.py reads them)
            with atomic_write(os.path.join(cfg.OUTPUT_DIR, "eval_results.json")) as tmp, open(tmp, "w") as f:
                json.dump(results, f, indent=1, default=float)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    """Detectron2's arguments, and --dtype (inference precision, for --eval-only)."""
    return add_dtype_argument(default_argument_parser())


if __name__ == "__main__":
    args = get_parser().parse_args()
    logging.getLogger(__name__).info(f"Command line arguments: {args}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
