"""
Small generic helpers any file may import: safe loading, atomic writes, portable paths, weight files, the CPU
allocator.
"""
import atexit
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent  # the repository: paths inside it are stored relative to it


class CheckpointError(ValueError):
    """A file that cannot be loaded; the message is one line naming the file."""


def load(path, what, map_location='cpu'):
    """torch.load(weights_only=True): never runs code from the file; any failure is one line naming it."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'{path}: no such file; pass the path of {what}') from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f'{path}: not {what} ({type(e).__name__})') from None


@contextlib.contextmanager
def written(path, suffix='.tmp'):
    """A temp path beside `path`, renamed to it when the block ends well and removed otherwise: a crash (or a full
    disk) never leaves a half-written file. The suffix keeps the extension a writer reads the format from."""
    tmp = f'{path}{suffix}'
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_save(obj, path):
    """torch.save, written atomically; a failed write (torch raises RuntimeError for a full disk) is an OSError."""
    with written(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            raise OSError(f'{path}: could not be written ({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})') from None


def write_json(obj, path):
    """JSON report written atomically: a reader never sees half a file."""
    with written(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1))


def portable(path):
    """A path as a run stores it: relative to the repository when it lies inside it (the run then works in any
    clone), else absolute. None, 'none' and seed:N pass through."""
    if path is None or path == 'none' or str(path).startswith('seed:'):
        return path
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def in_repo(path):
    """A stored path back: relative ones are inside this repository."""
    if path is None or path == 'none' or str(path).startswith('seed:') or Path(path).is_absolute():
        return path
    return str(ROOT / path)


def device(name):
    """--device -> torch.device; a ValueError naming the fix when this machine has no such device."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f'--device {name}: not a device; use cpu or cuda') from None
    if dev.type not in ('cpu', 'cuda'):  # mps, meta, xpu ...: the generator's ops and the solvers are tested on these two
        raise ValueError(f'--device {name}: not supported; use cpu or cuda')
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {name}: this machine has no CUDA GPU PyTorch can use; use --device cpu')
    if dev.type == 'cuda' and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f'--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 to '
                         f'cuda:{torch.cuda.device_count() - 1}')
    return dev


def digest(module):
    """sha256 of a module's weights (names, shapes, values): the same generator in any file format or folder."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(f'{k}{tuple(v.shape)}{v.dtype}'.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def model_file(name):
    """Path of a dlib model file shipped in face-recognition-models, found without importing the package."""
    spec = importlib.util.find_spec('face_recognition_models')
    if spec is None:
        raise CheckpointError(f'{name}: face-recognition-models is not installed; run pip install -r requirements.txt')
    return os.path.join(spec.submodule_search_locations[0], 'models', name)


def keep_freed_memory(device):
    """On CPU, let malloc reuse freed tensors. glibc gives every block over 32 MB back to the OS on free and
    page-faults it in again on the next allocation (BENCHMARKS.md measures what that cost)."""
    if torch.device(device).type != 'cpu' or sys.platform != 'linux':
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:  # not glibc: leave its allocator alone
        return
    libc.mallopt(-4, 0)   # M_MMAP_MAX = 0: large blocks come from the heap, not from fresh mmaps
    libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD = -1: never hand the heap's free top back to the OS


# -----------------------------------------------------------------------------
# torchrun: one process per GPU (or per share of the CPU cores); plain python is one process of one

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
        # torn down before the interpreter exits: left to process exit, gloo's threads could abort a finished rank
        atexit.register(dist.destroy_process_group)
        if dist.get_rank() > 0:  # rank 0 alone prints and shows progress
            sys.stdout = open(os.devnull, 'w')
            tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    return dist.get_rank(), dist.get_world_size(), dev


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


def most(x):
    """The largest of an int over the ranks (a stop agreed at a step boundary); host-side, no GPU sync."""
    if world()[1] == 1:
        return x
    t = torch.tensor([x])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group[0])
    return int(t)


def from_rank0(t):
    """Rank 0's t on every rank (latents found by optimisation: the ranks start from the same ones)."""
    if world()[1] > 1:
        dist.broadcast(t, 0, group=_group(t))
    return t
