"""DDP with 2 gloo processes on CPU: both ranks end with identical weights."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, test_dir: str) -> None:
    sys.path.insert(0, test_dir)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from train_tiny_task import make_cfg, make_task

    from breastscreen.training.loop import fit, prepare_run_dir

    cfg = make_cfg(Path(out) / "run", epochs=2, batch_size=2)
    if rank == 0:
        prepare_run_dir(cfg.out)
    task = make_task(cfg)
    fit(task, cfg)
    torch.save(task.model.state_dict(), Path(out) / f"rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()


def test_ddp_two_gloo_processes_end_equal(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path), str(Path(__file__).parent)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "best.safetensors").is_file()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
