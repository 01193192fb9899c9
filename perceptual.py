"""
Image-similarity networks, not identity ones: the perceptual distances of the loss and the inversion
(`p.features(images)` -> feature maps, `p(fa, fb)` -> distance [N]), and FID's Inception for evaluation.

- IDFeatureDistance: the offline stand-in for LPIPS, on the identity network's own feature maps.
- LPIPSVGG: LPIPS on torchvision's VGG16, from weights the user gives.
- FIDInception: pytorch-fid's Inception-v3 (pool3 features), from weights the user gives.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import load

# -----------------------------------------------------------------------------
# perceptual distances: the offline stand-in and LPIPS-VGG16

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
        sd = load(vgg_path, 'a torchvision VGG16 state dict')
        try:
            self.vgg.load_state_dict({k[len('features.'):]: v for k, v in sd.items() if k.startswith('features.')})
        except (RuntimeError, AttributeError, TypeError) as e:
            raise ValueError(f'{vgg_path}: not a torchvision VGG16 state dict ({type(e).__name__})') from None
        chans = (64, 128, 256, 512, 512)
        self.lins = [torch.ones(1, ch, 1, 1) for ch in chans]
        if lin_path:
            lin = load(lin_path, "LPIPS v0.1 linear heads (lpips' weights/v0.1/vgg.pth)")
            try:
                if not isinstance(lin, dict):
                    raise TypeError
                self.lins = [lin[f'lin{i}.model.1.weight'].reshape(1, ch, 1, 1) for i, ch in enumerate(chans)]
            except (KeyError, TypeError, IndexError, RuntimeError, AttributeError):
                raise ValueError(f"{lin_path}: not LPIPS v0.1's VGG heads (lin0..4.model.1.weight); pass lpips' "
                                 'weights/v0.1/vgg.pth') from None
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
# FID's Inception-v3 (the TF-ported network of pytorch-fid; torchvision key names), for users with its weights

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
            sd = load(path, 'the FID Inception state dict (pt_inception-2015-12-05-6726825d.pth)')
            try:
                missing, unexpected = self.load_state_dict(sd, strict=False)
            except (RuntimeError, TypeError, AttributeError):
                missing, unexpected = ['?'], []
            if [k for k in missing if not k.endswith('num_batches_tracked')] or unexpected:
                raise ValueError(f'{path}: not the FID Inception weights (key names or shapes differ)')
        self.eval().requires_grad_(False)

    def forward(self, images):
        x = F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False)
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
            x = getattr(self, f'Mixed_{name}')(x)
        return x.mean(dim=[2, 3])
