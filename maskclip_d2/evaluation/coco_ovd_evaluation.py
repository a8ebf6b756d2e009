"""Mask AP50 of the base and target classes of the COCO 48/17 open-vocabulary split."""
import numpy as np
from detectron2.evaluation import COCOEvaluator


class COCOOpenVocabularyEvaluator(COCOEvaluator):
    """:class:`COCOEvaluator` that also reports AP50 per class group (Table 5 of the paper).

    The dataset's metadata ``ovd_groups`` maps a group name ("base", "target") to the COCO
    category ids of that group. Besides the usual COCO metrics, each group present in the
    dataset gets ``"<group> AP50"``: AP at IoU 0.5 averaged over the group's categories,
    exactly what COCOeval reports when its ``catIds`` are restricted to that group. With more
    than one group (the generalized setting) ``"all AP50"`` repeats the AP50 of all classes.
    """

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        groups = self._metadata.ovd_groups
        if coco_eval is None:
            results.update({f"{g} AP50": float("nan") for g in groups})
            return results
        params = coco_eval.params
        precision = coco_eval.eval["precision"]  # (iou, recall, class, area, max dets)
        iou_index = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
        area_all = params.areaRngLbl.index("all")
        for group, dataset_ids in groups.items():
            members = [k for k, cat_id in enumerate(params.catIds) if cat_id in set(dataset_ids)]
            p = precision[iou_index, :, members, area_all, -1]
            p = p[p > -1]
            results[f"{group} AP50"] = float(np.mean(p) * 100) if p.size else float("nan")
        if len(groups) > 1:
            results["all AP50"] = results["AP50"]
        self._logger.info(
            "Open-vocabulary AP50 ({}): {}".format(
                iou_type, ", ".join(f"{g}={results[f'{g} AP50']:.2f}" for g in groups)
            )
        )
        return results
