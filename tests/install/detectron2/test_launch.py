"""detectron2.engine.launch: 2 CPU processes (GLOO), collectives, and one DDP step.

The worker functions are module-level (mp.spawn pickles them by reference). The children see no
GPU (CUDA_VISIBLE_DEVICES=""), so this exercises the CPU / GLOO path on any machine.
"""
import atexit
import json
import os

import pytest
import torch
from torch import nn

from detectron2.engine import launch

pytestmark = pytest.mark.timeout(240)

# launch() must also tear its process groups down when a worker finishes (patch 0007): GLOO
# groups left to the interpreter's exit intermittently abort a worker with SIGABRT.


def _launch(worker, out_dir):
    launch(worker, num_gpus_per_machine=2, dist_url="auto", args=(str(out_dir),))


@pytest.fixture(autouse=True)
def _cpu_only_children(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def collectives_worker(out_dir):
    import torch.distributed as dist

    from detectron2.utils import comm

    rank = comm.get_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)  # sum over ranks: 1 + 2
    gathered = comm.all_gather({"rank": rank, "square": rank * rank})
    to_main = comm.gather(rank * 10, dst=0)
    comm.synchronize()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(
            {
                "rank": rank,
                "local_rank": comm.get_local_rank(),
                "world_size": comm.get_world_size(),
                "local_size": comm.get_local_size(),
                "is_main": comm.is_main_process(),
                "backend": dist.get_backend(),
                "all_reduce": t.item(),
                "all_gather": gathered,
                "gather": to_main,
                "shared_seed_equal": len(set(comm.all_gather(comm.shared_random_seed()))) == 1,
            },
            f,
        )


def test_launch_two_cpu_processes(tmp_path):
    _launch(collectives_worker, tmp_path)
    results = {}
    for rank in (0, 1):
        path = tmp_path / f"rank{rank}.json"
        assert path.is_file(), f"rank {rank} did not run"
        results[rank] = json.loads(path.read_text())
    for rank, r in results.items():
        assert r["rank"] == rank and r["local_rank"] == rank
        assert r["world_size"] == 2 and r["local_size"] == 2
        assert r["is_main"] == (rank == 0)
        assert r["backend"] == "gloo"
        assert r["all_reduce"] == 3.0
        assert r["all_gather"] == [{"rank": 0, "square": 0}, {"rank": 1, "square": 1}]
        assert r["shared_seed_equal"]
    assert results[0]["gather"] == [0, 10]
    assert results[1]["gather"] == []


def _tiny_model():
    torch.manual_seed(0)  # identical initial weights on every rank
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))


def _rank_batch(rank):
    g = torch.Generator().manual_seed(100 + rank)  # a different batch on each rank
    return torch.randn(5, 4, generator=g), torch.randn(5, 1, generator=g)


def ddp_worker(out_dir):
    from torch.nn.parallel import DistributedDataParallel

    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    rank = comm.get_rank()
    model = create_ddp_model(_tiny_model(), broadcast_buffers=False)
    assert isinstance(model, DistributedDataParallel)
    x, y = _rank_batch(rank)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    torch.save(
        {
            "grads": [p.grad.clone() for p in model.module.parameters()],
            "params": [p.detach().clone() for p in model.module.parameters()],
            "device_ids": model.device_ids,
        },
        f"{out_dir}/ddp{rank}.pt",
    )


def test_ddp_step_averages_gradients_across_cpu_processes(tmp_path):
    _launch(ddp_worker, tmp_path)
    out = [torch.load(tmp_path / f"ddp{r}.pt", weights_only=False) for r in (0, 1)]
    assert out[0]["device_ids"] is None  # CPU module: DDP without device_ids

    # expected: mean over ranks of each rank's local gradient
    local = []
    for rank in (0, 1):
        model = _tiny_model()
        x, y = _rank_batch(rank)
        nn.functional.mse_loss(model(x), y).backward()
        local.append([p.grad.clone() for p in model.parameters()])
    assert not torch.allclose(local[0][0], local[1][0])  # the ranks really differ
    for i, (g0, g1) in enumerate(zip(out[0]["grads"], out[1]["grads"])):
        assert torch.allclose(g0, g1), i
        assert torch.allclose(g0, (local[0][i] + local[1][i]) / 2, atol=1e-6), i
    # identical updates keep the replicas in sync
    for p0, p1 in zip(out[0]["params"], out[1]["params"]):
        assert torch.equal(p0, p1)


def _report_at_exit(path):
    import torch.distributed as dist

    from detectron2.utils import comm

    with open(path, "w") as f:
        json.dump(
            {
                "initialized": dist.is_available() and dist.is_initialized(),
                "local_group_kept": comm._LOCAL_PROCESS_GROUP is not None,
                "gloo_group_cached": comm._get_global_gloo_group.cache_info().currsize,
            },
            f,
        )


def teardown_probe_worker(out_dir):
    from detectron2.utils import comm

    comm.all_gather(comm.get_rank())  # caches detectron2's gloo group, as training does
    # runs at interpreter exit of the worker, after launch's worker function has returned
    atexit.register(_report_at_exit, os.path.join(out_dir, f"exit{comm.get_rank()}.json"))


def test_launch_tears_down_the_process_group(tmp_path):
    _launch(teardown_probe_worker, tmp_path)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"exit{rank}.json").read_text())
        assert report == {"initialized": False, "local_group_kept": False,
                          "gloo_group_cached": 0}, (rank, report)
