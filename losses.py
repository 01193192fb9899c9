"""
The unlearning objective: GUIDE's target latent and local / adjacency / global losses, LEGATO's trajectory
consistency. The networks that judge images (identity, perceptual) are in id_net.py.

Facts and weights follow the official LEGATO code (a fork of GUIDE's); its loss-accumulation bug (the last
trajectory step counted twice) is not reproduced.
"""
import math
from typing import NamedTuple

import torch


# -----------------------------------------------------------------------------
# latents

def target_latent(w_u, w_avg, d=30.0, mode='extra', scale_d=False):
    """GUIDE's target: w_avg - d (w_u - w_avg) / ||w_u - w_avg||, the norm over the whole W+ tensor. README eq. 3.

    w_u: [N, num_ws, w_dim]. mode 'average' gives w_avg itself. scale_d=True multiplies d by
    sqrt(num_ws * w_dim / (14 * 512)), i.e. keeps the per-element distance of the paper's 256 px generator
    (14 x 512 W+), for generators with another W+ size (the baby's is 10 x 128)."""
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


def image_loss(u, s, perceptual, id_distance, w):
    """GUIDE's image loss per sample, u towards s: w_pix MSE + w_perc perceptual + w_id identity -> [N].
    README eq. 4's l(a, b); the weights are train.Config's (0.01 / 1 / 0.1)."""
    mse = (u.img - s.img).square().mean(dim=[1, 2, 3])
    return w.w_pix * mse + w.w_perc * perceptual(u.feats, s.feats) + w.w_id * id_distance(u.emb, s.emb)


def trajectory_consistency(traj, n, blocks=None, device=None):
    """LEGATO's smoothness term (README eq. 5): the mean squared increment between successive grid states,
    averaged over steps and over the adapters (all, or those named in `blocks`, e.g. ['b128']); only the first n
    samples (the forgotten latents w_u, not the mined ones) count. Each increment counts once (the official code
    counts the last one twice)."""
    terms = []
    for name, states in traj.items():
        if (blocks and name not in blocks) or len(states) < 2:
            continue
        steps = [(b[:n] - a[:n]).square().mean() for a, b in zip(states[:-1], states[1:])]
        terms.append(torch.stack(steps).mean())
    return torch.stack(terms).mean() if terms else torch.zeros((), device=device)


def unlearning_loss(u, s, traj, n_u, n_adj, perceptual, id_distance, w, glob_weight=None, shares=1):
    """The paper's objective on one fused batch -> {local, adj, glob, tc, loss}: README eq. 4 without person mode.

    u: what the trainable generator draws for [forgotten latents w_u (n_u) | adjacency w_u + delta (n_adj) |
    global latents]; s: what each should look like, drawn by the frozen generator: [G_s(w_t) | G_s(w_t + delta) |
    the same global latents]; traj: the adapters' states; w: the weights (w_pix, w_perc, w_id, w_local, w_adj,
    w_glob, w_tc) and tc_blocks; glob_weight [n_glob] (person mode) releases global samples from preservation.
    shares: the random samples are one of `shares` equal shares of the batch (torchrun: one per rank); their sums
    count `shares` times, so that DDP's gradient average is the gradient of the whole batch's objective (one
    process: shares = 1)."""
    a, b = n_u, n_u + n_adj
    L = dict(local=image_loss(u.rows(0, a), s.rows(0, a), perceptual, id_distance, w).mean(),  # mean over w_u
             # GUIDE sums over the adjacency samples of each forgotten latent, and over the global samples
             adj=image_loss(u.rows(a, b), s.rows(a, b), perceptual, id_distance, w).view(n_u, -1).sum(1).mean() * shares,
             glob=perceptual(u.rows(b).feats, s.rows(b).feats),  # perceptual only, as GUIDE
             tc=trajectory_consistency(traj, n_u, w.tc_blocks and w.tc_blocks.split(','), u.img.device))
    L['glob'] = (L['glob'] if glob_weight is None else L['glob'] * glob_weight).sum() * shares
    L['loss'] = w.w_local * L['local'] + w.w_adj * L['adj'] + w.w_glob * L['glob'] + w.w_tc * L['tc']
    return L


# -----------------------------------------------------------------------------
# forgetting the person, not one latent (this project's addition; train.py --forget latent leaves it out)

def who(emb, refs, owner, id_distance, threshold):
    """Who each face is: the owner of the nearest known face (refs [P, D], owner [P]: 0 the person, 1.. the kept
    people) where it lies within the threshold, else -1 (nobody known) -> [N]. On the device: no host sync."""
    best = id_distance(emb[:, None], refs[None]).min(1)
    return torch.where(best.values < threshold, owner[best.indices], -1)


def shows_person(emb, refs, owner, id_distance, threshold):
    """1.0 where `who` is the person, else 0.0 -> [N]. README eq. 4: global samples that showed the person leave
    the global sum."""
    return (who(emb, refs, owner, id_distance, threshold) == 0).float()


def person_loss(u, s, n_mined, n_held, perceptual, id_distance, w, shares=1):
    """What forgetting the person adds (README eq. 4, second line) -> {person, keep}. u/s rows: [mined latents of
    the person (n_mined) | mined samples of the kept people (n_held) | the kept people's latents]; s is drawn by the
    frozen generator: for a mined latent w_m its target, a sample of the original generator that shows someone
    else (train.surrogates); for the others their own image. All are GUIDE's image loss, summed over samples as the
    adjacency and global terms. Every target is an image the original generator draws, so the person's samples
    become other faces, not the same face with another embedding (an adversarial example against the identity
    network). shares: as in unlearning_loss (the mined rows are shared among the ranks, the kept latents are not)."""
    loss = image_loss(u, s, perceptual, id_distance, w)
    a, b = n_mined, n_mined + n_held
    return dict(person=loss[:a].sum() * shares, keep=loss[a:b].sum() * shares + loss[b:].sum())
