"""
Train the small built-in StyleGAN2 ("baby") on a handful of aligned faces, on a CPU.

Objective: StyleGAN2's non-saturating GAN loss with lazy R1 on a resnet discriminator, differentiable
augmentation of everything D sees (DiffAugment-style: colour, translation/scale/rotation, cutout; needed
with 6 photos), a generator EMA, plus one extra term: each training photo has a fixed anchor latent z_i
and G(z_i) is pulled towards the photo (L1, weight 10, and dlib identity distance, weight 1). With 6
photos a plain GAN only learns face-like blends, and with a weak anchor term (L1 at weight 1) the GAN
gradient swamped it (L1 still 0.40 after 1,000 steps, speckled samples); the anchors make the generator
*know* each person, so every photo can be inverted to a latent that is recognised as that person,
which is what the unlearning demo needs.

    python pretrain.py                       # 64 px, resumes from --out if a checkpoint is there
    python pretrain.py --export assets/baby.pt   # write the EMA generator in our checkpoint format

Resumable: a checkpoint (G, D, G_ema, optimisers, RNG, step) is written atomically every --ckpt_every
steps and on Ctrl-C / SIGTERM.
"""
import argparse
import json
import math
import os
import signal
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import load_faces, save_grid
from id_net import DlibFaceNet
from helpers import atomic_save, load
from model import Generator, GeneratorConfig, bias_act, setup_filter, upfirdn2d

# -----------------------------------------------------------------------------
# the discriminator (StyleGAN2 resnet D, equalised learning rate)


class EqConv(nn.Module):
    """Conv with weights scaled by 1/sqrt(fan_in) at run time; optional blur + stride-2 downsampling."""

    def __init__(self, cin, cout, k, down=False, bias=True, act=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain, self.down, self.act = 1 / math.sqrt(cin * k * k), down, act
        self.register_buffer('f', setup_filter())

    def forward(self, x, gain=1.0):
        w = self.weight * self.gain
        k = w.shape[-1]
        if self.down:  # blur, then a strided conv (3x3) or decimation (1x1), as NVIDIA's conv2d_resample does
            if k > 1:
                x = F.conv2d(upfirdn2d(x, self.f, pad=(2, 2, 2, 2)), w, stride=2)
            else:
                x = F.conv2d(upfirdn2d(x, self.f, pad=(1, 1, 1, 1))[:, :, ::2, ::2], w)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        return bias_act(x, self.bias, lrelu=self.act, gain=gain)


class Discriminator(nn.Module):
    def __init__(self, res, channels):
        super().__init__()
        self.res = res
        ch = lambda r: channels[r]  # noqa: E731
        self.fromrgb = EqConv(3, ch(res), 1)
        self.blocks = nn.ModuleList()
        r = res
        while r > 4:
            self.blocks.append(nn.ModuleDict(dict(
                conv0=EqConv(ch(r), ch(r), 3), conv1=EqConv(ch(r), ch(r // 2), 3, down=True),
                skip=EqConv(ch(r), ch(r // 2), 1, down=True, bias=False, act=False))))
            r //= 2
        self.conv = EqConv(ch(4) + 1, ch(4), 3)
        self.fc = nn.Linear(ch(4) * 16, ch(4))
        self.out = nn.Linear(ch(4), 1)

    def forward(self, img):
        x = self.fromrgb(img)
        for b in self.blocks:
            y = b['skip'](x, gain=math.sqrt(0.5))
            x = b['conv1'](b['conv0'](x), gain=math.sqrt(0.5))
            x = x + y
        N = x.shape[0]
        g = math.gcd(4, N)  # minibatch standard deviation, groups of up to 4
        s = x.reshape(g, N // g, *x.shape[1:]).var(dim=0, unbiased=False).add(1e-8).sqrt().mean(dim=[1, 2, 3])
        x = torch.cat([x, s.repeat(g)[:, None, None, None].expand(N, 1, 4, 4)], dim=1)
        x = self.conv(x).flatten(1)
        return self.out(F.leaky_relu(self.fc(x), 0.2) * math.sqrt(2))


# -----------------------------------------------------------------------------
# differentiable augmentation, the same random ops for reals and fakes


def augment(x, gen):
    """Colour jitter, random flip / translation / scale / rotation (reflect padding), cutout. x: [N,3,H,W]."""
    N, _, H, W = x.shape
    r = lambda *s: torch.rand(*s, generator=gen, device=x.device)  # noqa: E731
    x = x + (r(N, 1, 1, 1) - 0.5) * 0.4                                      # brightness
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (r(N, 1, 1, 1) * 1.0 + 0.5) + m                             # saturation
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - m) * (r(N, 1, 1, 1) * 0.6 + 0.7) + m                             # contrast
    ang = (r(N) - 0.5) * math.radians(20)
    sc = torch.exp((r(N) - 0.5) * 0.25)
    flip = torch.where(r(N) < 0.5, -1.0, 1.0)
    t = (r(N, 2) - 0.5) * 0.25
    theta = torch.stack([torch.stack([flip * sc * torch.cos(ang), -sc * torch.sin(ang), t[:, 0]], 1),
                         torch.stack([flip * sc * torch.sin(ang), sc * torch.cos(ang), t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
    cs = H // 4  # cutout: one square of a quarter side, anywhere
    cy = (r(N) * (H - cs)).long()
    cx = (r(N) * (W - cs)).long()
    yy = torch.arange(H, device=x.device)[None, :, None]
    xx = torch.arange(W, device=x.device)[None, None, :]
    hole = ((yy >= cy[:, None, None]) & (yy < cy[:, None, None] + cs) &
            (xx >= cx[:, None, None]) & (xx < cx[:, None, None] + cs))
    return x * (~hole)[:, None].to(x.dtype)


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data', default='assets/faces', help='folder of identity folders of aligned faces')
    p.add_argument('--out', default='runs/pretrain', help='run folder: checkpoint, samples, log')
    p.add_argument('--res', type=int, default=64, help='image resolution')
    p.add_argument('--zdim', type=int, default=128, help='z and w dimension')
    p.add_argument('--channels', type=int, default=128, help='most channels of any generator layer (channel_max)')
    p.add_argument('--channel_base', type=int, default=4096, help='generator channels at res r: min(base // r, --channels)')
    p.add_argument('--dchannels', type=int, default=32, help='discriminator channels at full resolution (x2 below, capped at --channels)')
    p.add_argument('--mapping', type=int, default=4, help='mapping network depth')
    p.add_argument('--iters', type=int, default=200000, help='total steps (resume continues to this)')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--lr', type=float, default=0.002)
    p.add_argument('--r1', type=float, default=0.5, help='R1 gamma')
    p.add_argument('--r1_every', type=int, default=16)
    p.add_argument('--rec', type=float, default=10.0, help='weight of the anchor-latent L1 reconstruction')
    p.add_argument('--rec_id', type=float, default=1.0, help='weight of the dlib identity distance of the anchor images')
    p.add_argument('--ema_kimg', type=float, default=2.0, help='EMA half-life in thousands of images')
    p.add_argument('--sample_every', type=int, default=1000)
    p.add_argument('--ckpt_every', type=int, default=500)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = default)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--export', default=None, help='only write the EMA generator of --out to this path and exit')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, 'ckpt.pt')
    dev = torch.device(args.device)

    # data: every identity folder under --data, plus mirror images
    people = sorted(d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    faces, names = [], []
    for person in people:
        x, n = load_faces(os.path.join(args.data, person), args.res, align=False)
        faces.append(x)
        names += n
    reals = torch.cat(faces).to(dev)  # [P, 3, res, res]
    P = reals.shape[0]
    idn = DlibFaceNet().to(dev)
    with torch.no_grad():
        emb_real = idn.embed(reals)

    # models
    cfg = GeneratorConfig(img_resolution=args.res, z_dim=args.zdim, w_dim=args.zdim, channel_base=args.channel_base,
                          channel_max=args.channels, mapping_layers=args.mapping, conv_clamp=256)
    torch.manual_seed(args.seed)
    G = Generator(cfg).to(dev).train()
    G_ema = Generator(cfg).to(dev).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    dch, r = {}, args.res
    while r >= 4:
        dch[r] = min(args.dchannels * args.res // r, args.channels)
        r //= 2
    D = Discriminator(args.res, dch).to(dev)
    c = args.r1_every / (args.r1_every + 1)  # lazy regularisation: rescale lr and betas
    optG = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    optD = torch.optim.Adam(D.parameters(), lr=args.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
    anchors = torch.randn(P, cfg.z_dim, generator=torch.Generator().manual_seed(1000 + args.seed)).to(dev)
    fixed_z = torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(2000 + args.seed)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    step, wall = 0, 0.0

    if os.path.exists(ckpt_path):
        ck = load(ckpt_path, 'a pretrain.py checkpoint', map_location=dev)
        if ck['config'] != cfg.__dict__:
            raise SystemExit(f'error: {ckpt_path} was trained with another config; use another --out')
        G.load_state_dict(ck['G']); G_ema.load_state_dict(ck['G_ema']); D.load_state_dict(ck['D'])
        optG.load_state_dict(ck['optG']); optD.load_state_dict(ck['optD'])
        gen.set_state(ck['gen'].cpu())  # generator states are CPU byte tensors, CUDA ones too
        torch.set_rng_state(ck['cpu_rng'])
        step, wall = ck['step'], ck['wall']
        print(f'resumed {ckpt_path} at step {step} ({wall / 3600:.2f} h of training so far)')
    if args.export:
        G_ema.save(args.export, pretrain={'step': step, 'wall_s': round(wall), 'args': vars(args), 'anchors': anchors.cpu(),
                                          'anchor_names': names})
        print(f'exported G_ema at step {step} to {args.export}')
        return

    def save():
        atomic_save({'config': cfg.__dict__, 'G': G.state_dict(), 'G_ema': G_ema.state_dict(), 'D': D.state_dict(),
                     'optG': optG.state_dict(), 'optD': optD.state_dict(), 'gen': gen.get_state(),
                     'cpu_rng': torch.get_rng_state(), 'step': step, 'wall': wall, 'args': vars(args)}, ckpt_path)

    stop = {'now': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    ema_beta = 0.5 ** (args.batch / (args.ema_kimg * 1000))
    log = open(os.path.join(args.out, 'log.jsonl'), 'a')
    pbar = tqdm(total=args.iters, initial=step, desc='pretrain', dynamic_ncols=True)
    t0 = time.time()
    try:
        while step < args.iters and not stop['now']:
            idx = torch.randint(P, (args.batch,), generator=gen, device=dev)
            real = reals[idx]
            # D step: logistic loss, lazy R1 on (augmented) reals
            z = torch.randn(args.batch, cfg.z_dim, generator=gen, device=dev)
            with torch.no_grad():
                fake = G(z, noise_mode='random')
            do_r1 = step % args.r1_every == 0
            real_a = augment(real, gen).requires_grad_(do_r1)
            d_real, d_fake = D(real_a), D(augment(fake, gen))  # separate: minibatch-std groups never mix them
            loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
            if do_r1:
                g, = torch.autograd.grad(d_real.sum(), real_a, create_graph=True)
                loss_d = loss_d + g.square().sum(dim=[1, 2, 3]).mean() * (args.r1 / 2 * args.r1_every)
            optD.zero_grad(set_to_none=True)
            loss_d.backward()
            optD.step()
            # G step: non-saturating loss + anchor reconstruction
            z = torch.randn(args.batch, cfg.z_dim, generator=gen, device=dev)
            ws = G.mapping(z, update_w_avg=True)
            fake = G.synthesis(ws, noise_mode='random')
            loss_g = F.softplus(-D(augment(fake, gen))).mean()
            a = torch.randint(P, (min(4, P),), generator=gen, device=dev)
            rcn = G(anchors[a], noise_mode='const')
            rec = (rcn - reals[a]).abs().mean()
            rec_id = idn.distance(idn.embed(rcn), emb_real[a]).mean()
            optG.zero_grad(set_to_none=True)
            (loss_g + args.rec * rec + args.rec_id * rec_id).backward()
            optG.step()
            # EMA (with NVIDIA's ramp-up: short half-life early on)
            beta = min(ema_beta, 0.5 ** (args.batch / max((step + 1) * args.batch * 0.05, 1e-8)))
            with torch.no_grad():
                for pe, pg in zip(G_ema.parameters(), G.parameters()):
                    pe.lerp_(pg, 1 - beta)
                for be, bg in zip(G_ema.buffers(), G.buffers()):
                    be.copy_(bg)
            step += 1
            pbar.update(1)
            if step % 50 == 0:
                pbar.set_postfix(d=f'{loss_d.item():.3f}', g=f'{loss_g.item():.3f}', rec=f'{rec.item():.3f}',
                                 id=f'{rec_id.item():.3f}')
                log.write(json.dumps({'step': step, 'loss_d': loss_d.item(), 'loss_g': loss_g.item(), 'rec': rec.item(),
                                      'rec_id': rec_id.item(), 'wall': wall + time.time() - t0}) + '\n')
                log.flush()
            if step % args.sample_every == 0 or step == args.iters:
                with torch.no_grad():
                    s = G_ema(fixed_z, psi=0.7, noise_mode='const')
                    rcn = G_ema(anchors, noise_mode='const')
                save_grid(torch.cat([s, reals, rcn]), os.path.join(args.out, f'samples_{step:07d}.png'), nrow=P)
            if step % args.ckpt_every == 0:
                wall += time.time() - t0; t0 = time.time()
                save()
    except KeyboardInterrupt:
        pass
    wall += time.time() - t0
    save()
    pbar.close()
    print(f'saved {ckpt_path} at step {step}')


if __name__ == '__main__':
    main()
