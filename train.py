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
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from data import DataError, invert, load_faces, resolve_identity, save_grid
from id_net import load_id_net
from losses import IDFeatureDistance, LPIPSVGG, adjacency_offsets, image_terms, target_latent, trajectory_consistency
from model import CheckpointError, Generator, atomic_save
from ode_adapter import adapters, attach_adapters, param_report, save_adapters

ROOT = Path(__file__).resolve().parent


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a('--identity', default=str(ROOT / 'assets/faces/obama/obama_1.png'),
      help='who to forget: a photo, a folder of photos (all forgotten together), a latent .pt/.npy, or seed:N')
    a('--ckpt', default=str(ROOT / 'assets/baby.pt'), help='generator: official .pkl, rosinality .pt or ours')
    a('--retain', default=str(ROOT / 'assets/faces'),
      help="folder of identity folders shown as 'others' in the picture and kept in adapter.pt ('none' to skip)")
    a('--out', default=None, help='run folder (default runs/<identity>-<adapter>, numbered if taken)')
    a('--resume', action='store_true', help='continue the run in --out from its ckpt.pt')
    a('--iters', type=int, default=1000)
    a('--lr', type=float, default=1e-4, help='Adam learning rate (trainable parameters only)')
    a('--adapter', default='ode', choices=['ode', 'residual', 'full'],
      help='ode: LEGATO; residual: one-step residual adapter x + f(x); full: GUIDE, fine-tune all of synthesis')
    a('--hidden', type=int, default=256, help='adapter hidden width')
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


def main(argv=None):
    args = get_args(argv)
    out = Path(args.out) if args.out else default_out(args)
    if args.resume:
        if not (out / 'ckpt.pt').exists():
            raise SystemExit(f'error: {out}/ckpt.pt not found; nothing to resume (pass the --out of the run)')
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f'error: {out} already exists; pass --resume to continue it or choose another --out')
    if args.iters < 1 or args.lr <= 0:
        raise SystemExit('error: --iters must be >= 1 and --lr > 0')
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)

    # generator, identity network, perceptual distance
    try:
        G = Generator.from_checkpoint(args.ckpt).to(dev)
        idn = load_id_net(args.id_net, args.id_weights).to(dev)
        perc = (LPIPSVGG(args.vgg, args.lpips_lin) if args.vgg else IDFeatureDistance(idn)).to(dev)
        print(f'generator {args.ckpt} ({G.cfg.img_resolution} px); identity: {args.id_net}; perceptual: {perc.name}')
        # who to forget, and the others to show
        ws_u, info = resolve_identity(args.identity, G, idn, steps=args.invert_steps)
        if 'inversion_id_distance' in info:
            print(f'inverted {len(ws_u)} photo(s): identity distance {[round(d, 3) for d in info["inversion_id_distance"]]}')
        retain = {}
        if args.retain != 'none' and Path(args.retain).is_dir():
            forgotten = Path(args.identity).resolve()
            for person in sorted(d for d in Path(args.retain).iterdir() if d.is_dir()):
                if person.resolve() in (forgotten, forgotten.parent):
                    continue
                faces, _ = load_faces(person, G.cfg.img_resolution, align=False)
                retain[person.name] = faces[:1]
            if retain:
                ws_r, _, _ = invert(G, torch.cat(list(retain.values())), idn, steps=args.invert_steps)
                retain = {k: ws_r[i:i + 1] for i, k in enumerate(retain)}
    except (CheckpointError, DataError, ValueError) as e:
        raise SystemExit(f'error: {e}')
    out.mkdir(parents=True, exist_ok=True)

    # the trainable part and the frozen reference G_s
    if args.adapter == 'full':  # GUIDE: the whole synthesis network trains, G_s is a frozen copy
        G_s = copy.deepcopy(G).requires_grad_(False)
        G.synthesis.requires_grad_(True)
        run_kw = {}
    else:  # adapters on a frozen G; G_s is the same network at T = 0 (exactly the original)
        T, h = (1.0, 1.0) if args.adapter == 'residual' else (args.t_end, args.step)
        attach_adapters(G, args.hidden, T=T, h=h, solver=args.solver, backend=args.backend)
        G_s, run_kw = G, {}
    s_kw = {} if args.adapter == 'full' else {'T': 0}
    trainable = [p for p in G.parameters() if p.requires_grad]
    param_report(G if args.adapter != 'full' else G)
    syn = torch.compile(G.synthesis) if args.compile else G.synthesis
    amp = nullcontext() if args.amp == 'none' else torch.autocast(dev.type, dtype=getattr(torch, {'bf16': 'bfloat16', 'fp16': 'float16'}[args.amp]))
    scaler = torch.amp.GradScaler(dev.type, enabled=args.amp == 'fp16')
    opt = torch.optim.Adam(trainable, lr=args.lr)

    def describe(img):
        """Identity embedding and perceptual features of [-1, 1] images (one dlib pass when both are dlib)."""
        if isinstance(perc, IDFeatureDistance) and perc.net is idn:
            return idn.features(img)
        return idn.embed(img), perc.features(img)

    # targets that never change: computed once
    n_u, L = len(ws_u), G.num_ws
    w_avg = G.mapping.w_avg
    ws_t = target_latent(ws_u, w_avg, args.target_d, args.target, args.scale_d)
    with torch.no_grad(), amp:
        img_t = G_s.synthesis(ws_t, **s_kw).float()
        emb_t, feats_t = describe(img_t)
    blocks = args.tc_blocks.split(',') if args.tc_blocks else None
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    step, wall, loss = 0, 0.0, None
    if args.resume:
        ck = torch.load(out / 'ckpt.pt', map_location=dev, weights_only=True)
        G.synthesis.load_state_dict(ck['synthesis'], strict=False)
        opt.load_state_dict(ck['opt'])
        gen.set_state(ck['gen'].to('cpu') if dev.type == 'cpu' else ck['gen'])
        step, wall = ck['step'], ck['wall']
        ws_u, ws_t = ck['ws_u'].to(dev), ck['ws_t'].to(dev)
        print(f'resumed {out}/ckpt.pt at step {step}')

    def trainable_state():
        return {k: v for k, v in G.synthesis.state_dict().items() if args.adapter == 'full' or '.adapter.' in k}

    def save_ckpt():
        if loss is not None and not torch.isfinite(loss):  # never overwrite a good checkpoint with NaNs
            raise FloatingPointError(f'non-finite loss at step {step}')
        atomic_save({'synthesis': trainable_state(), 'opt': opt.state_dict(), 'gen': gen.get_state(), 'step': step,
                     'wall': wall, 'ws_u': ws_u, 'ws_t': ws_t, 'args': vars(args)}, out / 'ckpt.pt')

    stop = {'now': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    log = open(out / 'log.jsonl', 'a')
    n_adj, n_glob = n_u * args.n_adj, args.n_glob
    pbar = tqdm(total=args.iters, initial=step, desc=f'unlearn ({args.adapter})', dynamic_ncols=True)
    t0 = time.time()
    try:
        while step < args.iters and not stop['now']:
            # this step's random latents: adjacency (towards random w_r) and global preservation
            z = torch.randn(n_adj + n_glob, G.cfg.z_dim, generator=gen, device=dev)
            alpha = torch.rand(n_u, args.n_adj, generator=gen, device=dev) * args.alpha_max
            with torch.no_grad():
                w_r = G.mapping(z)  # [n_adj + n_glob, L, C], psi 1
                delta = adjacency_offsets(ws_u, w_r[:n_adj].view(n_u, args.n_adj, L, -1), alpha).flatten(0, 1)
                w_adj_u = ws_u.repeat_interleave(args.n_adj, 0) + delta
                w_adj_t = ws_t.repeat_interleave(args.n_adj, 0) + delta
                w_glob = w_r[n_adj:]
                with amp:  # frozen generator, only the targets that change
                    img_s = G_s.synthesis(torch.cat([w_adj_t, w_glob]), **s_kw).float()
                    emb_s, feats_s = describe(img_s)
            traj = {}
            with amp:  # one batched forward of the trainable generator
                img = syn(torch.cat([ws_u, w_adj_u, w_glob]), traj=traj, **run_kw).float()
            emb, feats = describe(img)
            sl = lambda xs, a, b: [x[a:b] for x in xs]  # noqa: E731
            img_terms = lambda a, b, t_img, t_feats, t_emb: image_terms(  # noqa: E731
                img[a:b], sl(feats, a, b), emb[a:b], t_img, t_feats, t_emb, perc, idn.distance, args.w_pix, args.w_perc, args.w_id)
            loss_local = img_terms(0, n_u, img_t, feats_t, emb_t).mean()
            loss_adj = img_terms(n_u, n_u + n_adj, img_s[:n_adj], sl(feats_s, 0, n_adj), emb_s[:n_adj]).view(n_u, -1).sum(1).mean()
            loss_glob = perc(sl(feats, n_u + n_adj, None), sl(feats_s, n_adj, None)).sum()
            loss_tc = trajectory_consistency(traj, n_u, blocks).to(dev)
            loss = args.w_local * loss_local + args.w_adj * loss_adj + args.w_glob * loss_glob + args.w_tc * loss_tc
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            pbar.update(1)
            if step % args.log_every == 0 or step == args.iters:  # the only host sync
                rec = {'step': step, 'loss': loss.item(), 'local': loss_local.item(), 'adj': loss_adj.item(),
                       'glob': loss_glob.item(), 'tc': loss_tc.item(), 'wall': round(wall + time.time() - t0, 2)}
                if not all(math.isfinite(v) for v in rec.values()):
                    raise FloatingPointError(f'non-finite loss at step {step}: {rec}')
                pbar.set_postfix({k: f'{v:.3g}' for k, v in rec.items() if k in ('local', 'adj', 'glob', 'tc')})
                log.write(json.dumps(rec) + '\n')
                log.flush()
            if args.snapshot_every and step % args.snapshot_every == 0:
                (out / 'snapshots').mkdir(exist_ok=True)
                atomic_save({'step': step, 'synthesis': trainable_state()}, out / 'snapshots' / f'{step:06d}.pt')
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
    meta = {'identity': {k: v for k, v in info.items() if k != 'photos'}, 'ws_u': ws_u.cpu(), 'ws_t': ws_t.cpu(),
            'retain_ws': {k: v.cpu() for k, v in retain.items()}, 'args': vars(args), 'steps': step, 'wall_s': wall,
            'kind': args.adapter}
    if args.adapter == 'full':
        atomic_save({'generator_config': G.cfg.__dict__, 'synthesis': G.synthesis.state_dict(), **meta}, out / 'adapter.pt')
    else:
        save_adapters(G, out / 'adapter.pt', **meta)
    with torch.no_grad():
        z = torch.randn(6, G.cfg.z_dim, generator=torch.Generator().manual_seed(123)).to(dev)
        rows = [ws_u] + list(retain.values()) + [G.mapping(z, psi=0.7)]
        ws_all = torch.cat(rows)
        before = G_s.synthesis(ws_all, **s_kw)
        after = G.synthesis(ws_all)
    save_grid(torch.stack([before, after], 1).flatten(0, 1), out / 'before_after.png', nrow=2 * min(len(ws_all), 6))
    print(f'done in {wall:.0f} s: {out}/adapter.pt, {out}/before_after.png (pairs: before | after; '
          f'forgotten first, then {", ".join(retain) or "no others"}, then random samples)')
    return out


if __name__ == '__main__':
    main()
