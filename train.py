"""
Make a generator forget one identity: LEGATO's Neural-ODE adapters trained with GUIDE's objective.

    python train.py                                       # built-in baby generator, forgets Obama (CPU)
    python train.py --identity photos/ --ckpt ffhq.pkl --device cuda
    python train.py --adapter full                        # GUIDE's baseline: fine-tune the whole synthesis

Each step is fused: one batched forward of the trainable generator over [identity, adjacency, global]
latents, one no-grad forward of the frozen generator over the targets that change (those that never
change are computed once), one backward; the host syncs only at the log interval.
Writes to --out: adapter.pt, before_after.png, log.jsonl, and ckpt.pt for --resume.
"""
import argparse
import copy
import ctypes
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

from data import DataError, invert, list_photos, load_faces, resolve_identity, save_grid
from id_net import load_id_net
from losses import IDFeatureDistance, LPIPSVGG, adjacency_offsets, image_terms, target_latent, trajectory_consistency
from model import CheckpointError, Generator, atomic_save
from ode_adapter import attach_adapters, param_report, save_adapters

ROOT = Path(__file__).resolve().parent
BABY = ROOT / 'assets/baby.pt'  # the built-in generator


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a('--identity', default=str(ROOT / 'assets/faces/obama/obama_1.png'),
      help='who to forget: a photo, a folder of photos (all forgotten together), a latent .pt/.npy, or seed:N')
    a('--ckpt', default=str(BABY), help='generator: official .pkl, rosinality .pt or ours')
    a('--retain', default=str(ROOT / 'assets/faces'),
      help="folder of identity folders shown as 'others' in the picture and kept in adapter.pt ('none' to skip)")
    a('--out', default=None, help='run folder (default runs/<identity>-<adapter>, numbered if taken)')
    a('--resume', action='store_true', help='continue the run in --out from its ckpt.pt')
    a('--iters', type=int, default=None,
      help="optimisation steps (default: the paper's 1000; 500 on the built-in baby, which has forgotten by step 250 "
           "and gains nothing after; see the README's collapse curves)")
    a('--lr', type=float, default=1e-4, help='Adam learning rate (trainable parameters only)')
    a('--adapter', default='ode', choices=['ode', 'residual', 'full'],
      help='ode: LEGATO; residual: one-step residual adapter x + f(x); full: GUIDE, fine-tune all of synthesis')
    a('--hidden', type=int, default=None,
      help="adapter hidden width (default: the generator's channel_max / 2, i.e. the paper's 256 for the official "
           "512-channel StyleGAN2s and 64 for the 128-channel baby)")
    a('--solver', default='euler', help='euler | midpoint | rk4, or any torchdiffeq method with --backend torchdiffeq')
    a('--backend', default='native', choices=['native', 'torchdiffeq', 'adjoint'], help='ODE solver backend')
    a('--step', type=float, default=0.4, help='ODE step size h')
    a('--t_end', type=float, default=1.6, help='ODE integration time T (the forgetting dial)')
    a('--target', default='extra', choices=['extra', 'average'], help="target latent: GUIDE's extrapolation or w_avg")
    a('--target_d', type=float, default=30.0, help='extrapolation distance d of the target latent')
    a('--scale_d', action='store_true', help='scale d by sqrt(W+ size / (14*512)) (per-element distance of FFHQ-256)')
    a('--n_adj', type=int, default=2, help='adjacency latents per identity latent')
    a('--alpha_max', type=float, default=15.0, help='adjacency offsets alpha ~ U(0, alpha_max)')
    a('--n_glob', type=int, default=2, help='random latents for global preservation')
    a('--w_pix', type=float, default=1e-2, help='pixel MSE weight (local and adjacency)')
    a('--w_perc', type=float, default=1.0, help='perceptual weight (local and adjacency)')
    a('--w_id', type=float, default=0.1, help='identity weight (local and adjacency)')
    a('--w_local', type=float, default=1.0)
    a('--w_adj', type=float, default=1.0)
    a('--w_glob', type=float, default=1.0)
    a('--w_tc', type=float, default=1.0, help='trajectory consistency weight')
    a('--tc_blocks', default=None, help='comma-separated blocks for trajectory consistency, e.g. b128 (default: all)')
    a('--id_net', default='dlib', choices=['dlib', 'arcface', 'curricularface'], help='identity network of the loss')
    a('--id_weights', default=None, help='weights file of --id_net (arcface / curricularface)')
    a('--vgg', default=None, help='torchvision VGG16 state dict: use LPIPS-VGG16 as the perceptual distance')
    a('--lpips_lin', default=None, help="LPIPS v0.1 linear heads (lpips' weights/v0.1/vgg.pth) for --vgg")
    a('--invert_steps', type=int, default=300, help='optimisation steps to invert each photo')
    a('--log_every', type=int, default=50)
    a('--ckpt_every', type=int, default=250, help='checkpoint interval (also on Ctrl-C / SIGTERM)')
    a('--snapshot_every', type=int, default=0, help='keep adapter snapshots every K steps (for collapse curves)')
    a('--seed', type=int, default=0)
    a('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a('--amp', default='none', choices=['none', 'bf16', 'fp16'], help='autocast dtype for the generators')
    a('--compile', action='store_true', help='torch.compile the synthesis network')
    return p.parse_args(argv)


def default_out(args):
    stem = 'seed' + args.identity[5:] if args.identity.startswith('seed:') else Path(args.identity).stem
    base = ROOT / 'runs' / f'{stem}-{args.adapter}'
    out, i = base, 1
    while out.exists() and any(out.iterdir()):
        i += 1
        out = Path(f'{base}-{i}')
    return out


def keep_freed_memory(device):
    """On CPU, let malloc reuse freed tensors. glibc gives every block over 32 MB back to the OS on free and
    page-faults it in again on the next allocation: at 256 px that was 45% of a step (BENCHMARKS.md)."""
    if torch.device(device).type != 'cpu' or sys.platform != 'linux':
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:  # not glibc: leave its allocator alone
        return
    libc.mallopt(-4, 0)   # M_MMAP_MAX = 0: large blocks come from the heap, not from fresh mmaps
    libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD = -1: never hand the heap's free top back to the OS


def prepare(args, G, idn, perc, ws_u):
    """Everything a step needs: the trainable part, the frozen G_s, optimiser, targets computed once."""
    S = SimpleNamespace(args=args, G=G, idn=idn, perc=perc, ws_u=ws_u, n_u=len(ws_u), n_adj=len(ws_u) * args.n_adj)
    dev = G.mapping.w_avg.device
    if args.adapter == 'full':  # GUIDE: the whole synthesis network trains, G_s is a frozen copy
        S.G_s = copy.deepcopy(G).requires_grad_(False)
        G.synthesis.requires_grad_(True)
        S.s_kw = {}
    else:  # adapters on a frozen G; G_s is the same network at T = 0 (exactly the original)
        T, h = (1.0, 1.0) if args.adapter == 'residual' else (args.t_end, args.step)
        attach_adapters(G, args.hidden or G.cfg.channel_max // 2, T=T, h=h, solver=args.solver, backend=args.backend)
        S.G_s, S.s_kw = G, {'T': 0}
    S.syn = torch.compile(G.synthesis) if args.compile else G.synthesis
    S.amp = nullcontext() if args.amp == 'none' else \
        torch.autocast(dev.type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp])
    S.scaler = torch.amp.GradScaler(dev.type, enabled=args.amp == 'fp16')
    S.opt = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=args.lr)
    S.gen = torch.Generator(device=dev).manual_seed(args.seed)
    S.blocks = args.tc_blocks.split(',') if args.tc_blocks else None
    S.ws_t = target_latent(ws_u, G.mapping.w_avg, args.target_d, args.target, args.scale_d)
    set_targets(S)
    return S


def set_targets(S):
    """The constant target G_s(w_t) and its embedding/features: computed once, not every step."""
    with torch.no_grad(), S.amp:
        S.img_t = S.G_s.synthesis(S.ws_t, fused=False, **S.s_kw).float()
        S.emb_t, S.feats_t = describe(S, S.img_t)


def describe(S, img):
    """Identity embedding and perceptual features of [-1, 1] images (one dlib pass when both are dlib)."""
    if isinstance(S.perc, IDFeatureDistance) and S.perc.net is S.idn:
        return S.idn.features(img)
    return S.idn.embed(img), S.perc.features(img)


def sample_latents(S):
    """This step's random latents: adjacency pairs (w_u + delta -> w_t + delta) and global ones."""
    a, G = S.args, S.G
    dev = G.mapping.w_avg.device
    z = torch.randn(S.n_adj + a.n_glob, G.cfg.z_dim, generator=S.gen, device=dev)
    alpha = torch.rand(S.n_u, a.n_adj, generator=S.gen, device=dev) * a.alpha_max
    with torch.no_grad():
        w_r = G.mapping(z)  # [n_adj + n_glob, L, C], psi 1
        delta = adjacency_offsets(S.ws_u, w_r[:S.n_adj].view(S.n_u, a.n_adj, *w_r.shape[1:]), alpha).flatten(0, 1)
        return (S.ws_u.repeat_interleave(a.n_adj, 0) + delta, S.ws_t.repeat_interleave(a.n_adj, 0) + delta,
                w_r[S.n_adj:])


def fused_step(S):
    """One optimisation step: one batched G_u forward, one no-grad G_s forward, one backward. No host sync."""
    a, n_u, n_adj = S.args, S.n_u, S.n_adj
    w_adj_u, w_adj_t, w_glob = sample_latents(S)
    with torch.no_grad(), S.amp:  # frozen generator, only the targets that change
        img_s = S.G_s.synthesis(torch.cat([w_adj_t, w_glob]), fused=False, **S.s_kw).float()
        emb_s, feats_s = describe(S, img_s)
    traj = {}
    with S.amp:  # the trainable generator over [identity, adjacency, global]
        img = S.syn(torch.cat([S.ws_u, w_adj_u, w_glob]), fused=False, traj=traj).float()
    emb, feats = describe(S, img)
    sl = lambda xs, i, j: [x[i:j] for x in xs]  # noqa: E731

    def terms(i, j, t_img, t_feats, t_emb):
        return image_terms(img[i:j], sl(feats, i, j), emb[i:j], t_img, t_feats, t_emb, S.perc, S.idn.distance,
                           a.w_pix, a.w_perc, a.w_id)
    L = dict(local=terms(0, n_u, S.img_t, S.feats_t, S.emb_t).mean(),
             adj=terms(n_u, n_u + n_adj, img_s[:n_adj], sl(feats_s, 0, n_adj), emb_s[:n_adj]).view(n_u, -1).sum(1).mean(),
             glob=S.perc(sl(feats, n_u + n_adj, None), sl(feats_s, n_adj, None)).sum(),
             tc=trajectory_consistency(traj, n_u, S.blocks).to(img.device))
    L['loss'] = a.w_local * L['local'] + a.w_adj * L['adj'] + a.w_glob * L['glob'] + a.w_tc * L['tc']
    S.opt.zero_grad(set_to_none=True)
    S.scaler.scale(L['loss']).backward()
    S.scaler.step(S.opt)
    S.scaler.update()
    return L


def invert_others(args, G, idn):
    """{person: W+ latent}, {person: photo}: the first photo of every other identity folder under --retain."""
    if args.retain == 'none' or not Path(args.retain).is_dir():
        return {}, {}
    forgotten = Path(args.identity).resolve()
    photos = {p.name: str(list_photos(p)[0]) for p in sorted(Path(args.retain).iterdir())
              if p.is_dir() and p.resolve() not in (forgotten, forgotten.parent)}
    if not photos:
        return {}, {}
    faces = torch.cat([load_faces(f, G.cfg.img_resolution, align=False)[0] for f in photos.values()])
    ws, _, _ = invert(G, faces, idn, steps=args.invert_steps)
    return {k: ws[i:i + 1] for i, k in enumerate(photos)}, photos


def main(argv=None):
    args = get_args(argv)
    out = Path(args.out) if args.out else default_out(args)
    if args.resume:
        if not (out / 'ckpt.pt').exists():
            raise SystemExit(f'error: {out}/ckpt.pt not found; nothing to resume (pass the --out of the run)')
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f'error: {out} already exists; pass --resume to continue it or choose another --out')
    if args.iters is None:
        args.iters = 500 if Path(args.ckpt).resolve() == BABY else 1000
    if args.iters < 1 or args.lr <= 0:
        raise SystemExit('error: --iters must be >= 1 and --lr > 0')
    dev = torch.device(args.device)
    keep_freed_memory(dev)
    torch.manual_seed(args.seed)

    # generator, identity network, perceptual distance
    try:
        G = Generator.from_checkpoint(args.ckpt).to(dev)
        idn = load_id_net(args.id_net, args.id_weights).to(dev)
        perc = (LPIPSVGG(args.vgg, args.lpips_lin) if args.vgg else IDFeatureDistance(idn)).to(dev)
        print(f'generator {args.ckpt} ({G.cfg.img_resolution} px); identity: {args.id_net}; perceptual: {perc.name}')
        if args.resume:  # who to forget (and the others) were settled by the run being resumed
            ck = torch.load(out / 'ckpt.pt', map_location=dev, weights_only=True)
            ws_u, info, retain = ck['ws_u'].to(dev), ck['info'], {k: v.to(dev) for k, v in ck['retain'].items()}
            retain_photos = ck['retain_photos']
        else:
            ws_u, info = resolve_identity(args.identity, G, idn, steps=args.invert_steps)
            info.pop('photos', None)
            retain, retain_photos = invert_others(args, G, idn)
        if 'inversion_id_distance' in info:
            print(f'inverted {len(ws_u)} photo(s): identity distance {[round(d, 3) for d in info["inversion_id_distance"]]}')
    except (CheckpointError, DataError, ValueError) as e:
        raise SystemExit(f'error: {e}')
    out.mkdir(parents=True, exist_ok=True)

    S = prepare(args, G, idn, perc, ws_u)
    param_report(G)
    step, wall, loss = 0, 0.0, None
    if args.resume:  # the run goes on exactly as it would have
        G.synthesis.load_state_dict(ck['synthesis'], strict=False)
        S.opt.load_state_dict(ck['opt'])
        S.gen.set_state(ck['gen'].cpu())  # generator states are CPU byte tensors, CUDA ones too
        step, wall = ck['step'], ck['wall']
        print(f'resumed {out}/ckpt.pt at step {step}')

    def trainable_state():
        return {k: v for k, v in G.synthesis.state_dict().items() if args.adapter == 'full' or '.adapter.' in k}

    def save_ckpt():
        if loss is not None and not torch.isfinite(loss):  # never overwrite a good checkpoint with NaNs
            raise FloatingPointError(f'non-finite loss at step {step}')
        atomic_save({'synthesis': trainable_state(), 'opt': S.opt.state_dict(), 'gen': S.gen.get_state(), 'step': step,
                     'wall': wall, 'ws_u': S.ws_u, 'info': info, 'retain': retain, 'retain_photos': retain_photos,
                     'args': vars(args)}, out / 'ckpt.pt')

    def snapshot():
        (out / 'snapshots').mkdir(exist_ok=True)
        atomic_save({'step': step, 'synthesis': trainable_state()}, out / 'snapshots' / f'{step:06d}.pt')

    if args.snapshot_every and step == 0:  # the curves start at the untouched generator
        snapshot()
    stop = {'now': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    log = open(out / 'log.jsonl', 'a')
    pbar = tqdm(total=args.iters, initial=step, desc=f'unlearn ({args.adapter})', dynamic_ncols=True)
    t0 = time.time()
    try:
        while step < args.iters and not stop['now']:
            L = fused_step(S)
            loss = L['loss'].detach()
            step += 1
            pbar.update(1)
            if step % args.log_every == 0 or step == args.iters:  # the only host sync
                rec = {'step': step, **{k: v.item() for k, v in L.items()}, 'wall': round(wall + time.time() - t0, 2)}
                if not all(math.isfinite(v) for v in rec.values()):
                    raise FloatingPointError(f'non-finite loss at step {step}: {rec}')
                pbar.set_postfix({k: f'{v:.3g}' for k, v in rec.items() if k in ('local', 'adj', 'glob', 'tc')})
                log.write(json.dumps(rec) + '\n')
                log.flush()
            if args.snapshot_every and step % args.snapshot_every == 0:
                snapshot()
            if step % args.ckpt_every == 0:
                wall += time.time() - t0
                t0 = time.time()
                save_ckpt()
    except KeyboardInterrupt:
        stop['now'] = True
    except FloatingPointError as e:
        pbar.close()
        raise SystemExit(f'error: {e}; stopped, the last good checkpoint is {out}/ckpt.pt (lower --lr?)')
    pbar.close()
    wall += time.time() - t0
    try:
        save_ckpt()
    except FloatingPointError as e:
        raise SystemExit(f'error: {e}; stopped, the last good checkpoint is {out}/ckpt.pt (lower --lr?)')
    if stop['now']:
        print(f'interrupted at step {step}; continue with: python train.py --out {out} --resume')
        return out

    # results: the adapters (or the fine-tuned synthesis), a before/after picture
    meta = {'identity': info, 'ws_u': S.ws_u.cpu(), 'ws_t': S.ws_t.cpu(),
            'retain_ws': {k: v.cpu() for k, v in retain.items()}, 'retain_photos': retain_photos, 'args': vars(args),
            'steps': step, 'wall_s': wall, 'kind': args.adapter}
    if args.adapter == 'full':
        atomic_save({'generator_config': G.cfg.__dict__, 'synthesis': G.synthesis.state_dict(), **meta}, out / 'adapter.pt')
    else:
        save_adapters(G, out / 'adapter.pt', **meta)
    with torch.no_grad():
        z = torch.randn(6, G.cfg.z_dim, generator=torch.Generator().manual_seed(123)).to(dev)
        rows = [S.ws_u] + list(retain.values()) + [G.mapping(z, psi=0.7)]
        ws_all = torch.cat(rows)
        before = S.G_s.synthesis(ws_all, **S.s_kw)
        after = G.synthesis(ws_all)
    save_grid(torch.stack([before, after], 1).flatten(0, 1), out / 'before_after.png', nrow=2 * min(len(ws_all), 6))
    print(f'done in {wall:.0f} s: {out}/adapter.pt, {out}/before_after.png (pairs: before | after; '
          f'forgotten first, then {", ".join(retain) or "no others"}, then random samples)')
    return out


if __name__ == '__main__':
    main()
