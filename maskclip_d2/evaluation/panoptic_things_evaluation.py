"""Mask AP of the things of a panoptic dataset."""
import copy

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator


class PanopticThingsCOCOEvaluator(COCOEvaluator):
    """:class:`COCOEvaluator` (mask AP against the instances JSON ``json_file``) for a dataset
    whose metadata follows Mask2Former's panoptic convention: the vocabulary indexes things and
    stuff together (``thing_classes`` / ``stuff_classes`` list every class) and
    ``thing_dataset_id_to_contiguous_id`` maps each thing's dataset id to its vocabulary index.

    COCOEvaluator wants thing indices 0..T-1 and T thing names; this evaluator renumbers the
    things in vocabulary order and drops predicted instances of stuff classes (which have no
    instance ground truth), then scores exactly as COCOEvaluator does.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        metadata = MetadataCatalog.get(dataset_name)
        thing_map = metadata.thing_dataset_id_to_contiguous_id  # dataset id -> vocabulary index
        vocabulary_ids = sorted(thing_map.values())
        self._thing_index = {v: i for i, v in enumerate(vocabulary_ids)}  # vocabulary -> 0..T-1
        names = metadata.get("stuff_classes", None) or metadata.thing_classes
        self._metadata = Metadata(
            name=dataset_name,
            json_file=metadata.json_file,
            thing_classes=[names[v] for v in vocabulary_ids],
            thing_dataset_id_to_contiguous_id={d: self._thing_index[v] for d, v in thing_map.items()},
        )

    def process(self, inputs, outputs):
        things_only = []
        for output in outputs:
            if "instances" in output:
                instances = output["instances"]
                classes = instances.pred_classes.tolist()
                keep = [i for i, c in enumerate(classes) if c in self._thing_index]
                instances = copy.copy(instances[keep])
                instances.pred_classes = instances.pred_classes.new_tensor(
                    [self._thing_index[classes[i]] for i in keep]
                )
                output = dict(output, instances=instances)
            things_only.append(output)
        super().process(inputs, things_only)
