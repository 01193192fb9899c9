"""
The judges: who a generated face is, by the identity network of the loss and, where installed, dlib's own C++ pipeline
and HSE FaceRes-deep (evaluation only: training never loads it); each judge's same-person threshold, fixed on the
original generator alone; the leak (how often fresh samples still show the forgotten person) and the face-feature
Frechet distance.
"""
import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from tqdm import tqdm

from data import dlib_available, load_faces, to_uint8
from ddp import gather, reduce_sum, shard, world
from helpers import atomic_save, digest, person_name
from id_net import DlibCpp, FaceRes, load_id_net
from losses import who
from model import generate
from perceptual import FIDInception


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


class Judge:
    """Identity network, photo embeddings and fixed random latents shared by all the measurements."""

    def __init__(self, args, device, framing=None):
        self.idn = load_id_net(args.id_net, args.id_weights, framing).to(device)
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


NEIGHBOURS = 64  # a latent's neighbours of each kind (fewer only when --samples is smaller: quick looks, the tests)
MOVES = (0.1, 0.2)  # small moves in W: lengths as a share of a fresh sample's mean distance to w_avg
MOVES_STREAM = 3 << 40  # their directions: a stream neither the evaluation nor the calibration draws
SEARCH = 20  # his former samples: fresh samples searched for them per --samples (500: 10,000)
SEARCH_STREAM = 4 << 40  # and their stream


def neighbours(G, w, seed, n=NEIGHBOURS):
    """A latent's neighbourhood, n of each kind -> {kind: ws [n, L, C]}: 'mixed', w [1, L, C] with the styles of the
    generator's top two resolutions (colour, light, fine texture: not who it is) from n fresh samples (psi 0.7);
    'moved_r', w moved in W (the same step on every layer) in n random directions by r times the mean distance of a
    fresh sample (psi 1) to w_avg, for r in MOVES."""
    fine = G.synthesis.num_ws - 5  # the first style of the block at half the resolution
    ws = eval_latents(G, n, seed)
    mixed = torch.cat([w[:, :fine].expand(n, -1, -1), ws[:, fine:]], 1)
    reach = (eval_latents(G, n, seed, psi=1)[:, 0] - G.mapping.w_avg).norm(dim=1).mean()
    u = torch.randn(n, w.shape[-1], generator=torch.Generator().manual_seed(MOVES_STREAM + seed)).to(w.device)
    u = u / u.norm(dim=1, keepdim=True)
    return {'mixed': mixed, **{f'moved_{r:g}': w + (r * reach * u)[:, None] for r in MOVES}}


def seeds(args):
    """--seed 1,2,3 -> [1, 2, 3]: the leak is counted on each, the rest on the first."""
    try:
        out = [int(s) for s in str(args.seed).split(',')]
    except ValueError:
        raise ValueError(f'--seed {args.seed}: write integers separated by commas, e.g. 1,2,3') from None
    if not all(0 <= s < 2 ** 40 for s in out):
        raise ValueError(f'--seed {args.seed}: evaluation seeds are integers 0 <= N < 2**40')
    if len(set(out)) < len(out):  # one seed counted twice would report a spread of 0 between two identical counts
        raise ValueError(f'--seed {args.seed}: a seed given twice; give each once')
    return out


def known_people(meta, G_s, s_kw, size=256):
    """{name: [k, 3, size, size] aligned images}: the forgotten person first (all its photos, held-out ones too,
    or the image of the forgotten latent when it was given as seed:N / a latent file), then every kept person's
    folder under the run's --retain. Several forgotten (per_person's view): the others after him, before the kept."""
    out, many = {}, 'also_forgotten' in meta
    for ident, ws in [(meta['identity'], meta['ws_u'])] + meta.get('also_forgotten', []):  # him first
        if ident.get('kind') == 'photos':
            p = Path(ident['path'])
            out[person_name(ident)] = load_faces(p if p.is_dir() else p.parent, size, framing=G_s.cfg.framing)[0]
        else:
            img = generate(G_s, ws.to(G_s.mapping.w_avg.device), s_kw).cpu()
            out[person_name(ident) if many else 'forgotten'] = torch.nn.functional.interpolate(
                img, size=size, mode='bilinear', align_corners=False)
    for name, photo in (meta.get('retain_photos') or {}).items():
        out[name] = load_faces(Path(photo).parent, size, framing=G_s.cfg.framing)[0]
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
    to the person after, the floor (how close the samples that never showed him were before), and the share of those
    others the judge calls the same person as their own image before."""
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
        stay = ~showed & emb_b[:, 0].isfinite() & emb_a[:, 0].isfinite()  # everyone else: still themselves?
        never = ~showed & db[:, 0].isfinite()
        showed = showed & da[:, 0].isfinite()
        mean = lambda v: v.mean().item() if len(v) else float('nan')  # noqa: E731
        m.update(showed_n=int(showed.sum()), showed_dist_before=mean(db[showed, 0]), showed_dist_after=mean(da[showed, 0]),
                 showed_called_after=mean((ia[showed] == 0).float()),
                 floor_dist=mean(db[never, 0]), floor_called=mean((ib[never] == 0).float()),
                 others_n=int(stay.sum()), others_themselves=mean((dist(emb_b[stay], emb_a[stay]) < thr).float()))
    return m


def cpp_judged(u8, cpp, faceres=None):
    """dlib C++'s descriptors of uint8 images (NaN rows where it finds no face), and FaceRes's of the same faces: one
    detection and alignment for both."""
    faces = cpp.detect(u8)
    return {'dlib_cpp': cpp.describe(u8, faces), **({'faceres': faceres.describe(faces)} if faceres is not None else {})}


CACHE = Path.home() / '.cache' / 'legato'  # what the original generator's side of an evaluation gave (delete freely)
SOURCES = ('judges.py', 'id_net.py', 'model.py', 'data.py')  # the code of the judges and the generator: in every key


CODE = hashlib.sha256(b''.join((Path(__file__).parent / f).read_bytes() for f in SOURCES)).hexdigest()  # as imported


def original(panel, G_s, s_kw, what, fn, ws):
    """fn(): the judges' embeddings of G_s's images of ws, once for each generator, latents and judges: the
    thresholds, the samples before and the search for his samples read nothing unlearned, so every run of one
    generator shares them (kept in CACHE: half the images the judges see in one evaluation, and the search)."""
    if world()[1] > 1:  # under torchrun fn() gathers: every process must draw, or none
        return fn()
    frozen = {k: v for k, v in G_s.state_dict().items() if '.adapter.' not in k}  # a run's adapters are off in s_kw
    s_kw = {k: v for k, v in s_kw.items() if (k, v) != ('T', 0)}  # at T = 0 the adapters are skipped: as without any
    key = repr((panel.digest, digest(frozen), G_s.cfg.framing, s_kw, digest({'ws': ws.contiguous()})))  # framing: the crop
    path = CACHE / f'{what}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt'
    try:
        return torch.load(path, map_location=panel.J.device, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):  # none yet, or unreadable: drawn again
        out = fn()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(out, path)
    except OSError:  # a cache that cannot be written only costs time
        pass
    return out


class Panel:
    """The judges of the leak, and who fresh samples are by each: the identity network (the fixed crop of the generator image); when
    dlib-bin is installed dlib's own C++ detector, alignment and descriptor; with --faceres, HSE FaceRes-deep on
    the same detection (an evaluation-only network). Each judge's threshold is fixed on the original generator by
    calibrate. The known people are embedded once by each."""

    def __init__(self, people, J, cpp=None, faceres=None):
        self.names, self.J, self.cpp, self.faceres = list(people), J, cpp, faceres
        self.rules = {J.name: (J.dist, None)}  # judge: (distance, same-person threshold: set by calibrate)
        if cpp is not None:
            self.rules['dlib_cpp'] = (DlibCpp.distance, None)
        if faceres is not None:
            self.rules['faceres'] = (FaceRes.distance, None)
        with torch.no_grad():
            embs = [self.embed(x.to(J.device)) for x in people.values()]
        self.refs = {j: [e[j] for e in embs] for j in self.rules}
        self.digest = repr((digest(J.idn), faceres and digest(faceres), cpp is not None, torch.device(J.device).type,
                            CODE))

    @torch.no_grad()
    def embed(self, imgs):
        out = {self.J.name: self.J.emb(imgs)}
        return {**out, **cpp_judged(to_uint8(imgs), self.cpp, self.faceres)} if self.cpp is not None else out

    def drawn(self, G, ws, kw, desc):
        """embed() of G's images of ws, 64 at a time, with a progress bar (the C++ judge takes ~80 ms an image)."""
        parts = [self.embed(generate(G, w, kw)) for w in tqdm(ws.split(64), desc=desc, leave=False)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def recognise(self, judge, emb, thr=None):
        """recognise() by one judge: the nearest known person within its threshold (or thr), -1 for nobody."""
        dist, t = self.rules[judge]
        if t is None and thr is None:
            raise ValueError(f'{judge} has no threshold yet: call judges.calibrate(panel, ...) first')
        return recognise(emb, self.refs[judge], dist, t if thr is None else thr)

    def latents(self, G_s, G_u, s_kw, u_kw, meta, held=None):
        """Who the forgotten latent, each kept person's latent and the latents of his held-out photos (held: {name: w})
        are, by each judge, before and after -> ({judge: {name: [before, after]}}, 'nobody' when no known person is
        within the threshold; {judge: {name: [before, after]}}, the distance to the nearest photo of the person it
        showed: his for the held-out, inf where no face was found)."""
        dev = G_s.mapping.w_avg.device
        rows = {self.names[0]: meta['ws_u'][:1], **(meta.get('retain_ws') or {}), **(held or {})}
        ws = torch.cat([w.to(dev) for w in rows.values()])
        own = [0 if i == 0 or n in (held or {}) else self.names.index(n) if n in self.names else None
               for i, n in enumerate(rows)]  # whose photos each row is measured against (None: a kept latent without)
        eb, ea = self.embed(generate(G_s, ws, s_kw)), self.embed(generate(G_u, ws, u_kw))
        name = lambda i: self.names[i] if i >= 0 else 'nobody'  # noqa: E731
        who, far = {}, {}
        for j in self.rules:
            (ib, db), (ia, da) = self.recognise(j, eb[j]), self.recognise(j, ea[j])
            who[j] = {n: [name(b), name(a)] for n, b, a in zip(rows, ib.tolist(), ia.tolist())}
            far[j] = {n: [db[i, p].item(), da[i, p].item()] for i, (n, p) in enumerate(zip(rows, own)) if p is not None}
        return who, far

    def neighbourhood(self, G_s, G_u, s_kw, u_kw, w, seed, n=NEIGHBOURS, before=None):
        """His latent's neighbours (neighbours()), who they are before and after by each judge -> ({kind: {judge:
        {called_before, called_after, dist_before, dist_after}}}, before): the share the judge calls him (the nearest
        known person within its threshold; a face not found is not him) and the mean distance to his nearest photo
        (faces found only). `before` (what an earlier call returned) skips drawing them in G_s again."""
        out, before = {}, before or {}
        for kind, ws in neighbours(G_s, w, seed, n).items():
            if kind not in before:
                before[kind] = original(self, G_s, s_kw, 'neighbours', lambda: self.drawn(
                    G_s, ws, s_kw, f'neighbourhood: {kind}, before'), ws)
            r = {}
            for when, emb in (('before', before[kind]), ('after', self.drawn(G_u, ws, u_kw, f'neighbourhood: {kind}, after'))):
                for j in self.rules:
                    ids, d = self.recognise(j, emb[j])
                    d = d[:, 0][d[:, 0].isfinite()]
                    r.setdefault(j, {})[f'called_{when}'] = (ids == 0).float().mean().item()
                    r[j][f'dist_{when}'] = d.mean().item() if len(d) else float('nan')
            out[kind] = r
        return out, before

    def former(self, G_s, G_u, s_kw, u_kw, n, seed, most):
        """His former samples, searched for among n fresh ones (psi 0.7, a stream of their own): those the identity
        network puts within its published threshold of his nearest photo (the port's 0.6, looser than any judge's
        rule, so that each judge still makes its own call), the nearest `most` of them drawn before and after ->
        {'searched': n, 'found': k, judge: {n, called_after, dist_before, dist_after}} over the drawn samples that
        judge calls him before."""
        ws = eval_latents(G_s, n, SEARCH_STREAM + seed)
        thr = self.J.idn.THRESHOLD
        emb = original(self, G_s, s_kw, 'search', lambda: torch.cat([self.J.emb(generate(G_s, w, s_kw)) for w in tqdm(
            ws.split(64), desc='his samples: search', leave=False)]), ws)
        near = self.recognise(self.J.name, emb, thr)[1][:, 0]
        out = {'searched': n, 'found': int((near < thr).sum())}
        ws = ws[near.argsort()[:min(out['found'], most)]]
        if not len(ws):
            return out
        before, after = self.drawn(G_s, ws, s_kw, 'his samples, before'), self.drawn(G_u, ws, u_kw, 'his samples, after')
        for j in self.rules:
            (ib, db), (ia, da) = self.recognise(j, before[j]), self.recognise(j, after[j])
            was = ib == 0
            out[j] = {'n': int(was.sum()), 'called_after': (ia[was] == 0).float().mean().item() if was.any() else None,
                      'dist_before': db[was, 0].mean().item() if was.any() else None,
                      'dist_after': da[was, 0][da[was, 0].isfinite()].mean().item() if was.any() else None}
        return out

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


CALIBRATION_SEED = 1 << 40  # the thresholds: samples of a stream no evaluation seed (< 2**40) draws
CALIBRATION_N = 500  # samples the thresholds are fixed on (124,750 pairs): any --samples from 500 up gives the same
FMR = 1e-3  # a judge's same-person threshold for a generator: the distance 1 in 1,000 pairs of its random samples fall under


def pair_distances(emb, dist):
    """The distances of all pairs of the samples with a face (NaN rows: none found) -> (faces, distances), a row at a
    time (memory grows with the pairs, not with pairs x descriptor width)."""
    e = emb[emb[:, 0].isfinite()]
    d = [dist(e[k:k + 1], e[k + 1:]) for k in range(len(e) - 1)]
    return len(e), torch.cat(d).double() if d else e.new_zeros(0, dtype=torch.double)


def fmr_threshold(emb, dist):
    """The rule: the distance under which FMR of all pairs of random samples (psi 1) fall; NaN when fewer than two
    faces were found (no threshold: the judge recognises nobody). A generator of many people draws almost only
    different people at random, so this is the judge's false-match rate on its faces (at psi 1; at psi 0.7 faces are
    more alike and more pairs fall under it); dlib's 0.6 was set on real photos and calls 14% of the teacher's random
    pairs one person. On a generator of a few people (the four-person baby) random pairs are often one person and the
    rule's premise fails."""
    faces, d = pair_distances(emb, dist)
    return round(d.quantile(FMR).item(), 3) if faces >= 2 else float('nan')


def calibrate(panel, G_s, s_kw, n=CALIBRATION_N):
    """Fix every judge's same-person threshold on the original generator alone (nothing unlearned enters it):
    fmr_threshold of min(n, CALIBRATION_N) samples (psi 1) of the calibration stream (fewer only for quick looks and
    the tests). Sets them in the panel, prints and returns them."""
    n = min(n, CALIBRATION_N)
    ws = shard(eval_latents(G_s, n, CALIBRATION_SEED, psi=1))
    emb = original(panel, G_s, s_kw, 'thresholds', lambda: {k: gather(v) for k, v in panel.drawn(
        G_s, ws, s_kw, 'thresholds, original generator').items()}, ws)
    panel.rules = {j: (dist, fmr_threshold(emb[j], dist)) for j, (dist, _) in panel.rules.items()}
    thr = {j: t for j, (_, t) in panel.rules.items()}
    print('same person below: ' + ', '.join(f'{j} {t}' for j, t in thr.items()) + f' (1 in {1 / FMR:.0f} pairs of '
          f'{n} samples of the original generator)')
    for j, t in thr.items():
        if t != t:  # NaN
            print(f'warning: {j} finds fewer than two faces in {n} samples of the original generator: no threshold, '
                  'it recognises nobody and its leak reads 0')
    return thr


def make_panel(meta, G_s, s_kw, J, args):
    """The judges of the leak, their thresholds fixed on the original generator first (calibrate)."""
    cpp, path = DlibCpp(G_s.cfg.framing) if dlib_available() else None, getattr(args, 'faceres', None)
    if path and cpp is None:
        raise ValueError('--faceres needs dlib-bin for its face alignment; run pip install -r requirements.txt')
    faceres = FaceRes(path).to(J.device) if path else None
    c = Panel(known_people(meta, G_s, s_kw), J, cpp, faceres)
    calibrate(c, G_s, s_kw, args.n)
    return c


def leak(G_s, G_u, s_kw, u_kw, panel, n, seed, before=None):
    """How often n fresh samples (psi 0.7, evaluation seed) show the forgotten person, before and after, by each
    judge. `before` (panel.embed of G_s's samples) can be passed to skip drawing them again. Each process draws its
    share of the samples; the embeddings are gathered, so any number of processes count the same."""
    ws = shard(eval_latents(G_s, n, seed))
    before = before or original(panel, G_s, s_kw, 'leak', lambda: panel.drawn(G_s, ws, s_kw, f'leak: seed {seed}, before'),
                                ws)
    after = panel.drawn(G_u, ws, u_kw, f'leak: seed {seed}, after')
    return {'leak_n': n, 'leak_seed': seed, 'leak_psi': 0.7, 'people': panel.names,
            **panel.counts(gather(before), gather(after))}, before


def leak_summary(runs, panel):
    """Mean and spread (standard deviation over the evaluation seeds) of the headline leak numbers; per judge also
    the samples that showed the person before (by dlib C++), the judge's floor (the samples that never did) and the
    share of those it calls themselves after."""
    out = {}
    for judge in panel.rules:
        for key in ('leak_before', 'leak_after'):
            v = np.array([r[judge][key] for r in runs])
            out[f'{key.replace("leak_", f"leak_{judge}_")}'] = float(v.mean())
            out[f'{key.replace("leak_", f"leak_{judge}_")}_sd'] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        for key in ('showed_dist_before', 'showed_dist_after', 'showed_called_after', 'floor_dist', 'floor_called',
                    'others_themselves'):
            k = key.replace('showed_', f'showed_{judge}_').replace('floor_', f'floor_{judge}_').replace(
                'others_', f'others_{judge}_')
            out[k] = float(np.mean([r[judge][key] for r in runs]))
        for name in panel.names[1:]:  # the kept people's shares of the samples
            for when in ('before', 'after'):
                out[f'share_{judge}_{name}_{when}'] = float(np.mean([r[judge][f'share_{when}'][name] for r in runs]))
        if judge == 'dlib_cpp':
            out['face_after'] = float(np.mean([r[judge]['face_after'] for r in runs]))
    out['thresholds'] = {j: t for j, (_, t) in panel.rules.items()}
    return out
