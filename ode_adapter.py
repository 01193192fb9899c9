"""
Neural-ODE adapters: LEGATO's forgetting as a continuous trajectory.

After conv1 of every synthesis block but the first, the feature map x(0) is carried along dx/dt = f(x) to
x(T), and x(T) replaces it (it feeds both ToRGB and the next block). f is a per-pixel bottleneck MLP
whose last layer starts at zero, so at initialisation the adapted generator IS the frozen one. Only the
adapters train. The integration time T is the forgetting dial: T = 0 is the original generator, larger T
forgets harder, with no retraining.

Each solver is a step function (f, t0, t1, x) -> the change of x over [t0, t1]; `fixed_grid` runs one over an
explicit time grid and returns the final state and the states at the grid points. Their arithmetic follows
torchdiffeq's fixed-grid steps ('rk4' is torchdiffeq's rk4, i.e. Kutta's 3/8 rule). backend='torchdiffeq' / 'adjoint' runs the same methods, or
adaptive ones such as 'dopri5', through torchdiffeq.odeint / odeint_adjoint.
"""
import copy
import functools
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from helpers import CheckpointError, atomic_save, busy, digest, in_repo, load, people_of, person_name
from model import Generator


class VectorField(nn.Module):
    """f(x): Conv1x1(C -> hidden) -> LeakyReLU(0.2) -> Conv1x1(hidden -> C). Autonomous: t is ignored. README eq. 1.

    The 1x1 convs are per-pixel Linear layers on a channels-last state [..., C]: the same math as nn.Conv2d,
    faster on CPU (BENCHMARKS.md)."""
    CHUNK = 16384  # pixels per slice on CPU: keeps the [pixels, hidden] activations in cache

    def __init__(self, channels, hidden=256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, channels))
        nn.init.kaiming_uniform_(self.net[0].weight, a=0, mode='fan_in')
        nn.init.zeros_(self.net[0].bias)
        nn.init.zeros_(self.net[2].weight)  # f == 0 at init: the adapter starts as the identity map
        nn.init.zeros_(self.net[2].bias)

    def forward(self, t, x):
        # x: [..., C]. On CPU the pixels go through in slices: the same numbers, faster (BENCHMARKS.md)
        if x.is_cuda or x.numel() <= self.CHUNK * x.shape[-1]:
            return self.net(x)
        return torch.cat([self.net(r) for r in x.reshape(-1, x.shape[-1]).split(self.CHUNK)]).view_as(x)


# -----------------------------------------------------------------------------
# fixed-grid solvers: one step each, (f, t0, t1, x) -> the change of x over [t0, t1]; `fixed_grid` runs them

def euler(f, t0, t1, x):
    """(t1 - t0) f(x): README eq. 2."""
    return (t1 - t0) * f(t0, x)


def midpoint(f, t0, t1, x):
    """The explicit midpoint rule, 2 evaluations (README eq. 2's alternative)."""
    dt = t1 - t0
    half = 0.5 * dt
    return dt * f(t0 + half, x + f(t0, x) * half)


def rk4(f, t0, t1, x):
    """Kutta's 3/8 rule (what torchdiffeq calls 'rk4'), 4 evaluations (README eq. 2's alternative)."""
    dt = t1 - t0
    k1 = f(t0, x)
    k2 = f(t0 + dt * (1 / 3), x + dt * k1 * (1 / 3))
    k3 = f(t0 + dt * (2 / 3), x + dt * (k2 - k1 * (1 / 3)))
    k4 = f(t1, x + dt * (k1 - k2 + k3))
    return (k1 + 3 * (k2 + k3) + k4) * dt * 0.125


def fixed_grid(f, x, grid, step, keep=True):
    """x_{k+1} = x_k + step(f, t_k, t_{k+1}, x_k) over the grid (README eq. 2) -> (x_N, [x_0, ..., x_N]); keep=False keeps only x_0
    besides x_N, so that memory stays flat in T without gradients (inference)."""
    xs = [x]
    for t0, t1 in zip(grid[:-1], grid[1:]):
        x = x + step(f, t0, t1, x)
        xs += [x] if keep else []
    return x, xs


SOLVERS = {'euler': euler, 'midpoint': midpoint, 'rk4': rk4}
BACKENDS = ('native', 'torchdiffeq', 'adjoint')


MAX_STEPS = 10_000  # a dial setting beyond this many solver steps is a typo, not a setting


def time_grid(T, h):
    """[0, h, 2h, ..., T]: T need not be a multiple of h; the last step is then shorter (T is continuous).
    README eq. 2."""
    T, h = float(T), float(h)
    if not (T >= 0 and math.isfinite(T)):
        raise ValueError(f'integration time T must be a finite number >= 0, got {T}')
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f'step size h must be > 0, got {h}')
    if T / h > MAX_STEPS:
        raise ValueError(f'T / h = {T / h:.3g} steps, more than {MAX_STEPS:,}; use a larger step or a smaller T')
    n = math.floor(T / h + 1e-9)  # full steps; the 1e-9 keeps T = 4 * 0.4 at 4 steps despite rounding
    pts = [i * h for i in range(n + 1)]
    if T - pts[-1] > 1e-9 * max(1.0, T):
        pts.append(T)
    else:
        pts[-1] = T
    return pts


def times(spec):
    """--T 0,0.8,1.6 -> [0.0, 0.8, 1.6]: integration times, finite and >= 0."""
    try:
        Ts = [float(t) for t in spec.split(',')]
    except ValueError:
        raise ValueError(f'--T {spec}: write numbers separated by commas, e.g. 0,0.8,1.6') from None
    if not all(math.isfinite(t) and t >= 0 for t in Ts):
        raise ValueError(f'--T {spec}: each integration time must be a finite number >= 0')
    return Ts


@functools.lru_cache(maxsize=64)
def grid_tensor(grid, dtype, device):
    """The grid on the device, made once per (grid, dtype, device): a copy from the host would stall a GPU."""
    return torch.tensor(grid, dtype=dtype, device=device)


def integrate(f, x, T=1.6, h=0.4, solver='euler', backend='native', keep=True):
    """Integrate dx/dt = f(t, x) over [0, T] with step h -> (x(T), states at the grid points). README eq. 2.
    keep=False (native solvers): only x(0) is kept besides x(T), so memory does not grow with T without gradients;
    torchdiffeq returns every grid state whatever keep says."""
    grid = time_grid(T, h)
    if backend not in BACKENDS:
        raise ValueError(f'unknown ODE backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    if backend == 'native':
        if solver not in SOLVERS:
            raise ValueError(f'unknown solver {solver!r}; choose one of {", ".join(SOLVERS)} '
                             f'(adaptive solvers such as dopri5 need backend="torchdiffeq")')
        if len(grid) == 1:
            return x, [x]
        return fixed_grid(f, x, grid_tensor(tuple(grid), x.dtype, x.device), SOLVERS[solver], keep)
    import torchdiffeq
    if len(grid) == 1:
        return x, [x]
    t = grid_tensor(tuple(grid), x.dtype, x.device)
    odeint = torchdiffeq.odeint_adjoint if backend == 'adjoint' else torchdiffeq.odeint
    try:  # fixed-grid methods step exactly on t (torchdiffeq's default grid), adaptive ones output at t
        out = odeint(f, x, t, method=solver)
    except (ValueError, KeyError) as e:
        raise ValueError(f'torchdiffeq cannot run solver {solver!r}: {e}') from None
    return out[-1], list(out.unbind(0))


class ODEAdapter(nn.Module):
    """x -> (x(T), states at the grid points) along the learned vector field (README eq. 1); T, h, solver,
    backend default to the adapter's own and can be overridden at call time."""

    def __init__(self, channels, hidden=256, T=1.6, h=0.4, solver='euler', backend='native'):
        super().__init__()
        self.f = VectorField(channels, hidden)
        self.T, self.h, self.solver, self.backend = T, h, solver, backend

    def forward(self, x, T=None, h=None, solver=None, backend=None, keep=True):
        # x: [N, C, H, W]; states: [N, H, W, C] fp32 (at T = 0 or keep=False just [x(0)]). fp16 blocks: the ODE runs in fp32
        T = self.T if T is None else T
        if T == 0:
            return x, [x]
        dtype = x.dtype
        xc = x.float().permute(0, 2, 3, 1).contiguous()  # [N, H, W, C]: the state the ODE integrates
        h, solver, backend = self.h if h is None else h, solver or self.solver, backend or self.backend
        out, states = integrate(self.f, xc, T, h, solver, backend, keep)
        return out.permute(0, 3, 1, 2).to(dtype), states


# -----------------------------------------------------------------------------
# attaching, counting, saving

def attach_adapters(G, hidden=256, **defaults):
    """Put an ODEAdapter after conv1 of every block except b4; freeze the generator, adapters trainable.
    README eq. 1; train.py passes hidden = channel_max // 2 (256 on the official generators, 64 on the built-in one)."""
    G.requires_grad_(False)
    for block in G.synthesis.blocks()[1:]:
        block.adapter = ODEAdapter(G.cfg.channels(block.resolution), hidden, **defaults).to(
            block.conv1.weight.device)
    return G


def adapters(G):
    """{'b8': adapter, ...} of the blocks that have one."""
    return {f'b{b.resolution}': b.adapter for b in G.synthesis.blocks() if b.adapter is not None}


@torch.no_grad()
def compose(G, state_dicts, Ts):
    """Adapters trained apart (state dicts of save_adapters, one generator), used together, each at its own dial:
    dx/ds = sum_i T_i f_i(x) over s in [0, 1]. Exactly one adapter per block: a sum of bottleneck MLPs is a
    bottleneck MLP with the hidden units of all (LeakyReLU acts unit by unit), its last layer scaled by T_i / max T,
    integrated to max T with the adapter's step. G's adapters are replaced; its dial T then turns them together."""
    top = max(Ts)
    for k, ad in adapters(G).items():
        parts = [{n[len(k) + 1:]: v for n, v in sd.items() if n.startswith(k + '.')} for sd in state_dicts]
        scale = [T / top if top else 0.0 for T in Ts]
        f = VectorField(ad.f.net[0].in_features, sum(p['f.net.0.weight'].shape[0] for p in parts)).to(
            ad.f.net[0].weight.device)
        f.net[0].weight.copy_(torch.cat([p['f.net.0.weight'] for p in parts]))
        f.net[0].bias.copy_(torch.cat([p['f.net.0.bias'] for p in parts]))
        f.net[2].weight.copy_(torch.cat([p['f.net.2.weight'] * c for p, c in zip(parts, scale)], 1))
        f.net[2].bias.copy_(sum(p['f.net.2.bias'] * c for p, c in zip(parts, scale)))
        ad.f, ad.T = f.requires_grad_(False), top
    return G


def check_composable(runs, metas):
    """Refuse runs whose adapters cannot be summed: each must be an --adapter ode run of the first one's generator,
    with its solver, step and backend, and no person forgotten by two of them (metas: their adapter.pt dicts)."""
    first = metas[0]
    for r, m in zip(runs, metas):
        if not isinstance(m, dict) or m.get('kind') != 'ode':
            raise ValueError(f'{r}: not an --adapter ode run (only ODE adapters sum into one field); compose ode runs')
        if not m.get('generator_sha') or m['generator_sha'] != first.get('generator_sha'):
            raise ValueError(f'{r}: trained on another generator than {runs[0]}; compose runs of one generator')
        if any(m['adapter'][k] != first['adapter'][k] for k in ('h', 'solver', 'backend')):
            raise ValueError(f"{r}: its solver or step differs from {runs[0]}'s; compose runs trained with the same "
                             '--solver, --step and --backend')
    names = [person_name(p) for m in metas for p in people_of(m['identity'])]
    if len(set(names)) < len(names):  # his two runs' adapters summed: twice his forgetting, not two people's
        raise ValueError(f'{", ".join(map(str, runs))}: {min(n for n in names if names.count(n) > 1)} is forgotten by two '
                         'of these runs; compose runs of different people')


def trainable_state(G, full=False):
    """What trains, by name: the adapters' weights, or the whole synthesis network (full: --adapter full)."""
    return {k: v for k, v in G.synthesis.state_dict().items() if full or '.adapter.' in k}


def param_report(G):
    """(trainable, frozen) parameter counts, printed as one line."""
    trainable = sum(p.numel() for p in G.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in G.parameters() if not p.requires_grad)
    generator = sum(p.numel() for n, p in G.named_parameters() if '.adapter.' not in n)  # without the adapters
    print(f'parameters: {trainable:,} trainable ({"adapters" if adapters(G) else "the synthesis network"}), {frozen:,} frozen '
          f'({100 * trainable / max(generator, 1):.2f}% of the generator\'s {generator:,})')
    return trainable, frozen


def save_adapters(G, path, **extra):
    """Adapter weights + the generator config they belong to, in a small .pt (atomic write)."""
    ads = adapters(G)
    a = next(iter(ads.values()))
    meta = {'hidden': a.f.net[0].out_features, 'T': a.T, 'h': a.h, 'solver': a.solver, 'backend': a.backend}
    sd = {f'{k}.{n}': v for k, ad in ads.items() for n, v in ad.state_dict().items()}
    atomic_save({'generator_config': asdict(G.cfg), 'adapter': meta, 'state_dict': sd, **extra}, path)


def load_adapters(G, path, ck=None):
    """Attach adapters to G from a file written by save_adapters (or its dict ck, already read from path); refuses a
    file made for another generator."""
    ck = load(path, 'an adapter file written by train.py') if ck is None else ck
    try:
        cfg, meta, sd = ck['generator_config'], ck['adapter'], ck['state_dict']
    except (KeyError, TypeError, IndexError):
        raise CheckpointError(f'{path}: not an adapter file (no generator_config / adapter / state_dict)') from None
    if cfg != asdict(G.cfg):
        diff = sorted(k for k in set(cfg) | set(asdict(G.cfg)) if cfg.get(k) != asdict(G.cfg).get(k))
        raise ValueError(f'{path}: adapters were trained for another generator (differs in {", ".join(diff)}); '
                         f'load the generator they were trained on')
    attach_adapters(G, meta['hidden'], T=meta['T'], h=meta['h'], solver=meta['solver'], backend=meta['backend'])
    for k, ad in adapters(G).items():
        ad.load_state_dict({n[len(k) + 1:]: v for n, v in sd.items() if n.startswith(k + '.')})
    return ck


def run_meta(run):
    """A train.py run folder -> its adapter.pt dict, the photos' paths pointing into the run folder (checked)."""
    run, path = Path(run), Path(run) / 'adapter.pt'
    if run.is_file():
        raise CheckpointError(f'{run}: a file; pass the run folder it is in ({run.parent})')
    if not run.is_dir():
        raise CheckpointError(f'{run}: no such run folder')
    if busy(run):
        raise CheckpointError(f'{run}: a train.py process is still running it; wait for it to finish')
    if not path.exists() and not (run / 'ckpt.pt').exists():
        raise CheckpointError(f'{run}: not a run folder (no adapter.pt, no ckpt.pt); pass a folder train.py wrote')
    if not path.exists():
        raise CheckpointError(f'{run}: no adapter.pt (the run did not finish; resume it with train.py --resume)')
    meta = load(path, 'an adapter file written by train.py')
    if not isinstance(meta, dict) or not isinstance(meta.get('args'), dict) or not isinstance(meta.get('identity'), dict) \
            or not isinstance(meta['args'].get('ckpt'), str) or not isinstance(meta.get('ws_u'), torch.Tensor):
        raise CheckpointError(f'{path}: not an adapter file written by train.py (or one edited since)')
    if meta.get('kind') != 'full':
        try:  # the dial it was trained at, checked now: a bad one is the file's fault, not a flag's
            time_grid(meta['adapter']['T'], meta['adapter']['h'])
            if meta['adapter']['solver'] not in SOLVERS and meta['adapter'].get('backend') == 'native':
                raise ValueError(f"solver {meta['adapter']['solver']!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f'{path}: its adapter settings are not a dial train.py trains ({e})') from None
    weights = meta.get('state_dict') or meta.get('synthesis') or {}
    if any(isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all() for v in weights.values()):
        raise CheckpointError(f'{path}: its trained weights hold NaN or Inf (a run that diverged); train it again')
    photos = [person for person in people_of(meta['identity']) if person.get('kind') == 'photos']
    for person in photos:  # relative: inside the run folder (absolute in runs from before they were)
        person['path'] = str(run / person['path'])
    meta['retain_photos'] = {k: str(run / v) for k, v in (meta.get('retain_photos') or {}).items()}
    for p in [person['path'] for person in photos] + list(meta['retain_photos'].values()):
        if not Path(p).exists():
            raise CheckpointError(f'{run}: photo {p} is missing; a run folder is copied whole (photos/ included)')
    return meta


def load_run(run, device, ckpt=None):
    """A train.py run folder -> (G_s, G_u, kwargs that make G_s the original, the adapter.pt dict: run_meta). The
    generator is the run's own (a path inside the repository is found in any clone) or `ckpt`, which must hold the
    same weights."""
    meta = run_meta(run)
    gen = ckpt or in_repo(meta['args']['ckpt'])
    if not Path(gen).exists():
        raise CheckpointError(f"{run}: the run's generator {gen} is not here; pass it with --ckpt")
    G = Generator.from_checkpoint(gen)
    if meta.get('generator_sha', digest(G)) != digest(G):
        raise CheckpointError(f'{gen}: other weights than the generator {run} was trained on; pass that one with --ckpt')
    try:
        if meta.get('kind') == 'full':  # GUIDE's fine-tune: the whole synthesis network was saved
            G_u = copy.deepcopy(G)
            G_u.synthesis.load_state_dict(meta['synthesis'])
            return G.to(device), G_u.to(device), {}, meta
        load_adapters(G, Path(run) / 'adapter.pt', meta)  # read once, by run_meta
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f'{run}/adapter.pt: its weights do not fit this generator '
                              f'({str(e).splitlines()[-1].strip()[:150]})') from None
    return G.to(device), G.to(device), {'T': 0}, meta


if __name__ == '__main__':
    from model import GeneratorConfig
    print('official FFHQ-256 layout (channel_base 32768):')
    G = attach_adapters(Generator(GeneratorConfig(img_resolution=256, channel_base=32768)))
    param_report(G)
