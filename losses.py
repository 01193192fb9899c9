"""
The unlearning objective: GUIDE's target latent and local / adjacency / global losses, LEGATO's trajectory
consistency, and the perceptual and identity distances they are built from.

Facts and weights follow the official LEGATO code (a fork of GUIDE's); its loss-accumulation bug (the last
trajectory step counted twice) is not reproduced.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# latents

def target_latent(w_u, w_avg, d=30.0, mode='extra', scale_d=False):
    """GUIDE's target: w_avg - d (w_u - w_avg) / ||w_u - w_avg||, the norm over the whole W+ tensor.

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
    """Delta = alpha (w_r - w_u) / ||w_r - w_u||: steps from the identity towards random latents.

    w_u [N, L, C], w_r [N, n, L, C], alpha [N, n] -> [N, n, L, C]."""
    v = w_r - w_u[:, None]
    return alpha[..., None, None] * v / v.flatten(2).norm(dim=2)[..., None, None]


# -----------------------------------------------------------------------------
# distances between images


class IDFeatureDistance(nn.Module):
    """Offline perceptual distance: LPIPS-style (unit-normalised channels, squared difference, spatial
    mean, summed over layers) on the identity network's intermediate feature maps. Not LPIPS."""
    name = 'identity-network feature distance (offline stand-in for LPIPS)'

    def __init__(self, id_net):
        super().__init__()
        self.net = id_net

    def features(self, images):
        return self.net.features(images)[1]

    def forward(self, fa, fb):
        """Feature lists of two image batches -> distance [N]."""
        return sum((F.normalize(a, dim=1, eps=1e-10) - F.normalize(b, dim=1, eps=1e-10)).square().sum(1).mean(dim=[1, 2])
                   for a, b in zip(fa, fb))


class LPIPSVGG(nn.Module):
    """LPIPS (Zhang et al. 2018) on torchvision's VGG16 `features`, from a VGG16 state dict the user gives.

    The learned per-channel weights of LPIPS v0.1 are read from `lin_path` (lpips' `weights/v0.1/vgg.pth`)
    when given; without them every channel weighs 1 (the 'baseline' LPIPS variant)."""
    name = 'LPIPS-VGG16'
    LAYERS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16.features
    CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512)

    def __init__(self, vgg_path, lin_path=None):
        super().__init__()
        layers, c = [], 3
        for v in self.CFG:
            if v == 'M':
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.vgg = nn.Sequential(*layers)
        try:
            sd = torch.load(vgg_path, map_location='cpu', weights_only=True)
            self.vgg.load_state_dict({k[len('features.'):]: v for k, v in sd.items() if k.startswith('features.')})
        except FileNotFoundError:
            raise ValueError(f'{vgg_path}: no such file') from None
        except Exception as e:  # noqa: BLE001
            raise ValueError(f'{vgg_path}: not a torchvision VGG16 state dict ({type(e).__name__})') from None
        chans = (64, 128, 256, 512, 512)
        self.lins = [torch.ones(1, ch, 1, 1) for ch in chans]
        if lin_path:
            lin = torch.load(lin_path, map_location='cpu', weights_only=True)
            self.lins = [lin[f'lin{i}.model.1.weight'] for i in range(5)]
        self.register_buffer('shift', torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer('scale', torch.tensor([.458, .448, .450])[None, :, None, None])
        self.eval().requires_grad_(False)

    def features(self, images):
        """[-1, 1] images -> the five VGG feature maps."""
        x = (images - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in self.LAYERS:
                out.append(x)
        return out

    def forward(self, fa, fb):
        return sum(((F.normalize(a, dim=1, eps=1e-10) - F.normalize(b, dim=1, eps=1e-10)).square() * w.to(a)).sum(1).mean(dim=[1, 2])
                   for a, b, w in zip(fa, fb, self.lins))


# -----------------------------------------------------------------------------
# the loss terms

def image_terms(img_u, feats_u, emb_u, img_s, feats_s, emb_s, perceptual, id_distance, w_pix=1e-2, w_perc=1.0,
                w_id=0.1):
    """GUIDE's three-term image loss per sample: w_pix MSE + w_perc perceptual + w_id identity -> [N]."""
    mse = (img_u - img_s).square().mean(dim=[1, 2, 3])
    return w_pix * mse + w_perc * perceptual(feats_u, feats_s) + w_id * id_distance(emb_u, emb_s)


def trajectory_consistency(traj, n, blocks=None):
    """Mean squared increment between successive grid states, averaged over steps and over the adapters
    (all by default, or those named in `blocks`, e.g. ['b128']); only the first n samples (the forgotten
    latents) of the batch count. Each increment is counted once."""
    terms = []
    for name, states in traj.items():
        if blocks and name not in blocks:
            continue
        if len(states) < 2:
            continue
        steps = [(b[:n] - a[:n]).square().mean() for a, b in zip(states[:-1], states[1:])]
        terms.append(torch.stack(steps).mean())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()
