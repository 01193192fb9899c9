"""
The StyleGAN2 generator, hand-written in pure PyTorch.

Paper: Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020).
Numerical reference: NVlabs/stylegan2-ada-pytorch `training/networks.py` (the `skip` generator).
Module layout follows rosinality/stylegan2-pytorch; parameter and buffer names follow NVIDIA exactly, so an
official `G_ema.state_dict()` loads with `load_state_dict(strict=True)`.

Loaders (all via `Generator.from_checkpoint(path)`, none of them executes code from the file):
- official `.pkl` (StyleGAN2-ADA / StyleGAN3 repos) through an allow-listing unpickler,
- rosinality `stylegan2-pytorch` `.pt` (`g_ema`, `latent_avg`) through a key map,
- our own `.pt` = {'config': dict, 'state_dict': ...}.

`python model.py` prints a CPU benchmark line (batch 8 at 256x256).
"""
import io
import math
import os
import pickle
import zipfile
import re
import argparse
import collections
from dataclasses import dataclass, asdict, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import CheckpointError, atomic_save, unreadable


# -----------------------------------------------------------------------------
# resampling and activation, the pure-PyTorch equivalents of NVIDIA's custom ops

def setup_filter(f=(1, 3, 3, 1)):
    """1-D taps -> normalised 2-D filter, [4, 4] = outer([1,3,3,1]) / 64."""
    f = torch.as_tensor(f, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, pad=(0, 0, 0, 0), gain=1.0):
    """Zero-insert by `up`, pad (x0, x1, y0, y1), convolve with the 2-D filter `f` times `gain`."""
    N, C, H, W = x.shape
    if up > 1:  # put each sample at the top-left of an up x up cell
        x = x.reshape(N, C, H, 1, W, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(N, C, H * up, W * up)
    x = F.pad(x, list(pad))
    f = (f * gain).flip([0, 1]).to(x.dtype)  # flip: a true convolution, like NVIDIA's reference
    f = f[None, None].repeat(C, 1, 1, 1)      # [C, 1, fh, fw] depthwise
    return F.conv2d(x, f, groups=C)


def upsample2d(x, f):
    """2x upsampling with the [1,3,3,1] filter, as used on the skip (RGB) path."""
    return upfirdn2d(x, f, up=2, pad=(2, 1, 2, 1), gain=4)


def bias_act(x, b=None, lrelu=True, gain=1.0, clamp=None):
    """x + b, then lrelu(0.2) * sqrt(2) * gain (or linear * gain), then clamp to [-clamp, clamp]."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if lrelu:
        x = F.leaky_relu(x, 0.2)
        gain = gain * math.sqrt(2)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(x, weight, styles, demodulate=True, up=1, f=None, noise=None, fused=True):
    """StyleGAN2's modulated convolution. x [N,I,H,W], weight [O,I,k,k], styles [N,I] -> [N,O,H',W'].

    fused=True: one grouped conv with per-sample weights; fused=False: scale the input, shared conv,
    scale the output (cheaper for large batches). Same math, ~1e-6 apart in fp32. f: the [4, 4] filter of up=2.
    """
    N, I, H, W = x.shape
    O, _, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # keep fp16 from overflowing; demodulation undoes the scale
        weight = weight * (1 / math.sqrt(I * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)
    w = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    padding = kh // 2 if up == 1 else 0
    if fused:
        if demodulate:
            w = w * dcoefs[:, :, None, None, None]
        x = x.reshape(1, N * I, H, W)
        w = w.to(x.dtype)
        if up == 1:
            x = F.conv2d(x, w.reshape(N * O, I, kh, kw), padding=padding, groups=N)
        else:  # transposed conv wants [in, out/groups, k, k]; the stored weight is used unflipped
            w = w.transpose(1, 2).reshape(N * I, O, kh, kw)
            x = F.conv_transpose2d(x, w, stride=2, groups=N)
        x = x.reshape(N, O, *x.shape[2:])
    else:
        x = x * styles.to(x.dtype)[:, :, None, None]
        wt = weight.to(x.dtype)
        x = F.conv2d(x, wt, padding=padding) if up == 1 else F.conv_transpose2d(x, wt.transpose(0, 1), stride=2)
        if demodulate:
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
    if up > 1:  # conv_transpose gives 2H+1; the filter (pad 1, gain 4) brings it to 2H
        x = upfirdn2d(x, f, pad=(1, 1, 1, 1), gain=4)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# -----------------------------------------------------------------------------
# layers

class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: weight * lr_mul / sqrt(in), bias * lr_mul."""

    def __init__(self, in_features, out_features, bias_init=0.0, lr_mul=1.0, lrelu=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.lrelu = lrelu

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if not self.lrelu:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, lrelu=True)


class MappingNetwork(nn.Module):
    """z -> w through `num_layers` FC layers; tracks w_avg for truncation."""

    def __init__(self, z_dim, w_dim, num_ws, num_layers=8, lr_mul=0.01, w_avg_beta=0.995):
        super().__init__()
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        for i in range(num_layers):
            setattr(self, f'fc{i}', FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul, lrelu=True))
        self.register_buffer('w_avg', torch.zeros(w_dim))

    def forward(self, z, psi=1.0, cutoff=None, update_w_avg=False):
        x = z.float() * (z.float().square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalise 2nd moment
        for i in range(self.num_layers):
            x = getattr(self, f'fc{i}')(x)
        if update_w_avg:  # training only: w_avg <- lerp(batch mean, w_avg, beta)
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, num_ws, w_dim]
        if psi != 1:
            cutoff = self.num_ws if cutoff is None else cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + noise + bias + lrelu + clamp."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer('resample_filter', setup_filter())
        self.register_buffer('noise_const', torch.randn(resolution, resolution))

    def forward(self, x, w, noise_mode='const', fused=True):
        styles = self.affine(w)  # [N, I]
        noise = None
        if noise_mode == 'random':
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == 'const':
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, up=self.up, f=self.resample_filter, noise=noise, fused=fused)
        return bias_act(x, self.bias, lrelu=True, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB, no demodulation; 1/sqrt(fan_in) goes on the styles."""

    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w, fused=True):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias, lrelu=False, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (up 2x)] -> conv1 -> (adapter) -> ToRGB, added to the upsampled image.
    The adapter replaces x by x(T) in forward (README eq. 1)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, use_fp16=False, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.register_buffer('resample_filter', setup_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.adapter = None  # the place for a per-block module on the conv1 features (see ode_adapter.py)

    def forward(self, x, img, ws, noise_mode='const', force_fp32=False, fused=None, T=None, h=None, solver=None,
                backend=None, keep=True):
        # ws: [N, num_conv + 1, w_dim]; x: [N, Cin, H/2, W/2] or None for b4. Returns (x, img, adapter states)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and ws.device.type == 'cuda') else torch.float32
        if fused is None:  # NVIDIA's rule: the grouped conv for inference in fp32 or at batch 1
            fused = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)
        w = ws.unbind(dim=1)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, w[0], noise_mode, fused)
        else:
            x = self.conv0(x.to(dtype), w[0], noise_mode, fused)
            x = self.conv1(x, w[1], noise_mode, fused)
        states = None
        if self.adapter is not None:
            x, states = self.adapter(x, T, h, solver, backend, keep)
        y = self.torgb(x, w[-1], fused).float()
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img, states


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, 3, res, res] in about [-1, 1]."""

    def __init__(self, cfg):
        super().__init__()
        log2 = int(math.log2(cfg.img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - cfg.num_fp16_res), 8)
        for res in self.block_resolutions:
            block = SynthesisBlock(cfg.channels(res // 2) if res > 4 else 0, cfg.channels(res), cfg.w_dim, res,
                                   cfg.img_channels, use_fp16=(res >= fp16_resolution), conv_clamp=cfg.conv_clamp)
            setattr(self, f'b{res}', block)
        self.num_ws = 2 * log2 - 2

    def blocks(self):
        return [getattr(self, f'b{res}') for res in self.block_resolutions]

    def forward(self, ws, noise_mode='const', force_fp32=False, fused=None, return_features=False, T=None, h=None,
                solver=None, backend=None, return_traj=False):
        """T, h, solver, backend override the adapters' own (ode_adapter.py); T = 0 is the original generator.
        Returns img, then {block: features} if return_features, then {block: adapter states} if return_traj
        ({} without adapters)."""
        if not any(b.adapter is not None for b in self.blocks()) and ((T or 0) != 0 or
                                                                      (h, solver, backend) != (None, None, None)):
            raise ValueError('this generator has no adapters: only T=0 (the original) is accepted; '
                             'attach or load adapters first (ode_adapter.py)')
        x = img = None
        feats, traj, w_idx = {}, {}, 0
        for block in self.blocks():
            # the ToRGB of one block and conv0 of the next share a w
            x, img, states = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode, force_fp32, fused,
                                   T, h, solver, backend, keep=return_traj)  # states only when asked for
            w_idx += block.num_conv
            feats[f'b{block.resolution}'] = x
            if states is not None:
                traj[f'b{block.resolution}'] = states
        out = (img,) + ((feats,) if return_features else ()) + ((traj,) if return_traj else ())
        return out if len(out) > 1 else img


# -----------------------------------------------------------------------------
# the generator

@dataclass
class GeneratorConfig:
    img_resolution: int = 1024
    z_dim: int = 512
    w_dim: int = 512
    img_channels: int = 3
    channel_base: int = 32768    # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    w_avg_beta: float = 0.995
    conv_clamp: int = None       # None (original StyleGAN2 / FFHQ-1024) or 256 (ADA-trained nets)
    num_fp16_res: int = 0        # top resolutions that run in fp16 on CUDA
    framing: tuple = None        # where it draws the eye and mouth centres (data.framing_quad); None: FFHQ's crop

    def channels(self, res):
        return min(self.channel_base // res, self.channel_max)


class Generator(nn.Module):
    """StyleGAN2 generator: z -> mapping -> ws -> synthesis -> image."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        if cfg.img_resolution < 4 or cfg.img_resolution & (cfg.img_resolution - 1):
            raise ValueError(f'img_resolution must be a power of two >= 4, got {cfg.img_resolution}')
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)  # registered first, as in NVIDIA's state_dict order
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers, cfg.mapping_lr_mul,
                                      cfg.w_avg_beta)

    def forward(self, z, psi=1.0, cutoff=None, noise_mode='const', force_fp32=False, **kwargs):
        ws = self.mapping(z, psi, cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, **kwargs)

    def state_dict_plain(self):
        """The generator's own state (no adapters): what an official checkpoint holds."""
        return {k: v for k, v in self.state_dict().items() if '.adapter.' not in k}

    def save(self, path, **extra):
        """Our checkpoint format: config + plain state dict, written to a temp file and renamed."""
        atomic_save({'config': asdict(self.cfg), 'state_dict': self.state_dict_plain(), **extra}, path)

    @classmethod
    def from_checkpoint(cls, path, map_location='cpu'):
        """Build a Generator from an official .pkl, a rosinality .pt or our own .pt."""
        path = str(path)
        if os.path.exists(path) and not os.path.isfile(path):  # a pipe would be waited on for ever, a folder fails oddly
            raise CheckpointError(f'{path}: not a regular file; pass the path of a StyleGAN2 checkpoint')
        if path.endswith('.pkl') and zipfile.is_zipfile(path):  # torch.save's format under a pickle's name
            raise CheckpointError(f'{path}: a torch.save file named .pkl; rename it .pt')
        try:
            if path.endswith('.pkl'):
                cfg, sd = load_official_pkl(path)
            else:
                with torch.serialization.safe_globals([argparse.Namespace]):  # rosinality snapshots hold args
                    ckpt = torch.load(path, map_location=map_location, weights_only=True)
                cfg, sd = parse_torch_checkpoint(ckpt, path)
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise CheckpointError(f'{path}: no such file; pass the path of a StyleGAN2 checkpoint') from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
                AttributeError, IndexError, OSError) as e:
            raise CheckpointError(f'{path}: not a readable StyleGAN2 checkpoint ({unreadable(e)})') from None
        check_config(cfg, path)
        G = cls(cfg)
        try:
            G.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f'{path}: tensors do not fit the inferred architecture '
                                  f'({str(e).splitlines()[1].strip()[:200] if len(str(e).splitlines()) > 1 else e})') from None
        bad = next((k for k, v in G.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad:
            raise CheckpointError(f'{path}: holds NaN or Inf weights ({bad}); a training run that diverged? pass the '
                                  'generator it started from, or an earlier export')
        if G.mapping.w_avg.abs().max() > 1e4:  # as data.load_latent: W latents lie within a few hundred of zero
            raise CheckpointError(f'{path}: its mapping.w_avg holds values up to {G.mapping.w_avg.abs().max():.3g}, '
                                  'far beyond any W latent; is it the right file?')
        return G.eval().requires_grad_(False)


def check_config(cfg, path):
    """A stored config in the range a generator can be built in (our own format states it, so it can be wrong)."""
    ints = {'img_resolution': (4, 8192), 'z_dim': (1, 8192), 'w_dim': (1, 8192), 'img_channels': (3, 3),
            'channel_base': (1, 2 ** 24), 'channel_max': (1, 8192), 'mapping_layers': (1, 64), 'num_fp16_res': (0, 12)}
    for k, (lo, hi) in ints.items():
        v = getattr(cfg, k)
        if not isinstance(v, int) or not lo <= v <= hi or (k == 'img_resolution' and v & (v - 1)):
            raise CheckpointError(f'{path}: config {k} = {v!r} is not a generator\'s ({lo} to {hi}'
                                  f'{", a power of two" if k == "img_resolution" else ""}); is it the right file?')
    if min(cfg.channels(r) for r in (4, cfg.img_resolution)) < 1:
        raise CheckpointError(f'{path}: config channel_base {cfg.channel_base} leaves no channels at '
                              f'{cfg.img_resolution} px; is it the right file?')
    if cfg.conv_clamp is not None and not (isinstance(cfg.conv_clamp, (int, float)) and 0 < cfg.conv_clamp < 1e6):
        raise CheckpointError(f'{path}: config conv_clamp = {cfg.conv_clamp!r} is not None or a number > 0')
    for k in ('mapping_lr_mul', 'w_avg_beta'):
        if not isinstance(getattr(cfg, k), (int, float)) or not 0 < getattr(cfg, k) <= 1:
            raise CheckpointError(f'{path}: config {k} = {getattr(cfg, k)!r} is not in (0, 1]; is it the right file?')
    framing = np.asarray(cfg.framing if cfg.framing is not None else np.zeros((3, 2)), dtype=object)
    if framing.shape != (3, 2) or not all(isinstance(v, (int, float)) and -1 <= v <= 2 for v in framing.flat):
        raise CheckpointError(f'{path}: config framing {cfg.framing!r} is not three (x, y) points in units of the image')


# -----------------------------------------------------------------------------
# checkpoint formats

def infer_config(sd, path, **known):
    """Architecture from the tensors of an NVIDIA-named state dict; `known` fills what tensors cannot tell."""
    res_keys = [int(m.group(1)) for k in sd for m in [re.match(r'synthesis\.b(\d+)\.conv1\.weight$', k)] if m]
    if 'synthesis.b4.const' not in sd or 'mapping.fc0.weight' not in sd or not res_keys:
        raise CheckpointError(f'{path}: not a StyleGAN2 generator (no synthesis.b4.const / mapping.fc0 tensors)')
    if any(k.startswith('mapping.embed') for k in sd):
        raise CheckpointError(f'{path}: conditional generators (c_dim > 0) are not supported')
    if any('.skip.' in k for k in sd):
        raise CheckpointError(f'{path}: resnet-architecture generators are not supported (only skip)')
    res = max(res_keys)
    chans = {r: sd[f'synthesis.b{r}.conv1.weight'].shape[0] for r in res_keys}
    cmax = chans[4]
    cbase = chans[res] * res if chans[res] < cmax else cmax * res
    cfg = GeneratorConfig(
        img_resolution=res, z_dim=sd['mapping.fc0.weight'].shape[1], w_dim=sd['mapping.fc0.weight'].shape[0],
        img_channels=sd['synthesis.b4.torgb.weight'].shape[0], channel_base=cbase, channel_max=cmax,
        mapping_layers=sum(1 for k in sd if re.match(r'mapping\.fc\d+\.weight$', k)), **known)
    if any(cfg.channels(r) != c for r, c in chans.items()):
        raise CheckpointError(f'{path}: channel counts {chans} do not follow min(base // res, max)')
    return cfg


def parse_torch_checkpoint(ckpt, path):
    """Our own {'config', 'state_dict'} format, rosinality's {'g_ema', 'latent_avg'}, or a pSp / e4e encoder's file,
    whose decoder.* is a rosinality generator."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path}: not a generator checkpoint (top level is {type(ckpt).__name__})')
    if 'config' in ckpt and 'state_dict' in ckpt:
        names = {f.name for f in fields(GeneratorConfig)}
        unknown = set(ckpt['config']) - names
        if unknown:
            raise CheckpointError(f'{path}: unknown config keys {sorted(unknown)}')
        return GeneratorConfig(**ckpt['config']), ckpt['state_dict']
    if 'g_ema' in ckpt:
        return from_rosinality(ckpt, path)
    if isinstance(ckpt.get('state_dict'), dict) and isinstance(ckpt.get('opts'), dict):  # pSp / e4e: a rosinality decoder.*
        g = {k[len('decoder.'):]: v for k, v in ckpt['state_dict'].items() if k.startswith('decoder.')}
        avg = ckpt.get('latent_avg')  # [n_styles, w_dim] or [w_dim]: the generator's mean latent, repeated
        return from_rosinality({'g_ema': g, **({'latent_avg': avg.reshape(-1, avg.shape[-1])[0]}
                                              if isinstance(avg, torch.Tensor) and avg.ndim else {})}, path)
    if 'G_ema' in ckpt and 'optG' in ckpt:
        raise CheckpointError(f'{path}: a pretrain.py training state, not a generator; write its generator with '
                              'pretrain.py --out FOLDER --export FILE and pass that')
    raise CheckpointError(f'{path}: no generator found (expected keys config+state_dict, or g_ema)')


def rosinality_key_map(cfg):
    """NVIDIA key -> rosinality key (both without the buffers that are constants)."""
    m = {f'mapping.fc{i}.{p}': f'style.{i + 1}.{p}' for i in range(cfg.mapping_layers) for p in ('weight', 'bias')}
    m['synthesis.b4.const'] = 'input.input'

    def layer(nv, ro):
        m.update({f'{nv}.weight': f'{ro}.conv.weight', f'{nv}.affine.weight': f'{ro}.conv.modulation.weight',
                  f'{nv}.affine.bias': f'{ro}.conv.modulation.bias', f'{nv}.noise_strength': f'{ro}.noise.weight',
                  f'{nv}.bias': f'{ro}.activate.bias'})

    def torgb(nv, ro):
        m.update({f'{nv}.weight': f'{ro}.conv.weight', f'{nv}.bias': f'{ro}.bias',
                  f'{nv}.affine.weight': f'{ro}.conv.modulation.weight', f'{nv}.affine.bias': f'{ro}.conv.modulation.bias'})

    layer('synthesis.b4.conv1', 'conv1')
    torgb('synthesis.b4.torgb', 'to_rgb1')
    m['synthesis.b4.conv1.noise_const'] = 'noises.noise_0'
    for j, r in enumerate(2 ** i for i in range(3, int(math.log2(cfg.img_resolution)) + 1)):
        layer(f'synthesis.b{r}.conv0', f'convs.{2 * j}')
        layer(f'synthesis.b{r}.conv1', f'convs.{2 * j + 1}')
        torgb(f'synthesis.b{r}.torgb', f'to_rgbs.{j}')
        m[f'synthesis.b{r}.conv0.noise_const'] = f'noises.noise_{2 * j + 1}'
        m[f'synthesis.b{r}.conv1.noise_const'] = f'noises.noise_{2 * j + 2}'
    return m


def from_rosinality(ckpt, path):
    """rosinality stylegan2-pytorch checkpoint -> (config, NVIDIA-named state dict). Reshapes only, no flips."""
    g = ckpt['g_ema']
    n_convs = sum(1 for k in g if re.match(r'convs\.\d+\.conv\.weight$', k))
    if 'input.input' not in g or 'style.1.weight' not in g:
        raise CheckpointError(f'{path}: g_ema is not a rosinality StyleGAN2 generator')
    res = 4 * 2 ** (n_convs // 2)
    # a NVIDIA-shaped skeleton to infer the config from: weights only need the right shapes here
    probe = {'synthesis.b4.const': g['input.input'][0], 'synthesis.b4.torgb.weight': g['to_rgb1.conv.weight'][0],
             'synthesis.b4.conv1.weight': g['conv1.conv.weight'][0]}
    for j in range(n_convs // 2):
        probe[f'synthesis.b{8 * 2 ** j}.conv1.weight'] = g[f'convs.{2 * j + 1}.conv.weight'][0]
    n_mlp = sum(1 for k in g if re.match(r'style\.\d+\.weight$', k))
    for i in range(n_mlp):
        probe[f'mapping.fc{i}.weight'] = g[f'style.{i + 1}.weight']
    args = ckpt.get('args')
    lr_mul = getattr(args, 'lr_mlp', None) or (args.get('lr_mlp') if isinstance(args, dict) else None) or 0.01
    cfg = infer_config(probe, path, mapping_lr_mul=float(lr_mul))
    assert cfg.img_resolution == res
    sd = {}
    for nv, ro in rosinality_key_map(cfg).items():
        if ro not in g:
            raise CheckpointError(f'{path}: missing rosinality tensor {ro}')
        sd[nv] = g[ro]
    G = Generator(cfg)  # shapes and constant buffers come from a fresh instance
    ref = G.state_dict_plain()
    for k, v in ref.items():
        if k.endswith('resample_filter'):
            sd[k] = v
        elif k != 'mapping.w_avg':
            sd[k] = sd[k].reshape(v.shape)
    if 'latent_avg' in ckpt:
        sd['mapping.w_avg'] = ckpt['latent_avg'].reshape(-1)
    else:  # training snapshots carry no latent_avg: estimate it as rosinality's generate.py does
        sd['mapping.w_avg'] = ref['mapping.w_avg']
        G.load_state_dict(sd)
        with torch.no_grad():
            z = torch.randn(4096, cfg.z_dim, generator=torch.Generator().manual_seed(0))
            sd['mapping.w_avg'] = G.mapping(z)[:, 0].mean(0)
    return cfg, sd


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _persistent_record(meta):
    """Stand-in for torch_utils.persistence._reconstruct_persistent_obj: keep the state, never run module_src."""
    if not isinstance(meta, dict) or meta.get('type') != 'class' or not isinstance(meta.get('state'), dict):
        raise pickle.UnpicklingError('malformed persistent object record')
    return {'class_name': meta.get('class_name'), 'state': meta['state']}


def _storage_from_bytes(b):
    return torch.load(io.BytesIO(b), weights_only=True, map_location='cpu')


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals an official StyleGAN2 pickle needs; anything else is refused."""
    SAFE = {
        ('torch_utils.persistence', '_reconstruct_persistent_obj'): _persistent_record,
        ('dnnlib.util', 'EasyDict'): _EasyDict,
        ('torch.storage', '_load_from_bytes'): _storage_from_bytes,
        ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): torch._utils._rebuild_parameter_with_state,
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
        ('numpy', 'dtype'): np.dtype, ('numpy', 'ndarray'): np.ndarray,
        ('numpy.core.multiarray', 'scalar'): np._core.multiarray.scalar,
        ('numpy._core.multiarray', 'scalar'): np._core.multiarray.scalar,
        ('numpy.core.multiarray', '_reconstruct'): np._core.multiarray._reconstruct,
        ('numpy._core.multiarray', '_reconstruct'): np._core.multiarray._reconstruct,
    }

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        raise pickle.UnpicklingError(f'refusing to load {module}.{name}: not a StyleGAN2 network pickle object')


def _flatten_record(rec, prefix=''):
    """A persistent nn.Module record -> its state_dict entries, as nn.Module.state_dict() would list them."""
    st = rec['state']
    skip = st.get('_non_persistent_buffers_set') or set()
    out = {}
    for k, v in (st.get('_parameters') or {}).items():
        if v is not None:
            out[prefix + k] = v.detach() if isinstance(v, torch.Tensor) else v
    for k, v in (st.get('_buffers') or {}).items():
        if v is not None and k not in skip:
            out[prefix + k] = v
    for k, child in (st.get('_modules') or {}).items():
        if child is not None:
            out.update(_flatten_record(child, prefix + k + '.'))
    return out


def _find(rec, dotted):
    for name in dotted.split('.'):
        rec = rec['state']['_modules'][name]
    return rec['state']


def load_official_pkl(path):
    """Official network pickle -> (config, state dict) of G_ema, read without dnnlib / torch_utils."""
    try:
        with open(path, 'rb') as f:
            data = _AllowListUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable network pickle ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                              "pass NVIDIA's network-snapshot .pkl") from None
    if isinstance(data, dict) and isinstance(data.get('G_ema'), dict) and 'state' in data['G_ema']:
        G = data['G_ema']
    elif isinstance(data, tuple) and len(data) == 3:
        raise CheckpointError(f'{path}: TensorFlow-era pickle; convert it with the official legacy.py first')
    else:
        raise CheckpointError(f'{path}: no G_ema network in this pickle')
    sd = _flatten_record(G)
    st = G['state']
    kw = st.get('_init_kwargs') or {}
    syn_kw = {**kw, **(kw.get('synthesis_kwargs') or {})}  # ADA nests them, stylegan3's copy flattens them
    try:
        conv = _find(G, 'synthesis.b4.conv1')
        fc0 = _find(G, 'mapping.fc0')
        mapping = _find(G, 'mapping')
        b4 = _find(G, 'synthesis.b4')
    except (KeyError, TypeError):
        raise CheckpointError(f'{path}: G_ema is not a StyleGAN2 generator (class {G.get("class_name")})') from None
    if b4.get('architecture', 'skip') != 'skip':
        raise CheckpointError(f'{path}: architecture {b4.get("architecture")!r} is not supported (only skip)')
    clamp = conv.get('conv_clamp')
    cfg = infer_config(sd, path, conv_clamp=None if clamp is None else int(clamp),
                       mapping_lr_mul=float(fc0.get('bias_gain', 0.01)),
                       w_avg_beta=float(mapping.get('w_avg_beta', 0.995)),
                       num_fp16_res=int(syn_kw.get('num_fp16_res', 0)))
    return cfg, sd


# -----------------------------------------------------------------------------
# drawing

@torch.no_grad()
def seed_latents(G, seeds, psi=1.0):
    """The latent of seed:N for each N (z from torch seed N through the mapping), truncated towards w_avg by psi:
    [len(seeds), num_ws, w_dim]. --identity seed:N, sample.py --seeds and evaluate's held-out identities."""
    z = torch.cat([torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return G.mapping(z.to(G.mapping.w_avg.device), psi=psi)


@torch.no_grad()
def generate(G, ws, kw, bs=16):
    """G's images of ws [N, L, C], bs at a time, with constant noise; kw go to G.synthesis (e.g. {'T': 0.8})."""
    return torch.cat([G.synthesis(ws[i:i + bs], noise_mode='const', **kw) for i in range(0, len(ws), bs)])


if __name__ == '__main__':
    import time
    from data import save_grid
    p = argparse.ArgumentParser(description='Sample a grid from a generator and time its forward pass.')
    p.add_argument('--ckpt', default=None, help='generator checkpoint (.pkl / .pt); default: random weights')
    p.add_argument('--res', type=int, default=256, help='resolution of the random generator')
    p.add_argument('--channel_base', type=int, default=16384, help='channel_base of the random generator')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--psi', type=float, default=0.7, help='truncation psi of the samples')
    p.add_argument('--out', default='samples.png', help='where the PNG grid goes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args()
    torch.manual_seed(args.seed)
    try:
        G = Generator.from_checkpoint(args.ckpt) if args.ckpt else \
            Generator(GeneratorConfig(img_resolution=args.res, channel_base=args.channel_base)).eval()
    except CheckpointError as e:
        raise SystemExit(f'error: {e}')
    G = G.to(args.device)
    z = torch.randn(args.batch, G.cfg.z_dim, device=args.device)
    with torch.no_grad():
        G(z, psi=args.psi)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            img = G(z, psi=args.psi)
            if args.device.startswith('cuda'):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    save_grid(img, args.out)
    n = sum(p.numel() for p in G.parameters())
    print(f'generator {G.cfg.img_resolution}px, {n / 1e6:.2f}M params, batch {args.batch} on {args.device}: '
          f'{min(times) * 1000:.0f} ms/forward ({args.batch / min(times):.1f} img/s); grid -> {args.out}')
