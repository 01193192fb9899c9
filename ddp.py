"""
torchrun: one process per GPU (or per share of the CPU cores); plain python is one process of one. Which rank this
is, each rank's share of a batch, and the few collectives the scripts need (gather, sum, max, broadcast).
"""
import atexit
import datetime
import functools
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

_cpu_group = []  # a gloo group for host-side agreements (the stop flag) when the main backend is nccl


def distributed(device, group=True):
    """(rank, world size, this process's device). Under torchrun this starts the process group (nccl on GPUs, gloo
    on CPU; a CPU process takes its share of the cores, so N of them do not oversubscribe one machine); group=False:
    independent processes (train.py --each), no group."""
    dev = torch.device(device)
    if 'RANK' not in os.environ:
        return 0, 1, dev
    if dev.type == 'cuda':
        dev = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ['LOCAL_WORLD_SIZE'])))
    if not group:
        return int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), dev
    if not dist.is_initialized():
        dist.init_process_group('nccl' if dev.type == 'cuda' else 'gloo')
        _cpu_group.append(dist.new_group(backend='gloo') if dev.type == 'cuda' else None)
        atexit.register(_close)
        if dist.get_rank() > 0:  # rank 0 alone prints and shows progress
            sys.stdout = open(os.devnull, 'w')
            tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    return dist.get_rank(), dist.get_world_size(), dev


def _close():
    """Tear the group down before the interpreter exits, all ranks together: left to process exit, or with a peer
    still running, gloo's threads could abort a finished rank. The scripts end their runs in step (together()), so
    the wait is short; after an uncaught error none (the others may never arrive), after a sys.exit ten seconds."""
    try:
        if getattr(sys, 'last_value', None) is None:
            dist.monitored_barrier(_cpu_group[0], timeout=datetime.timedelta(seconds=10))
    except (RuntimeError, ValueError):
        pass
    finally:
        dist.destroy_process_group()


def world():
    """(rank, world size) of the process group; (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _group(t):
    """The process group that can carry t: the main one, or gloo for CPU tensors under nccl."""
    return _cpu_group[0] if t.device.type == 'cpu' and _cpu_group and _cpu_group[0] is not None else None


def shard(x):
    """This rank's share of x's rows or items (every rank holds the same x): contiguous, in rank order."""
    rank, n = world()
    if len(x) < n:
        raise ValueError(f'{len(x)} samples cannot be shared among {n} processes; ask for at least {n}')
    i = torch.arange(len(x)).tensor_split(n)[rank]
    return x[int(i[0]):int(i[-1]) + 1]


def gather(y):
    """The shares' results in rank order, on every rank (a dict: each value): what one process computes whole."""
    if isinstance(y, dict):
        return {k: gather(v) for k, v in y.items()}
    if world()[1] == 1:
        return y
    n = world()[1]
    sizes = [torch.zeros(1, dtype=torch.long, device=y.device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([len(y)], device=y.device), group=_group(y))
    m = max(int(s) for s in sizes)  # shares differ by one at most: pad, gather, trim
    out = [y.new_empty((m, *y.shape[1:])) for _ in range(n)]
    dist.all_gather(out, torch.cat([y, y.new_zeros((m - len(y), *y.shape[1:]))]), group=_group(y))
    return torch.cat([o[:int(s)] for o, s in zip(out, sizes)])


def reduce_sum(t):
    """t summed over the ranks, in place (moments and counts: exact reductions); t itself in one process."""
    if world()[1] > 1:
        dist.all_reduce(t, group=_group(t))
    return t


def max_over_ranks(x):
    """The largest of an int over the ranks (a stop agreed at a step boundary); host-side, no GPU sync."""
    if world()[1] == 1:
        return x
    t = torch.tensor([x])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group[0])
    return int(t)


def together():
    """Every rank waits here for the others (rank 0 writing the results): the ranks leave together. A rank that left
    while rank 0 still wrote aborted once in gloo's teardown ("terminate called without an active exception")."""
    if world()[1] > 1:
        dist.barrier(group=_cpu_group[0])


def from_rank0(t):
    """Rank 0's t on every rank (latents found by optimisation: the ranks start from the same ones), however many rows
    each rank's own t has (a filter can keep different rows on different GPUs)."""
    if world()[1] > 1:
        n = t.new_tensor([len(t)], dtype=torch.long)
        dist.broadcast(n, 0, group=_group(t))
        t = t if world()[0] == 0 else t.new_empty((int(n), *t.shape[1:]))
        dist.broadcast(t, 0, group=_group(t))
    return t
