"""
How well did it forget, and what did it cost? Metrics, the forgetting dial, collapse curves, comparisons.

    python evaluate.py runs/obama_1-ode                  # metrics.json + a table
    python evaluate.py runs/obama_1-ode --sweep          # the dial: sweep.json, sweep_strip.png, sweep.png
    python evaluate.py --curve runs/a runs/b             # ID / retention over training (train.py --snapshot_every)
    python evaluate.py --compare runs/a runs/b           # one markdown table of metrics.json files
    python evaluate.py --baby-report                     # the built-in generator's numbers (assets/README.md)

Identity numbers use dlib's network by default (Euclidean distance; same person < 0.6), CurricularFace or
ArcFace with --id_net/--id_weights (1 - cosine). Without FID Inception weights the Frechet distance is
computed on the identity network's 128-d descriptors and named FD_<net>, never FID.
"""
import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from tqdm import tqdm

from data import DataError, IMAGE_EXTS, invert, list_photos, load_faces, save_grid, to_uint8
from id_net import load_id_net
from model import CheckpointError, Generator
from ode_adapter import load_adapters
from train import keep_freed_memory

ROOT = Path(__file__).resolve().parent


# -----------------------------------------------------------------------------
# statistics

def frechet_distance(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as in the FID code (1e-6 diagonal fallback)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def stats(feats):
    f = feats.double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def write_json(obj, path):
    """JSON report written to a temp file and renamed: a reader never sees half a file."""
    tmp = Path(f'{path}.tmp')
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def psnr(a, b):
    """PSNR in dB of [-1, 1] images, per image."""
    mse = ((a - b) / 2).square().mean(dim=[1, 2, 3]).clamp_min(1e-12)
    return -10 * torch.log10(mse)


# -----------------------------------------------------------------------------
# FID's Inception-v3 (the TF-ported network of pytorch-fid; torchvision key names), for users with its weights

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class _Conv(nn.Module):
    """conv (no bias) + batch norm (eps 1e-3) + relu: torchvision's BasicConv2d."""

    def __init__(self, cin, cout, k, s=1, p=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):  # the FID network's average pools exclude the padding
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _A(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, p=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(cin, 64, 1), _Conv(64, 96, 3, p=1), _Conv(96, 96, 3, p=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg(x))], 1)


class _B(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, s=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(cin, 64, 1), _Conv(64, 96, 3, p=1), _Conv(96, 96, 3, s=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class _C(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        h, v = dict(k=(1, 7), p=(0, 3)), dict(k=(7, 1), p=(3, 0))
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = _Conv(cin, c7, 1), _Conv(c7, c7, **h), _Conv(c7, 192, **v)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **v)
        self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = _Conv(c7, c7, **h), _Conv(c7, c7, **v), _Conv(c7, 192, **h)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        d = x
        for i in range(1, 6):
            d = getattr(self, f'branch7x7dbl_{i}')(d)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), d,
                          self.branch_pool(_avg(x))], 1)


class _D(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, s=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _Conv(cin, 192, 1), _Conv(192, 192, (1, 7), p=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = _Conv(192, 192, (7, 1), p=(3, 0)), _Conv(192, 192, 3, s=2)

    def forward(self, x):
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, 2)], 1)


class _E(nn.Module):
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the FID network max-pools its pool branch
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _Conv(384, 384, (1, 3), p=(0, 1)), _Conv(384, 384, (3, 1), p=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, p=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = _Conv(384, 384, (1, 3), p=(0, 1)), _Conv(384, 384, (3, 1), p=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a), self.branch3x3dbl_3a(d),
                          self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """Inception-v3 as used for FID (pt_inception-2015-12-05-6726825d.pth): [-1, 1] images -> 2048-d pool3."""

    def __init__(self, path=None):
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = _Conv(3, 32, 3, s=2), _Conv(32, 32, 3)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = _Conv(32, 64, 3, p=1), _Conv(64, 80, 1), _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = _C(768, 128), _C(768, 160), _C(768, 160), _C(768, 192)
        self.Mixed_7a = _D(768)
        self.Mixed_7b, self.Mixed_7c = _E(1280, False), _E(2048, True)
        self.fc = nn.Linear(2048, 1008)  # in the weight file, unused for FID
        if path:
            try:
                sd = torch.load(path, map_location='cpu', weights_only=True)
                missing, unexpected = self.load_state_dict(sd, strict=False)
            except Exception as e:  # noqa: BLE001
                raise SystemExit(f'error: {path}: not a readable FID Inception state dict ({type(e).__name__})')
            if [k for k in missing if not k.endswith('num_batches_tracked')] or unexpected:
                raise SystemExit(f'error: {path}: not the FID Inception weights (key names differ)')
        self.eval().requires_grad_(False)

    def forward(self, images):
        x = F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False)
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
            x = getattr(self, f'Mixed_{name}')(x)
        return x.mean(dim=[2, 3])


# -----------------------------------------------------------------------------
# a run folder -> the original and the unlearned generator

def load_run(run, device):
    """(G_s, G_u, kwargs of G_s, meta) of a train.py run folder."""
    run = Path(run)
    path = run / 'adapter.pt'
    if not run.is_dir():
        raise SystemExit(f'error: {run}: no such run folder')
    if not path.exists():
        raise SystemExit(f'error: {run}: no adapter.pt (the run did not finish; resume it with train.py --resume)')
    meta = torch.load(path, map_location='cpu', weights_only=True)
    ckpt = meta['args']['ckpt']
    try:
        G = Generator.from_checkpoint(ckpt)
    except CheckpointError as e:
        raise SystemExit(f'error: {run}: its generator cannot be loaded: {e}')
    if meta.get('kind') == 'full':
        G_u = copy.deepcopy(G)
        G_u.synthesis.load_state_dict(meta['synthesis'])
        return G.to(device), G_u.to(device), {}, meta
    try:
        load_adapters(G, path)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    return G.to(device), G.to(device), {'T': 0}, meta


def held_out_photos(meta):
    """Photos of the forgotten person that training did not see: the other files of its folder."""
    ident = meta['identity']
    if ident.get('kind') != 'photos':
        return []
    p = Path(ident['path'])
    folder = p if p.is_dir() else p.parent
    used = set(ident.get('names', [])) if p.is_dir() else {p.stem}
    return [f for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_EXTS and f.stem not in used]


# -----------------------------------------------------------------------------
# metrics

class Judge:
    """Identity network, photo embeddings and fixed random latents shared by all the measurements."""

    def __init__(self, args, device):
        self.idn = load_id_net(args.id_net, args.id_weights).to(device)
        self.device, self.n = device, args.n
        self.name = args.id_net
        inception = getattr(args, 'inception', None)
        self.inception = FIDInception(inception).to(device) if inception else None
        self.fd_name = 'FID' if inception else f'FD_{args.id_net}'  # never call a descriptor distance FID

    def fd_feats(self, imgs, emb=None, bs=32):
        """Features for Frechet distances: Inception pool3 when given, else the identity descriptors."""
        if self.inception is None:
            return self.emb(imgs) if emb is None else emb
        return torch.cat([self.inception(imgs[i:i + bs]) for i in range(0, len(imgs), bs)])

    def emb(self, imgs, bs=32):
        return torch.cat([self.idn.embed(imgs[i:i + bs]) for i in range(0, len(imgs), bs)])

    def dist(self, a, b):
        return self.idn.distance(a, b)


@torch.no_grad()
def generate(G, ws, kw, bs=16):
    return torch.cat([G.synthesis(ws[i:i + bs], noise_mode='const', **kw) for i in range(0, len(ws), bs)])


@torch.no_grad()
def measure(G_s, G_u, s_kw, u_kw, meta, J, photos_u=None, held=None, fd=True, retain_photos=None):
    """The metric dict of one generator pair; u_kw (e.g. {'T': 0.8}) picks a point on the dial."""
    dev = J.device
    ws_u = meta['ws_u'].to(dev)
    b, a = generate(G_s, ws_u, s_kw), generate(G_u, ws_u, u_kw)
    eb, ea = J.emb(b), J.emb(a)
    m = {'id_net': J.name, 'ID': J.dist(eb, ea).mean().item()}  # distance before -> after (higher: forgotten)
    if photos_u is not None:  # distance of the forgotten latents' images to the training photos
        ep = J.emb(photos_u.to(dev))
        m['ID_photo_before'] = J.dist(eb, ep).mean().item()
        m['ID_photo_after'] = J.dist(ea, ep).mean().item()
    if held is not None and len(held):  # unseen photos of the same person: their inverted latents and the photos
        ws_h, eh = held
        hb, ha = generate(G_s, ws_h, s_kw), generate(G_u, ws_h, u_kw)
        m['ID_others'] = J.dist(J.emb(hb), J.emb(ha)).mean().item()
        m['ID_heldout_photo_before'] = torch.cdist(eb, eh).mean().item() if J.name == 'dlib' else \
            J.dist(eb[:, None], eh[None]).mean().item()
        m['ID_heldout_photo_after'] = torch.cdist(ea, eh).mean().item() if J.name == 'dlib' else \
            J.dist(ea[:, None], eh[None]).mean().item()
    retain = meta.get('retain_ws') or {}
    for name, w in retain.items():
        w = w.to(dev)
        rb, ra = generate(G_s, w, s_kw), generate(G_u, w, u_kw)
        erb, era = J.emb(rb), J.emb(ra)
        m[f'retain_{name}'] = J.dist(erb, era).mean().item()
        m[f'retain_{name}_psnr'] = psnr(rb, ra).mean().item()
        if retain_photos and name in retain_photos:  # still recognised as that person? (the photo it was inverted from)
            ep = J.emb(retain_photos[name].to(dev))
            m[f'retain_{name}_photo_before'] = J.dist(erb, ep).mean().item()
            m[f'retain_{name}_photo_after'] = J.dist(era, ep).mean().item()
    if retain:
        m['retain_people'] = float(np.mean([m[f'retain_{k}'] for k in retain]))
    z = torch.randn(J.n, G_s.cfg.z_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    ws_r = G_s.mapping(z)
    rb, ra = generate(G_s, ws_r, s_kw), generate(G_u, ws_r, u_kw)
    fb, fa = J.emb(rb), J.emb(ra)
    m['retain_random'] = J.dist(fb, fa).mean().item()
    m['retain_random_psnr'] = psnr(rb, ra).mean().item()
    if fd:
        m[f'{J.fd_name}_pre'] = frechet_distance(*stats(J.fd_feats(rb, fb)), *stats(J.fd_feats(ra, fa)))
    return m


def evaluate_run(run, args, device):
    G_s, G_u, s_kw, meta = load_run(run, device)
    J = Judge(args, device)
    ident = meta['identity']
    photos_u = held = None
    res = G_s.cfg.img_resolution
    if ident.get('kind') == 'photos':
        photos_u, _ = load_faces(ident['path'], res)
        files = held_out_photos(meta)
        if files:
            hp = torch.cat([load_faces(f, res)[0] for f in files]).to(device)
            ws_h, _, _ = invert(G_s, hp, J.idn, steps=args.invert_steps or 300)
            with torch.no_grad():
                held = (ws_h, J.emb(hp))
    retain_photos = {k: load_faces(f, res, align=False)[0] for k, f in meta.get('retain_photos', {}).items()}
    m = measure(G_s, G_u, s_kw, {}, meta, J, photos_u, held, retain_photos=retain_photos)
    m['held_out_photos'] = [f.name for f in held_out_photos(meta)]
    if args.real:
        m.update(real_fd(G_s, G_u, s_kw, J, args.real, device))
    m['trainable_params'] = sum(v.numel() for v in meta['state_dict'].values()) if 'state_dict' in meta else \
        sum(p.numel() for p in G_u.synthesis.parameters())
    m['adapter_file_mb'] = os.path.getsize(Path(run) / 'adapter.pt') / 2 ** 20
    m['train_wall_s'] = meta.get('wall_s')
    m['steps'] = meta.get('steps')
    m['kind'] = meta.get('kind')
    return m


def real_fd(G_s, G_u, s_kw, J, real, device):
    """dFD_real = FD(real, G_u) - FD(real, G_s) against a folder of real images or a .npz of (mu, sigma)."""
    if str(real).endswith('.npz'):
        f = np.load(real)
        mu, sig = f['mu'], f['sigma']
    else:
        try:
            imgs = torch.cat([load_faces(p, G_s.cfg.img_resolution, align=False)[0] for p in list_photos(real)])
        except DataError as e:
            raise SystemExit(f'error: {e}')
        with torch.no_grad():
            mu, sig = stats(J.fd_feats(imgs.to(device)))
    z = torch.randn(J.n, G_s.cfg.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        ws = G_s.mapping(z)
        fs, fu = J.fd_feats(generate(G_s, ws, s_kw)), J.fd_feats(generate(G_u, ws, {}))
    d_s, d_u = frechet_distance(mu, sig, *stats(fs)), frechet_distance(mu, sig, *stats(fu))
    return {f'{J.fd_name}_real_before': d_s, f'{J.fd_name}_real_after': d_u, f'd{J.fd_name}_real': d_u - d_s}


# -----------------------------------------------------------------------------
# pictures

def plot(path, xs, series, xlabel):
    """A line plot with matplotlib when installed; else the numbers go to a CSV next to it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        with open(Path(path).with_suffix('.csv'), 'w') as f:
            f.write(','.join([xlabel] + list(series)) + '\n')
            for i, x in enumerate(xs):
                f.write(','.join([str(x)] + [f'{v[i]:.5g}' for v in series.values()]) + '\n')
        return Path(path).with_suffix('.csv')
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker='o', label=name)
    ax.axhline(0.6, color='grey', ls=':', lw=1, label='dlib same-person threshold')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('identity distance')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep(run, args, device):
    """The dial: the trained adapters evaluated at several integration times T, no retraining."""
    G_s, G_u, s_kw, meta = load_run(run, device)
    if meta.get('kind') == 'full':
        raise SystemExit(f'error: {run}: a full fine-tune has no dial (train with --adapter ode)')
    T_train = meta['adapter']['T']
    Ts = [float(t) for t in args.T.split(',')] if args.T else [round(x, 4) for x in np.linspace(0, 2 * T_train, 9)]
    J = Judge(args, device)
    photos_u = load_faces(meta['identity']['path'], G_s.cfg.img_resolution)[0] if meta['identity'].get('kind') == 'photos' else None
    rows, strip = [], []
    for T in tqdm(Ts, desc='sweep'):
        m = measure(G_s, G_u, s_kw, {'T': T}, meta, J, photos_u, fd=False)
        rows.append({'T': T, **m})
        strip.append(generate(G_u, meta['ws_u'][:1].to(device), {'T': T}))
    out = Path(run)
    write_json(rows, out / 'sweep.json')
    save_grid(torch.cat(strip), out / 'sweep_strip.png', nrow=len(Ts))
    series = {'forgotten: before -> after': [r['ID'] for r in rows],
              'retention: random samples': [r['retain_random'] for r in rows]}
    if photos_u is not None:
        series['forgotten: to its photo'] = [r['ID_photo_after'] for r in rows]
    if rows[0].get('retain_people') is not None:
        series['retention: other people'] = [r['retain_people'] for r in rows]
    p = plot(out / 'sweep.png', Ts, series, 'integration time T')
    print(table(rows, ['T', 'ID', 'ID_photo_after', 'retain_people', 'retain_random']))
    print(f'wrote {out}/sweep.json, {out}/sweep_strip.png, {p}')
    return rows


def curve(runs, args, device):
    """ID and retention over training steps from the adapter snapshots of one or several runs."""
    J = Judge(args, device)
    all_series, xs_all = {}, None
    for run in runs:
        G_s, G_u, s_kw, meta = load_run(run, device)
        snaps = sorted((Path(run) / 'snapshots').glob('*.pt'))
        if not snaps:
            raise SystemExit(f'error: {run}: no snapshots; train with --snapshot_every K')
        ids, rets, xs = [], [], []
        for s in tqdm(snaps, desc=str(run)):
            ck = torch.load(s, map_location=device, weights_only=True)
            G_u.synthesis.load_state_dict(ck['synthesis'], strict=False)
            m = measure(G_s, G_u, s_kw, {}, meta, J, fd=False)
            xs.append(ck['step'])
            ids.append(m['ID'])
            rets.append(m.get('retain_people', m['retain_random']))
        name = Path(run).name
        all_series[f'{name}: forgotten'] = ids
        all_series[f'{name}: retention'] = rets
        xs_all = xs if xs_all is None or len(xs) < len(xs_all) else xs_all
    all_series = {k: v[:len(xs_all)] for k, v in all_series.items()}
    out = Path(args.out or Path(runs[0]) / 'curve.png')
    p = plot(out, xs_all, all_series, 'training step')
    write_json({'steps': xs_all, **all_series}, out.with_suffix('.json'))
    print(f'wrote {p} and {out.with_suffix(".json")}')


def table(rows, cols):
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)  # noqa: E731
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def compare(runs):
    rows = []
    for run in runs:
        p = Path(run) / 'metrics.json'
        if not p.exists():
            raise SystemExit(f'error: {run}: no metrics.json; run python evaluate.py {run} first')
        rows.append({'run': str(run), **json.load(open(p))})
    keys = ['run', 'kind', 'ID', 'ID_photo_after', 'ID_others', 'ID_heldout_photo_after', 'retain_people',
            'retain_random', 'retain_random_psnr']
    keys += sorted({k for r in rows for k in r if k.startswith(('FD_', 'dFD_', 'FID', 'dFID'))})
    keys += ['trainable_params', 'adapter_file_mb', 'train_wall_s']
    print(table(rows, keys))


# -----------------------------------------------------------------------------
# the built-in generator's report

@torch.no_grad()
def baby_report(args, device):
    """Can the baby generator draw faces, and does it know the four people? (dlib, 64x64 output)"""
    import dlib
    G = Generator.from_checkpoint(args.ckpt).to(device)
    idn = load_id_net('dlib').to(device)
    people = sorted(d.name for d in (ROOT / 'assets/faces').iterdir() if d.is_dir())
    photos = {p: load_faces(ROOT / 'assets/faces' / p, G.cfg.img_resolution, align=False) for p in people}
    rep = {'ckpt': args.ckpt, 'inversion': {}}
    # 1. every demo photo inverts to a latent recognised as that person. The inversion optimises pixels only:
    # with dlib's own distance in the objective even a random generator's W+ is pushed to 'look like' anyone.
    allx = torch.cat([x for x, _ in photos.values()]).to(device)
    names = [n for _, ns in photos.values() for n in ns]
    with torch.enable_grad():
        ws, mse, dist = invert(G, allx, idn, steps=args.invert_steps or 1000, w_perc=0, w_id=0)
    for n, d, e in zip(names, dist.tolist(), mse.tolist()):
        rep['inversion'][n] = {'id_distance': d, 'pixel_mse': e, 'recognised': d < 0.6}
    # held-out: the other Obama photos against the image of the latent inverted from obama_1
    i1 = names.index('obama_1')
    e1 = idn.embed(G.synthesis(ws[i1:i1 + 1], noise_mode='const'))
    rep['heldout_vs_inverted_obama_1'] = {n: idn.distance(e1, idn.embed(allx[names.index(n)][None])).item()
                                           for n in ('obama_2', 'obama_3') if n in names}
    # 2. random samples: face detected (dlib HOG after upsampling to 256), recognised as one of the people
    det = dlib.get_frontal_face_detector()
    ref = {p: idn.embed(x.to(device)) for p, (x, _) in photos.items()}
    z = torch.randn(args.n, G.cfg.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    found, who = 0, {p: 0 for p in people}
    for i in tqdm(range(0, args.n, 50), desc='samples'):
        img = G(z[i:i + 50], psi=0.7, noise_mode='const')
        big = torch.nn.functional.interpolate(img, size=256, mode='bilinear', align_corners=False)
        u8 = to_uint8(big)
        found += sum(len(det(np.ascontiguousarray(x), 0)) > 0 for x in u8)
        e = idn.embed(img)
        d = torch.stack([torch.cdist(e, r).min(dim=1).values for r in ref.values()], 1)  # [n, people]
        best = d.min(dim=1)
        for j, v in zip(best.indices.tolist(), best.values.tolist()):
            if v < 0.6:
                who[people[j]] += 1
    rep['samples'] = {'n': args.n, 'psi': 0.7, 'face_detected': found / args.n,
                      'recognised_as': {p: c / args.n for p, c in who.items()}}
    png = Path(args.out or ROOT / 'assets' / 'baby_samples.png')
    save_grid(G(z[:32], psi=0.7, noise_mode='const'), png, nrow=8)
    write_json(rep, png.with_name(png.stem + '_report.json'))  # assets/baby_samples_report.json by default
    print(json.dumps(rep, indent=1))
    return rep


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('runs', nargs='*', help='run folders written by train.py')
    p.add_argument('--sweep', action='store_true', help='evaluate the adapters over integration times T')
    p.add_argument('--T', default=None, help='comma-separated T values for --sweep (default 0..2x the trained T, 9 points)')
    p.add_argument('--curve', action='store_true', help='ID / retention over training from snapshots')
    p.add_argument('--compare', action='store_true', help='markdown table of the runs\' metrics.json')
    p.add_argument('--baby-report', dest='baby_report', action='store_true', help="the built-in generator's report")
    p.add_argument('--ckpt', default=str(ROOT / 'assets/baby.pt'), help='generator for --baby-report')
    p.add_argument('--n', type=int, default=1000, help='random samples for retention / Frechet distances / report')
    p.add_argument('--real', default=None, help='folder of real images (or .npz with mu, sigma) for dFD_real')
    p.add_argument('--id_net', default='dlib', choices=['dlib', 'arcface', 'curricularface'])
    p.add_argument('--id_weights', default=None)
    p.add_argument('--inception', default=None, help='FID Inception weights (pt_inception-2015-12-05-6726825d.pth): real FID')
    p.add_argument('--invert_steps', type=int, default=None,
                   help='inversion steps (default 300; 1000 for --baby-report, whose inversion uses pixels only)')
    p.add_argument('--out', default=None, help='output file for --curve / --baby-report pictures')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args()
    dev = torch.device(args.device)
    keep_freed_memory(dev)  # large generators on CPU: reuse freed activations instead of re-mapping them
    if args.baby_report:
        return baby_report(args, dev)
    if not args.runs:
        p.error('give one or more run folders (or --baby-report)')
    if args.compare:
        return compare(args.runs)
    if args.curve:
        return curve(args.runs, args, dev)
    for run in args.runs:
        if args.sweep:
            sweep(run, args, dev)
            continue
        m = evaluate_run(run, args, dev)
        write_json(m, Path(run) / 'metrics.json')
        print(table([{'run': str(run), **m}], list(m)[:0] + ['run'] + [k for k in m if isinstance(m[k], float)]))
        print(f'wrote {run}/metrics.json')


if __name__ == '__main__':
    main()
