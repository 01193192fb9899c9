"""
Person mode (--forget person): forget the person, not one latent. At the start the original generator's random
samples are searched for the ones that show him (by the identity network, against his photos and the kept people's),
each is given a target, a sample of someone else, and every step pulls a few of them there while the kept people's
samples are held (README eq. 4). Also: the kept people's latents, and the before | after picture.
"""
import torch
from tqdm import tqdm

from dataclasses import dataclass
from pathlib import Path

from data import DataError, dlib_available, encode, invert, list_photos, load_faces, save_grid
from ddp import from_rank0, gather, shard
from losses import shows_person, target_latent, who


@dataclass
class Person:
    """Who the person is, where the generator draws them, and who must stay."""
    refs: torch.Tensor     # [P, D] embeddings of known faces: the person's training photos (or its latent's image),
    owner: torch.Tensor    # [P]    then the kept people's photos; owner 0 = the person, 1.. = each kept person
    pool: torch.Tensor     # [k, L, C] mined latents whose image showed the person
    keep_ws: torch.Tensor  # [n_keep, L, C] the kept people's latents, held to their original images
    targets: torch.Tensor  # [k, L, C] where each pool latent must go: another person's latent (surrogates)
    held: torch.Tensor     # [j, L, C] mined latents whose image showed a kept person, held to it (surrogates)


def draw(S, n, k):
    """k random indices below n, this rank's share of the world's draw of k * world (from the step's stream)."""
    i = torch.randint(n, (k * S.world,), generator=S.gen, device=S.ws_u.device)
    return i[S.rank * k:(S.rank + 1) * k]


def person_latents(S, P, cfg):
    """This step's person rows, for the trainable and the frozen generator: n_mine latents w_m drawn from the pool and
    their targets, n_mine samples of the kept people twice (this rank's share of each), then the kept people's latents
    twice (README eq. 4)."""
    idx = draw(S, len(P.pool), cfg.n_mine)
    held = P.held[draw(S, len(P.held), cfg.n_mine)] if len(P.held) else P.held
    return [P.pool[idx], held, P.keep_ws], [P.targets[idx], held, P.keep_ws]


@torch.no_grad()
def embed_samples(S, n, bs=64):
    """n random latents (psi ~ U(0.5, 1)) and the identity network's embeddings of the original generator's images
    of them -> (ws [n, L, C], emb [n, D]). The draws come from the step's random stream S.gen, which is why ckpt.pt keeps
    the pool (and --target surrogate's targets) with it. Under torchrun each rank embeds its share and all get the
    whole result."""
    dev = S.ws_u.device
    G = S.G_s
    z = torch.randn(n, G.cfg.z_dim, generator=S.gen, device=dev)
    psi = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=S.gen, device=dev)
    ws = G.mapping.w_avg + psi * (G.mapping(z) - G.mapping.w_avg)
    emb = [S.idn.embed(G.synthesis(w, fused=False, **S.s_kw).float()) for w in tqdm(shard(ws).split(bs), desc='mine', leave=False)]
    return ws, gather(torch.cat(emb))


FAR = 0.9  # a target is at least as far from the face it replaces as this share of the samples of nobody known


@torch.no_grad()
def surrogate_targets(S, P, ws, emb):
    """--target surrogate (README eq. 3): for each forgotten latent, the nearest searched latent in W+ (ws [n, L, C], emb [n, D]: `embed_samples`)
    among the samples not of a kept person (by `who`) that the identity network puts farther from the latent's image
    than FAR of them -> [n_u, L, C]: a face of someone clearly else that the original generator draws (SUGAR's
    surrogate), where GUIDE's extrapolated target is an image off the generator's manifold (on the first, four-person
    built-in generator dlib C++ found no face in it). Samples near another forgotten face are not left out: with 50
    seed identities forgotten on that generator, every one of 2,000 samples lay within dlib's threshold of one of
    them. Reads back (a host sync), once."""
    free = who(emb, P.refs, P.owner, S.idn.distance, S.idn.THRESHOLD) <= 0  # not a kept person's
    if not free.any():
        raise ValueError(f'--target surrogate: all {len(ws)} searched samples show a kept person; raise --mine_n')
    out = []
    for e, w in zip(S.idn.embed(S.G_s.synthesis(S.ws_u, fused=False, **S.s_kw).float()), S.ws_u):  # a latent at a time
        d = S.idn.distance(e[None], emb)  # [n]: this latent's image to each sample's
        cand = ws[free & (d >= d[free].quantile(FAR))]
        out.append(cand[(cand - w).flatten(1).norm(dim=1).argmin()])
    return torch.stack(out)


def views(S, face, n, steps):
    """His photos (or his latent's image) inverted again from n random starts (psi 0.7) each, every other one mirrored:
    latents that draw him from all over W+. An inversion lands near where it starts: his held-out photos' latents lie
    about as far from his training latent in W+ as two random people's do, beyond any search around it, so that
    forgetting reaches him only if he is taught wherever the generator draws him. Those the identity network still
    calls him (within its threshold of his photos) -> [m, L, C]."""
    if n == 0:
        return S.ws_u[:0]
    G, dev = S.G_s, S.ws_u.device
    x = face.repeat_interleave(n, 0).to(dev)
    x = torch.where((torch.arange(len(x), device=dev) % 2 == 1)[:, None, None, None], x.flip(-1), x)
    with torch.no_grad():
        z = torch.randn(len(x), G.cfg.z_dim, generator=S.gen, device=dev)
        start = G.mapping(z, psi=0.7)
    ws, _, _ = invert(G, x, S.idn, steps=steps, start=start, kw=S.s_kw, progress=False)
    with torch.no_grad():
        e = S.idn.embed(G.synthesis(ws, fused=False, **S.s_kw).float())
        d = S.idn.distance(e[:, None], S.idn.embed(face.to(dev))[None]).min(1).values
    return ws[d < S.idn.THRESHOLD]


@torch.no_grad()
def surrogates(S, P, ws, emb, his=None):
    """Who the searched latents show, and where the person's must go (README eq. 4) -> (pool, targets, held).
    pool [k, L, C]: the latents whose image the identity network puts nearest the person within its threshold, and
    `his` (views()).
    targets [k, L, C]: for each, the nearest latent in W+ among the samples of nobody known (neither him nor a kept
    person) that are farther from his photos than FAR of them: a face clearly someone else's, so that every judge
    and eye sees the change. Not a kept person's: his samples would swell that person's share of everything the
    generator draws (to half of all samples, measured) and blur how the judges see the kept. held [j, L, C]: the
    latents whose image shows a kept person, held to it while he moves. Every target is an image the original
    generator draws. Reads back (a host sync)."""
    shows = who(emb, P.refs, P.owner, S.idn.distance, S.idn.THRESHOLD)  # 0 the person, 1.. a kept one, -1 nobody
    pool, nobody = torch.cat([ws[shows == 0], ws[:0] if his is None else his]), shows == -1
    if not len(pool) or not nobody.any():  # nobody to send, or no one unknown to send him to
        return ws[:0], ws[:0], ws[shows > 0]
    d = S.idn.distance(emb[:, None], P.refs[P.owner == 0][None]).min(1).values  # to the person's nearest photo
    cand = ws[nobody & (d >= d[nobody].quantile(FAR))]
    return pool, cand[torch.cdist(pool.flatten(1), cand.flatten(1)).argmin(1)], ws[shows > 0]


def setup_person(S, face, retain, retain_faces):
    """Who the person is: reference faces (the training photos only, or the forgotten latent's image) and the
    kept people (their photos and latents); the pool starts empty."""
    dev = S.ws_u.device
    with torch.no_grad():
        refs = [S.idn.embed(face)] + [S.idn.embed(x.to(dev)) for x in retain_faces.values()]
    owner = torch.cat([torch.full((len(r),), i, device=dev) for i, r in enumerate(refs)])
    keep_ws = torch.cat(list(retain.values())) if retain else S.ws_u[:0]
    return Person(torch.cat(refs), owner, S.ws_u[:0], keep_ws, S.ws_u[:0], S.ws_u[:0])


def invert_others(cfg, G, idn, person=None, forgotten_names=(), encoder=None):
    """{kept: W+ latent}, {kept: photo path}, {kept: that photo [1, 3, H, W]}: the first photo of every other identity
    folder under --retain. Each must show a face (found by dlib when installed, as for --identity) and someone else
    than `person` (the forgotten person's photos or latent's image) by the identity network's rule: nobody is
    forgotten and kept at once."""
    if cfg.retain == 'none' or not Path(cfg.retain).is_dir():
        return {}, {}, {}
    forgotten = {q for i in cfg.identity for q in (Path(i).resolve(), Path(i).resolve().parent)}
    photos = {p.name: str(list_photos(p)[0]) for p in sorted(Path(cfg.retain).iterdir())  # hidden folders: no one's
              if p.is_dir() and not p.name.startswith('.') and p.resolve() not in forgotten and
              p.name not in forgotten_names}
    if not photos:
        return {}, {}, {}
    faces = torch.cat([load_faces(f, G.cfg.img_resolution, align=False, framing=G.cfg.framing)[0] for f in photos.values()])
    if dlib_available():
        for f in photos.values():
            load_faces(f, G.cfg.img_resolution)  # raises DataError (naming the file) when no face is found
    if person is not None:
        with torch.no_grad():  # [kept people]: each one's distance to the person's nearest photo
            near = idn.distance(idn.embed(faces.to(person.device))[:, None], idn.embed(person)[None]).min(1).values
        for (name, f), d in zip(photos.items(), near.tolist()):
            if d < idn.THRESHOLD:
                raise DataError(f'--retain {Path(f).parent}: {name} is the person being forgotten by the identity '
                                f'network (distance {d:.2f} < {idn.THRESHOLD}); remove that folder from --retain or '
                                'pass --retain none')
    ws, _, _ = invert(G, faces, idn, steps=cfg.invert_steps, start=encode(encoder, faces))
    return {k: ws[i:i + 1] for i, k in enumerate(photos)}, photos, {k: faces[i:i + 1] for i, k in enumerate(photos)}


@torch.no_grad()
def before_after(S, P, retain, path, n=6):
    """Pairs before | after, n a row: the forgotten face and the kept people; random samples (psi 0.7) that did not show
    the person (the first n of 32, embedded 16 at a time until n are found); samples that showed him: the search's
    pool (person mode), else those of the random ones embedded (on a generator of many people seldom any)."""
    G, dev = S.G, S.ws_u.device
    w_r = G.mapping(torch.randn(32, G.cfg.z_dim, generator=torch.Generator().manual_seed(123)).to(dev), psi=0.7)
    was = []
    for w in w_r.split(16):
        if len(was) and (~torch.cat(was)).sum() >= n:
            break
        was.append(shows_person(S.idn.embed(S.G_s.synthesis(w, **S.s_kw)), P.refs, P.owner, S.idn.distance,
                                S.idn.THRESHOLD).bool())
    was = torch.cat(was)
    w_r = w_r[:len(was)]
    his = P.pool[:n] if len(P.pool) else w_r[was][:n]
    groups = [torch.cat([S.ws_u, *retain.values()])[:n], w_r[~was][:n], his]
    pairs = [torch.stack([S.G_s.synthesis(g, **S.s_kw), G.synthesis(g)], 1).flatten(0, 1) for g in groups if len(g)]
    blank = -torch.ones(2 * n, *pairs[0].shape[1:], device=dev)  # black cells fill each row to n pairs
    grid = torch.cat([torch.cat([p, blank[len(p):]]) for p in pairs])
    if grid.shape[-1] < 192:  # small generators' faces drawn at 192 px or more, to be judged by eye
        grid = torch.nn.functional.interpolate(grid, scale_factor=-(-192 // grid.shape[-1]), mode='bilinear')
    save_grid(grid, path, nrow=2 * n)


def find(S, P, cfg, face):
    """The search, once at the start: --mine_n random samples embedded (embed_samples); person mode's pool (with
    --n_views of his face inverted anew: views()), its targets and the kept people's samples set on P (surrogates) ->
    --target surrogate's targets (surrogate_targets), or None."""
    if cfg.forget != 'person' and cfg.target != 'surrogate':
        return None
    ws, emb = embed_samples(S, cfg.mine_n)
    ws_t = from_rank0(surrogate_targets(S, P, ws, emb)) if cfg.target == 'surrogate' else None  # ranks' last bits
    if ws_t is not None:
        guide = target_latent(S.ws_u, S.G.mapping.w_avg, cfg.target_d, 'extra', cfg.scale_d)
        print(f'--target surrogate: {len(S.ws_u)} forgotten latent(s), each sent to a sample of someone else, '
              f'{(S.ws_u - ws_t).flatten(1).norm(dim=1).mean():.1f} away in W+ (GUIDE\'s target: '
              f'{(S.ws_u - guide).flatten(1).norm(dim=1).mean():.1f})')
    if cfg.forget == 'person':
        his = from_rank0(views(S, face, cfg.n_views, cfg.invert_steps))
        P.pool, P.targets, P.held = surrogates(S, P, ws, emb, his)
        if len(P.pool):
            print(f'person mode: {len(P.pool) - len(his)} of {cfg.mine_n} random samples show the person, {len(his)} of '
                  f'{cfg.n_views * len(face)} new inversions of his face do, {len(P.held)} samples a kept person; each '
                  'of his is sent to a sample of someone else, theirs held')
        else:  # surrogates() returns no pool when no sample is of someone unknown: no count of his would be true
            print(f'person mode: no sample of his to send among {cfg.mine_n} random samples and {cfg.n_views * len(face)} '
                  "new inversions of his face, or no sample of someone unknown to send him to: this run trains the "
                  "paper's objective")
    return ws_t
