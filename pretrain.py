"""
Train the built-in StyleGAN2 to draw the many synthetic people of a teacher GAN (teacher.py), and the four real
people of assets/faces: on a CPU in the background for hours (assets/README.md), or on a GPU (--device).

Objective, per step: StyleGAN2's non-saturating GAN loss with lazy R1 on a resnet discriminator, the teacher as an
endless source of real images; distillation: the same z drawn by the teacher and by G, G pulled onto the teacher's
image (L1, full size and 4x pooled, and an LPIPS-style distance of the identity network's feature maps, which
sharpens what L1 blurs), so every teacher person has a latent in G; relational: the feature and descriptor distances of
every pair of G's images in the batch matched to the teacher's pair of the same z, so G's people lie as far apart as the
teacher's (without it G drew a 'mean face', dlib's pairs 8-14x the teacher's same-person share); and anchors: each photo of
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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import DataError, invert, load_faces, save_grid, to_uint8
from helpers import (ROOT, CheckpointError, Defaults, Parser, atomic_save, busy, cli, device, load, out_folder, own,
                     writable, write_json)
from id_net import DlibCpp, DlibFaceNet, FaceRes
from judges import CALIBRATION_N, CALIBRATION_SEED, cpp_judged, eval_latents, fmr_threshold, pair_distances
from lifecycle import Signals
from model import Generator, GeneratorConfig, bias_act, generate, setup_filter, upfirdn2d
from perceptual import IDFeatureDistance
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
    p = Parser(description=__doc__.split('\n\n')[0], formatter_class=Defaults)
    p.add_argument('--teacher', default=None, help='the gan-face-generate 1.1.1 wheel or its weights.tar (default: .whl/)')
    p.add_argument('--faces', default=str(ROOT / 'assets/faces'), help='folder of identity folders: the photos G must '
                   'also draw (default: assets/faces)')
    p.add_argument('--out', default=str(ROOT / 'runs/pretrain'), help='run folder: checkpoint, samples, log (default: '
                   'runs/pretrain)')
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
    p.add_argument('--distill', type=float, default=10.0, help="weight of the L1 to the teacher's image of the same z "
                   '(1 until step 6,285 of the committed state)')
    p.add_argument('--perc', type=float, default=1.0, help="weight of the identity network's feature distance of G's "
                   "image to the teacher's, same z (0 until step 8,447)")
    p.add_argument('--rel', type=float, default=1.0, help="weight of the relational term: each pair's feature and "
                   "descriptor distances in G's batch matched to the teacher's pair, whatever --perc is (0 until "
                   "step 15,325; feature maps only until 17,498); needs --batch 2 or more")
    p.add_argument('--rec', type=float, default=10.0, help='weight of the anchor-latent L1 reconstruction')
    p.add_argument('--rec_id', type=float, default=1.0, help='weight of the dlib identity distance of the anchor images')
    p.add_argument('--ema_kimg', type=float, default=5.0, help='EMA half-life in thousands of images')
    p.add_argument('--sample_every', type=int, default=500)
    p.add_argument('--ckpt_every', type=int, default=250)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = default)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--export', default=None, help='only write the EMA generator of --out to this path and exit')
    p.add_argument('--report', default=None, help="only measure this exported generator: <it>_report.json, <it>_samples.png")
    p.add_argument('--baby', default=None, help='--report: also the pairs of this generator (the earlier, four-person baby)')
    p.add_argument('--faceres', default=None, help='--report: HSE FaceRes-deep (faceres-deep.json), a second judge')
    p.add_argument('--samples', type=int, default=1000, help='--report: samples searched for a face (psi 0.7)')
    p.add_argument('--pairs', type=int, default=500, help='--report: samples whose pairs are compared')
    p.add_argument('--invert_steps', type=int, default=1000, help="--report: inversion steps of the photos")
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


def load_state(args, dev):
    """--out's checkpoint, checked to be a pretrain.py state, or None (step 0)."""
    path = os.path.join(args.out, 'ckpt.pt')
    if not os.path.exists(path):
        return None
    ck = load(path, 'a pretrain.py checkpoint', map_location=dev)
    need = ('config', 'G', 'G_ema', 'D', 'optG', 'optD', 'gen', 'cpu_rng', 'step', 'wall')
    if not isinstance(ck, dict) or not all(k in ck for k in need) or not isinstance(ck['config'], dict):
        raise CheckpointError(f'{path}: not a pretrain.py checkpoint; pass another --out (or delete it to start over)')
    if not all(torch.isfinite(v).all() for k in ('G', 'G_ema', 'D') for v in ck[k].values() if v.is_floating_point()):
        raise CheckpointError(f'{path}: holds NaN or Inf weights (a run that diverged); start from an earlier state')
    seed = (ck.get('args') or {}).get('seed', args.seed)
    if seed != args.seed:  # the photos' anchor latents come from it: another seed would pull other latents to them
        raise ValueError(f'--seed {args.seed}: {path} was trained with --seed {seed} (its anchors come from it); '
                         'give the same --seed')
    if ck['step'] > args.iters and args.export is None:
        raise ValueError(f'--iters {args.iters} is below the step {path} reached ({ck["step"]}); pass a higher --iters '
                         'to train on, or --export it')
    return ck


def config(args):
    """The generator the flags describe: 64 px, the teacher's z and framing."""
    return GeneratorConfig(img_resolution=64, z_dim=Z_DIM, w_dim=args.wdim, channel_base=args.channel_base,
                           channel_max=args.channels, mapping_layers=args.mapping, mapping_lr_mul=args.mapping_lr,
                           conv_clamp=256, framing=FRAMING)


def build(args, P, dev, ck=None):
    """The GAN at step 0 (its synthesis from --init when given), or resumed from ck (load_state)."""
    cfg = config(args)
    torch.manual_seed(args.seed)
    G = Generator(cfg).to(dev).train()
    dch = {64 // 2 ** i: min(args.dchannels * 2 ** i, args.channels) for i in range(5)}
    D = Discriminator(64, dch).to(dev)
    path = os.path.join(args.out, 'ckpt.pt')
    if args.init and ck is None:
        G.synthesis.load_state_dict(Generator.from_checkpoint(args.init).synthesis.state_dict())
    G_ema = Generator(cfg).to(dev).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    c = args.r1_every / (args.r1_every + 1)  # lazy regularisation: rescale lr and betas
    n = GAN(cfg, G, G_ema, D, torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8),
            torch.optim.Adam(D.parameters(), lr=args.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8),
            torch.randn(P, Z_DIM, generator=torch.Generator().manual_seed(1000 + args.seed)).to(dev),
            torch.randn(32, Z_DIM, generator=torch.Generator().manual_seed(2000 + args.seed)).to(dev),
            torch.Generator(device=dev).manual_seed(args.seed))
    if ck is not None:
        diff = [f'{k} {v} (now {getattr(cfg, k)})' for k, v in GeneratorConfig(**ck['config']).__dict__.items()
                if v != getattr(cfg, k)]
        if diff:
            raise ValueError(f'{path} was trained with another config: {", ".join(diff)}; give the same flags or '
                             'another --out')
        for k in ('G', 'G_ema', 'D', 'optG', 'optD'):
            getattr(n, k).load_state_dict(ck[k])
        n.gen.set_state(ck['gen'].cpu())  # generator states are CPU byte tensors, CUDA ones too
        torch.set_rng_state(ck['cpu_rng'])
        n.step, n.wall = ck['step'], ck['wall']
        print(f'resumed {path} at step {n.step} ({n.wall / 3600:.2f} h of training so far)')
    return n


def save(n, args, photos, names):
    """The whole state, the aligned photos with it (a resume needs no dlib), written atomically; never one that
    diverged (NaN or Inf weights): the last good state stays."""
    if not all(torch.isfinite(p).all() for m in (n.G, n.G_ema, n.D) for p in m.parameters()):
        kept = os.path.exists(os.path.join(args.out, 'ckpt.pt'))
        raise FloatingPointError(f'the weights hold NaN or Inf at step {n.step}; ' + (
            f'{args.out}/ckpt.pt keeps the last good state: resume it with a lower --lr' if kept else
            'nothing was kept: start again with a lower --lr'))
    atomic_save({'photos': photos.cpu(), 'names': names, 'config': n.cfg.__dict__, 'G': n.G.state_dict(), 'G_ema': n.G_ema.state_dict(), 'D': n.D.state_dict(),
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


def relational(perc, g, t):
    """Mean |d(G's images i, k) - d(teacher's i, k)| over the batch's pairs, summed over two d: perc's feature-map
    distance and the identity network's descriptor distance (g, t: (descriptors, feature maps) of each batch). The
    teacher's spread between people taught directly, which per-image distillation leaves to regress to a mean face."""
    i, k = torch.triu_indices(len(g[0]), len(g[0]), 1, device=g[0].device)
    pairs = lambda e, f: torch.stack([perc([x[i] for x in f], [x[k] for x in f]), perc.net.distance(e[i], e[k])])
    return (pairs(*g) - pairs(*t)).abs().mean(1).sum()


def g_step(n, T, photos, emb_photos, perc, args, dev):
    """Non-saturating loss and distillation on one batch, plus up to 4 anchors -> (GAN loss, distill L1, feature
    distance, relational term, anchor L1, anchor identity distance). perc: the identity network's feature distance
    (perc.net its descriptors)."""
    z = draw_z(n, args, dev)
    img = n.G.synthesis(n.G.mapping(z, update_w_avg=True), noise_mode='random')
    loss = F.softplus(-n.D(img)).mean()
    with torch.no_grad():
        target = T(z)
    dis = distill_l1(img, target)
    g, t = (perc.net.features(img), perc.net.features(target)) if args.perc or args.rel else (None, None)
    feat = perc(g[1], t[1]).mean() if args.perc else torch.zeros(())
    rel = relational(perc, g, t) if args.rel else torch.zeros(())
    a = torch.randint(len(photos), (min(4, len(photos)),), generator=n.gen, device=dev)
    rcn = n.G(n.anchors[a], noise_mode='const')
    rec = (rcn - photos[a]).abs().mean()
    rec_id = perc.net.distance(perc.net.embed(rcn), emb_photos[a]).mean()
    n.optG.zero_grad(set_to_none=True)
    (loss + args.distill * dis + args.perc * feat + args.rel * rel + args.rec * rec + args.rec_id * rec_id).backward()
    n.optG.step()
    return loss, dis, feat, rel, rec, rec_id


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


# -----------------------------------------------------------------------------
# the report: what the exported generator draws (assets/README.md)

def pair_stats(emb, dist, thresholds):
    """All pairs of the samples with a face: their distance's mean, 5th and 1st percentiles, and the share under each
    threshold (called one person)."""
    faces, d = pair_distances(emb, dist)
    if faces < 2:
        return {'faces': faces, 'pairs': 0}
    return {'faces': faces, 'pairs': len(d), 'mean': d.mean().item(), 'p5': d.quantile(0.05).item(),
            'p1': d.quantile(0.01).item(), **{f'same_{t:g}': (d < t).double().mean().item() for t in thresholds}}


def judged(imgs, cpp, faceres, desc):
    """{judge: descriptors [N, D]} of images, 50 at a time, NaN rows where dlib finds no face (FaceRes reads dlib's
    detection); the baby's FFHQ-framed 64 px images are first drawn at 256, as its report did."""
    parts = [cpp_judged(to_uint8(x if cpp.framing else F.interpolate(x, size=256, mode='bilinear')), cpp, faceres)
             for x in tqdm(imgs.split(50), desc=desc, leave=False)]
    return {k: torch.cat([q[k] for q in parts]) for k in parts[0]}


def recognised(emb, photo_emb, names, dist, thr):
    """Each inverted photo's image against every photo: its own, the nearest of another person, called it; obama_2
    and obama_3 against the image of obama_1's latent, and against obama_1's photo (what the judge says of his own
    photos at this size: the most an image of the generator can be asked to match)."""
    d, dp = dist(emb[:, None], photo_emb[None]), dist(photo_emb[:, None], photo_emb[None])  # [inverted image / photo, photo]
    person = [n.split('_')[0] for n in names]
    out = {}
    for k, n in enumerate(names):
        other = min(d[k, q].item() for q in range(len(names)) if person[q] != person[k])
        out[n] = {'own_photo': d[k, k].item(), 'nearest_other_person': other,
                  'recognised': bool(d[k, k] < min(thr, other))}
    o1 = names.index('obama_1')
    out['heldout_vs_obama_1_latent'] = {n: {'distance': d[o1, names.index(n)].item(),
                                            'photo_to_photo': dp[o1, names.index(n)].item()} for n in ('obama_2', 'obama_3')}
    return out


@torch.no_grad()
def report(args, dev):
    """The exported generator beside the teacher (and the baby): faces found, each judge's threshold by the rule, how
    many different people each judge sees (all pairs of --pairs samples, psi 1 and 0.7), the photos inverted (pixel
    loss only) and recognised -> <generator>_report.json and <generator>_samples.png (64 of its samples | 64 of the
    teacher's, 8 and 8 a row)."""
    G = Generator.from_checkpoint(args.report).to(dev).eval()
    T = load_teacher(args.teacher).to(dev)
    cpp, faceres = DlibCpp(G.cfg.framing), FaceRes(args.faceres).to(dev) if args.faceres else None
    dists = {'dlib_cpp': DlibCpp.distance, 'faceres': FaceRes.distance}
    rep = {'generator': args.report, 'step': (load(args.report, 'a generator').get('pretrain') or {}).get('step'),
           'framing': G.cfg.framing}
    cal = judged(generate(G, eval_latents(G, CALIBRATION_N, CALIBRATION_SEED, psi=1), {}), cpp, faceres, 'thresholds')
    rep['threshold'] = {j: fmr_threshold(e, dists[j]) for j, e in cal.items()}  # on the generator alone, as evaluate's
    if any(t != t for t in rep['threshold'].values()):  # NaN: fewer than two faces found
        raise ValueError(f'{args.report}: dlib finds fewer than two faces in {CALIBRATION_N} of its samples: no '
                         'threshold can be set on it (an export that is not yet trained?)')
    thr = {j: sorted({0.5, 0.6, t}) if j == 'dlib_cpp' else [t] for j, t in rep['threshold'].items()}
    found = judged(generate(G, eval_latents(G, args.samples, 0), {}), cpp, None, 'faces')['dlib_cpp'][:, 0].isfinite()
    rep['faces_psi0.7'] = {'n': args.samples, 'found': found.double().mean().item(), 'detector': 'dlib CNN (mmod)'}
    imgs = {f'generator_psi{psi:g}': (G, psi) for psi in (1, 0.7)}
    imgs.update({f'baby_psi{psi:g}': (Generator.from_checkpoint(args.baby).to(dev).eval(), psi)
                 for psi in (1, 0.7) if args.baby})
    rep['pairs'] = {}
    for name, (g, psi) in imgs.items():
        e = judged(generate(g, eval_latents(g, args.pairs, 1, psi=psi), {}), cpp if g is G else DlibCpp(), faceres, name)
        rep['pairs'][name] = {j: pair_stats(v, dists[j], thr[j]) for j, v in e.items()}
    z = torch.randn(args.pairs, Z_DIM, generator=torch.Generator().manual_seed(2)).to(dev)
    e = judged(torch.cat([T(x) for x in z.split(50)]), cpp, faceres, 'teacher')
    rep['pairs']['teacher'] = {j: pair_stats(v, dists[j], thr[j]) for j, v in e.items()}
    photos, names = load_anchor_photos(argparse.Namespace(faces=args.faces), dev)
    with torch.enable_grad():  # pixels alone: no recogniser finds the latents that it then judges
        w_inv = invert(G, photos, DlibFaceNet(framing=G.cfg.framing).to(dev), steps=args.invert_steps, w_perc=0,
                       w_id=0)[0]
    ep, ei = judged(photos, cpp, faceres, 'photos'), judged(generate(G, w_inv, {}), cpp, faceres, 'inverted')
    rep['inversion'] = {j: recognised(ei[j], ep[j], names, dists[j], rep['threshold'][j]) for j in ep}
    out = Path(args.report)
    mine, theirs = generate(G, eval_latents(G, 64, 3, psi=1), {}), T(z[:64])
    save_grid(torch.cat([torch.cat([mine[r * 8:(r + 1) * 8], theirs[r * 8:(r + 1) * 8]]) for r in range(8)]),
              out.with_name(out.stem + '_samples.png'), nrow=16)
    write_json(rep, out.with_name(out.stem + '_report.json'))
    print(json.dumps(rep, indent=1))
    return rep

def check(args):
    """Every flag and file, before any work: the first problem as a ValueError naming the flag and the fix."""
    device(args.device)
    ints = {'wdim': (1, 4096), 'channels': (1, 4096), 'channel_base': (1, 2 ** 20), 'dchannels': (1, 4096),
            'mapping': (1, 64), 'iters': (1, 10 ** 8), 'batch': (1, 4096), 'r1_every': (1, 10 ** 6),
            'sample_every': (1, 10 ** 8), 'ckpt_every': (1, 10 ** 8), 'seed': (0, 2 ** 63 - 1),
            'threads': (0, os.cpu_count() or 1), 'samples': (2, 10 ** 5), 'pairs': (2, 10 ** 4),
            'invert_steps': (1, 10 ** 5)}
    for k, (lo, hi) in ints.items():
        if not lo <= getattr(args, k) <= hi:
            raise ValueError(f'--{k} {getattr(args, k)}: must be an integer from {lo} to {hi:,}')
    if args.rel and args.batch < 2:
        raise ValueError(f'--batch {args.batch} with --rel {args.rel}: the relational term needs pairs; give --batch 2 '
                         'or more, or --rel 0')
    for k in ('lr', 'mapping_lr', 'ema_kimg'):
        if not (math.isfinite(getattr(args, k)) and getattr(args, k) > 0):
            raise ValueError(f'--{k} {getattr(args, k)}: must be a finite number > 0')
    for k in ('r1', 'distill', 'perc', 'rel', 'rec', 'rec_id'):
        if not (math.isfinite(getattr(args, k)) and getattr(args, k) >= 0):
            raise ValueError(f'--{k} {getattr(args, k)}: must be a finite number >= 0 (0: the term off)')
    if not args.out:
        raise ValueError("--out '': name the run folder of the state")
    if args.report is not None and args.export is not None:
        raise ValueError('--report and --export are two commands; give one')
    if args.report is None and (args.baby or args.faceres):
        raise ValueError('--baby and --faceres are read by --report only; add --report GENERATOR or drop them')
    if args.report == '':
        raise ValueError("--report '': name the exported generator to measure")
    if args.export is not None:
        if os.path.abspath(args.export) == os.path.abspath(os.path.join(args.out, 'ckpt.pt')):
            raise ValueError(f'--export {args.export}: that is the training state itself; export to another file')
        writable(args.export, '--export')
        if os.path.isfile(args.export):  # it replaces only an earlier export of this generator, never another file
            try:
                same = Generator.from_checkpoint(args.export).cfg == config(args)
            except CheckpointError:
                same = False
            if not same:
                raise ValueError(f'--export {args.export}: exists and is not an earlier export of this generator (it '
                                 'would be replaced); name a new file')
    if args.baby:
        Generator.from_checkpoint(args.baby)  # read now, not after the minutes of the report before it
    if args.init:
        init = Generator.from_checkpoint(args.init)
        if (init.cfg.w_dim, init.cfg.channel_base, init.cfg.channel_max, init.cfg.img_resolution) != \
                (args.wdim, args.channel_base, args.channels, 64):
            raise ValueError(f'--init {args.init}: its synthesis ({init.cfg.img_resolution} px, w {init.cfg.w_dim}, '
                             f'channels {init.cfg.channel_base} / {init.cfg.channel_max}) is not this one\'s; give the '
                             'same --wdim, --channel_base and --channels')
    if args.export is not None:
        return
    if not any(os.path.isdir(os.path.join(args.faces, d)) for d in (os.listdir(args.faces) if os.path.isdir(args.faces) else ())):
        raise ValueError(f'--faces {args.faces}: not a folder of identity folders (one folder of photos per person)')
    if args.report is None:
        out_folder(args.out)
        if os.path.isdir(args.out) and os.listdir(args.out) and not os.path.exists(os.path.join(args.out, 'log.jsonl')):
            raise ValueError(f'--out {args.out}: a folder of other files (not a pretrain.py run); choose a new folder')


def export(n, args, names):
    """The EMA generator of a trained state, in our checkpoint format; refused when untrained or not finite."""
    if n.step == 0:
        raise ValueError(f'--export: {args.out} holds no trained state (step 0); ' + (
            f'the pretrain.py training it has not saved yet: export after its first checkpoint (every {args.ckpt_every} '
            'steps)' if busy(args.out) else 'train first, or pass its --out'))
    if not all(torch.isfinite(v).all() for v in n.G_ema.state_dict().values()):
        raise ValueError(f'--export: {args.out}/ckpt.pt holds NaN or Inf weights at step {n.step}; resume from an '
                         'earlier state')
    n.G_ema.save(args.export, pretrain={'step': n.step, 'wall_s': round(n.wall), 'args': vars(args),
                                        'anchors': n.anchors.cpu(), 'anchor_names': names})
    print(f'exported G_ema at step {n.step} to {args.export}')


def train(n, T, photos, names, emb_photos, perc, log, args, dev):
    """Steps until --iters or Ctrl-C / SIGTERM (then between steps), logging, sampling, checkpointing."""
    t0 = time.time()
    with Signals() as stop, tqdm(total=args.iters, initial=n.step, desc='pretrain', dynamic_ncols=True) as pbar:
        while n.step < args.iters and not stop.sig:
            loss_d = d_step(n, T, args, dev)
            loss_g, dis, feat, rel, rec, rec_id = g_step(n, T, photos, emb_photos, perc, args, dev)
            ema(n, args)
            n.step += 1
            pbar.update(1)
            if n.step % 50 == 0:
                logged = {'step': n.step, 'loss_d': loss_d.item(), 'loss_g': loss_g.item(), 'distill': dis.item(),
                          'perc': feat.item(), 'rel': rel.item(), 'rec': rec.item(), 'rec_id': rec_id.item(), 'wall': n.wall + time.time() - t0}
                if not all(math.isfinite(v) for v in logged.values()):
                    raise FloatingPointError(f'non-finite loss at step {n.step}: {logged}; the last checkpoint is kept')
                pbar.set_postfix({k: f'{v:.3f}' for k, v in logged.items() if k not in ('step', 'wall')})
                log.write(json.dumps(logged) + '\n')
            if n.step % args.sample_every == 0:
                log.write(json.dumps({'step': n.step, 'heldout_l1': snapshot(n, T, photos, args)}) + '\n')
            log.flush()
            if n.step % args.ckpt_every == 0:
                n.wall, t0 = n.wall + time.time() - t0, time.time()
                save(n, args, photos, names)
    n.wall += time.time() - t0
    save(n, args, photos, names)
    print(f'saved {os.path.join(args.out, "ckpt.pt")} at step {n.step}' + (' (interrupted)' if stop.sig else ''))
    if stop.sig:  # exit 130 / 143 as a shell does, so `pretrain.py && ...` stops here
        raise SystemExit(128 + stop.sig)


def start(args, dev):
    """--out's state (or None), the photos (the state's own, aligned when it was begun), the identity network's feature
    distance (cropping by the teacher's framing) and its descriptors of the photos."""
    ck = load_state(args, dev)
    photos, names = (ck['photos'].to(dev), ck['names']) if ck and 'photos' in ck else load_anchor_photos(args, dev)
    perc = IDFeatureDistance(DlibFaceNet(framing=FRAMING)).to(dev)
    with torch.no_grad():
        return ck, photos, names, perc, perc.net.embed(photos)


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        dev = torch.device(args.device)
        if args.report is not None:
            return report(args, dev)
        if args.export is not None:
            ck, photos, names, _, _ = start(args, dev)
            return export(build(args, len(photos), dev, ck), args, names)
        T = load_teacher(args.teacher).to(dev)  # a missing teacher stops here, before the run folder is made
        made = not os.path.exists(args.out)
        os.makedirs(args.out, exist_ok=True)
        with own(args.out) as log:  # one process at a time: the state is read under the lock
            try:
                ck, photos, names, perc, emb_photos = start(args, dev)
                train(build(args, len(photos), dev, ck), T, photos, names, emb_photos, perc, log, args, dev)
            except (CheckpointError, DataError, ValueError, FloatingPointError):
                if made and not os.path.exists(os.path.join(args.out, 'ckpt.pt')):  # a photo without a face, a first
                    shutil.rmtree(args.out, ignore_errors=True)                      # step that diverged: nothing stays
                raise
    except (CheckpointError, DataError, ValueError, OSError, FloatingPointError) as e:
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    cli(main)
