"""
Several people: forgotten together (--identity given more than once), one run each (--each), or one after another
(--init RUN: start from RUN's adapters, its people stay forgotten).
"""
import shlex
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from data import LATENT_EXTS, DataError, list_photos, load_faces, load_latent, resolve_identity, seed_of
from ddp import distributed, from_rank0
from helpers import CheckpointError, contents, device, people_of
from lifecycle import check_people, default_out, keep_photos, launcher, name_of
from model import Generator
from ode_adapter import run_meta, trainable_state
from person import invert_others


def who_to_forget(cfg, R, G, idn, dev, init=None, encoder=None):
    """Who is forgotten and who kept -> (ws_u: the person's latents, the photos inverted; face: the images the
    identity network knows him by, his training photos or his latent's image; retain_faces: {kept person: photo}).
    The run's record R gets the identity's info and the kept people's latents and photos, and the photos evaluation
    reads are copied into the run folder."""
    ws, faces, infos = [], [], []
    for spec in (earlier_people(init, G) if init else []) + cfg.identity:  # with several, all forgotten together
        w, info = spec if isinstance(spec, tuple) else resolve_identity(spec, G, idn, cfg.invert_steps, encoder)
        w = from_rank0(w.to(dev))  # the ranks' inversions may differ in the last bits
        if not torch.isfinite(w).all():
            raise DataError(f'{spec}: the latent holds NaN or Inf values; pass a finite latent')
        photos = info.pop('photos', None)  # the training photos of the person (person mode's reference)
        if photos is not None and Path(info['path']).is_file():  # one photo: which others of its folder are him?
            info['held_out'] = held_out_of(Path(info['path']), photos.to(dev), G, idn)
        with torch.no_grad():  # the person as the identity network sees them: the photos, or the latent's image
            faces.append(photos.to(dev) if photos is not None else G.synthesis(w))
        ws.append(w)
        infos.append(info)
    if len(infos) > 1:
        infos = [{**info, 'rows': len(w)} for info, w in zip(infos, ws)]
    ws_u, face = torch.cat(ws), torch.cat(faces)  # [sum of rows, L, C]; person mode knows them all as "the person"
    R.info = infos[0] if len(infos) == 1 else {'kind': 'many', 'people': infos}
    earlier = [info['name'] for info in infos[:len(infos) - len(cfg.identity)] if 'name' in info]  # --init's
    retain, R.retain_photos, retain_faces = invert_others(cfg, G, idn, face, earlier, encoder)
    R.retain = {k: from_rank0(v) for k, v in retain.items()}
    keep_photos(R.info, R.retain_photos, R.out, R.writer)
    for info in infos[len(infos) - len(cfg.identity):]:  # this run's people (--init's were inverted by its run)
        if 'inversion_id_distance' in info:
            print(f'inverted {len(info["inversion_id_distance"])} photo(s): identity distance '
                  f'{[round(d, 3) for d in info["inversion_id_distance"]]}')
    return ws_u, face, retain_faces


@torch.no_grad()
def held_out_of(photo, face, G, idn):
    """The other photos of a photo's folder that the identity network calls the same person as it (face: its aligned
    image): his held-out photos, which the run keeps for evaluation. The rest (someone else, no face, unreadable) stay
    out of the run, with a warning: a folder of unrelated photos is not his."""
    keep, ref = [], idn.embed(face)
    for f in list_photos(photo.parent):
        if f == photo:
            continue
        try:
            d = idn.distance(idn.embed(load_faces(f, G.cfg.img_resolution, framing=G.cfg.framing)[0].to(face.device)),
                             ref).min().item()
        except DataError as e:
            warnings.warn(f'not kept as a held-out photo: {e}')
            continue
        if d < idn.THRESHOLD:
            keep.append(f.name)
        else:
            warnings.warn(f'{f}: not kept as a held-out photo of {photo.name}: the identity network calls it someone '
                          f'else (distance {d:.2f}, same person below {idn.THRESHOLD})')
    return keep


def start_from(G, init, cfg, n_earlier):
    """--init: G's adapters set to the earlier run's (init: load_init's dict), whose n_earlier people stay forgotten."""
    sd = {'.adapter.'.join(k.split('.', 1)): v for k, v in init['state_dict'].items()}
    if sd.keys() != trainable_state(G).keys():
        raise ValueError(f'--init {cfg.init}: its adapters sit on other blocks than this run\'s; pass a run of this '
                         'generator')
    G.synthesis.load_state_dict(sd, strict=False)
    print(f'--init {cfg.init}: its adapters to start from; its {n_earlier} forgotten people stay forgotten')


def earlier_people(meta, G):
    """--init RUN (load_init's dict): the people RUN forgot, [(latents, identity record with its training photos)],
    as RUN had them: their latents are not inverted again, their photos are read from RUN's folder."""
    people = people_of(meta['identity'])
    out = []
    for p, w in zip(people, meta['ws_u'].split([p.get('rows', len(meta['ws_u'])) for p in people])):
        p = {k: v for k, v in p.items() if k != 'rows'}
        if p['kind'] == 'photos':
            p['photos'] = load_faces(p['path'], G.cfg.img_resolution, framing=G.cfg.framing)[0]
        out.append((w, p))
    return out


def load_init(cfg, sha):
    """--init RUN's adapter.pt (photo paths pointing into RUN); refused when RUN was trained on another generator than
    this run's (sha: its digest)."""
    meta = run_meta(cfg.init)
    if meta.get('generator_sha', sha) != sha:
        raise CheckpointError(f'--init {cfg.init}: trained on other generator weights than --ckpt {cfg.ckpt}; pass the '
                              'generator it was trained on with --ckpt')
    hidden = (meta.get('adapter') or {}).get('hidden')  # a full fine-tune stores no adapter settings
    if meta.get('kind') != cfg.adapter or hidden != cfg.hidden:
        raise ValueError(f"--init {cfg.init}: its adapters ({meta.get('kind')}, hidden {hidden}) are not this run's "
                         f'({cfg.adapter}, hidden {cfg.hidden}); pass the same --adapter and --hidden')
    forgotten_already(meta, cfg)
    mine = {'T': cfg.t_end, 'h': cfg.step, 'solver': cfg.solver, 'backend': cfg.backend}
    if cfg.adapter == 'ode' and any(meta['adapter'][k] != v for k, v in mine.items()):  # its people were forgotten there
        theirs = ', '.join(f'{k} {meta["adapter"][k]}' for k in mine)
        raise ValueError(f'--init {cfg.init}: its adapters were trained at {theirs}; pass the same --t_end, --step, '
                         '--solver and --backend (its forgetting is at its dial)')
    return meta


def forgotten_already(meta, cfg):
    """--init RUN refused when this run's --identity is someone RUN forgot: the same seed, latent file, or
    one of his photos (his held-out photos included), under any name."""
    earlier = people_of(meta['identity'])
    seeds = {p.get('seed') for p in earlier if p.get('kind') == 'seed'}
    paths = [Path(p['path']) for p in earlier if isinstance(p.get('path'), str)]
    paths += [Path(p['path']).parent / h for p in earlier for h in p.get('held_out', [])]  # his other photos too
    files = set().union(*map(contents, paths))
    for spec in cfg.identity:
        seed = seed_of(spec)
        if seed in seeds or (seed is None and contents(spec) & files):
            raise ValueError(f'--init {cfg.init}: it forgot --identity {spec} already; --init starts the next person '
                             '(pass another --identity); to train a stopped run on, use --resume')


def each(argv, cfg, start, run):
    """--each: one run per person, out/<person>, each started and run by train.py's `start` and `run`. --identity a
    folder of person folders: each run keeps the other people of the folder; --identity given several times (photos,
    latents, seed:N): one run per identity, each keeping --retain. Under torchrun the people are spread over the ranks,
    each run in one process."""
    folder = Path(cfg.identity[0])
    if len(cfg.identity) > 1:  # one run per --identity, every run with the same --retain
        people, retain = [(name_of(i), i) for i in cfg.identity], []
    else:
        people = [(p.name, str(p)) for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else []
        retain = ['--retain', str(folder)]
    if len(people) < 2:
        raise SystemExit(f'error: --identity {folder}: --each needs a folder of two or more person folders, or two or '
                         'more --identity')
    names = [n for n, _ in people]
    if len(set(names)) < len(names):
        raise SystemExit(f'error: --each: two identities named {min(n for n in names if names.count(n) > 1)}; their '
                         'runs would share a folder')
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    try:
        device(cfg.device)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    check_people([p for _, p in people])  # nobody twice, each there: before the first run, not hours in
    G = Generator.from_checkpoint(cfg.ckpt) if any(Path(p).suffix.lower() in LATENT_EXTS for _, p in people) else None
    for name, p in people:  # every person's photos and latents, before the first run: a faceless folder fails now
        try:
            if Path(p).suffix.lower() in LATENT_EXTS:
                load_latent(p, G)
            elif seed_of(p) is None:
                load_faces(list_photos(p)[0], 64)  # the first photo: the kept person's latent in the others' runs
        except DataError as e:
            raise SystemExit(f'error: --identity {p}: person {name}: {e}') from None
    rank, world, dev = distributed(cfg.device, group=False)  # the runs are independent: no process group
    hint = f'{launcher()} {shlex.join(a for a in argv if a != "--resume")} --resume'
    runs = []
    for name, p in people[rank::world]:
        if (out / name / 'adapter.pt').exists() and cfg.resume:
            print(f'{out / name}: finished already')
            continue
        resume = ['--resume'] if (out / name / 'ckpt.pt').exists() and cfg.resume else []
        one, out_p, ck = start([a for a in argv if a != '--resume'] + resume + retain + ['--out', str(out / name)], [p])
        runs.append(run(replace(one, each=False), out_p, ck, dev, 0, 1, hint))
    return runs
