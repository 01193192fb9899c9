"""
Make a generator forget one identity: LEGATO's Neural-ODE adapters trained with GUIDE's objective.

    python train.py                                       # built-in baby generator, forgets Obama (CPU)
    python train.py --identity photos/ --ckpt ffhq.pkl --device cuda
    python train.py --adapter full                        # GUIDE's baseline: fine-tune the whole synthesis

Each step is one batched pass (not the official code's batch-1 pass per term): one forward of the trainable
generator over [identity, adjacency, global(, mined, held, kept)] latents, one no-grad forward of the frozen
generator over what they should look like (the identity's target, which never changes, is computed once), one
backward. The step itself reads nothing back from the device (fp16's loss scaler aside); logging, the search (person
mode, --target surrogate; once, at the start) and checkpoints do.
Writes to --out: adapter.pt, before_after.png, log.jsonl, and ckpt.pt for --resume.
"""
import argparse
import copy
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import IMAGE_EXTS, DataError, dlib_available, invert, list_photos, load_faces, resolve_identity, save_grid
from ddp import distributed, from_rank0, gather, max_over_ranks, shard, together
from helpers import (ROOT, CheckpointError, atomic_save, device, digest, in_repo, keep_freed_memory, load, people_of,
                     portable)
from id_net import ID_NETS, load_id_net
from losses import Rows, Seen, Weights, adjacency_offsets, describe, objective, shows_person, target_latent, who
from model import Generator
from perceptual import IDFeatureDistance, LPIPSVGG
from ode_adapter import BACKENDS, attach_adapters, integrate, param_report, run_meta, save_adapters, trainable_state

BABY = ROOT / 'assets/baby.pt'  # the built-in generator
ADAPTERS = ('ode', 'residual', 'full')
AMP = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}  # autocast dtypes


def arg(default, help, choices=None):
    """A setting: its default, why it is what it is (the --help text), and its allowed values."""
    return field(default=default, metadata={'help': help, 'choices': choices})


@dataclass
class Config:
    """Every setting of a run; the command line is built from it and checkpoints store it as a plain dict."""
    # who to forget, from what, and who to keep
    identity: list = field(default_factory=lambda: [str(ROOT / 'assets/faces/obama/obama_1.png')], metadata={
        'choices': None, 'help': 'who to forget: a photo, a folder of photos (all forgotten together), a latent '
                                 '.pt/.npy, or seed:N; given more than once, several people forgotten in one run'})
    ckpt: str = arg(str(BABY), 'generator: official .pkl, rosinality .pt or ours')
    retain: str = arg(str(ROOT / 'assets/faces'), "folder of identity folders shown as 'others' in the picture and "
                                                   "kept in adapter.pt ('none' to skip)")
    out: str = arg(None, 'run folder (default runs/<identity>-<adapter>, numbered if taken)')
    resume: bool = arg(False, 'continue the run in --out from its ckpt.pt')
    each: bool = arg(False, 'one run per person (--out/<person>): --identity a folder of person folders (each run keeps '
                            'the others), or --identity given several times (each run keeps --retain); under torchrun '
                            'the people are spread over the processes')
    init: str = arg(None, "a finished run: start from its adapters and forget --identity too; the run's forgotten "
                          'people stay forgotten (their latents, photos and targets join this run), the rest are kept')
    # optimisation
    iters: int = arg(None, "optimisation steps (default: the paper's 1000; on the built-in baby 500 with --forget "
                           "latent, which has forgotten by step 100 (the README's collapse curves), and 150 with "
                           "--forget person at its --lr 1e-3, whose step costs 2.3x)")
    lr: float = arg(None, "Adam learning rate, trainable parameters only (default: the official code's 1e-4; 1e-3 "
                          "with --forget person, which forgets as well in half the steps: README, person mode)")
    # the adapter and its dial
    adapter: str = arg('ode', 'ode: LEGATO; residual: one-step residual adapter x + f(x) (ignores --t_end, --step, '
                              '--solver); full: GUIDE, fine-tune all of synthesis', ADAPTERS)
    hidden: int = arg(None, "adapter hidden width (default: the generator's channel_max / 2, i.e. the paper's 256 "
                            "for the official 512-channel StyleGAN2s and 64 for the 128-channel baby)")
    solver: str = arg('euler', "the paper's Euler; midpoint | rk4, or any torchdiffeq method with --backend "
                               "torchdiffeq")
    backend: str = arg('native', 'ODE solver backend: hand-written, torchdiffeq, or its adjoint (less memory; its '
                                 'gradients match backprop through the steps only as h -> 0)', BACKENDS)
    step: float = arg(0.4, "ODE step size h (the paper's)")
    t_end: float = arg(1.6, "ODE integration time T, the forgetting dial (the paper's)")
    # GUIDE's objective
    target: str = arg('extra', "target latent: GUIDE's extrapolation away from w_avg, w_avg, or surrogate: for each "
                               "forgotten latent a sample of someone else, found among --mine_n random ones "
                               "(train.surrogate_targets; SUGAR's surrogate, on the generator's own image manifold)",
                      ('extra', 'average', 'surrogate'))
    target_d: float = arg(30.0, "extrapolation distance d of the target latent (GUIDE's)")
    scale_d: bool = arg(False, 'scale d by sqrt(W+ size / (14*512)) (per-element distance of FFHQ-256)')
    n_adj: int = arg(2, 'adjacency latents per identity latent (GUIDE)')
    n_forget: int = arg(None, 'forgotten latents per step (default: all); with more, each step draws this many, so '
                              'the batch does not grow with the number of people forgotten')
    alpha_max: float = arg(15.0, "adjacency offsets alpha ~ U(0, alpha_max) (GUIDE's)")
    n_glob: int = arg(2, 'random latents for global preservation (GUIDE)')
    w_pix: float = arg(1e-2, 'pixel MSE weight (local and adjacency)')
    w_perc: float = arg(1.0, 'perceptual weight (local and adjacency)')
    w_id: float = arg(0.1, 'identity weight (local and adjacency)')
    w_local: float = arg(1.0, 'weight of the local term (the forgotten latents)')
    w_adj: float = arg(1.0, 'weight of the adjacency term')
    w_glob: float = arg(1.0, 'weight of the global-preservation term')
    w_tc: float = arg(1.0, "trajectory consistency weight (LEGATO's)")
    tc_blocks: str = arg(None, 'comma-separated blocks for trajectory consistency, e.g. b128 (default: all)')
    # forgetting the person, not one latent (this project's addition)
    forget: str = arg('person', "person: also forget the person's samples found among random latents, keep the others' "
                                "(this project); latent: the paper's method exactly", ('person', 'latent'))
    mine_n: int = arg(2000, 'random samples searched at the start (psi ~ U(0.5, 1)) for the person and for --target '
                            'surrogate')
    n_mine: int = arg(4, 'mined latents of the person per step, each pulled towards a sample of someone else (and as '
                         'many samples of the kept people, held)')
    w_person: float = arg(2.0, "weight of the mined latents' image loss towards their targets (train.surrogates; at 1 "
                               "the port still saw him in 3.3% of samples on the tuning run, at 2 in 0.7%)")
    w_keep: float = arg(1.0, "weight of holding the kept people (their latents, their mined samples) to their images")
    w_pix_person: float = arg(10.0, "pixel MSE weight of person mode's image loss (for w_pix's 0.01): the one term no "
                                    "network judges, so his samples change as pictures, not only as features")
    # judging networks
    id_net: str = arg('dlib', 'identity network of the loss (dlib works offline)', ID_NETS)
    id_weights: str = arg(None, 'weights file of --id_net (arcface / curricularface)')
    vgg: str = arg(None, 'torchvision VGG16 state dict: use LPIPS-VGG16 as the perceptual distance')
    lpips_lin: str = arg(None, "LPIPS v0.1 linear heads (lpips' weights/v0.1/vgg.pth) for --vgg")
    invert_steps: int = arg(300, 'optimisation steps to invert each photo')
    # bookkeeping and speed
    log_every: int = arg(50, 'log interval (reads the losses back from the device)')
    ckpt_every: int = arg(250, 'checkpoint interval (also on Ctrl-C / SIGTERM)')
    snapshot_every: int = arg(0, 'keep adapter snapshots every K steps (for collapse curves)')
    seed: int = arg(0, 'seed of the training latents: same seed, same numbers on CPU')
    device: str = arg('cuda' if torch.cuda.is_available() else 'cpu', 'cpu or cuda')
    amp: str = arg('none', 'autocast dtype for the generators (bf16/fp16 on GPUs)', tuple(AMP))
    compile: bool = arg(False, 'torch.compile the synthesis network')


MAY_CHANGE = ('iters', 'log_every', 'ckpt_every', 'snapshot_every', 'ckpt', 'device')  # a --resume may change these
RESUMABLE = ('out', 'resume', 'each') + MAY_CHANGE  # the flags a --resume may give: which run, and these
MAY_CHANGE_FLAGS = ', '.join('--' + k for k in MAY_CHANGE)  # as the help and the errors name them
PATHS = ('identity', 'init', 'ckpt', 'retain', 'id_weights', 'vgg', 'lpips_lin')  # stored relative to the repo when inside


def parser(only_given=False):
    """The command line, one flag per Config field (only_given: parse to just the flags on the command line)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog=f"--resume restores the run's settings; only {MAY_CHANGE_FLAGS} may differ "
                                       "(--ckpt: the same weights in another file or folder)",
                                argument_default=argparse.SUPPRESS if only_given else None)
    for f in fields(Config):
        h = f.metadata['help'].replace('%', '%%')  # argparse %-formats the help text
        if f.type is list:  # --identity, given once per person
            p.add_argument(f'--{f.name}', action='append', help=h)
        elif f.type is bool:
            p.add_argument(f'--{f.name}', action='store_true', help=h)
        else:
            p.add_argument(f'--{f.name}', type=f.type, help=h, choices=f.metadata['choices'],
                           **({} if only_given else {'default': f.default}))
    return p


def get_args(argv=None):
    a = vars(parser().parse_args(argv))
    cfg = Config(**{k: v for k, v in a.items() if v is not None or k != 'identity'})
    person = cfg.forget == 'person'  # the mode's own defaults, where none was given
    if cfg.lr is None:
        cfg.lr = 1e-3 if person else 1e-4
    if cfg.iters is None:
        cfg.iters = 1000 if Path(cfg.ckpt).resolve() != BABY else 150 if person else 500
    return cfg


def each_path(f, v):
    """f of a path setting, or of each path of a list of them (--identity)."""
    return [f(x) for x in v] if isinstance(v, list) else f(v)


def stored(cfg):
    """The settings as a checkpoint keeps them: a plain dict, paths inside the repository relative to it."""
    return {k: each_path(portable, v) if k in PATHS else v for k, v in asdict(cfg).items()}


def resumed(cfg, given, ck, path):
    """--resume: the run's own settings from its checkpoint; a given flag outside RESUMABLE must agree with them."""
    known = {f.name for f in fields(Config)}
    args = {**ck['args'], 'identity': [ck['args']['identity']] if isinstance(ck['args'].get('identity'), str)
            else ck['args'].get('identity')}  # one person, as runs before --identity could repeat stored it
    run = Config(**{k: each_path(in_repo, v) if k in PATHS else v for k, v in args.items() if k in known})
    same = lambda k, v: each_path(portable, v) if k in PATHS else v  # noqa: E731 - a path may be spelled two ways
    for k in sorted(given - set(RESUMABLE)):
        if same(k, getattr(cfg, k)) != same(k, getattr(run, k)):
            raise SystemExit(f'error: {path}: --{k} {getattr(cfg, k)} differs from the run ({getattr(run, k)}); '
                             f'drop it to resume (only {MAY_CHANGE_FLAGS} may change) or use a new --out')
    run = replace(run, resume=True, **{k: getattr(cfg, k) for k in given & set(RESUMABLE) - {'resume'}})
    if run.iters < ck['step']:
        raise SystemExit(f'error: {path}: --iters {run.iters} is below the step the run reached ({ck["step"]}); '
                         f'pass a higher --iters to train on, or evaluate the run as it is')
    return run


def bad(cfg, k, rule):
    raise SystemExit(f'error: --{k} {getattr(cfg, k)}: must be {rule}')


def check(cfg, out):
    """Every setting that can be wrong, checked before any expensive work: the first problem, as one line."""
    if not all(cfg.identity):
        raise SystemExit('error: --identity is empty; pass a photo, a folder of photos, a latent or seed:N')
    folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in cfg.identity  # photos: one folder a person
               if not p.startswith('seed:') and Path(p).suffix.lower() not in ('.pt', '.pth', '.npy')]
    if len(set(cfg.identity)) < len(cfg.identity) or len(set(map(portable, folders))) < len(folders):
        raise SystemExit(f'error: --identity {" --identity ".join(cfg.identity)}: a person given twice (two photos '
                         'of one folder are one person: give the folder once)')
    if not -2 ** 63 <= cfg.seed < 2 ** 64:
        bad(cfg, 'seed', 'an integer in [-2**63, 2**64)')
    for k in ('lr', 't_end', 'step', 'target_d'):
        if not (math.isfinite(getattr(cfg, k)) and getattr(cfg, k) > 0):
            bad(cfg, k, 'a finite number > 0' + (' (T = 0 is the original generator)' if k == 't_end' else ''))
    for k in ('alpha_max', 'w_pix', 'w_perc', 'w_id', 'w_local', 'w_adj', 'w_glob', 'w_tc', 'w_person',
              'w_keep', 'w_pix_person'):
        if not (math.isfinite(getattr(cfg, k)) and getattr(cfg, k) >= 0):
            bad(cfg, k, 'a finite number >= 0')
    for k in ('alpha_max', 'target_d'):  # distances in W: the paper's are 15 and 30
        if getattr(cfg, k) > 1e3:
            bad(cfg, k, 'at most 1000 (a distance that large overflows the generator)')
    for k in ('iters', 'hidden', 'log_every', 'ckpt_every', 'invert_steps', 'n_mine', 'mine_n', 'n_forget'):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            bad(cfg, k, '>= 1')
    for k in ('n_adj', 'n_glob', 'snapshot_every'):
        if getattr(cfg, k) < 0:
            bad(cfg, k, '>= 0 (0: none)')
    for k, limit in (('hidden', 8192), ('n_adj', 1024), ('n_glob', 1024), ('n_mine', 1024), ('mine_n', 10 ** 6)):
        if (getattr(cfg, k) or 0) > limit:  # sizes that cannot fit, refused before any work (the paper's: 256, 2, 2)
            bad(cfg, k, f'at most {limit:,}')
    if cfg.compile and cfg.device.startswith('cpu'):
        raise SystemExit('error: --compile: on a CPU the first step compiles for minutes and runs no faster; use it '
                         'with --device cuda')
    try:  # the solver and its backend, on a one-number ODE
        integrate(lambda t, x: -x, torch.zeros(1), cfg.t_end, cfg.step, cfg.solver,
                  'native' if cfg.backend == 'native' else 'torchdiffeq')
    except ValueError as e:
        raise SystemExit(f'error: --solver {cfg.solver} --backend {cfg.backend}: {e}')
    if cfg.init and not cfg.resume and not (Path(cfg.init) / 'adapter.pt').is_file():  # a resume needs it no more
        raise SystemExit(f'error: --init {cfg.init}: no adapter.pt there; pass a finished train.py run folder')
    if cfg.init and cfg.adapter == 'full':
        raise SystemExit('error: --init starts from adapters; it does not take --adapter full')
    names = [f.name for f in folders]  # each person's photos go to photos/forget/<name>
    if cfg.init and not cfg.resume:
        try:
            names += [p.get('name') for p in people_of(load(Path(cfg.init) / 'adapter.pt', 'a train.py run')['identity'])
                      if p.get('name')]
        except (CheckpointError, KeyError, TypeError, AttributeError):
            raise SystemExit(f'error: --init {cfg.init}: its adapter.pt is not a train.py run\'s') from None
    if len(cfg.identity) + bool(cfg.init) > 1 and len(set(names)) < len(names):
        raise SystemExit(f'error: --identity: two people named {", ".join(sorted(n for n in set(names) if names.count(n) > 1))} '
                         '(their photos\' folders; with --init, someone its run already forgot): rename a folder or drop one')
    if cfg.lpips_lin and not cfg.vgg:
        raise SystemExit('error: --lpips_lin needs --vgg (the VGG16 weights its linear heads sit on)')
    if cfg.retain != 'none' and not Path(cfg.retain).is_dir():
        raise SystemExit(f'error: --retain {cfg.retain}: no such folder; pass a folder of identity folders, or none')
    if cfg.retain != 'none' and not any(p.is_dir() for p in Path(cfg.retain).iterdir()):
        raise SystemExit(f'error: --retain {cfg.retain}: holds no person folders (one folder of photos per person); '
                         'pass their parent folder, or none')
    try:
        device(cfg.device)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    if out.exists() and not out.is_dir():
        raise SystemExit(f'error: --out {out} is a file; choose a folder')
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SystemExit(f'error: --out {out}: cannot write in {parent}; choose a folder you can write to')


def name_of(identity):
    """--identity -> a folder name: seed:7 -> seed7, photos/obama -> obama, a/w.pt -> w."""
    return 'seed' + identity[5:] if identity.startswith('seed:') else Path(identity).stem


def default_out(cfg):
    stem = '+'.join(map(name_of, cfg.identity))
    base = ROOT / 'runs' / f'{stem}-{cfg.adapter}'
    out, i = base, 1
    while out.exists() and any(out.iterdir()):
        i += 1
        out = Path(f'{base}-{i}')
    return out


# -----------------------------------------------------------------------------
# the step

@dataclass
class Step:
    """What every step reads, built once by `setup` (and `aim`)."""
    G: Generator         # trainable: adapters on the frozen generator, or the whole synthesis (--adapter full)
    G_s: Generator       # frozen original: G itself at T = 0, or a frozen copy (full)
    s_kw: dict           # how G_s.synthesis is called: {'T': 0} or {}
    syn: object          # G.synthesis, compiled with --compile
    idn: torch.nn.Module  # identity network
    perc: torch.nn.Module  # perceptual distance
    ws_u: torch.Tensor   # [n_u, L, C] latents of the person to forget
    ws_t: torch.Tensor   # [n_u, L, C] their targets (GUIDE's; --target surrogate: set by `aim` after the search)
    tgt: Seen            # G_s(ws_t), embedded once: it never changes
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: object          # autocast context (or a null one)
    gen: torch.Generator  # the training latents' random stream (saved in ckpt.pt)
    wt: Weights          # the objective's weights
    rank: int = 0        # torchrun: this process draws the whole world-times batch and keeps share `rank`
    world: int = 1


def setup(cfg, G, idn, perc, ws_u, rank=0, world=1):
    """Make G trainable (adapters or full), the frozen G_s, the optimiser, and GUIDE's constant targets (`aim`;
    --target surrogate's are aimed by `prepare`, after the search). Under torchrun
    the trainable synthesis is wrapped in DistributedDataParallel, which averages the gradients of the ranks."""
    dev = G.mapping.w_avg.device
    if cfg.adapter == 'full':  # GUIDE: the whole synthesis network trains, G_s is a frozen copy
        G_s, s_kw = copy.deepcopy(G).requires_grad_(False), {}
        G.synthesis.requires_grad_(True)
    else:  # adapters on a frozen G; G_s is the same network at T = 0 (exactly the original)
        T, h, solver = (1.0, 1.0, 'euler') if cfg.adapter == 'residual' else (cfg.t_end, cfg.step, cfg.solver)
        attach_adapters(G, cfg.hidden or G.cfg.channel_max // 2, T=T, h=h, solver=solver, backend=cfg.backend)
        G_s, s_kw = G, {'T': 0}
    amp = nullcontext() if cfg.amp == 'none' else torch.autocast(dev.type, dtype=AMP[cfg.amp])
    syn = G.synthesis if world == 1 else DistributedDataParallel(G.synthesis, broadcast_buffers=False)
    S = Step(G=G, G_s=G_s, s_kw=s_kw, syn=torch.compile(syn) if cfg.compile else syn, idn=idn,
             perc=perc, ws_u=ws_u, ws_t=None, tgt=None,
             opt=torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=cfg.lr),
             scaler=torch.amp.GradScaler(dev.type, enabled=cfg.amp == 'fp16'), amp=amp,
             gen=torch.Generator(device=dev).manual_seed(cfg.seed), wt=Weights.of(cfg), rank=rank, world=world)
    if cfg.target != 'surrogate':  # GUIDE's; a surrogate needs the search (prepare)
        ws_t = target_latent(ws_u, G.mapping.w_avg, cfg.target_d, cfg.target, cfg.scale_d)
        if not torch.isfinite(ws_t).all():  # (w_u - w_avg) / ||w_u - w_avg|| with w_u = w_avg
            raise ValueError(f"{', '.join(cfg.identity)}: a latent equals the generator's average latent, which has no "
                             'direction to extrapolate from; use --target average or surrogate, or another identity')
        aim(S, ws_t)
    return S


def aim(S, ws_t):
    """The forgotten latents' targets and the frozen generator's images of them, described once: they never change."""
    with torch.no_grad(), S.amp:
        S.ws_t, S.tgt = ws_t, describe(S.G_s.synthesis(ws_t, fused=False, **S.s_kw).float(), S.idn, S.perc)


def forgotten_rows(S, cfg):
    """This step's forgotten latents, their targets and the targets' images: all of them, or with more than
    --n_forget a draw of that many (from the step's stream, the same on every rank): the batch then does not grow
    with the number of people forgotten."""
    if not cfg.n_forget or len(S.ws_u) <= cfg.n_forget:
        return S.ws_u, S.ws_t, S.tgt
    i = torch.randperm(len(S.ws_u), generator=S.gen, device=S.ws_u.device)[:cfg.n_forget]  # no latent twice
    return S.ws_u[i], S.ws_t[i], Seen(S.tgt.img[i], [f[i] for f in S.tgt.feats], S.tgt.emb[i])


def sample_latents(S, cfg, ws_u, ws_t):
    """This step's random latents (README eq. 3): adjacency pairs (w_u + delta -> w_t + delta) around this step's
    forgotten latents (forgotten_rows) and global ones. Under torchrun every rank draws the batch of all the ranks
    (the same numbers) and keeps its share."""
    n_u, dev, a, g, r = len(ws_u), ws_u.device, cfg.n_adj, cfg.n_glob, S.rank
    z = torch.randn(n_u * a * S.world + g * S.world, S.G.cfg.z_dim, generator=S.gen, device=dev)
    alpha = torch.rand(n_u, a * S.world, generator=S.gen, device=dev) * cfg.alpha_max
    with torch.no_grad():
        w_r = S.G.mapping(z)  # [n_u * n_adj + n_glob (each times world), L, C], psi 1
        w_adj, w_glob = w_r[:n_u * a * S.world], w_r[n_u * a * S.world:][r * g:(r + 1) * g]
        delta = adjacency_offsets(ws_u, w_adj.view(n_u, a * S.world, *w_r.shape[1:]), alpha)[:, r * a:(r + 1) * a]
        delta = delta.flatten(0, 1)  # [n_u * n_adj, L, C]: row i * n_adj + j is latent i's j-th offset
        return ws_u.repeat_interleave(a, 0) + delta, ws_t.repeat_interleave(a, 0) + delta, w_glob


def train_step(S, cfg, P=None):
    """One step: sample latents, frozen forward, trainable forward, the objective (README eq. 4), backward. No host
    sync. With P (--forget person) the person's mined latents and the kept people join the batch and the objective;
    the batch's groups are losses.Rows, in its order: [w_u | w_u + delta | global | mined | held | kept]."""
    ws_u, ws_t, tgt = forgotten_rows(S, cfg)
    w_adj_u, w_adj_t, w_glob = sample_latents(S, cfg, ws_u, ws_t)
    p_u, p_s = person_latents(S, P, cfg) if P else ([], [])
    rows = Rows(len(ws_u), len(w_adj_u), len(w_glob), *map(len, p_u))
    with torch.no_grad(), S.amp:  # what each should look like: [G_s(w_t) (constant) | G_s(w_t + delta) | G_s(w) ...]
        want = tgt.cat(describe(S.G_s.synthesis(torch.cat([w_adj_t, w_glob, *p_s]), fused=False, **S.s_kw).float(),
                                  S.idn, S.perc))
    with S.amp:  # what the trainable generator draws for [w_u | w_u + delta | w ...], scored as the targets are
        img, traj = S.syn(torch.cat([ws_u, w_adj_u, w_glob, *p_u]), fused=False, return_traj=True)
        got = describe(img.float(), S.idn, S.perc)
    known = (P.refs, P.owner, S.idn.THRESHOLD) if P else None  # who the global samples show (person mode)
    L = objective(got, want, traj, rows, S.perc, S.idn.distance, S.wt, known, S.world)
    S.opt.zero_grad(set_to_none=True)
    S.scaler.scale(L['loss']).backward()
    S.scaler.step(S.opt)
    S.scaler.update()
    return L


# -----------------------------------------------------------------------------
# forgetting the person, not one latent: the person's samples mined among random latents (--forget person)

@dataclass
class Person:
    """Who the person is, where the generator draws them, and who must stay."""
    refs: torch.Tensor     # [P, D] embeddings of known faces: the person's training photos (or its latent's image),
    owner: torch.Tensor    # [P]    then the kept people's photos; owner 0 = the person, 1.. = each kept person
    pool: torch.Tensor     # [k, L, C] mined latents whose image showed the person
    keep_ws: torch.Tensor  # [n_keep, L, C] the kept people's latents, held to their original images
    targets: torch.Tensor  # [k, L, C] where each pool latent must go: another person's latent (surrogates)
    held: torch.Tensor     # [j, L, C] mined latents whose image showed a kept person, held to it (surrogates)


def draw(S, n, k):
    """k random indices below n, this rank's share of the world's draw of k * world (from the step's stream)."""
    i = torch.randint(n, (k * S.world,), generator=S.gen, device=S.ws_u.device)
    return i[S.rank * k:(S.rank + 1) * k]


def person_latents(S, P, cfg):
    """This step's person rows, for the trainable and the frozen generator: n_mine latents w_m drawn from the pool and
    their targets, n_mine samples of the kept people twice (this rank's share of each), then the kept people's latents
    twice (README eq. 4)."""
    idx = draw(S, len(P.pool), cfg.n_mine)
    held = P.held[draw(S, len(P.held), cfg.n_mine)] if len(P.held) else P.held
    return [P.pool[idx], held, P.keep_ws], [P.targets[idx], held, P.keep_ws]


@torch.no_grad()
def mine(S, n, bs=64):
    """n random latents (psi ~ U(0.5, 1)) and the identity network's embeddings of the original generator's images
    of them -> (ws [n, L, C], emb [n, D]). The draws come from the step's random stream S.gen, which is why ckpt.pt keeps
    the pool (and --target surrogate's targets) with it. Under torchrun each rank embeds its share and all get the
    whole result."""
    dev = S.ws_u.device
    G = S.G_s
    z = torch.randn(n, G.cfg.z_dim, generator=S.gen, device=dev)
    psi = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=S.gen, device=dev)
    ws = G.mapping.w_avg + psi * (G.mapping(z) - G.mapping.w_avg)
    emb = [S.idn.embed(G.synthesis(w, fused=False, **S.s_kw).float()) for w in tqdm(shard(ws).split(bs), desc='mine', leave=False)]
    return ws, gather(torch.cat(emb))


FAR = 0.9  # a target is at least as far from the face it replaces as this share of the samples of nobody known


@torch.no_grad()
def surrogate_targets(S, P, ws, emb):
    """--target surrogate: for each forgotten latent, the nearest searched latent in W+ (ws [n, L, C], emb [n, D]: `mine`)
    among the samples not of a kept person (by `who`) that the identity network puts farther from the latent's image
    than FAR of them -> [n_u, L, C]: a face of someone clearly else that the original generator draws (SUGAR's
    surrogate), where GUIDE's extrapolated target is an image off the generator's manifold (on the baby dlib C++ finds
    no face in it). Samples near another forgotten face are not left out: with 50 seed identities forgotten on the
    baby, every one of 2,000 samples lies within dlib's threshold of one of them. Reads back (a host sync), once."""
    free = who(emb, P.refs, P.owner, S.idn.distance, S.idn.THRESHOLD) <= 0  # not a kept person's
    if not free.any():
        raise ValueError(f'--target surrogate: all {len(ws)} searched samples show a kept person; raise --mine_n')
    out = []
    for e, w in zip(S.idn.embed(S.G_s.synthesis(S.ws_u, fused=False, **S.s_kw).float()), S.ws_u):  # a latent at a time
        d = S.idn.distance(e[None], emb)  # [n]: this latent's image to each sample's
        cand = ws[free & (d >= d[free].quantile(FAR))]
        out.append(cand[(cand - w).flatten(1).norm(dim=1).argmin()])
    return torch.stack(out)


@torch.no_grad()
def surrogates(S, P, ws, emb):
    """Who the searched latents show, and where the person's must go (README eq. 4) -> (pool, targets, held).
    pool [k, L, C]: the latents whose image the identity network puts nearest the person within its threshold.
    targets [k, L, C]: for each, the nearest latent in W+ among the samples of nobody known (neither him nor a kept
    person) that are farther from his photos than FAR of them: a face clearly someone else's, so that every judge
    and eye sees the change. Not a kept person's: his samples would swell that person's share of everything the
    generator draws (to half of all samples, measured) and blur how the judges see the kept. held [j, L, C]: the
    latents whose image shows a kept person, held to it while he moves. Every target is an image the original
    generator draws. Reads back (a host sync)."""
    shows = who(emb, P.refs, P.owner, S.idn.distance, S.idn.THRESHOLD)  # 0 the person, 1.. a kept one, -1 nobody
    hit, nobody = shows == 0, shows == -1
    if not hit.any() or not nobody.any():  # nobody to send, or no one unknown to send him to
        return ws[:0], ws[:0], ws[shows > 0]
    d = S.idn.distance(emb[:, None], P.refs[P.owner == 0][None]).min(1).values  # to the person's nearest photo
    cand = ws[nobody & (d >= d[nobody].quantile(FAR))]
    return ws[hit], cand[torch.cdist(ws[hit].flatten(1), cand.flatten(1)).argmin(1)], ws[shows > 0]


def setup_person(S, face, retain, retain_faces):
    """Who the person is: reference faces (the training photos only, or the forgotten latent's image) and the
    kept people (their photos and latents); the pool starts empty."""
    dev = S.ws_u.device
    with torch.no_grad():
        refs = [S.idn.embed(face)] + [S.idn.embed(x.to(dev)) for x in retain_faces.values()]
    owner = torch.cat([torch.full((len(r),), i, device=dev) for i, r in enumerate(refs)])
    keep_ws = torch.cat(list(retain.values())) if retain else S.ws_u[:0]
    return Person(torch.cat(refs), owner, S.ws_u[:0], keep_ws, S.ws_u[:0], S.ws_u[:0])


# -----------------------------------------------------------------------------
# the run

def invert_others(cfg, G, idn, person=None, forgotten_names=()):
    """{kept: W+ latent}, {kept: photo path}, {kept: that photo [1, 3, H, W]}: the first photo of every other identity
    folder under --retain. Each must show a face (found by dlib when installed, as for --identity) and someone else
    than `person` (the forgotten person's photos or latent's image) by the identity network's rule: nobody is
    forgotten and kept at once."""
    if cfg.retain == 'none' or not Path(cfg.retain).is_dir():
        return {}, {}, {}
    forgotten = {q for i in cfg.identity for q in (Path(i).resolve(), Path(i).resolve().parent)}
    photos = {p.name: str(list_photos(p)[0]) for p in sorted(Path(cfg.retain).iterdir())
              if p.is_dir() and p.resolve() not in forgotten and p.name not in forgotten_names}
    if not photos:
        return {}, {}, {}
    faces = torch.cat([load_faces(f, G.cfg.img_resolution, align=False)[0] for f in photos.values()])
    if dlib_available():
        for f in photos.values():
            load_faces(f, G.cfg.img_resolution)  # raises DataError (naming the file) when no face is found
    if person is not None:
        with torch.no_grad():  # [kept people]: each one's distance to the person's nearest photo
            near = idn.distance(idn.embed(faces.to(person.device))[:, None], idn.embed(person)[None]).min(1).values
        for (name, f), d in zip(photos.items(), near.tolist()):
            if d < idn.THRESHOLD:
                raise DataError(f'--retain {Path(f).parent}: {name} is the person being forgotten by the identity '
                                f'network (distance {d:.2f} < {idn.THRESHOLD}); remove that folder from --retain or '
                                'pass --retain none')
    ws, _, _ = invert(G, faces, idn, steps=cfg.invert_steps)
    return {k: ws[i:i + 1] for i, k in enumerate(photos)}, photos, {k: faces[i:i + 1] for i, k in enumerate(photos)}


@torch.no_grad()
def before_after(S, P, retain, path, n=6):
    """Pairs before | after, n a row: the forgotten face and the kept people; random samples (psi 0.7); random
    samples that showed the person (the first n of each among 64, embedded 16 at a time until both rows are full)."""
    G, dev = S.G, S.ws_u.device
    w_r = G.mapping(torch.randn(64, G.cfg.z_dim, generator=torch.Generator().manual_seed(123)).to(dev), psi=0.7)
    was = []
    for w in w_r.split(16):
        if len(was) and min(torch.cat(was).sum(), (~torch.cat(was)).sum()) >= n:
            break
        was.append(shows_person(S.idn.embed(S.G_s.synthesis(w, **S.s_kw)), P.refs, P.owner, S.idn.distance,
                                S.idn.THRESHOLD).bool())
    was = torch.cat(was)
    w_r = w_r[:len(was)]
    groups = [torch.cat([S.ws_u, *retain.values()])[:n], w_r[~was][:n], w_r[was][:n]]
    pairs = [torch.stack([S.G_s.synthesis(g, **S.s_kw), G.synthesis(g)], 1).flatten(0, 1) for g in groups if len(g)]
    blank = -torch.ones(2 * n, *pairs[0].shape[1:], device=dev)  # black cells fill each row to n pairs
    grid = torch.cat([torch.cat([p, blank[len(p):]]) for p in pairs])
    if grid.shape[-1] < 192:  # small generators' faces drawn at 192 px or more, to be judged by eye
        grid = torch.nn.functional.interpolate(grid, scale_factor=-(-192 // grid.shape[-1]), mode='bilinear')
    save_grid(grid, path, nrow=2 * n)


def copy_photos(folder, dest):
    """The image files of folder, copied into a new folder dest."""
    dest.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            shutil.copy2(f, dest / f.name)


def keep_photos(info, retain_photos, out, write=True):
    """Copy the photos evaluation reads into the run folder (the forgotten person's folder, held-out photos included,
    and each kept person's; write=False: rank > 0, which only renames) and point the run at them: a run folder
    copied anywhere evaluates."""
    for person in people_of(info):
        if person['kind'] == 'photos':
            p = Path(person['path'])
            folder = p if p.is_dir() else p.parent
            name = person.get('name', folder.name)  # --init's people keep theirs (their photos are in its run)
            dest = 'photos/forget' + ('' if person is info else f'/{name}')  # several: one folder each
            if write:
                copy_photos(folder, out / dest)
            person.update(source=person.get('source', portable(p)), name=name,
                          path=dest + ('' if p.is_dir() else f'/{p.name}'))
        elif person['kind'] == 'latent':
            person['path'] = portable(person['path'])
    for name, photo in retain_photos.items():
        if write:
            copy_photos(Path(photo).parent, out / 'photos/keep' / name)
        retain_photos[name] = f'photos/keep/{name}/{Path(photo).name}'


def start(argv, identity=None):
    """The run's settings (a resumed run's own), where it goes, and its checkpoint when resuming; identity: who
    to forget instead of argv's --identity (--each's runs)."""
    cfg, given = get_args(argv), set(vars(parser(only_given=True).parse_args(argv)))
    cfg.identity = identity or cfg.identity
    out, ck = Path(cfg.out) if cfg.out else default_out(cfg), None
    if cfg.resume:
        if not (out / 'ckpt.pt').exists():
            raise SystemExit(f'error: {out}/ckpt.pt not found; nothing to resume (pass the --out of a run; a folder '
                             'without one stopped before its first checkpoint: delete it or choose another --out)')
        try:
            ck = load(out / 'ckpt.pt', 'a train.py checkpoint')
        except CheckpointError as e:
            raise SystemExit(f'error: {e}')
        need = {'args': dict, 'step': int, 'wall': (int, float), 'synthesis': dict, 'opt': dict, 'gen': torch.Tensor,
                'person': dict, 'ws_u': torch.Tensor, 'info': dict, 'retain': dict, 'retain_photos': dict}
        if not (isinstance(ck, dict) and all(isinstance(ck.get(k), t) for k, t in need.items()) and
                isinstance(ck['args'].get('device'), str) and
                all(isinstance(v, torch.Tensor) for v in [*ck['person'].values(), *ck['retain'].values()])):
            raise SystemExit(f'error: {out}/ckpt.pt: not a train.py checkpoint; pass the --out of a run')
        if set(ck['person']) != {f.name for f in fields(Person)}:
            raise SystemExit(f'error: {out}/ckpt.pt: written by an older train.py (another person mode); start a new '
                             'run with another --out')
        cfg = resumed(cfg, given, ck, out / 'ckpt.pt')
    elif out.is_dir() and any(out.iterdir()):
        raise SystemExit(f'error: {out} already exists; pass --resume to continue it or choose another --out')
    check(cfg, out)
    return cfg, out, ck


def launcher():
    """The command that started this process, for the resume hint: python, or torchrun with its process counts."""
    if 'LOCAL_WORLD_SIZE' not in os.environ:
        return 'python train.py'
    nodes = int(os.environ.get('GROUP_WORLD_SIZE', 1))
    return (f'torchrun --nnodes {nodes} (your rendezvous flags)' if nodes > 1 else 'torchrun --standalone') + \
        f' --nproc_per_node {os.environ["LOCAL_WORLD_SIZE"]} train.py'


def main(argv=None):
    """One run (under torchrun: data-parallel over the ranks), or with --each one run per person, spread over them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if get_args(argv).each:
        return each(argv)
    cfg, out, ck = start(argv)
    rank, world, dev = distributed(cfg.device)
    return run(cfg, out, ck, dev, rank, world, f'{launcher()} --out {shlex.quote(str(out))} --resume')


def each(argv):
    """--each: one run per person, out/<person>. --identity a folder of person folders: each run keeps the other
    people of the folder; --identity given several times (photos, latents, seed:N): one run per identity, each keeping
    --retain. Under torchrun the people are spread over the ranks, each run in one process."""
    cfg = get_args(argv)
    folder = Path(cfg.identity[0])
    if len(cfg.identity) > 1:  # one run per --identity, every run with the same --retain
        people, retain = [(name_of(i), i) for i in cfg.identity], []
    else:
        people = [(p.name, str(p)) for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else []
        retain = ['--retain', str(folder)]
    if len(people) < 2:
        raise SystemExit(f'error: --identity {folder}: --each needs a folder of two or more person folders, or two or '
                         'more --identity')
    names = [n for n, _ in people]
    if len(set(names)) < len(names):
        raise SystemExit(f'error: --each: two identities named {min(n for n in names if names.count(n) > 1)}; their '
                         'runs would share a folder')
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    try:
        device(cfg.device)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    for name, p in people:  # every person's photos, before the first run: a faceless folder fails now, not hours in
        if p.startswith('seed:') or Path(p).suffix.lower() in ('.pt', '.pth', '.npy'):
            continue
        try:
            load_faces(list_photos(p)[0], 64)  # the first photo: the kept person's latent in the others' runs
        except DataError as e:
            raise SystemExit(f'error: --identity {p}: person {name}: {e}') from None
    rank, world, dev = distributed(cfg.device, group=False)  # the runs are independent: no process group
    hint = f'{launcher()} {shlex.join(a for a in argv if a != "--resume")} --resume'
    runs = []
    for name, p in people[rank::world]:
        if (out / name / 'adapter.pt').exists() and cfg.resume:
            print(f'{out / name}: finished already')
            continue
        resume = ['--resume'] if (out / name / 'ckpt.pt').exists() and cfg.resume else []
        one, out_p, ck = start([a for a in argv if a != '--resume'] + resume + retain + ['--out', str(out / name)], [p])
        runs.append(run(replace(one, each=False), out_p, ck, dev, 0, 1, hint))
    return runs


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
    cfg: Config
    out: Path
    writer: bool          # rank 0: the process that writes
    existed: bool         # --out existed before the run (an abandoned run leaves it as it was)
    info: dict = None     # the identity: its kind, path, inversion distances
    retain: dict = None   # {kept person: W+ latent [1, L, C]}
    retain_photos: dict = None  # {kept person: its photo, in the run folder}
    sha: str = None       # the generator's weights
    step: int = 0
    wall: float = 0.0     # seconds of training so far


def claim(cfg, out, writer):
    """The run's folder, claimed before any work (a second run on the same --out stops here) -> Run."""
    R = Run(cfg, out, writer, out.exists())
    if writer and not cfg.resume:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / 'log.jsonl').open('x').close()
        except FileExistsError:
            raise SystemExit(f'error: --out {out} was just taken by another run; choose another --out') from None
        except OSError as e:
            raise SystemExit(f'error: --out {out}: cannot create it ({e.strerror}); choose another folder') from None
    return R


def abandon(R, msg, code=None):
    """Stop with msg (exit 1, or code): a run that fails before its first checkpoint leaves nothing behind."""
    if R.writer and not R.cfg.resume and not (R.out / 'ckpt.pt').exists():
        shutil.rmtree(R.out, ignore_errors=True)
        if R.existed:
            R.out.mkdir()
    if code:
        print(msg)
    raise SystemExit(code or msg)


def load_networks(cfg, R, ck, dev):
    """The frozen generator of --ckpt (when resuming, checked to be the run's by its digest, R.sha), the identity
    network and the perceptual distance; settles --hidden and checks --tc_blocks against the generator's blocks."""
    G = Generator.from_checkpoint(cfg.ckpt)
    R.sha = digest(G)
    if cfg.resume and ck.get('generator_sha', R.sha) != R.sha:
        raise CheckpointError(f'{cfg.ckpt}: other weights than the generator this run was trained on; pass that '
                              'generator with --ckpt')
    G = G.to(dev)
    cfg.hidden = cfg.hidden or G.cfg.channel_max // 2  # stored as a number: a resume may name it
    blocks = [f'b{b.resolution}' for b in G.synthesis.blocks()[1:]]  # the adapted blocks
    if cfg.tc_blocks and set(cfg.tc_blocks.split(',')) - set(blocks):
        raise ValueError(f'--tc_blocks {cfg.tc_blocks}: this generator has adapters on {",".join(blocks)} only')
    idn = load_id_net(cfg.id_net, cfg.id_weights).to(dev)
    perc = (LPIPSVGG(cfg.vgg, cfg.lpips_lin) if cfg.vgg else IDFeatureDistance(idn)).to(dev)
    print(f'generator {cfg.ckpt} ({G.cfg.img_resolution} px); identity: {cfg.id_net}; perceptual: {perc.name}')
    return G, idn, perc


def who_to_forget(cfg, R, G, idn, dev, init=None):
    """Who is forgotten and who kept -> (ws_u: the person's latents, the photos inverted; face: the images the
    identity network knows him by, his training photos or his latent's image; retain_faces: {kept person: photo}).
    The run's record R gets the identity's info and the kept people's latents and photos, and the photos evaluation
    reads are copied into the run folder."""
    ws, faces, infos = [], [], []
    for spec in (earlier_people(init, G) if init else []) + cfg.identity:  # with several, all forgotten together
        w, info = spec if isinstance(spec, tuple) else resolve_identity(spec, G, idn, steps=cfg.invert_steps)
        w = from_rank0(w.to(dev))  # the ranks' inversions may differ in the last bits
        if not torch.isfinite(w).all():
            raise DataError(f'{spec}: the latent holds NaN or Inf values; pass a finite latent')
        photos = info.pop('photos', None)  # the training photos of the person (person mode's reference)
        with torch.no_grad():  # the person as the identity network sees them: the photos, or the latent's image
            faces.append(photos.to(dev) if photos is not None else G.synthesis(w))
        ws.append(w)
        infos.append(info)
    if len(infos) > 1:
        infos = [{**info, 'rows': len(w)} for info, w in zip(infos, ws)]
    ws_u, face = torch.cat(ws), torch.cat(faces)  # [sum of rows, L, C]; person mode knows them all as "the person"
    R.info = infos[0] if len(infos) == 1 else {'kind': 'many', 'people': infos}
    earlier = [info['name'] for info in infos[:len(infos) - len(cfg.identity)] if 'name' in info]  # --init's
    retain, R.retain_photos, retain_faces = invert_others(cfg, G, idn, face, earlier)
    R.retain = {k: from_rank0(v) for k, v in retain.items()}
    keep_photos(R.info, R.retain_photos, R.out, R.writer)
    return ws_u, face, retain_faces


def earlier_people(meta, G):
    """--init RUN (load_init's dict): the people RUN forgot, [(latents, identity record with its training photos)],
    as RUN had them: their latents are not inverted again, their photos are read from RUN's folder."""
    people = people_of(meta['identity'])
    out = []
    for p, w in zip(people, meta['ws_u'].split([p.get('rows', len(meta['ws_u'])) for p in people])):
        p = {k: v for k, v in p.items() if k != 'rows'}
        if p['kind'] == 'photos':
            p['photos'] = load_faces(p['path'], G.cfg.img_resolution)[0]
        out.append((w, p))
    return out


def load_init(cfg, sha):
    """--init RUN's adapter.pt (photo paths pointing into RUN); refused when RUN was trained on another generator than
    this run's (sha: its digest)."""
    meta = run_meta(cfg.init)
    if meta.get('generator_sha', sha) != sha:
        raise CheckpointError(f'--init {cfg.init}: trained on other generator weights than --ckpt {cfg.ckpt}; pass the '
                              'generator it was trained on with --ckpt')
    if meta.get('kind') != cfg.adapter or meta['adapter']['hidden'] != cfg.hidden:
        raise ValueError(f"--init {cfg.init}: its adapters ({meta.get('kind')}, hidden {meta['adapter']['hidden']}) are "
                         f'not this run\'s ({cfg.adapter}, hidden {cfg.hidden}); pass the same --adapter and --hidden')
    mine = {'T': cfg.t_end, 'h': cfg.step, 'solver': cfg.solver, 'backend': cfg.backend}
    if cfg.adapter == 'ode' and any(meta['adapter'][k] != v for k, v in mine.items()):  # its people were forgotten there
        theirs = ', '.join(f'{k} {meta["adapter"][k]}' for k in mine)
        raise ValueError(f'--init {cfg.init}: its adapters were trained at {theirs}; pass the same --t_end, --step, '
                         '--solver and --backend (its forgetting is at its dial)')
    return meta


def restore(S, R, ck, dev):
    """--resume: the trainable weights, the optimiser, the step and the person as they were -> P; the random stream
    too on the same kind of device (another one gets a new stream, from the seed and the step)."""
    if ck['synthesis'].keys() != trainable_state(S.G, R.cfg.adapter == 'full').keys():  # strict=False: kept at init
        raise CheckpointError(f'{R.out}/ckpt.pt: its weights are not this run\'s adapters; start a new --out')
    S.G.synthesis.load_state_dict(ck['synthesis'], strict=False)
    S.opt.load_state_dict(ck['opt'])
    if R.cfg.target == 'surrogate':  # found by the run's search, which a resume does not repeat
        if not isinstance(ck.get('ws_t'), torch.Tensor) or ck['ws_t'].shape != S.ws_u.shape:
            raise CheckpointError(f"{R.out}/ckpt.pt: holds no targets of its forgotten latents; start a new --out")
        aim(S, ck['ws_t'].to(dev))
    R.step, R.wall = ck['step'], ck['wall']
    if torch.device(ck['args']['device']).type == dev.type:
        S.gen.set_state(ck['gen'])  # generator states are CPU byte tensors, CUDA ones too
    else:  # a CPU stream cannot continue on a GPU (or back): a new one, from the seed and the step
        S.gen.manual_seed(R.cfg.seed + R.step)
        print(f'resuming a {ck["args"]["device"]} run on {dev}: new random stream (seed {R.cfg.seed} + step {R.step})')
    print(f'resumed {R.out}/ckpt.pt at step {R.step}')
    return Person(**{k: v.to(dev) for k, v in ck['person'].items()})


def prepare(cfg, R, ck, dev, rank, world):
    """Everything the loop needs, from the command line or the checkpoint -> (S, P)."""
    G, idn, perc = load_networks(cfg, R, ck, dev)
    init = load_init(cfg, R.sha) if cfg.init and not cfg.resume else None  # read once: its people, then its adapters
    if cfg.resume:  # who to forget (and the others) were settled by the run being resumed
        ws_u, R.info, R.retain_photos = ck['ws_u'].to(dev), ck['info'], ck['retain_photos']
        R.retain = {k: v.to(dev) for k, v in ck['retain'].items()}
    else:
        ws_u, face, retain_faces = who_to_forget(cfg, R, G, idn, dev, init)
    people = people_of(R.info)
    for info in people[len(people) - len(cfg.identity):]:  # this run's people (--init's were inverted by its run)
        if 'inversion_id_distance' in info:
            print(f'inverted {len(info["inversion_id_distance"])} photo(s): identity distance '
                  f'{[round(d, 3) for d in info["inversion_id_distance"]]}')
    S = setup(cfg, G, idn, perc, ws_u, rank, world)
    param_report(G)
    if cfg.resume:
        return S, restore(S, R, ck, dev)
    if init:  # the adapters start as the earlier run's
        sd = {'.adapter.'.join(k.split('.', 1)): v for k, v in init['state_dict'].items()}
        if sd.keys() != trainable_state(S.G).keys():
            raise ValueError(f'--init {cfg.init}: its adapters sit on other blocks than this run\'s; pass a run of this generator')
        S.G.synthesis.load_state_dict(sd, strict=False)
        print(f'--init {cfg.init}: its adapters to start from; its {len(people_of(R.info)) - len(cfg.identity)} '
              'forgotten people stay forgotten')
    P = setup_person(S, face, R.retain, retain_faces)  # who the person is (the picture at the end needs it too)
    search = mine(S, cfg.mine_n) if cfg.forget == 'person' or cfg.target == 'surrogate' else None
    if cfg.target == 'surrogate':  # each forgotten latent's target: a sample of someone else
        aim(S, from_rank0(surrogate_targets(S, P, *search)))  # the ranks' embeddings may differ in the last bits
        guide = target_latent(S.ws_u, S.G.mapping.w_avg, cfg.target_d, 'extra', cfg.scale_d)
        far = lambda t: f'{(S.ws_u - t).flatten(1).norm(dim=1).mean():.1f}'  # noqa: E731
        print(f'--target surrogate: {len(S.ws_u)} forgotten latent(s), each sent to a sample of someone else, '
              f'{far(S.ws_t)} away in W+ (GUIDE\'s target: {far(guide)})')
    if cfg.forget == 'person':  # find the person among the original generator's samples
        P.pool, P.targets, P.held = surrogates(S, P, *search)
        print(f'person mode: {len(P.pool)} of {cfg.mine_n} random samples show the person, {len(P.held)} a kept '
              'person; ' + ('each of his is sent to a sample of someone else, theirs held' if len(P.pool) else
                            "nobody beyond the given latents (or no sample of someone unknown to send him to): this run "
                            "trains the paper's objective"))
    return S, P


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


def train_loop(S, P, R, stop):
    """Steps until --iters or a signal (all ranks agree to stop), logging, checkpointing, snapshotting."""
    cfg, loss, t0 = R.cfg, None, time.time()
    person = P if cfg.forget == 'person' and len(P.pool) else None  # None: the paper's method
    if cfg.snapshot_every and R.step == 0:  # the curves start at the untouched generator
        save_snapshot(S, R)
    with open(R.out / 'log.jsonl', 'a') if R.writer else nullcontext() as log, \
            tqdm(total=cfg.iters, initial=R.step, desc=f'unlearn ({cfg.adapter})', dynamic_ncols=True) as pbar:
        while R.step < cfg.iters and not max_over_ranks(stop.sig):
            L = train_step(S, cfg, person)
            loss = L['loss'].detach()
            R.step += 1
            pbar.update(1)
            if R.step % cfg.log_every == 0 or R.step == cfg.iters:
                log_losses(L, R, t0, pbar, log)
            if cfg.snapshot_every and R.step % cfg.snapshot_every == 0:
                save_snapshot(S, R)
            if R.step % cfg.ckpt_every == 0:
                R.wall, t0 = R.wall + time.time() - t0, time.time()
                save_checkpoint(S, P, R, loss)
    R.wall += time.time() - t0
    save_checkpoint(S, P, R, loss)


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


def run(cfg, out, ck, dev, rank=0, world=1, hint=''):
    """The unlearning run: its inputs settled, the loop, the results. Rank 0 writes; hint says how to resume."""
    keep_freed_memory(dev)
    torch.manual_seed(cfg.seed)
    R = claim(cfg, out, rank == 0)
    with Signals(at_once=True) as early:  # before the first step a signal stops at once, and nothing stays behind
        try:
            S, P = prepare(cfg, R, ck, dev, rank, world)
        except (CheckpointError, DataError, ValueError, OSError) as e:
            abandon(R, f'error: {e}')
        except KeyboardInterrupt:
            abandon(R, 'interrupted before training started; nothing was written', 128 + (early.sig or signal.SIGINT))
    with Signals() as stop:  # then it stops the run between steps, never inside one
        try:
            train_loop(S, P, R, stop)
        except (FloatingPointError, OSError) as e:
            kept = f'the last good checkpoint is {out}/ckpt.pt' if (out / 'ckpt.pt').exists() else 'nothing was kept'
            abandon(R, f'error: {e}; stopped, {kept}' + (' (a lower --lr or smaller loss weights?)'
                                                         if isinstance(e, FloatingPointError) else ''))
    sig = max_over_ranks(stop.sig)  # every rank's: any one's signal stops them all
    if sig:  # exit 130 / 143 as a shell does, so `train.py && evaluate.py` stops here
        print(f'interrupted at step {R.step}; continue with: {hint}')
        raise SystemExit(128 + sig)
    with Signals() as stop:  # a signal now waits until both files are written (seconds)
        try:
            if R.writer:
                write_results(S, P, R)
        except OSError as e:
            raise SystemExit(f'error: {e}; the run is checkpointed: {hint} writes the results')
    together()  # the other ranks wait for rank 0's files (a failed write exits rank 0, and torchrun stops the rest)
    if not R.writer:
        return out
    if stop.sig:
        print(f'interrupted while the results were written; they are complete: {out}/adapter.pt, {out}/before_after.png')
        raise SystemExit(128 + stop.sig)
    print(f'done in {R.wall:.0f} s: {out}/adapter.pt, {out}/before_after.png (pairs before | after; rows: the '
          f'forgotten face and {", ".join(R.retain) or "no others"}; random samples; samples that showed the person)')
    return out


if __name__ == '__main__':
    main()
