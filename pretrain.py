"""
Train the built-in StyleGAN2 to draw the many synthetic people of a teacher GAN (teacher.py), and the four real
people of assets/faces: on a CPU in the background for hours (assets/README.md), or on a GPU (--device).

Objective, per step: StyleGAN2's non-saturating GAN loss with lazy R1 on a resnet discriminator, the teacher as an
endless source of real images; distillation: the same z drawn by the teacher and by G, G pulled onto the teacher's
image (L1, full size and 4x pooled), so every teacher person has a latent in G; and anchors: each photo of
assets/faces, aligned to the teacher's framing, has a fixed latent whose image is pulled to the photo (L1 and dlib's
identity distance), so the real people can be inverted and forgotten. A generator EMA is what gets exported.

    python pretrain.py                            # resumes from --out's checkpoint when there is one
    python pretrain.py --export assets/generator.pt   # the EMA generator, in our checkpoint format

Resumable: the whole state (G, G_ema, D, optimisers, random streams, step) is written atomically every --ckpt_every
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
from helpers import atomic_save, load
from id_net import DlibFaceNet
from model import Generator, GeneratorConfig, bias_act, setup_filter, upfirdn2d
from teacher import FRAMING, Z_DIM, load_teacher

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


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--teacher', default=None, help='the gan-face-generate 1.1.1 wheel or its weights.tar (default: .whl/)')
    p.add_argument('--faces', default='assets/faces', help='folder of identity folders: the photos G must also draw')
    p.add_argument('--out', default='runs/pretrain', help='run folder: checkpoint, samples, log')
    p.add_argument('--init', default=None, help="a generator of ours whose synthesis weights start G's (step 0 only)")
    p.add_argument('--wdim', type=int, default=128, help='w dimension (z is the teacher\'s, 100)')
    p.add_argument('--channels', type=int, default=128, help='most channels of any generator layer (channel_max)')
    p.add_argument('--channel_base', type=int, default=4096, help='generator channels at res r: min(base // r, --channels)')
    p.add_argument('--dchannels', type=int, default=32, help='discriminator channels at full resolution (x2 below, capped at --channels)')
    p.add_argument('--mapping', type=int, default=4, help='mapping network depth')
    p.add_argument('--mapping_lr', type=float, default=0.1, help="the mapping network's learning-rate multiplier")
    p.add_argument('--iters', type=int, default=200000, help='total steps (resume continues to this)')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--lr', type=float, default=0.002)
    p.add_argument('--r1', type=float, default=0.5, help='R1 gamma')
    p.add_argument('--r1_every', type=int, default=16)
    p.add_argument('--distill', type=float, default=1.0, help="weight of the L1 to the teacher's image of the same z")
    p.add_argument('--rec', type=float, default=10.0, help='weight of the anchor-latent L1 reconstruction')
    p.add_argument('--rec_id', type=float, default=1.0, help='weight of the dlib identity distance of the anchor images')
    p.add_argument('--ema_kimg', type=float, default=5.0, help='EMA half-life in thousands of images')
    p.add_argument('--sample_every', type=int, default=500)
    p.add_argument('--ckpt_every', type=int, default=250)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = default)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--export', default=None, help='only write the EMA generator of --out to this path and exit')
    return p


def load_anchor_photos(args, dev):
    """Every identity folder under --faces, aligned to the teacher's framing -> (images [P, 3, 64, 64], names)."""
    people = sorted(d for d in os.listdir(args.faces) if os.path.isdir(os.path.join(args.faces, d)))
    faces, names = [], []
    for person in people:
        x, n = load_faces(os.path.join(args.faces, person), 64, framing=FRAMING)
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
    fixed_z: torch.Tensor  # [32, z_dim] the sample grids' latents, also the held-out distillation L1's
    gen: torch.Generator   # the training draws
    step: int = 0
    wall: float = 0.0


def build(args, P, dev):
    """The GAN at step 0 (its synthesis from --init when given), or resumed from --out's checkpoint."""
    cfg = GeneratorConfig(img_resolution=64, z_dim=Z_DIM, w_dim=args.wdim, channel_base=args.channel_base,
                          channel_max=args.channels, mapping_layers=args.mapping, mapping_lr_mul=args.mapping_lr,
                          conv_clamp=256)
    torch.manual_seed(args.seed)
    G = Generator(cfg).to(dev).train()
    dch = {64 // 2 ** i: min(args.dchannels * 2 ** i, args.channels) for i in range(5)}
    D = Discriminator(64, dch).to(dev)
    path = os.path.join(args.out, 'ckpt.pt')
    if args.init and not os.path.exists(path):
        G.synthesis.load_state_dict(Generator.from_checkpoint(args.init).synthesis.state_dict())
    G_ema = Generator(cfg).to(dev).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    c = args.r1_every / (args.r1_every + 1)  # lazy regularisation: rescale lr and betas
    n = GAN(cfg, G, G_ema, D, torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8),
            torch.optim.Adam(D.parameters(), lr=args.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8),
            torch.randn(P, Z_DIM, generator=torch.Generator().manual_seed(1000 + args.seed)).to(dev),
            torch.randn(32, Z_DIM, generator=torch.Generator().manual_seed(2000 + args.seed)).to(dev),
            torch.Generator(device=dev).manual_seed(args.seed))
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


def draw_z(n, args, dev):
    return torch.randn(args.batch, Z_DIM, generator=n.gen, device=dev)


def d_step(n, T, args, dev):
    """Logistic loss on the teacher's images (real) and G's (fake), lazy R1 on the reals -> D's loss."""
    with torch.no_grad():
        real, fake = T(draw_z(n, args, dev)), n.G(draw_z(n, args, dev), noise_mode='random')
    do_r1 = n.step % args.r1_every == 0
    real.requires_grad_(do_r1)
    d_real, d_fake = n.D(real), n.D(fake)  # separate: minibatch-std groups never mix them
    loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
    if do_r1:
        g, = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        loss = loss + g.square().sum(dim=[1, 2, 3]).mean() * (args.r1 / 2 * args.r1_every)
    n.optD.zero_grad(set_to_none=True)
    loss.backward()
    n.optD.step()
    return loss


def distill_l1(img, target):
    """L1 at full size plus L1 of 4x-pooled images (the layout, which full-size L1 alone learns slowly)."""
    return (img - target).abs().mean() + (F.avg_pool2d(img, 4) - F.avg_pool2d(target, 4)).abs().mean()


def g_step(n, T, photos, emb_photos, idn, args, dev):
    """Non-saturating loss and distillation on one batch, plus up to 4 anchors -> (GAN loss, distill L1, anchor L1,
    anchor identity distance)."""
    z = draw_z(n, args, dev)
    img = n.G.synthesis(n.G.mapping(z, update_w_avg=True), noise_mode='random')
    loss = F.softplus(-n.D(img)).mean()
    with torch.no_grad():
        target = T(z)
    dis = distill_l1(img, target)
    a = torch.randint(len(photos), (min(4, len(photos)),), generator=n.gen, device=dev)
    rcn = n.G(n.anchors[a], noise_mode='const')
    rec = (rcn - photos[a]).abs().mean()
    rec_id = idn.distance(idn.embed(rcn), emb_photos[a]).mean()
    n.optG.zero_grad(set_to_none=True)
    (loss + args.distill * dis + args.rec * rec + args.rec_id * rec_id).backward()
    n.optG.step()
    return loss, dis, rec, rec_id


@torch.no_grad()
def ema(n, args):
    """G_ema towards G, with NVIDIA's ramp-up (a short half-life early on); buffers copied."""
    beta = min(0.5 ** (args.batch / (args.ema_kimg * 1000)), 0.5 ** (args.batch / max((n.step + 1) * args.batch * 0.05, 1e-8)))
    for pe, pg in zip(n.G_ema.parameters(), n.G.parameters()):
        pe.lerp_(pg, 1 - beta)
    for be, bg in zip(n.G_ema.buffers(), n.G.buffers()):
        be.copy_(bg)


@torch.no_grad()
def snapshot(n, T, photos, args):
    """Samples of G_ema beside the teacher's for the fixed z, the anchors beside their photos -> held-out L1."""
    mine, theirs = n.G_ema(n.fixed_z, noise_mode='const'), T(n.fixed_z)
    grid = [mine[:16], theirs[:16], mine[16:], theirs[16:], n.G_ema(n.anchors, noise_mode='const'), photos]
    save_grid(torch.cat(grid), os.path.join(args.out, f'samples_{n.step:07d}.png'), nrow=16)
    return (mine - theirs).abs().mean().item()


def main(argv=None):
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device(args.device)
    T = load_teacher(args.teacher).to(dev)
    photos, names = load_anchor_photos(args, dev)
    idn = DlibFaceNet().to(dev)
    with torch.no_grad():
        emb_photos = idn.embed(photos)
    n = build(args, len(photos), dev)
    if args.export:
        n.G_ema.save(args.export, framing=FRAMING, pretrain={
            'step': n.step, 'wall_s': round(n.wall), 'args': vars(args), 'anchors': n.anchors.cpu(), 'anchor_names': names})
        print(f'exported G_ema at step {n.step} to {args.export}')
        return
    stopped = []  # SIGTERM stops at the next step (Ctrl-C at once); either way the checkpoint is written
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    t0 = time.time()
    with open(os.path.join(args.out, 'log.jsonl'), 'a') as log, \
            tqdm(total=args.iters, initial=n.step, desc='pretrain', dynamic_ncols=True) as pbar:
        try:
            while n.step < args.iters and not stopped:
                loss_d = d_step(n, T, args, dev)
                loss_g, dis, rec, rec_id = g_step(n, T, photos, emb_photos, idn, args, dev)
                ema(n, args)
                n.step += 1
                pbar.update(1)
                if n.step % 50 == 0:
                    logged = {'step': n.step, 'loss_d': loss_d.item(), 'loss_g': loss_g.item(), 'distill': dis.item(),
                              'rec': rec.item(), 'rec_id': rec_id.item(), 'wall': n.wall + time.time() - t0}
                    pbar.set_postfix(d=f'{logged["loss_d"]:.3f}', g=f'{logged["loss_g"]:.3f}', dis=f'{logged["distill"]:.3f}',
                                     rec=f'{logged["rec"]:.3f}', id=f'{logged["rec_id"]:.3f}')
                    log.write(json.dumps(logged) + '\n')
                if n.step % args.sample_every == 0:
                    log.write(json.dumps({'step': n.step, 'heldout_l1': snapshot(n, T, photos, args)}) + '\n')
                log.flush()
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
