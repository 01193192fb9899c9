"""
The unlearning objective: GUIDE's target latent and local / adjacency / global losses, LEGATO's trajectory
consistency. The networks that judge images are in id_net.py (identity) and perceptual.py.

Facts and weights follow the official LEGATO code (a fork of GUIDE's); its loss-accumulation bug (the last
trajectory step counted twice) is not reproduced.
"""
import itertools
import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch


# -----------------------------------------------------------------------------
# latents

def target_latent(w_u, w_avg, d=30.0, mode='extra', scale_d=False):
    """GUIDE's target: w_avg - d (w_u - w_avg) / ||w_u - w_avg||, the norm over the whole W+ tensor. README eq. 3.

    w_u: [N, num_ws, w_dim]. mode 'average' gives w_avg itself. scale_d=True multiplies d by
    sqrt(num_ws * w_dim / (14 * 512)), i.e. keeps the per-element distance of the paper's 256 px generator
    (14 x 512 W+), for generators with another W+ size (the built-in one's is 10 x 128)."""
    if mode == 'average':
        return w_avg.expand_as(w_u).clone()
    if mode != 'extra':
        raise ValueError(f"unknown target mode {mode!r}; choose 'extra' or 'average'")
    if scale_d:
        d = d * math.sqrt(w_u.shape[1] * w_u.shape[2] / (14 * 512))
    v = w_u - w_avg
    return w_avg - d * v / v.flatten(1).norm(dim=1)[:, None, None]


def adjacency_offsets(w_u, w_r, alpha):
    """Delta = alpha (w_r - w_u) / ||w_r - w_u||: steps from the identity towards random latents. README eq. 3
    (train.sample_latents draws w_r and alpha).

    w_u [N, L, C], w_r [N, n, L, C], alpha [N, n] -> [N, n, L, C]."""
    v = w_r - w_u[:, None]
    return alpha[..., None, None] * v / v.flatten(2).norm(dim=2)[..., None, None]


# -----------------------------------------------------------------------------
# the objective

class Seen(NamedTuple):
    """A batch of images as the loss sees them: pixels [N, 3, H, W], perceptual feature maps, embeddings [N, D]."""
    img: torch.Tensor
    feats: list
    emb: torch.Tensor

    def rows(self, i, j=None):
        return Seen(self.img[i:j], [f[i:j] for f in self.feats], self.emb[i:j])

    def cat(self, other):
        return Seen(torch.cat([self.img, other.img]), [torch.cat(fs) for fs in zip(self.feats, other.feats)],
                    torch.cat([self.emb, other.emb]))


def describe(img, id_net, perceptual):
    """[-1, 1] images -> Seen (one pass of the identity network when it also gives the perceptual features)."""
    if getattr(perceptual, 'net', None) is id_net:  # the offline stand-in reads the identity network's features
        emb, feats = id_net.features(img)
        return Seen(img, feats, emb)
    return Seen(img, perceptual.features(img), id_net.embed(img))


@dataclass(frozen=True)
class Weights:
    """The objective's weights (README eq. 4; train.py's --w_* flags, whose defaults and help are the one source): GUIDE's
    image loss (pix, perc, id) and its local / adjacency / global terms, LEGATO's trajectory consistency, person mode's
    terms and pixel weight."""
    pix: float
    perc: float
    id: float
    adj: float
    glob: float
    tc: float
    person: float
    keep: float
    pix_person: float  # the pixel weight of person mode's image loss
    tc_blocks: tuple = ()  # the adapters trajectory consistency counts, e.g. ('b128',); () all

    @classmethod
    def of(cls, cfg):
        """From train.Config: --w_pix -> pix, ..., --tc_blocks b64,b128 -> ('b64', 'b128')."""
        return cls(**{f.name: getattr(cfg, 'w_' + f.name) for f in fields(cls) if f.name != 'tc_blocks'},
                   tc_blocks=tuple(cfg.tc_blocks.split(',')) if cfg.tc_blocks else ())


class Rows(NamedTuple):
    """How many rows of the step's batch each group is, in batch order (README eq. 4)."""
    u: int          # the forgotten latents w_u (their images towards G_s(w_t): local)
    adj: int        # w_u + delta, n_adj per w_u (towards G_s(w_t + delta): adjacency)
    glob: int       # random latents (held to their own image: global)
    mined: int = 0  # person mode: the person's mined latents (towards their targets: person)
    held: int = 0   # mined samples of the kept people (held to their image: keep)
    kept: int = 0   # the kept people's latents (held to their image: keep)

    def slices(self):
        """{group: slice of the batch}."""
        ends = itertools.accumulate(self)
        return {k: slice(e - n, e) for k, n, e in zip(self._fields, self, ends)}


def image_terms(u, s, perceptual, id_distance):
    """Each row of u against the same row of s: pixel MSE, perceptual and identity distances -> ([N], [N], [N])."""
    return (u.img - s.img).square().mean(dim=[1, 2, 3]), perceptual(u.feats, s.feats), id_distance(u.emb, s.emb)


def image_loss(terms, pix, perc, id):
    """GUIDE's image loss per sample from image_terms' three [N] vectors: pix MSE + perc perceptual + id identity
    -> [N]. README eq. 4's l(a, b)."""
    mse, p, i = terms
    return pix * mse + perc * p + id * i


def trajectory_consistency(traj, n, blocks=(), device=None):
    """LEGATO's smoothness term (README eq. 5): the mean squared increment between successive grid states,
    averaged over steps and over the adapters (all, or those named in `blocks`, e.g. ('b128',)); only the first n
    samples (the forgotten latents w_u, not the mined ones) count. Each increment counts once (the official code
    counts the last one twice)."""
    terms = []
    for name, states in traj.items():
        if (blocks and name not in blocks) or len(states) < 2:
            continue
        first = [x[:n] for x in states]  # the forgotten latents' rows of each state, sliced once
        steps = [(b - a).square().mean() for a, b in zip(first[:-1], first[1:])]
        terms.append(torch.stack(steps).mean())
    return torch.stack(terms).mean() if terms else torch.zeros((), device=device)


def total(L, wt):
    """The weighted sum of the named terms (README eq. 4; the local term's weight is 1): the objective the step minimises."""
    return sum((getattr(wt, k) * L[k] for k in ('adj', 'glob', 'tc', 'person', 'keep') if k in L), L['local'])


def objective(u, s, traj, rows, perceptual, id_distance, wt, known=None, shares=1):
    """The whole objective on one batch -> {local, adj, glob, tc, (person, keep,) loss}: README eq. 4.

    u: what the trainable generator draws (Seen), s: what each row should look like, drawn by the frozen generator,
    both in the order of `rows` (Rows); traj: the adapters' states; wt: Weights. GUIDE: the forgotten latents go to
    G_s(w_t) (local, a mean), their neighbours to G_s(w_t + delta) (adjacency, summed per latent, averaged), random
    latents stay (global, perceptual only, summed); LEGATO: trajectory consistency. Person mode (rows.mined > 0) adds
    the mined latents towards their targets, images the original generator draws of someone else (person.surrogates),
    so that the person's samples become other faces rather than the same face with another embedding (an adversarial
    example against the identity network); and the kept people held. known = (refs, owner, threshold) of `who`:
    global samples that showed the person leave the global sum. shares: the random rows are one of `shares` equal
    shares of the batch (torchrun: one per rank); their sums count `shares` times, so that DDP's gradient average
    is the gradient of the whole batch's objective (the kept latents are every rank's, not shared)."""
    r = rows.slices()
    # every row against its own, in one pass over the batch; each group is a slice of these [N] vectors
    terms = image_terms(u, s, perceptual, id_distance)  # (pixel MSE, perceptual, identity), each [N]
    l = lambda g, pix=wt.pix: image_loss([t[r[g]] for t in terms], pix, wt.perc, wt.id)  # noqa: E731 - l(a, b)
    L = dict(local=l('u').mean(), adj=l('adj').view(rows.u, -1).sum(1).mean() * shares)
    glob = terms[1][r['glob']]  # perceptual only
    if known is not None:
        glob = glob * (1 - shows_person(s.emb[r['glob']], *known[:2], id_distance, known[2]))
    L['glob'] = glob.sum() * shares
    L['tc'] = trajectory_consistency(traj, rows.u, wt.tc_blocks, u.img.device)
    if rows.mined:  # person mode's pixel weight on [mined | held | kept]
        L['person'] = l('mined', wt.pix_person).sum() * shares
        L['keep'] = l('held', wt.pix_person).sum() * shares + l('kept', wt.pix_person).sum()
    L['loss'] = total(L, wt)
    return L


# -----------------------------------------------------------------------------
# forgetting the person, not one latent (this project's addition; train.py --forget latent leaves it out)

def who(emb, refs, owner, id_distance, threshold):
    """Who each face is: the owner of the nearest known face (refs [P, D], owner [P]: 0 the person, 1.. the kept
    people) where it lies within the threshold, else -1 (nobody known) -> [N]. A face not found (a NaN row of emb or
    refs: a judge that detects faces first) is nobody's and matches nobody. On the device: no host sync."""
    d = id_distance(emb[:, None], refs[None])  # [N, P]
    best = torch.nan_to_num(d, nan=float('inf'), posinf=float('inf')).min(1)
    return torch.where(best.values < threshold, owner[best.indices], -1)


def shows_person(emb, refs, owner, id_distance, threshold):
    """1.0 where `who` is the person, else 0.0 -> [N]. README eq. 4: global samples that showed the person leave
    the global sum."""
    return (who(emb, refs, owner, id_distance, threshold) == 0).float()
