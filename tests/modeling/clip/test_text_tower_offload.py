"""Embed, then offload (MODEL.CLIP.OFFLOAD_TEXT_TOWER): between embeddings the text tower's
weights are maps of a temporary file, none of their pages resident; embeddings and model
outputs are the same bits as with the tower in memory."""
import copy
import gc
import os

import torch

from maskclip_d2.modeling import CLIPTextEncoder

from helpers.tiny_maskclip import image_input, tiny_model


def mappings():
    """[(start, end, path)] of the process's file mappings (/proc/self/maps)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end, fields[5]))
    return out


def resident_kb(path):
    """Resident kB of every mapping of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                inside = len(fields) >= 6 and fields[5] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def test_offloaded_tower_embeds_the_same_bits_and_stays_out_of_memory(clip_model):  # noqa: F811
    resident = CLIPTextEncoder(copy.deepcopy(clip_model))
    offloaded = CLIPTextEncoder(copy.deepcopy(clip_model), offload_tower=True)
    names = ["cat", "a dog", "building, edifice"]
    assert torch.equal(offloaded.encode_vocabulary(names), resident.encode_vocabulary(names))

    path = offloaded._tower_file.path
    assert os.path.isfile(path)
    spans = [(start, end) for start, end, p in mappings() if p == path]
    for name, weight in offloaded.named_parameters():  # every weight is a view of the file
        assert any(start <= weight.data_ptr() < end for start, end in spans), name
    del weight
    assert resident_kb(path) == 0  # mapped afresh after embedding: nothing resident
    assert torch.equal(offloaded.text_projection, resident.text_projection)

    # a second vocabulary reads the file, and gives the pages back afterwards
    more = ["sky", "grass"]
    assert torch.equal(offloaded.encode_vocabulary(more), resident.encode_vocabulary(more))
    gc.collect()
    assert resident_kb(path) == 0
    # a state dict holds the weights themselves
    state = offloaded.state_dict()
    assert all(torch.equal(v, resident.state_dict()[k]) for k, v in state.items())
    del state

    # loading other weights: they are what embeds, and what the next offload writes
    other = copy.deepcopy(clip_model)
    with torch.no_grad():
        other.text_projection.mul_(-1)
    reference = CLIPTextEncoder(other)
    offloaded.load_state_dict(reference.state_dict())
    assert not os.path.exists(path)
    assert torch.equal(offloaded.encode_vocabulary(names), reference.encode_vocabulary(names))
    assert torch.equal(offloaded.encode_vocabulary(["tree"]), reference.encode_vocabulary(["tree"]))

    new_path = offloaded._tower_file.path
    offloaded.release_tower()  # freed entirely: the file goes too
    assert not os.path.exists(new_path)


def test_model_outputs_are_unchanged_by_offloading_in_float32():
    x = image_input(96, 128)
    outputs = []
    for offload in (False, True):
        model = tiny_model("MODEL.CLIP.TEXT_TOWER_DEVICE", "", "MODEL.CLIP.RELEASE_TEXT_TOWER", False,
                           "MODEL.CLIP.OFFLOAD_TEXT_TOWER", offload)
        with torch.no_grad():
            outputs.append(model([x])[0])
        assert (model.text_encoder._tower_file is not None) == offload
    a, b = outputs
    assert torch.equal(a["sem_seg"], b["sem_seg"])
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    assert torch.equal(a["instances"].scores, b["instances"].scores)


def test_a_copy_offloads_to_its_own_file(clip_model):  # noqa: F811
    offloaded = CLIPTextEncoder(copy.deepcopy(clip_model), offload_tower=True)
    expected = offloaded.encode_vocabulary(["cat"])
    duplicate = copy.deepcopy(offloaded)
    path = offloaded._tower_file.path
    del offloaded
    gc.collect()
    assert not os.path.exists(path)  # the original's file went with it
    assert torch.equal(duplicate.encode_vocabulary(["cat"]), expected)
    assert torch.equal(duplicate.encode_vocabulary(["dog", "cat"])[1], expected[0])
    assert os.path.isfile(duplicate._tower_file.path) and duplicate._tower_file.path != path
