"""
Make a generator forget a person: LEGATO's Neural-ODE adapters trained with GUIDE's objective.

    python train.py                                       # the built-in generator forgets Obama (CPU)
    python train.py --identity photos/ --ckpt ffhq.pkl --device cuda
    python train.py @config/guide.txt                     # an experiment's flags from a file

Read top to bottom: the settings, the step (one batched forward of the trainable generator over [forgotten, adjacent,
global(, mined, held, kept)] latents, one no-grad forward of the frozen one, one backward; it reads nothing back from
the device), then the run. Person mode's search is person.py; folders, signals and checkpoints lifecycle.py; several
people several.py. Writes to --out: adapter.pt, before_after.png, log.jsonl, ckpt.pt for --resume, photos/ (what evaluation reads) and
with --snapshot_every snapshots/.
"""
import argparse
import copy
import shlex
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import DataError, load_encoder
from ddp import distributed, max_over_ranks, together
from helpers import ROOT, CheckpointError, Defaults, Parser, cli, digest, keep_freed_memory, out_folder, own_line, people_of
from id_net import ID_NETS, load_id_net
from lifecycle import (MAY_CHANGE_FLAGS, Signals, abandon, check, claim, default_out, launcher, log_losses,
                       read_checkpoint, restore, resumed, save_checkpoint, save_snapshot, write_results)
from losses import Rows, Seen, Weights, adjacency_offsets, describe, objective, target_latent
from model import Generator
from ode_adapter import BACKENDS, attach_adapters, param_report
from perceptual import IDFeatureDistance, LPIPSVGG
from person import find, person_latents, setup_person
from several import each, load_init, start_from, who_to_forget

BUILTIN = ROOT / 'assets/generator.pt'  # the built-in generator (pretrain.py, assets/README.md)
ADAPTERS = ('ode', 'residual', 'full')
AMP = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}  # autocast dtypes


def arg(default, help, choices=None):
    """A setting: its default, why it is what it is (the --help text), and its allowed values."""
    return field(default=default, metadata={'help': help, 'choices': choices})


@dataclass
class Config:
    """Every setting of a run; the command line is built from it and checkpoints store it as a plain dict."""
    # who to forget, from what, and who to keep
    identity: list = arg(None, 'who to forget: a photo, a folder of photos (all forgotten together), a latent .pt/.npy, '
                               'or seed:N; given more than once, several people at once (default: assets/faces/obama/'
                               'obama_1.png)')
    ckpt: str = arg(str(BUILTIN), 'generator: official .pkl, rosinality .pt or ours')
    retain: str = arg(str(ROOT / 'assets/faces'), "folder of identity folders: the kept people (each checked not to be "
                                                   "the person; person mode holds them in the loss) ('none': nobody)")
    out: str = arg(None, 'run folder (default runs/<identity>-<adapter>, numbered if taken)')
    resume: bool = arg(False, 'continue the run in --out from its ckpt.pt')
    each: bool = arg(False, 'one run per person (--out/<person>): --identity a folder of person folders, or several')
    init: str = arg(None, "a finished run: start from its adapters, forget --identity too; its people stay forgotten")
    # optimisation
    iters: int = arg(None, "optimisation steps (default: the paper's 1000; on the built-in generator 500 with "
                           "--forget latent and 150 with --forget person, docs/person-mode.md)")
    lr: float = arg(None, "Adam learning rate (default: the official code's 1e-4; 1e-3 with --forget person, "
                          "docs/person-mode.md)")
    # the adapter and its dial
    adapter: str = arg('ode', 'ode: LEGATO; residual: one-step residual adapter x + f(x) (ignores --t_end, --step, '
                              '--solver); full: GUIDE, fine-tune all of synthesis', ADAPTERS)
    hidden: int = arg(None, "adapter hidden width (default: the generator's channel_max / 2: the paper's 256)")
    solver: str = arg('euler', "the paper's Euler; midpoint | rk4, or any torchdiffeq method with --backend torchdiffeq")
    backend: str = arg('native', 'ODE solvers: hand-written, torchdiffeq, or its adjoint (less memory; other gradients)',
                       BACKENDS)
    step: float = arg(0.4, "ODE step size h (the paper's)")
    t_end: float = arg(1.6, "ODE integration time T, the forgetting dial (the paper's)")
    # GUIDE's objective
    target: str = arg(None, "target latent: GUIDE's extrapolation away from w_avg, w_avg, or surrogate: a sample of "
                            "someone else found among --mine_n (person.surrogate_targets, SUGAR's) (default: extra, "
                            "the paper's; surrogate with --forget person, docs/person-mode.md)",
                      ('extra', 'average', 'surrogate'))
    target_d: float = arg(30.0, "extrapolation distance d of the target latent (GUIDE's)")
    scale_d: bool = arg(False, 'scale d by sqrt(W+ size / (14*512)) (per-element distance of FFHQ-256)')
    n_adj: int = arg(2, 'adjacency latents per identity latent (GUIDE)')
    n_forget: int = arg(None, 'forgotten latents per step (default: all); with more, a draw of this many a step')
    alpha_max: float = arg(15.0, "adjacency offsets alpha ~ U(0, alpha_max) (GUIDE's)")
    n_glob: int = arg(2, 'random latents for global preservation (GUIDE)')
    w_pix: float = arg(1e-2, 'pixel MSE weight (local and adjacency)')
    w_perc: float = arg(1.0, 'perceptual weight (local and adjacency)')
    w_id: float = arg(0.1, 'identity weight (local and adjacency)')
    w_adj: float = arg(1.0, 'weight of the adjacency term')
    w_glob: float = arg(None, "weight of the global-preservation term (default: the paper's 1; 4 with --forget person)")
    w_tc: float = arg(1.0, "trajectory consistency weight (LEGATO's)")
    tc_blocks: str = arg(None, 'comma-separated blocks for trajectory consistency, e.g. b128 (default: all)')
    # forgetting the person, not one latent (this project's addition)
    forget: str = arg('person', "person: also forget the person's samples found among random latents, keep the others' "
                                "(this project); latent: the paper's method exactly", ('person', 'latent'))
    mine_n: int = arg(2000, 'random samples searched at the start for the person (and --target surrogate)')
    n_mine: int = arg(4, "the person's samples per step, each sent towards someone else (and as many kept ones held)")
    n_views: int = arg(0, 'person mode: his face inverted anew from this many random starts (every other one mirrored), '
                       'his latents wherever the generator draws him, sent to someone else with the searched ones')
    w_person: float = arg(2.0, "weight of the mined latents' image loss towards their targets (person.surrogates)")
    w_keep: float = arg(1.0, "weight of holding the kept people (their latents, their mined samples) to their images")
    w_pix_person: float = arg(10.0, "pixel MSE weight of person mode's image loss (for w_pix's 0.01): no network judges it")
    # judging networks
    id_net: str = arg('dlib', 'identity network of the loss (dlib works offline)', ID_NETS)
    id_weights: str = arg(None, 'weights file of --id_net (arcface / curricularface)')
    vgg: str = arg(None, 'torchvision VGG16 state dict: use LPIPS-VGG16 as the perceptual distance')
    lpips_lin: str = arg(None, "LPIPS v0.1 linear heads (lpips' weights/v0.1/vgg.pth) for --vgg")
    encoder: str = arg(None, 'an official e4e or pSp checkpoint: photos encoded in one pass, refined by --invert_steps')
    invert_steps: int = arg(None, 'optimisation steps to invert each photo (default 300; 0 with --encoder)')
    # bookkeeping and speed
    log_every: int = arg(50, 'log interval (reads the losses back from the device)')
    ckpt_every: int = arg(250, 'checkpoint interval (also on Ctrl-C / SIGTERM)')
    snapshot_every: int = arg(0, 'keep adapter snapshots every K steps (for collapse curves)')
    seed: int = arg(0, 'seed of the training latents: same seed, same numbers on CPU')
    device: str = arg('cuda' if torch.cuda.is_available() else 'cpu', 'cpu or cuda')
    amp: str = arg('none', 'autocast dtype for the generators (bf16/fp16 on GPUs)', tuple(AMP))
    compile: bool = arg(False, 'torch.compile the synthesis network')


def parser(only_given=False):
    """The command line, one flag per Config field (only_given: parse to just the flags on the command line); @FILE
    reads flags from a file, e.g. an experiment of config/ (one or more a line, # comments)."""
    p = Parser(description=__doc__.split('\n\n')[0], fromfile_prefix_chars='@', formatter_class=Defaults,
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
    p.convert_arg_line_to_args = config_line
    return p


def config_line(line):
    """One line of a config/ file -> its flags: shell words, # starts a comment."""
    return shlex.split(line, comments=True)


def get_args(argv=None):
    a = vars(parser().parse_args(argv))
    cfg = Config(**{**a, 'identity': a['identity'] or [str(ROOT / 'assets/faces/obama/obama_1.png')]})
    person = cfg.forget == 'person'  # the mode's own defaults, where none was given
    if cfg.lr is None:
        cfg.lr = 1e-3 if person else 1e-4
    if cfg.target is None:  # on a generator of many people GUIDE's target draws a smear, a surrogate someone else
        cfg.target = 'surrogate' if person else 'extra'
    if cfg.w_glob is None:
        cfg.w_glob = 4.0 if person else 1.0
    if cfg.iters is None:  # the paper's 1000; on the built-in generator person mode needs 150, the paper's method 500
        cfg.iters = (150 if person else 500) if Path(cfg.ckpt).resolve() == BUILTIN else 1000
    if cfg.invert_steps is None:
        cfg.invert_steps = 0 if cfg.encoder else 300
    return cfg


# -----------------------------------------------------------------------------
# the step

@dataclass
class Step:
    """What every step reads, built once by `setup` (and `aim`)."""
    G: Generator         # trainable: adapters on the frozen generator, or the whole synthesis (--adapter full)
    G_s: Generator       # frozen original: G itself at T = 0, or a frozen copy (full)
    s_kw: dict           # how G_s.synthesis is called: {'T': 0} or {}
    syn: object          # G.synthesis (wrapped in DistributedDataParallel under torchrun, compiled with --compile)
    idn: torch.nn.Module  # identity network
    perc: torch.nn.Module  # perceptual distance
    ws_u: torch.Tensor   # [n_u, L, C] latents of the person to forget
    ws_t: torch.Tensor   # [n_u, L, C] their targets, set by `aim` (GUIDE's in setup; --target surrogate's after the search)
    tgt: Seen            # G_s(ws_t), embedded once by `aim`: it never changes
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
    sync (but fp16's loss scaler). With P (--forget person) the person's mined latents and the kept people join the batch and the objective;
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
# the run

def load_networks(cfg, R, ck, dev):
    """The frozen generator of --ckpt (when resuming, checked to be the run's by its digest, R.sha), the identity
    network, the perceptual distance and --encoder (checked to fit); settles --hidden, checks --tc_blocks."""
    G = Generator.from_checkpoint(cfg.ckpt)
    R.sha = digest(G)
    if cfg.resume and ck.get('generator_sha', R.sha) != R.sha:
        raise CheckpointError(f'{cfg.ckpt}: other weights than the generator this run was trained on; pass that '
                              'generator with --ckpt')
    G = G.to(dev)
    cfg.hidden = cfg.hidden or G.cfg.channel_max // 2  # stored as a number: a resume may name it
    blocks = [f'b{b.resolution}' for b in G.synthesis.blocks()[1:]]  # the adapted blocks
    if not blocks and cfg.adapter != 'full':
        raise CheckpointError(f'{cfg.ckpt}: a 4 px generator has no block after b4 for an adapter; pass one of 8 px or '
                              'more')
    if cfg.tc_blocks and set(cfg.tc_blocks.split(',')) - set(blocks):
        raise ValueError(f'--tc_blocks {cfg.tc_blocks}: this generator has adapters on {",".join(blocks)} only')
    idn = load_id_net(cfg.id_net, cfg.id_weights, G.cfg.framing).to(dev)
    perc = (LPIPSVGG(cfg.vgg, cfg.lpips_lin) if cfg.vgg else IDFeatureDistance(idn)).to(dev)
    enc = load_encoder(cfg.encoder).to(dev) if cfg.encoder and not cfg.resume else None
    if enc is not None:
        enc.check_fits(G)
    print(f'generator {cfg.ckpt} ({G.cfg.img_resolution} px); identity: {cfg.id_net}; perceptual: {perc.name}')
    return G, idn, perc, enc


def prepare(cfg, R, ck, dev, rank, world):
    """Everything the loop needs, from the command line or the checkpoint -> (S, P)."""
    G, idn, perc, enc = load_networks(cfg, R, ck, dev)
    init = load_init(cfg, R.sha) if cfg.init and not cfg.resume else None  # read once: its people, then its adapters
    if cfg.resume:  # who to forget (and the others) were settled by the run being resumed
        ws_u, R.info, R.retain_photos = ck['ws_u'].to(dev), ck['info'], ck['retain_photos']
        R.retain = {k: v.to(dev) for k, v in ck['retain'].items()}
    else:
        ws_u, face, retain_faces = who_to_forget(cfg, R, G, idn, dev, init, enc)
    S = setup(cfg, G, idn, perc, ws_u, rank, world)
    param_report(G)
    if cfg.resume:
        P = restore(S, R, ck, dev)
        if cfg.target == 'surrogate':  # found by the run's search, which a resume does not repeat
            aim(S, ck['ws_t'].to(dev))
        return S, P
    if init:  # the adapters start as the earlier run's
        start_from(S.G, init, cfg, len(people_of(R.info)) - len(cfg.identity))
    P = setup_person(S, face, R.retain, retain_faces)  # who the person is (the picture at the end needs it too)
    ws_t = find(S, P, cfg, face)  # the search: his samples (person mode) and --target surrogate's targets
    if ws_t is not None:
        aim(S, ws_t)
    return S, P


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


def run(cfg, out, ck, dev, rank=0, world=1, hint=''):
    """The unlearning run: its inputs settled, the loop, the results. Rank 0 writes, its run folder its own until the
    run ends, however it ends (lifecycle.claim); hint says how to resume."""
    keep_freed_memory(dev)
    torch.manual_seed(cfg.seed)
    R = claim(cfg, out, rank == 0)
    with R.lock or nullcontext():
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
            print(own_line(f'interrupted at step {R.step}; continue with: {hint}', sys.stdout))
            raise SystemExit(128 + sig)
        with Signals() as stop:  # a signal now waits until both files are written (seconds)
            try:
                if R.writer:
                    write_results(S, P, R)
            except OSError as e:
                raise SystemExit(f'error: {e}; the run is checkpointed: {hint} writes the results')
        together()  # the other ranks wait for rank 0's files (a failed write: rank 0 exits in 10 s, torchrun stops all)
        if not R.writer:
            return out
        if stop.sig:
            print(own_line(f'interrupted while the results were written; they are complete: {out}/adapter.pt, '
                           f'{out}/before_after.png', sys.stdout))
            raise SystemExit(128 + stop.sig)
        print(f'done in {R.wall:.0f} s: {out}/adapter.pt, {out}/before_after.png (pairs before | after; rows: the '
              f'forgotten face and {", ".join(R.retain) or "no others"}; random samples; samples that showed the person)')
        return out


def start(argv, identity=None):
    """The run's settings (a resumed run's own), where it goes, and its checkpoint when resuming; identity: who
    to forget instead of argv's --identity (--each's runs)."""
    cfg, given = get_args(argv), set(vars(parser(only_given=True).parse_args(argv)))
    cfg.identity = identity or cfg.identity
    out, ck = Path(cfg.out) if cfg.out else default_out(cfg), None
    try:
        out_folder(out)
    except ValueError as e:
        raise SystemExit(f'error: {e}') from None
    if cfg.resume:
        ck = read_checkpoint(out)
        cfg = resumed(cfg, given, ck, out / 'ckpt.pt')
    elif out.is_dir() and any(out.iterdir()):
        raise SystemExit(f'error: {out} already exists; pass --resume to continue it or choose another --out' if
                         (out / 'log.jsonl').exists() else f'error: --out {out}: a folder of other files (not a train.py '
                         'run); choose a new folder')
    check(cfg, out)
    return cfg, out, ck


def main(argv=None):
    """One run (under torchrun: data-parallel over the ranks), or with --each one run per person, spread over them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if get_args(argv).each:
        return each(argv, get_args(argv), start, run)
    cfg, out, ck = start(argv)
    rank, world, dev = distributed(cfg.device)
    flag = '--out=' if str(out).startswith('-') else '--out '  # a folder named -x would read as a flag
    return run(cfg, out, ck, dev, rank, world, f'{launcher()} {flag}{shlex.quote(str(out))} --resume')


if __name__ == '__main__':
    cli(main)
