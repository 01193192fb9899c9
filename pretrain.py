"""
Train the small built-in StyleGAN2 ("baby") on a handful of aligned faces: on a CPU (the assets' generator took 3.3 h
on 2 cores, assets/README.md), or on a GPU when there is one (--device; its default is cuda when present).

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
from dataclasses import dataclass

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


def parser():
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
    return p


def load_reals(args, dev):
    """Every identity folder under --data -> (images [P, 3, res, res], their names)."""
    people = sorted(d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    faces, names = [], []
    for person in people:
        x, n = load_faces(os.path.join(args.data, person), args.res, align=False)
        faces.append(x)
        names += n
    return torch.cat(faces).to(dev), names


@dataclass
class GAN:
    """The training state: the networks, their optimisers, the fixed latents (made from --seed), the random stream of
    the draws, the step. save() writes it with the config, the arguments and torch's CPU random state."""
    cfg: GeneratorConfig
    G: Generator
    G_ema: Generator
    D: Discriminator
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer
    anchors: torch.Tensor  # [P, z_dim] each photo's fixed latent
    fixed_z: torch.Tensor  # [16, z_dim] the sample grids' latents
    gen: torch.Generator   # the training draws
    step: int = 0
    wall: float = 0.0


def build(args, P, dev):
    """The GAN at step 0, or resumed from --out's checkpoint."""
    cfg = GeneratorConfig(img_resolution=args.res, z_dim=args.zdim, w_dim=args.zdim, channel_base=args.channel_base,
                          channel_max=args.channels, mapping_layers=args.mapping, conv_clamp=256)
    torch.manual_seed(args.seed)
    G = Generator(cfg).to(dev).train()
    G_ema = Generator(cfg).to(dev).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    dch = {args.res // 2 ** i: min(args.dchannels * 2 ** i, args.channels) for i in range(int(math.log2(args.res)) - 1)}
    D = Discriminator(args.res, dch).to(dev)
    c = args.r1_every / (args.r1_every + 1)  # lazy regularisation: rescale lr and betas
    n = GAN(cfg, G, G_ema, D, torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8),
            torch.optim.Adam(D.parameters(), lr=args.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8),
            torch.randn(P, cfg.z_dim, generator=torch.Generator().manual_seed(1000 + args.seed)).to(dev),
            torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(2000 + args.seed)).to(dev),
            torch.Generator(device=dev).manual_seed(args.seed))
    path = os.path.join(args.out, 'ckpt.pt')
    if os.path.exists(path):
        ck = load(path, 'a pretrain.py checkpoint', map_location=dev)
        if ck['config'] != cfg.__dict__:
            raise SystemExit(f'error: {path} was trained with another config; use another --out')
        for k in ('G', 'G_ema', 'D', 'optG', 'optD'):
            getattr(n, k).load_state_dict(ck[k])
        n.gen.set_state(ck['gen'].cpu())  # generator states are CPU byte tensors, CUDA ones too
        torch.set_rng_state(ck['cpu_rng'])
        n.step, n.wall = ck['step'], ck['wall']
        print(f'resumed {path} at step {n.step} ({n.wall / 3600:.2f} h of training so far)')
    return n


def save(n, args):
    atomic_save({'config': n.cfg.__dict__, 'G': n.G.state_dict(), 'G_ema': n.G_ema.state_dict(), 'D': n.D.state_dict(),
                 'optG': n.optG.state_dict(), 'optD': n.optD.state_dict(), 'gen': n.gen.get_state(),
                 'cpu_rng': torch.get_rng_state(), 'step': n.step, 'wall': n.wall, 'args': vars(args)},
                os.path.join(args.out, 'ckpt.pt'))


def d_step(n, real, args):
    """Logistic loss on real and generated images (augmented), lazy R1 on the reals -> D's loss."""
    z = torch.randn(args.batch, n.cfg.z_dim, generator=n.gen, device=real.device)
    with torch.no_grad():
        fake = n.G(z, noise_mode='random')
    do_r1 = n.step % args.r1_every == 0
    real_a = augment(real, n.gen).requires_grad_(do_r1)
    d_real, d_fake = n.D(real_a), n.D(augment(fake, n.gen))  # separate: minibatch-std groups never mix them
    loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
    if do_r1:
        g, = torch.autograd.grad(d_real.sum(), real_a, create_graph=True)
        loss = loss + g.square().sum(dim=[1, 2, 3]).mean() * (args.r1 / 2 * args.r1_every)
    n.optD.zero_grad(set_to_none=True)
    loss.backward()
    n.optD.step()
    return loss


def g_step(n, reals, emb_real, idn, args):
    """Non-saturating loss, plus the anchors: up to 4 photos' latents pulled to their photos -> (loss, L1, identity)."""
    z = torch.randn(args.batch, n.cfg.z_dim, generator=n.gen, device=reals.device)
    ws = n.G.mapping(z, update_w_avg=True)
    loss = F.softplus(-n.D(augment(n.G.synthesis(ws, noise_mode='random'), n.gen))).mean()
    a = torch.randint(len(reals), (min(4, len(reals)),), generator=n.gen, device=reals.device)
    rcn = n.G(n.anchors[a], noise_mode='const')
    rec = (rcn - reals[a]).abs().mean()
    rec_id = idn.distance(idn.embed(rcn), emb_real[a]).mean()
    n.optG.zero_grad(set_to_none=True)
    (loss + args.rec * rec + args.rec_id * rec_id).backward()
    n.optG.step()
    return loss, rec, rec_id


@torch.no_grad()
def ema(n, args):
    """G_ema towards G, with NVIDIA's ramp-up (a short half-life early on); buffers copied."""
    beta = min(0.5 ** (args.batch / (args.ema_kimg * 1000)), 0.5 ** (args.batch / max((n.step + 1) * args.batch * 0.05, 1e-8)))
    for pe, pg in zip(n.G_ema.parameters(), n.G.parameters()):
        pe.lerp_(pg, 1 - beta)
    for be, bg in zip(n.G_ema.buffers(), n.G.buffers()):
        be.copy_(bg)


def main(argv=None):
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device(args.device)
    reals, names = load_reals(args, dev)
    idn = DlibFaceNet().to(dev)
    with torch.no_grad():
        emb_real = idn.embed(reals)
    n = build(args, len(reals), dev)
    if args.export:
        n.G_ema.save(args.export, pretrain={'step': n.step, 'wall_s': round(n.wall), 'args': vars(args),
                                            'anchors': n.anchors.cpu(), 'anchor_names': names})
        print(f'exported G_ema at step {n.step} to {args.export}')
        return
    stopped = []  # SIGTERM stops at the next step (Ctrl-C at once); either way the checkpoint is written
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    t0 = time.time()
    with open(os.path.join(args.out, 'log.jsonl'), 'a') as log, \
            tqdm(total=args.iters, initial=n.step, desc='pretrain', dynamic_ncols=True) as pbar:
        try:
            while n.step < args.iters and not stopped:
                loss_d = d_step(n, reals[torch.randint(len(reals), (args.batch,), generator=n.gen, device=dev)], args)
                loss_g, rec, rec_id = g_step(n, reals, emb_real, idn, args)
                ema(n, args)
                n.step += 1
                pbar.update(1)
                if n.step % 50 == 0:
                    logged = {'step': n.step, 'loss_d': loss_d.item(), 'loss_g': loss_g.item(), 'rec': rec.item(),
                              'rec_id': rec_id.item(), 'wall': n.wall + time.time() - t0}
                    pbar.set_postfix(d=f'{logged["loss_d"]:.3f}', g=f'{logged["loss_g"]:.3f}', rec=f'{logged["rec"]:.3f}',
                                     id=f'{logged["rec_id"]:.3f}')
                    log.write(json.dumps(logged) + '\n')
                    log.flush()
                if n.step % args.sample_every == 0 or n.step == args.iters:
                    with torch.no_grad():
                        grid = [n.G_ema(n.fixed_z, psi=0.7, noise_mode='const'), reals,
                                n.G_ema(n.anchors, noise_mode='const')]
                    save_grid(torch.cat(grid), os.path.join(args.out, f'samples_{n.step:07d}.png'), nrow=len(reals))
                if n.step % args.ckpt_every == 0:
                    n.wall, t0 = n.wall + time.time() - t0, time.time()
                    save(n, args)
        except KeyboardInterrupt:
            pass
    n.wall += time.time() - t0
    save(n, args)
    print(f'saved {os.path.join(args.out, "ckpt.pt")} at step {n.step}')


if __name__ == '__main__':
    main()
