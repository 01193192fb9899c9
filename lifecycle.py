"""
A run's lifecycle around the method: its settings checked and stored, its folder claimed, signals, checkpoints and
--resume, the log, and the files it leaves (adapter.pt, before_after.png, the photos evaluation reads).
"""
import math
import json
import sys
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from data import IMAGE_EXTS, LATENT_EXTS, DataError, seed_of
from ddp import max_over_ranks
from helpers import (ROOT, CheckpointError, atomic_save, busy, contents, device, in_repo, load, own, own_line, people_of,
                     portable)
from ode_adapter import integrate, save_adapters, trainable_state
from person import Person, before_after


MAY_CHANGE = ('iters', 'log_every', 'ckpt_every', 'snapshot_every', 'ckpt', 'device')  # a --resume may change these
RESUMABLE = ('out', 'resume', 'each') + MAY_CHANGE  # the flags a --resume may give: which run, and these
MAY_CHANGE_FLAGS = ', '.join('--' + k for k in MAY_CHANGE)  # as the help and the errors name them
PATHS = ('identity', 'init', 'ckpt', 'retain', 'id_weights', 'vgg', 'lpips_lin', 'encoder')  # stored relative to the repo when inside


def each_path(f, v):
    """f of a path setting, or of each path of a list of them (--identity)."""
    return [f(x) for x in v] if isinstance(v, list) else f(v)


def stored(cfg):
    """The settings as a checkpoint keeps them: a plain dict, paths inside the repository relative to it."""
    return {k: each_path(portable, v) if k in PATHS else v for k, v in asdict(cfg).items()}


def spelled(k, v):
    """A setting as two runs compare it: a path may be spelled two ways."""
    return each_path(portable, v) if k in PATHS else v


def resumed(cfg, given, ck, path):
    """--resume: the run's own settings from its checkpoint; a given flag outside RESUMABLE must agree with them."""
    known = {f.name: f.type for f in fields(cfg)}
    for k, v in ck['args'].items():  # what the checkpoint says must be a setting of that kind
        if k in known and v is not None and not isinstance(v, {float: (int, float)}.get(known[k], known[k])):
            raise SystemExit(f'error: {path}: its stored --{k} {v!r} is not a {known[k].__name__}; the file was '
                             'edited or is not a train.py checkpoint: start a new run with another --out')
    run = type(cfg)(**{k: each_path(in_repo, v) if k in PATHS else v for k, v in ck['args'].items() if k in known})
    try:  # the stored settings themselves, before any flag given now: a bad one is the file's fault
        check_numbers(run)
    except SystemExit as e:
        raise SystemExit(f'error: {path}: its stored {str(e.code)[7:]}; the file was edited: start a new run with '
                         'another --out') from None
    for k in sorted(given - set(RESUMABLE)):
        if spelled(k, getattr(cfg, k)) != spelled(k, getattr(run, k)):
            raise SystemExit(f'error: {path}: --{k} {getattr(cfg, k)} differs from the run ({getattr(run, k)}); '
                             f'drop it to resume (only {MAY_CHANGE_FLAGS} may change) or use a new --out')
    run = replace(run, resume=True, **{k: getattr(cfg, k) for k in given & set(RESUMABLE) - {'resume'}})
    if run.iters < ck['step']:
        raise SystemExit(f'error: {path}: --iters {run.iters} is below the step the run reached ({ck["step"]}); '
                         f'pass a higher --iters to train on, or evaluate the run as it is')
    return run


def bad(cfg, k, rule):
    raise SystemExit(f'error: --{k} {getattr(cfg, k)}: must be {rule}')


def decay(t, x):
    """dx/dt = -x: a one-number ODE to try the solver settings on."""
    return -x


def check_numbers(cfg):
    """Every number and solver setting in range, before any work: the first problem, as one line."""
    if not -2 ** 63 <= cfg.seed < 2 ** 64:
        bad(cfg, 'seed', 'an integer in [-2**63, 2**64)')
    for k in ('lr', 't_end', 'step', 'target_d'):
        if not (math.isfinite(getattr(cfg, k)) and getattr(cfg, k) > 0):
            bad(cfg, k, 'a finite number > 0' + (' (T = 0 is the original generator)' if k == 't_end' else ''))
    for k in ('alpha_max', 'w_pix', 'w_perc', 'w_id', 'w_adj', 'w_glob', 'w_tc', 'w_person',
              'w_keep', 'w_pix_person'):
        if not (math.isfinite(getattr(cfg, k)) and getattr(cfg, k) >= 0):
            bad(cfg, k, 'a finite number >= 0')
    for k in ('alpha_max', 'target_d'):  # distances in W: the paper's are 15 and 30
        if getattr(cfg, k) > 1e3:
            bad(cfg, k, 'at most 1000 (a distance that large overflows the generator)')
    for k in ('iters', 'hidden', 'log_every', 'ckpt_every', 'invert_steps', 'n_mine', 'mine_n', 'n_forget'):
        if getattr(cfg, k) is not None and getattr(cfg, k) < (0 if k == 'invert_steps' and cfg.encoder else 1):
            bad(cfg, k, '>= 1' + (' (>= 0 with --encoder)' if k == 'invert_steps' else ''))
    for k in ('n_adj', 'n_glob', 'snapshot_every'):
        if getattr(cfg, k) < 0:
            bad(cfg, k, '>= 0 (0: none)')
    for k, limit in (('hidden', 8192), ('n_adj', 1024), ('n_glob', 1024), ('n_mine', 1024), ('mine_n', 10 ** 6),
                     ('iters', 10 ** 7), ('invert_steps', 10 ** 5)):
        if (getattr(cfg, k) or 0) > limit:  # sizes that cannot fit, refused before any work (the paper's: 256, 2, 2)
            bad(cfg, k, f'at most {limit:,}')
    if cfg.amp == 'fp16' and cfg.device.startswith('cpu'):
        raise SystemExit('error: --amp fp16: CPUs have no fast fp16 (a step takes minutes); use --amp bf16 or none here')
    if cfg.compile and cfg.device.startswith('cpu'):
        raise SystemExit('error: --compile: on a CPU the first step compiles for minutes and runs no faster; use it '
                         'with --device cuda')
    try:  # the solver and its backend, on a one-number ODE
        integrate(decay, torch.zeros(1), cfg.t_end, cfg.step, cfg.solver,
                  'native' if cfg.backend == 'native' else 'torchdiffeq')
    except ValueError as e:
        raise SystemExit(f'error: --solver {cfg.solver} --backend {cfg.backend}: {e}')


def check_people(identity):
    """--identity, every one, before any work: a seed:N, a latent file or photos that exist, and nobody twice (a seed
    however written, one folder's photos, the same photo or latent bytes under another name) -> the photo folders."""
    if not all(identity):
        raise SystemExit('error: --identity is empty; pass a photo, a folder of photos, a latent or seed:N')
    keys, folders = [], []
    for p in identity:
        try:
            seed = seed_of(p)
        except DataError as e:
            raise SystemExit(f'error: --identity {e}') from None
        if seed is None and not Path(p).exists():
            raise SystemExit(f'error: --identity {p}: no such file or folder; pass a photo, a folder of photos, a '
                             'latent or seed:N')
        latent = Path(p).suffix.lower() in LATENT_EXTS
        folder = None if seed is not None or latent else Path(p) if Path(p).is_dir() else Path(p).parent
        keys.append({seed} if seed is not None else contents(p) | ({portable(folder)} if folder else set()))
        folders += [folder] if folder else []
    if any(keys[i] & keys[j] for i in range(len(keys)) for j in range(i)):
        raise SystemExit(f'error: --identity {" --identity ".join(identity)}: a person given twice (two photos of '
                         'one folder, or the same photo or latent under another name, are one person: give him once)')
    return folders


def check(cfg, out):
    """Every setting that can be wrong, checked before any expensive work (the numbers by check_numbers, then the
    people, files and folders): the first problem, as one line."""
    folders = check_people(cfg.identity)
    check_numbers(cfg)
    if cfg.init and not cfg.resume and not (Path(cfg.init) / 'adapter.pt').is_file():  # a resume needs it no more
        raise SystemExit(f'error: --init {cfg.init}: no adapter.pt there; pass a finished train.py run folder')
    if cfg.init and cfg.adapter == 'full':
        raise SystemExit('error: --init starts from adapters; it does not take --adapter full')
    names = [safe(f.name) for f in folders]  # each person's photos go to photos/forget/<name>
    if cfg.init and not cfg.resume:
        try:
            meta = load(Path(cfg.init) / 'adapter.pt', 'a train.py run')
            names += [p.get('name') for p in people_of(meta['identity']) if p.get('name')]
        except (CheckpointError, KeyError, TypeError, AttributeError):
            raise SystemExit(f'error: --init {cfg.init}: its adapter.pt is not a train.py run\'s') from None
        if meta.get('kind') == 'full':
            raise SystemExit(f'error: --init {cfg.init}: a full fine-tune, no adapters to start from; pass an '
                             '--adapter ode run')
    if len(cfg.identity) + bool(cfg.init) > 1 and len(set(names)) < len(names):
        raise SystemExit(f'error: --identity: two people named {", ".join(sorted(n for n in set(names) if names.count(n) > 1))} '
                         '(their photos\' folders; with --init, someone its run already forgot): rename a folder or drop one')
    if cfg.lpips_lin and not cfg.vgg:
        raise SystemExit('error: --lpips_lin needs --vgg (the VGG16 weights its linear heads sit on)')
    if cfg.retain != 'none' and not Path(cfg.retain).is_dir():
        raise SystemExit(f'error: --retain {cfg.retain}: no such folder; pass a folder of identity folders, or none')
    for p in [] if cfg.init else [p for p in cfg.identity if Path(p).suffix.lower() in LATENT_EXTS]:
        try:  # a latent file is read now, not after the photos' inversions
            x = load(p, 'a latent file') if not p.endswith('.npy') else np.load(p, allow_pickle=False)
        except (CheckpointError, OSError, ValueError) as e:
            raise SystemExit(f'error: --identity {p}: not a readable latent ({e})') from None
        if not (isinstance(x, (torch.Tensor, np.ndarray)) or isinstance(x, dict) and ('ws' in x or 'w_u' in x)):
            raise SystemExit(f'error: --identity {p}: holds no latent tensor (expected a tensor or a dict with "ws")')
    if cfg.retain != 'none' and not any(p.is_dir() for p in Path(cfg.retain).iterdir()):
        raise SystemExit(f'error: --retain {cfg.retain}: holds no person folders (one folder of photos per person); '
                         'pass their parent folder, or none')
    try:
        device(cfg.device)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    if cfg.out == '':
        raise SystemExit("error: --out '': name a run folder, or leave --out out for runs/<identity>-<adapter>")


def safe(name):
    """A name for a folder the run makes: characters a shell or a log line would trip on (newlines, tabs, quotes,
    spaces ...) become _."""
    return ''.join(c if c.isalnum() or c in '-_.+' else '_' for c in name) or 'identity'


def name_of(identity):
    """--identity -> a folder name: seed:7 -> seed7, photos/obama -> obama, a/w.pt -> w (safe)."""
    return safe('seed' + identity[5:] if identity.startswith('seed:') else Path(identity).stem)


def default_out(cfg):
    stem = '+'.join(map(name_of, cfg.identity))
    base = ROOT / 'runs' / f'{stem}-{cfg.adapter}'
    out, i = base, 1
    while out.exists() and any(out.iterdir()):
        i += 1
        out = Path(f'{base}-{i}')
    return out


def launcher():
    """The command that started this process, for the resume hint: python, or torchrun with its process counts."""
    if 'LOCAL_WORLD_SIZE' not in os.environ:
        return 'python train.py'
    nodes = int(os.environ.get('GROUP_WORLD_SIZE', 1))
    return (f'torchrun --nnodes {nodes} (your rendezvous flags)' if nodes > 1 else 'torchrun --standalone') + \
        f' --nproc_per_node {os.environ["LOCAL_WORLD_SIZE"]} train.py'


class Signals:
    """Ctrl-C and SIGTERM while a `with` block runs: noted in .sig (the loop stops between steps, a write finishes),
    or with at_once=True raised as KeyboardInterrupt; the previous handlers come back at the end of the block."""

    def __init__(self, at_once=False):
        self.at_once, self.sig = at_once, 0

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def note(self, sig, _):
        self.sig = sig
        if self.at_once:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


@dataclass
class Run:
    """A run besides its step: where it writes, who is forgotten and kept, how far it got (ckpt.pt keeps it)."""
    cfg: object           # train.Config
    out: Path
    writer: bool          # rank 0: the process that writes
    existed: bool         # --out existed before the run (an abandoned run leaves it as it was)
    made: Path = None     # the highest folder the run made (--out deep/x/y: deep), removed if abandoned while empty
    info: dict = None     # the identity: its kind, path, inversion distances
    retain: dict = None   # {kept person: W+ latent [1, L, C]}
    retain_photos: dict = None  # {kept person: its photo, in the run folder}
    sha: str = None       # the generator's weights
    step: int = 0
    wall: float = 0.0     # seconds of training so far
    lock: object = None   # the open log.jsonl whose lock makes the folder this process's (helpers.own)


def claim(cfg, out, writer):
    """The run's folder, claimed before any work, for this process alone while it runs (a second run on the same
    --out, a second --resume too, stops here) -> Run."""
    R = Run(cfg, out, writer, out.exists())
    if writer and not out.exists():
        R.made = next(p for p in [*reversed(out.resolve().parents), out.resolve()] if not p.exists())
    if writer:
        try:
            if not cfg.resume:
                out.mkdir(parents=True, exist_ok=True)
                (out / 'log.jsonl').open('x').close()
            R.lock = own(out)
        except FileExistsError:
            raise SystemExit(f'error: --out {out} was just taken by another run; choose another --out') from None
        except ValueError as e:
            raise SystemExit(f'error: --out {e}') from None
        except OSError as e:
            raise SystemExit(f'error: --out {out}: cannot create it ({e.strerror}); choose another folder') from None
    return R


def abandon(R, msg, code=None):
    """Stop with msg (exit 1, or code): a run that fails before its first checkpoint leaves nothing behind."""
    if R.writer and not R.cfg.resume and not (R.out / 'ckpt.pt').exists():
        shutil.rmtree(R.out, ignore_errors=True)
        for p in R.out.resolve().parents if R.made else ():  # the folders above it that it made, while empty
            if not p.is_relative_to(R.made) or any(p.iterdir()):
                break
            p.rmdir()
        if R.existed:
            R.out.mkdir()
    if code:
        print(own_line(msg, sys.stdout))
    raise SystemExit(code or msg)


def copy_photos(folder, dest, names=None):
    """The image files of folder (or only those named; never hidden ones, which training skipped too), copied into a
    new folder dest."""
    dest.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith('.') and (names is None or
                                                                                              f.name in names):
            shutil.copy2(f, dest / f.name)


def keep_photos(info, retain_photos, out, write=True):
    """Copy the photos evaluation reads into the run folder (the forgotten person's folder, held-out photos included,
    and each kept person's; write=False: rank > 0, which only renames) and point the run at them: a run folder
    copied anywhere evaluates."""
    for person in people_of(info):
        if person['kind'] == 'photos':
            p = Path(person['path'])
            folder = p if p.is_dir() else p.parent
            name = person.get('name', safe(folder.name))  # --init's people keep theirs (their photos are in its run)
            dest = 'photos/forget' + ('' if person is info else f'/{name}')  # several: one folder each
            if write:  # one photo: it and its held-out photos (several.held_out_of); a folder: all of it
                copy_photos(folder, out / dest, None if p.is_dir() else {p.name, *person.get('held_out', ())})
            person.update(source=person.get('source', portable(p)), name=name,
                          path=dest + ('' if p.is_dir() else f'/{p.name}'))
        elif person['kind'] == 'latent':
            person['path'] = portable(person['path'])
    for name, photo in retain_photos.items():
        if write:
            copy_photos(Path(photo).parent, out / 'photos/keep' / name)
        retain_photos[name] = f'photos/keep/{name}/{Path(photo).name}'


def read_checkpoint(out):
    """--resume: the run folder's ckpt.pt, checked to be a train.py checkpoint of this version; any problem is one line."""
    if not (out / 'ckpt.pt').exists() and busy(out):
        raise SystemExit(f'error: {out}: a train.py process is running it (before its first checkpoint); wait for it')
    if not (out / 'ckpt.pt').exists():
        raise SystemExit(f'error: {out}/ckpt.pt not found; nothing to resume (pass the --out of a run; a folder '
                         'without one stopped before its first checkpoint: delete it or choose another --out)')
    try:
        ck = load(out / 'ckpt.pt', 'a train.py checkpoint')
    except CheckpointError as e:  # cut short (a full disk, a copy that stopped) or another file
        raise SystemExit(f'error: {e}; it cannot be resumed: start the run again with another --out (or delete this '
                         'one)')
    need = {'args': dict, 'step': int, 'wall': (int, float), 'synthesis': dict, 'opt': dict, 'gen': torch.Tensor,
            'person': dict, 'ws_u': torch.Tensor, 'info': dict, 'retain': dict, 'retain_photos': dict}
    if not (isinstance(ck, dict) and all(isinstance(ck.get(k), t) for k, t in need.items()) and
            isinstance(ck['args'].get('device'), str) and isinstance(ck.get('generator_sha', ''), str) and
            all(isinstance(v, torch.Tensor) for v in [*ck['person'].values(), *ck['retain'].values()])):
        raise SystemExit(f'error: {out}/ckpt.pt: not a train.py checkpoint; pass the --out of a train.py run, or start '
                         'a new run with another --out')
    if not isinstance(ck['args'].get('identity'), list):
        raise SystemExit(f'error: {out}/ckpt.pt: written by an older train.py (one --identity, stored as a string); start '
                         'a new run with another --out')
    if set(ck['person']) != {f.name for f in fields(Person)}:
        raise SystemExit(f'error: {out}/ckpt.pt: written by an older train.py (another person mode); start a new '
                         'run with another --out')
    tensors = [ck['ws_u'], *ck['synthesis'].values(), *ck['person'].values(), *ck['retain'].values()]
    if ck['step'] < 0 or not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
        raise SystemExit(f'error: {out}/ckpt.pt: holds NaN or Inf (or a negative step); it cannot be resumed: start '
                         'the run again with another --out')
    people = [p for p in people_of(ck['info']) if p.get('kind') == 'photos' and isinstance(p.get('path'), str)]
    photos = [out / p['path'] for p in people] + [out / v for v in ck['retain_photos'].values() if isinstance(v, str)]
    photos += [(out / p['path']).parent / h for p in people for h in p.get('held_out', []) if isinstance(h, str)]
    for f in photos:  # evaluation reads them from the run: a resumed run without them could not be evaluated
        if not f.is_file():
            raise SystemExit(f'error: {out}: photo {f} is missing; a run folder is kept whole (photos/ included): '
                             'copy it back, or start the run again with another --out')
    return ck


def restore(S, R, ck, dev):
    """--resume: the trainable weights, the optimiser, the step and the person as they were -> P; the random stream
    too on the same kind of device (another one gets a new stream, from the seed and the step)."""
    if ck['synthesis'].keys() != trainable_state(S.G, R.cfg.adapter == 'full').keys():  # strict=False: kept at init
        raise CheckpointError(f'{R.out}/ckpt.pt: its weights are not this run\'s adapters; start a new --out')
    same_kind = torch.device(ck['args']['device']).type == dev.type  # of device: the random stream goes on
    try:  # a state edited by hand, or another version's: one line, not torch's text about parameter groups
        S.G.synthesis.load_state_dict(ck['synthesis'], strict=False)
        S.opt.load_state_dict(ck['opt'])
        if same_kind:
            S.gen.set_state(ck['gen'])  # generator states are CPU byte tensors, CUDA ones too
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{R.out}/ckpt.pt: its optimiser or random state does not fit this run ('
                              f'{str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); start a new --out') from None
    if R.cfg.target == 'surrogate':  # found by the run's search, which a resume does not repeat
        if not isinstance(ck.get('ws_t'), torch.Tensor) or ck['ws_t'].shape != S.ws_u.shape:
            raise CheckpointError(f"{R.out}/ckpt.pt: holds no targets of its forgotten latents; start a new --out")
    R.step, R.wall = ck['step'], ck['wall']
    if not same_kind:  # a CPU stream cannot go on on a GPU: a new one
        S.gen.manual_seed(R.cfg.seed + R.step)
        print(f'resuming a {ck["args"]["device"]} run on {dev}: new random stream (seed {R.cfg.seed} + step {R.step})')
    print(f'resumed {R.out}/ckpt.pt at step {R.step}')
    return Person(**{k: v.to(dev) for k, v in ck['person'].items()})


def save_checkpoint(S, P, R, loss):
    """ckpt.pt: everything --resume needs to go on exactly as the run would have. Every rank holds the same state
    (the same random stream, the same averaged gradients); rank 0 writes."""
    if loss is not None and max_over_ranks(int(not torch.isfinite(loss))):  # never overwrite a good checkpoint with NaNs
        raise FloatingPointError(f'non-finite loss at step {R.step}')
    if R.writer:
        atomic_save({'synthesis': trainable_state(S.G, R.cfg.adapter == 'full'), 'opt': S.opt.state_dict(),
                     'gen': S.gen.get_state(), 'step': R.step, 'wall': R.wall, 'ws_u': S.ws_u, 'ws_t': S.ws_t,
                     'info': R.info, 'retain': R.retain, 'retain_photos': R.retain_photos, 'person': vars(P), 'args': stored(R.cfg),
                     'generator_sha': R.sha}, R.out / 'ckpt.pt')


def save_snapshot(S, R):
    """snapshots/<step>.pt: the trainable weights alone (evaluate.py --curve reads them)."""
    if R.writer:
        (R.out / 'snapshots').mkdir(exist_ok=True)
        atomic_save({'step': R.step, 'synthesis': trainable_state(S.G, R.cfg.adapter == 'full'),
                     'generator_sha': R.sha}, R.out / 'snapshots' / f'{R.step:06d}.pt')


def log_losses(L, R, t0, pbar, log):
    """Read the losses back (a host sync), show them, append them to log.jsonl (rank 0's share of the batch: sums over
    samples are scaled to the whole batch)."""
    rec = {'step': R.step, **{k: v.item() for k, v in L.items()}, 'wall': round(R.wall + time.time() - t0, 2)}
    if max_over_ranks(int(not all(math.isfinite(v) for v in rec.values()))):
        raise FloatingPointError(f'non-finite loss at step {R.step}: {rec}')
    pbar.set_postfix({k: f'{v:.3g}' for k, v in rec.items() if k in ('local', 'adj', 'glob', 'person')})
    if log:
        log.write(json.dumps(rec) + '\n')
        log.flush()


def write_results(S, P, R):
    """adapter.pt (or the fine-tuned synthesis) and before_after.png."""
    cfg, G = R.cfg, S.G
    meta = {'identity': R.info, 'ws_u': S.ws_u.cpu(), 'ws_t': S.ws_t.cpu(),
            'retain_ws': {k: v.cpu() for k, v in R.retain.items()}, 'retain_photos': R.retain_photos,
            'args': stored(cfg), 'generator_sha': R.sha, 'steps': R.step, 'wall_s': R.wall, 'kind': cfg.adapter,
            'mined': len(P.pool)}
    if cfg.adapter == 'full':
        atomic_save({'generator_config': asdict(G.cfg), 'synthesis': G.synthesis.state_dict(), **meta},
                    R.out / 'adapter.pt')
    else:
        save_adapters(G, R.out / 'adapter.pt', **meta)
    before_after(S, P, R.retain, R.out / 'before_after.png')
