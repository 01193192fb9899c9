"""
Performance of the unlearning step, as ratios measured in one process on one config.

    python bench.py                          # built-in 64 px layout, random weights, CPU
    python bench.py --config ffhq256         # official FFHQ-256 layout (channel_base 32768), random weights
    python bench.py --config ffhq256 --device cuda --amp bf16

Prints: batched step vs a naive step mirroring the official loop (separate batch-1 passes per term, constant
targets recomputed each step); adapted vs plain generator forward (T = 1.6, Euler); hand-written solvers
vs torchdiffeq for the same steps; --adapter ode vs full (time and optimiser memory); inference memory at
T = 1.6 vs T = 400 (it must not grow with T); each with median
time, images/s, achieved FLOP/s against a measured matmul/conv peak. --json writes the numbers.
"""
import copy
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import person
import data
import train
from helpers import CheckpointError, Parser, cli, device, keep_freed_memory, writable, write_json
from id_net import DlibFaceNet
from perceptual import IDFeatureDistance
from losses import describe, image_loss, image_terms, total, trajectory_consistency
from model import Generator, GeneratorConfig
from ode_adapter import MAX_STEPS, adapters
from teacher import FRAMING

CONFIGS = {
    'builtin': GeneratorConfig(img_resolution=64, z_dim=100, w_dim=128, channel_base=4096, channel_max=128,
                               mapping_layers=4, mapping_lr_mul=0.1, conv_clamp=256, framing=FRAMING),
    'ffhq256': GeneratorConfig(img_resolution=256, channel_base=32768),
    'ffhq1024': GeneratorConfig(img_resolution=1024, channel_base=32768),
}


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def timeit(fn, dev, steps, warmup):
    """Median seconds of fn() over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(dev)
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def flops(fn):
    """FLOPs of one call (matmuls and convolutions, forward and backward), counted by PyTorch."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def peak_flops(dev, dtype=torch.float32):
    """Measured peak: the better of a large matmul and a large 3x3 convolution."""
    a = torch.randn(2048, 2048, device=dev, dtype=dtype)
    t = timeit(lambda: a @ a, dev, 5, 2)
    x = torch.randn(8, 256, 64, 64, device=dev, dtype=dtype)
    w = torch.randn(256, 256, 3, 3, device=dev, dtype=dtype)
    tc = timeit(lambda: torch.nn.functional.conv2d(x, w, padding=1), dev, 5, 2)
    return max(2 * 2048 ** 3 / t, 2 * 8 * 256 * 256 * 9 * 64 * 64 / tc)


def naive_step(S, cfg):
    """The official loop's shape: separate batch-1 passes for every term, a separate pass at w_u for the
    trajectory, and the constant target G_s(w_t) recomputed every step; one backward. The same objective as
    train_step (test_legato.py checks the terms agree), returned as its named terms."""
    G, G_s, n_u = S.G, S.G_s, len(S.ws_u)
    w_adj_u, w_adj_t, w_glob = train.sample_latents(S, cfg, S.ws_u, S.ws_t)

    def seen(G_, w, **kw):
        return describe(G_.synthesis(w, **kw), S.idn, S.perc)

    def pair(w, w_t):  # one batch-1 pass of each generator, GUIDE's image loss between them
        with torch.no_grad():
            s = seen(G_s, w_t, **S.s_kw)
        return image_loss(image_terms(seen(G, w), s, S.perc, S.idn.distance), S.wt.pix, S.wt.perc, S.wt.id).sum()

    L = dict(local=0, adj=0, glob=0, tc=0)
    for i in range(n_u):  # each forgotten latent: its trajectory pass, then its local pair
        _, traj = G.synthesis(S.ws_u[i:i + 1], return_traj=True)
        L['tc'] = L['tc'] + trajectory_consistency(traj, 1, S.wt.tc_blocks) / n_u
        L['local'] = L['local'] + pair(S.ws_u[i:i + 1], S.ws_t[i:i + 1]) / n_u
    for j in range(len(w_adj_u)):
        L['adj'] = L['adj'] + pair(w_adj_u[j:j + 1], w_adj_t[j:j + 1]) / n_u
    for j in range(len(w_glob)):
        with torch.no_grad():
            f_s = seen(G_s, w_glob[j:j + 1], **S.s_kw).feats
        L['glob'] = L['glob'] + S.perc(seen(G, w_glob[j:j + 1]).feats, f_s).sum()
    L['loss'] = total(L, S.wt)
    S.opt.zero_grad(set_to_none=True)
    L['loss'].backward()
    S.opt.step()
    return L


def build(G0, idn, args, adapter):
    """A fresh copy of the generator set up for one adapter kind, with a random identity latent."""
    G = copy.deepcopy(G0)
    cfg = train.get_args(['--adapter', adapter, '--amp', args.amp, '--target', 'extra'] +  # the step's cost is the same
                         (['--compile'] if args.compile else []))  # for any target; a surrogate needs the search
    with torch.no_grad():
        ws_u = G.mapping(torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(0)).to(G.mapping.w_avg.device))
    return train.setup(cfg, G, idn, IDFeatureDistance(idn), ws_u), cfg


RSS = """
import sys, torch
from model import Generator
from ode_adapter import MAX_STEPS, adapters, attach_adapters
G = attach_adapters(Generator.from_checkpoint('assets/generator.pt'), 64)
torch.manual_seed(0)
for ad in adapters(G).values():
    torch.nn.init.normal_(ad.f.net[2].weight, 0, 1e-3)
with torch.no_grad():
    ws = G.mapping(torch.randn(16, G.cfg.z_dim), psi=0.7)
    G.synthesis(ws, T=float(sys.argv[1]))  # what sample.py draws for 16 seeds
# the peak of this address space (VmHWM): ru_maxrss would carry the parent's peak over the fork
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)
"""


def inference_mb(T):
    """Peak memory (MB, the process's RSS, PyTorch included) of drawing 16 samples of the built-in generator at dial T,
    in a fresh process of its own, on the CPU whatever --config / --device: inference keeps no solver states (native
    solvers), so it should not grow with T; PyTorch's own footprint is part of both numbers. One thread: with two,
    the same command's peak varied by 140 MB from run to run here (the allocator's per-thread arenas)."""
    out = subprocess.run([sys.executable, '-c', RSS, str(T)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return float(out.stdout.split()[-1])


class Report:
    """The measurements: one printed row each, all kept for --json."""

    def __init__(self, peak, **info):
        self.peak, self.res = peak, {**info, 'peak_tflops': peak / 1e12}

    def row(self, name, t, n_img, fl=None):
        self.res[name] = {'ms': t * 1e3, 'img_per_s': n_img / t, **({'tflops': fl / t / 1e12} if fl else {})}
        util = f', {fl / t / 1e12:.3f} TFLOP/s = {100 * fl / t / self.peak:.0f}% of peak' if fl else ''
        print(f'{name:<28} {t * 1e3:9.1f} ms  {n_img / t:7.2f} img/s{util}')


def step_costs(S, cfg, args, rep, dev):
    """1. the batched step against the naive official-style one; the person-mode step against the paper's -> the batched
    step's seconds."""
    n_img = len(S.ws_u) * (1 + cfg.n_adj) + cfg.n_glob
    t_batched = timeit(lambda: train.train_step(S, cfg), dev, args.steps, args.warmup)
    rep.row('batched step (ode)', t_batched, n_img, flops(lambda: train.train_step(S, cfg)))
    t_naive = timeit(lambda: naive_step(S, cfg), dev, args.steps, args.warmup)
    rep.row('naive official-style step', t_naive, n_img, flops(lambda: naive_step(S, cfg)))
    rep.res['batched_speedup'] = t_naive / t_batched
    print(f'  -> batched is {t_naive / t_batched:.2f}x faster than naive')
    # person mode (--forget person): + n_mine mined latents, n_mine held ones and 3 kept people in both forwards
    with torch.no_grad():
        pool = S.G.mapping(torch.randn(64, S.G.cfg.z_dim, generator=torch.Generator().manual_seed(1)).to(dev))
        refs = S.idn.embed(S.G.synthesis(pool[:8], T=0))
    P = person.Person(refs, torch.arange(8, device=dev) % 4, pool, pool[-3:].clone(), torch.randn_like(pool),
                     pool[:16].clone())
    t_person = timeit(lambda: train.train_step(S, cfg, P), dev, args.steps, args.warmup)
    rows = n_img + 2 * cfg.n_mine + len(P.keep_ws)
    rep.row('person-mode step (ode)', t_person, rows)
    rep.res['person_step_ratio'] = t_person / t_batched
    print(f'  -> person mode costs {t_person / t_batched:.2f}x the paper\'s step')
    equal = copy.copy(cfg)
    equal.n_glob += rows - n_img  # the paper's step with as many batch rows: what person mode costs per row
    t_equal = timeit(lambda: train.train_step(S, equal), dev, args.steps, args.warmup)
    rep.row(f'paper step, {rows} rows', t_equal, rows)
    rep.res['person_row_overhead'] = t_person / t_equal
    print(f'  -> at equal rows ({rows}) person mode costs {t_person / t_equal:.2f}x: its overhead beyond the rows')
    return t_batched


def adapter_overhead(S, args, rep, dev):
    """2. adapted vs plain forward, T = 1.6 Euler (adapters given non-zero weights), in --amp -> the latents."""
    with torch.no_grad(), S.amp:
        for ad in adapters(S.G).values():
            ad.f.net[2].weight.normal_(0, 1e-3)
        ws = S.G.mapping(torch.randn(args.batch, S.G.cfg.z_dim, device=dev))
        t_plain = timeit(lambda: S.G.synthesis(ws, T=0), dev, args.steps, args.warmup)
        t_adapt = timeit(lambda: S.G.synthesis(ws, T=1.6, h=0.4), dev, args.steps, args.warmup)
        rep.row('plain forward', t_plain, args.batch, flops(lambda: S.G.synthesis(ws, T=0)))
        rep.row('adapted forward T=1.6', t_adapt, args.batch, flops(lambda: S.G.synthesis(ws, T=1.6, h=0.4)))
    rep.res['adapter_overhead'] = t_adapt / t_plain
    print(f'  -> adapter overhead {t_adapt / t_plain:.2f}x')
    return ws


def solver_pass(S, ws, solver, backend):
    """Forward and backward through the adapted generator, as train.py runs it."""
    with S.amp:
        img = S.G.synthesis(ws, T=1.6, h=0.4, solver=solver, backend=backend, fused=False)
    img.float().square().mean().backward()


def solver_costs(S, ws, args, rep, dev):
    """3. the hand-written solvers against torchdiffeq's, interleaved so that drift hits both alike."""
    for solver in ('euler', 'rk4'):
        for _ in range(args.warmup):
            solver_pass(S, ws, solver, 'native'), solver_pass(S, ws, solver, 'torchdiffeq')
        ts = [[timeit(lambda b=b: solver_pass(S, ws, solver, b), dev, 1, 0) for b in ('native', 'torchdiffeq')]
              for _ in range(args.steps)]
        t_nat, t_tde = (statistics.median(col) for col in zip(*ts))
        rep.res[f'solver_{solver}'] = {'native_ms': t_nat * 1e3, 'torchdiffeq_ms': t_tde * 1e3, 'ratio': t_tde / t_nat}
        print(f'{solver:>5}: native {t_nat * 1e3:.1f} ms, torchdiffeq {t_tde * 1e3:.1f} ms -> native is '
              f'{t_tde / t_nat:.2f}x the speed')


def adapter_kinds(S, cfg, G0, idn, t_batched, args, rep, dev):
    """4. ode adapters against full fine-tuning: step time, trainable parameters, optimiser state, peak memory."""
    for kind in ['ode'] + ([] if args.skip_full else ['full']):
        Sk, cfg_k = (S, cfg) if kind == 'ode' else build(G0, idn, args, kind)
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        t = t_batched if kind == 'ode' else timeit(lambda: train.train_step(Sk, cfg_k), dev, args.steps, args.warmup)
        train.train_step(Sk, cfg_k)
        n_train = sum(p.numel() for p in Sk.G.parameters() if p.requires_grad)
        opt_mb = sum(v.numel() * v.element_size() for st in Sk.opt.state.values() for v in st.values()
                     if torch.is_tensor(v)) / 2 ** 20
        mem = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == 'cuda' else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rep.res[f'adapter_{kind}'] = {'ms': t * 1e3, 'trainable': n_train, 'optimizer_mb': opt_mb, 'peak_mb': mem}
        print(f'--adapter {kind:<5} {t * 1e3:9.1f} ms/step, {n_train:,} trainable, optimizer state {opt_mb:.1f} MB, '
              f'peak memory {mem:.0f} MB{" (process RSS)" if dev.type == "cpu" else ""}')


def encoder_vs_invert(G, args, rep, dev, invert_steps=300):
    """6. Per photo at 256 px: a pSp / e4e encoder's one pass (data.Encoder, e4e heads, random weights) against
    data.invert's optimisation in G (dlib port), its invert_steps extrapolated from 2 and 6 timed steps."""
    E = data.Encoder('e4e', G.num_ws).to(dev).eval().requires_grad_(False)
    idn = DlibFaceNet().to(dev)
    x = torch.rand(1, 3, 256, 256, device=dev) * 2 - 1
    with torch.no_grad():
        t_enc = timeit(lambda: E(x), dev, args.steps, args.warmup)
    t2, t6 = (timeit(lambda: data.invert(G, x, idn, steps=k, progress=False), dev, 1, 0) for k in (2, 6))
    t_inv = t2 + (t6 - t2) / 4 * (invert_steps - 2)
    rep.res['encoder_vs_invert'] = {'encoder_s': t_enc, 'invert_step_s': (t6 - t2) / 4, 'invert_s': t_inv,
                                    'ratio': t_inv / t_enc}
    print(f'a photo at 256 px: encoder {t_enc:.2f} s, {invert_steps} inversion steps {t_inv:.0f} s -> '
          f'{t_inv / t_enc:.0f}x')


def main():
    p = Parser(description='Benchmark the unlearning step.')
    p.add_argument('--config', default=None, choices=list(CONFIGS), help='a generator layout, random weights (default builtin)')
    p.add_argument('--ckpt', default=None, help='a real generator instead of --config')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', default='none', choices=list(train.AMP))
    p.add_argument('--compile', action='store_true')
    p.add_argument('--steps', type=int, default=5, help='timed steps per measurement (median)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--batch', type=int, default=8, help='batch of the forward-only measurements')
    p.add_argument('--skip_full', action='store_true', help='skip the --adapter full measurement')
    p.add_argument('--skip_solvers', action='store_true', help='skip native vs torchdiffeq (slow at 256 px and up on a CPU)')
    p.add_argument('--big_T', type=float, default=400, help='the large dial setting of the inference-memory measurement')
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args()
    try:
        check(args)
        run(args)
    except (CheckpointError, ValueError, OSError) as e:
        raise SystemExit(f'error: {e}')


def check(args):
    """Every flag before any work (the measurements take minutes): the first problem as a ValueError."""
    device(args.device)
    for k, lo, hi in (('steps', 1, 100), ('warmup', 0, 100), ('batch', 1, 256)):
        if not lo <= getattr(args, k) <= hi:
            raise ValueError(f'--{k} {getattr(args, k)}: must be an integer from {lo} to {hi:,}')
    if not (math.isfinite(args.big_T) and 0 < args.big_T <= 0.4 * MAX_STEPS):
        raise ValueError(f'--big_T {args.big_T}: must be a number > 0 and at most {0.4 * MAX_STEPS:g} (h = 0.4)')
    if args.compile and args.device.startswith('cpu'):
        raise ValueError('--compile: on a CPU the first step compiles for minutes and runs no faster; use --device cuda')
    if args.amp == 'fp16' and args.device.startswith('cpu'):
        raise ValueError('--amp fp16: CPUs have no fast fp16 (a step takes minutes); use --amp bf16 or none here')
    if args.json is not None:
        writable(args.json, '--json', replaces='JSON')
    if args.ckpt and args.config:
        raise ValueError('--ckpt and --config are two generators; give one')
    if args.ckpt and args.json and Path(args.json).resolve() == Path(args.ckpt).resolve():
        raise ValueError(f'--json {args.json}: that is the --ckpt generator; name another file for the numbers')
    args.config = args.config or 'builtin'
    res = Generator.from_checkpoint(args.ckpt).cfg.img_resolution if args.ckpt else CONFIGS[args.config].img_resolution
    if res < 8:  # a refused --ckpt file is one line now, not after the first measurement
        raise ValueError(f'--ckpt {args.ckpt}: a 4 px generator has no block after b4 for an adapter; pass one of '
                         '8 px or more')
    if res > 256 and args.device.startswith('cpu'):  # 4x ffhq256's pixels a step (its 300 inversion steps: 13 min)
        raise ValueError(f'{args.ckpt or "--config " + args.config}: {res} px on a CPU takes hours (each measurement '
                         'times several steps); use --device cuda, or --config ffhq256 for a CPU')


def run(args):
    """The measurements, in order, and the JSON."""
    dev = torch.device(args.device)
    keep_freed_memory(dev)  # as train.py does: naive and batched both run with it
    torch.manual_seed(0)
    G0 = (Generator.from_checkpoint(args.ckpt) if args.ckpt else Generator(CONFIGS[args.config]).eval()).to(dev)
    G0.requires_grad_(False)
    idn = DlibFaceNet().to(dev)
    # the peak in the dtype the step computes in; PyTorch's default TF32 settings, as train.py runs
    rep = Report(peak_flops(dev, train.AMP[args.amp] or torch.float32), config=args.ckpt or args.config,
                 device=str(dev) if dev.type == 'cpu' else torch.cuda.get_device_name(),
                 threads=torch.get_num_threads(), amp=args.amp)
    print(f'{rep.res["config"]} on {rep.res["device"]} ({rep.res["threads"]} threads), amp {args.amp}, '
          f'measured peak {rep.peak / 1e12:.3f} TFLOP/s')
    S, cfg = build(G0, idn, args, 'ode')
    t_batched = step_costs(S, cfg, args, rep, dev)
    ws = adapter_overhead(S, args, rep, dev)
    if not args.skip_solvers:
        solver_costs(S, ws[:2], args, rep, dev)
    adapter_kinds(S, cfg, G0, idn, t_batched, args, rep, dev)
    # 5. inference memory over the dial: 16 samples at T = 1.6 and --big_T (400: 1,000 Euler steps), CPU processes
    mb = {T: inference_mb(T) for T in (1.6, args.big_T)}
    rep.res['inference_mb'] = {'T1.6': mb[1.6], f'T{args.big_T:g}': mb[args.big_T], 'ratio': mb[args.big_T] / mb[1.6]}
    print(f'inference, 16 samples of the built-in generator: {mb[1.6]:.0f} MB at T=1.6, {mb[args.big_T]:.0f} MB at T={args.big_T:g} '
          f'-> {mb[args.big_T] / mb[1.6]:.2f}x')
    encoder_vs_invert(G0, args, rep, dev)
    if args.json:
        write_json(rep.res, args.json)


if __name__ == '__main__':
    cli(main)
