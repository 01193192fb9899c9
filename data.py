"""
Images in and out: identity photos (loading, checking, aligning, inverting to a latent, or encoding one with pSp /
e4e) and PNG grids.
"""
import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from helpers import CheckpointError, load, model_file, written
from id_net import ir_layers
from model import FullyConnectedLayer, seed_latents
from perceptual import IDFeatureDistance

IMAGE_EXTS = {'.jpg', '.jpeg', '.png', '.webp'}
LATENT_EXTS = ('.pt', '.pth', '.npy')  # --identity files that hold latents, not photos
MIN_SIZE = 64  # smaller photos hold too little of a face to align or recognise


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and the fix."""


# -----------------------------------------------------------------------------
# photos in

def load_image(path):
    """Any JPEG/PNG/WebP -> [H, W, 3] uint8 RGB, EXIF orientation applied."""
    try:
        with warnings.catch_warnings():  # PIL's own warning would print two lines before ours
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # PIL only warns up to twice this, after decoding it
                raise Image.DecompressionBombError
            if getattr(im, 'n_frames', 1) > 1:  # an animation (GIF, APNG, WebP) under any name: which frame is meant?
                raise DataError(f'{path}: an animated image ({im.n_frames} frames); save the frame you mean as a .png')
            im = ImageOps.exif_transpose(im)
            if im.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N'):  # 16-bit grey: rescale, PIL would clip
                a = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.round(a / 257 if a.max() > 255 else a).clip(0, 255).astype(np.uint8))
            if im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'P' and 'transparency' in im.info):
                im = im.convert('RGBA')
                bg = Image.new('RGBA', im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            x = np.asarray(im.convert('RGB'))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f'{path}: no such file') from None
    except Image.DecompressionBombError:
        raise DataError(f'{path}: image is too large to be a photo (over {Image.MAX_IMAGE_PIXELS:,} pixels); '
                        'resize it') from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f'{path}: not a readable image ({type(e).__name__}); use a JPEG, PNG or WebP photo') from None
    if min(x.shape[:2]) < MIN_SIZE:
        raise DataError(f'{path}: image is {x.shape[1]}x{x.shape[0]} px, too small; use a photo of at least '
                        f'{MIN_SIZE}x{MIN_SIZE} px')
    return x


def list_photos(path):
    """A file -> [it]; a folder -> its image files, sorted (other files skipped with a warning)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f'{path}: no such file or folder; pass a photo, a folder of photos, a latent or seed:N')
    if p.is_file() and p.suffix.lower() not in IMAGE_EXTS:  # e.g. an animated .gif: its frames are not one photo
        raise DataError(f'{path}: not a .jpg/.png/.webp photo; save it (or the frame you mean) as a .png')
    if p.is_file():
        return [p]
    if not p.is_dir():  # a pipe such as <(cat photo.png), a device: read once, so never a run's photo
        raise DataError(f'{path}: not a regular file or folder (a pipe?); save the photo to a file and pass that')
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith('.'))
    for f in files:
        if f.suffix.lower() not in IMAGE_EXTS:
            warnings.warn(f'{f}: skipped, not a .jpg/.png/.webp image')
    photos = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
    if not photos:
        raise DataError(f'{path}: folder holds no .jpg/.png/.webp photos; add photos of the identity')
    return photos


# -----------------------------------------------------------------------------
# FFHQ alignment (the crop rule of NVlabs/ffhq-dataset, from eye and mouth landmarks)

_dlib = {}


def _landmarks(img, path):
    """68 dlib landmarks [68, 2] of the largest face; warns when there are several, fails when none."""
    import dlib
    if not _dlib:
        _dlib['det'] = dlib.get_frontal_face_detector()
        _dlib['sp'] = dlib.shape_predictor(model_file('shape_predictor_68_face_landmarks.dat'))
    dets = list(_dlib['det'](img, 1))
    if not dets:
        raise DataError(f'{path}: no face found; use a photo with a clear, roughly frontal face')
    if len(dets) > 1:
        warnings.warn(f'{path}: {len(dets)} faces found, using the largest')
    rect = max(dets, key=lambda r: r.width() * r.height())
    shape = _dlib['sp'](img, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def ffhq_quad(lm):
    """The FFHQ crop: an oriented square from the eyes and mouth corners, as 4 corners [4, 2] and its side."""
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_l + eye_r) / 2, eye_r - eye_l
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]), np.hypot(*x) * 2


def framing_quad(lm, framing):
    """The crop whose similarity transform puts the eye centres and the mouth centre (mean of its corners) onto a
    generator's framing (three points in units of the image side, as a checkpoint stores them), least squares."""
    src = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), (lm[48] + lm[54]) / 2])
    dst = np.asarray(framing, dtype=np.float64)
    sc, dc = src.mean(0), dst.mean(0)
    s, d = (src - sc) @ [1, 1j], (dst - dc) @ [1, 1j]  # points as complex numbers: a similarity is one product
    m = (np.conj(s) @ d) / (np.conj(s) @ s)              # photo -> unit square: z -> m (z - sc) + dc
    corners = np.array([0, 1j, 1 + 1j, 1])              # upper left, lower left, lower right, upper right
    back = (corners - dc @ [1, 1j]) / m + sc @ [1, 1j]
    return np.stack([back.real, back.imag], 1), abs(1 / m)


def align_face(img, size, path='image', framing=None):
    """Photo [H, W, 3] uint8 -> aligned square crop [size, size, 3] uint8 (reflect-padded where needed): FFHQ's crop,
    or the generator's own framing when it gives one."""
    lm = _landmarks(img, path)
    quad, qsize = ffhq_quad(lm) if framing is None else framing_quad(lm, framing)
    pad = int(np.ceil(max(0, -quad.min(), (quad[:, 0] - img.shape[1]).max(), (quad[:, 1] - img.shape[0]).max())))
    pad = min(pad + 4, max(img.shape[:2]) - 1)  # reflect padding needs pad < image size
    if pad > 4:
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
        quad = quad + pad
    work = 4 * size  # transform at 4x, then downsample with a good filter
    im = Image.fromarray(img).transform((work, work), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    return np.asarray(im.resize((size, size), Image.LANCZOS))


def dlib_available():
    return importlib.util.find_spec('dlib') is not None


def load_faces(path, size, align=True, framing=None):
    """Photos of one identity -> ([N, 3, size, size] float in [-1, 1], file names). align=False takes square photos
    as aligned face crops (and still aligns the others when dlib is installed); a framing (a generator's own, not
    FFHQ's) always aligns.

    Bad files among good ones are skipped with a warning; if none is usable the first error is raised."""
    faces, names, errors = [], [], []
    photos = list_photos(path)
    for f in photos:
        try:
            img = load_image(f)
            square = abs(img.shape[0] - img.shape[1]) <= 0.05 * max(img.shape[:2])
            if (align or not square or framing) and dlib_available():
                img = align_face(img, size, f, framing)
            else:
                if framing:
                    raise DataError(f'{f}: aligning to this generator\'s framing needs dlib; pip install dlib-bin')
                if align:
                    warnings.warn(f'{f}: dlib not installed, taking the photo as an already-aligned face crop')
                if not square:
                    raise DataError(f'{f}: not a square face crop; install dlib-bin to align raw photos')
                img = np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))
        except DataError as e:
            if len(photos) == 1:
                raise
            warnings.warn(f'skipped: {e}')
            errors.append(e)
            continue
        faces.append(torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 127.5 - 1)
        names.append(f.stem)
    if not faces:
        raise errors[0]
    return torch.stack(faces), names


def to_uint8(img):
    """[-1, 1] NCHW float -> [N, H, W, 3] uint8, the mapping of NVIDIA's generate.py."""
    return (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid(images, nrow=None):
    """[-1, 1] images [N, 3, H, W] -> one [rows * H, nrow * W, 3] uint8 picture, filled row by row."""
    x = to_uint8(torch.as_tensor(images))
    n, h, w, c = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    out = np.zeros((int(np.ceil(n / nrow)) * h, nrow * w, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
    return out


def save_grid(images, path, nrow=None):
    """Save [-1, 1] images [N, 3, H, W] as one PNG grid, written atomically."""
    with written(path, '.tmp.png') as tmp:
        Image.fromarray(grid(images, nrow)).save(tmp)


# -----------------------------------------------------------------------------
# identities -> latents

def invert(G, images, id_net, steps=300, lr=0.05, w_pix=1.0, w_perc=1.0, w_id=0.5, kw=None, progress=True,
           start=None):
    """Optimisation-based projection of aligned photos into W+, one latent per photo.

    Starts from w_avg (or start, e.g. an encoder's codes); Adam on pixel MSE + identity-network feature distance +
    identity distance, constant noise. kw picks the generator's dial (default {'T': 0}, the original; {} projects
    through trained adapters at their own T). Returns (ws [N, num_ws, w_dim], pixel MSE [N], identity distance [N]) of the final latents."""
    kw = {'T': 0} if kw is None else kw
    perceptual = IDFeatureDistance(id_net)
    dev = G.mapping.w_avg.device
    target = torch.nn.functional.interpolate(images.to(dev), size=G.cfg.img_resolution, mode='area') \
        if images.shape[-1] != G.cfg.img_resolution else images.to(dev)
    with torch.no_grad():
        emb_t, feats_t = id_net.features(target)
    ws = (G.mapping.w_avg.repeat(len(target), G.num_ws, 1) if start is None else start.to(dev)).detach().clone()
    ws.requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in tqdm(range(steps), desc='invert', disable=not progress, leave=False):
        img = G.synthesis(ws, noise_mode='const', fused=False, **kw)  # fused=False: NVIDIA's training path
        loss = w_pix * (img - target).square().mean(dim=[1, 2, 3])
        if w_perc or w_id:
            emb, feats = id_net.features(img)
            loss = loss + w_perc * perceptual(feats, feats_t) + w_id * id_net.distance(emb, emb_t)
        loss = loss.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode='const', **kw)
        mse = (img - target).square().mean(dim=[1, 2, 3])
        dist = id_net.distance(id_net.embed(img), emb_t)
    return ws.detach(), mse, dist


def load_latent(path, G):
    """A saved latent (.pt tensor or dict with 'ws', or .npy) -> [N, num_ws, w_dim]; [w_dim] and
    [num_ws, w_dim] are broadcast."""
    p = str(path)
    try:
        if p.endswith('.npy'):
            a = np.load(p, allow_pickle=False)  # big-endian or Fortran order as saved: made native for torch
            x = torch.from_numpy(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder('=')))
        else:
            x = load(p, 'a latent file')
    except Exception as e:  # noqa: BLE001
        raise DataError(f'{path}: not a readable latent file ({type(e).__name__}); save a tensor with torch.save or np.save') from None
    if isinstance(x, dict):
        x = x.get('ws', x.get('w_u'))
    if not isinstance(x, torch.Tensor):
        raise DataError(f'{path}: holds no latent tensor (expected a tensor or a dict with "ws")')
    if x.layout != torch.strided or x.is_quantized or x.is_complex() or x.is_meta:
        kind = 'quantized' if x.is_quantized else 'complex' if x.is_complex() else 'meta' if x.is_meta else \
            str(x.layout).split('.')[-1]
        raise DataError(f'{path}: holds a {kind} tensor; '
                        'save a plain (dense, real) latent tensor')
    if not x.is_floating_point():  # an integer or bool tensor is not a latent, whatever its shape
        raise DataError(f'{path}: holds a {str(x.dtype).split(".")[-1]} tensor; save the float latent itself')
    x = x.float()
    if not torch.isfinite(x).all():
        raise DataError(f'{path}: the latent holds NaN or Inf values; pass a finite latent')
    if x.numel() and x.abs().max() > 1e4:  # W latents lie within a few hundred of w_avg; beyond, norms overflow
        raise DataError(f'{path}: holds values up to {x.abs().max().item():.3g}, far beyond any W latent; pass a '
                        'latent the generator\'s mapping network made or an inversion found')
    L, C = G.num_ws, G.cfg.w_dim
    if x.shape == (C,):
        x = x[None, None].repeat(1, L, 1)
    elif x.shape == (L, C):
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (L, C) or len(x) == 0:
        raise DataError(f'{path}: latent of shape {tuple(x.shape)} does not fit this generator (W+ is [N, {L}, {C}])')
    if len(x) > MAX_ROWS:  # every row is drawn, searched around and kept at every step
        raise DataError(f'{path}: {len(x):,} latents; one person is at most {MAX_ROWS:,} (his photos\' inversions)')
    return x


MAX_ROWS = 1024  # latents of one forgotten person


def seed_of(spec):
    """--identity seed:N -> N (ASCII digits, 0 <= N < 2**63); None for an identity that is not a seed."""
    if not str(spec).startswith('seed:'):
        return None
    n = str(spec)[5:]
    if not (n.isascii() and n.isdigit() and int(n) < 2 ** 63):
        raise DataError(f'{spec}: write seed:N with an integer 0 <= N < 2**63')
    return int(n)


def resolve_identity(spec, G, id_net, steps=300, encoder=None):
    """--identity -> (ws [N, num_ws, w_dim], info dict).

    A photo or folder of photos (aligned with dlib, then inverted: from an encoder's codes when given), a latent file
    (.pt/.npy), or seed:N
    (a random in-domain identity: z from torch seed N through the mapping network, psi 1)."""
    dev = G.mapping.w_avg.device
    spec = str(spec)
    seed = seed_of(spec)
    if seed is not None:
        return seed_latents(G, [seed]), {'kind': 'seed', 'seed': seed}
    if Path(spec).is_file() and Path(spec).suffix.lower() in LATENT_EXTS:
        return load_latent(spec, G).to(dev), {'kind': 'latent', 'path': spec}
    faces, names = load_faces(spec, G.cfg.img_resolution, framing=G.cfg.framing)
    ws, mse, dist = invert(G, faces, id_net, steps=steps, start=encode(encoder, faces))
    return ws, {'kind': 'photos', 'path': spec, 'names': names, 'photos': faces, 'inversion_mse': mse.tolist(),
                'inversion_id_distance': dist.tolist()}


# -----------------------------------------------------------------------------
# encoders: pSp (eladrich/pixel2style2pixel) and e4e (omertov/encoder4editing), one pass instead of invert's 300 steps

ENCODERS = {'GradualStyleEncoder': 'pyramid', 'Encoder4Editing': 'e4e', 'BackboneEncoderUsingLastLayerIntoW': 'w',
            'SingleStyleCodeEncoder': 'w', 'BackboneEncoderUsingLastLayerIntoWPlus': 'w+'}  # opts' name -> head kind


class _StyleHead(nn.Module):
    """pSp's GradualStyleBlock: stride-2 3x3 convs + leaky ReLU (0.01) from spatial x spatial to 1x1, then an
    equalised linear layer: one 512-d code."""

    def __init__(self, spatial, c=512):
        super().__init__()
        self.convs = nn.Sequential(*[m for _ in range(int(math.log2(spatial))) for m in (nn.Conv2d(c, c, 3, 2, 1),
                                                                                        nn.LeakyReLU())])
        self.linear = FullyConnectedLayer(c, c)

    def forward(self, x):
        return self.linear(self.convs(x).flatten(1))


def _upsample_add(x, y):
    """The feature pyramid's merge: the coarser map resized to the lateral one (bilinear, corners aligned), plus it."""
    return F.interpolate(x, size=y.shape[-2:], mode='bilinear', align_corners=True) + y


class Encoder(nn.Module):
    """pSp / e4e: IR-SE50 on 256 px faces + a feature pyramid (16, 32, 64 px) read by one head per style -> W+."""
    w_dim = 512

    def __init__(self, kind, n_styles, path='encoder'):
        super().__init__()
        self.kind, self.n_styles, self.path = kind, n_styles, str(path)
        self.input_layer, self.body = ir_layers(50, se=True)
        if kind in ('pyramid', 'e4e'):  # heads 0-2 read the 16 px map, 3-6 the 32 px one, the rest the 64 px one
            self.styles = nn.ModuleList(_StyleHead(16 if i < 3 else 32 if i < 7 else 64) for i in range(n_styles))
            self.latlayer1, self.latlayer2 = nn.Conv2d(256, 512, 1), nn.Conv2d(128, 512, 1)
        if kind == 'w+':
            self.output_layer_2 = nn.Sequential(nn.BatchNorm2d(512), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                                                nn.Linear(512 * 7 * 7, 512))
        if kind in ('w', 'w+'):
            self.linear = FullyConnectedLayer(512, 512 * (n_styles if kind == 'w+' else 1))
        self.register_buffer('latent_avg', torch.zeros(1, 512))  # [1 or n_styles, 512], added to the codes

    def forward(self, x):
        """Aligned faces [N, 3, H, W] in [-1, 1] -> W+ codes [N, n_styles, 512], latent_avg included."""
        if x.shape[-2:] != (256, 256):  # the encoders saw 256 px: pSp's transforms.Resize (bilinear, antialiased)
            x = F.interpolate(x, size=(256, 256), mode='bilinear', align_corners=False, antialias=True)
        x, feats = self.input_layer(x), []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (6, 20, 23):  # ends of the 64, 32 and 16 px stages
                feats.append(x)
        c1, c2, c3 = feats
        if self.kind == 'w':
            codes = self.linear(c3.mean(dim=[2, 3]))[:, None]  # [N, 1, 512]: one code for every style
        elif self.kind == 'w+':
            codes = self.linear(self.output_layer_2(c3)).view(-1, self.n_styles, 512)
        else:
            p2 = _upsample_add(c3, self.latlayer1(c2))
            p1 = _upsample_add(p2, self.latlayer2(c1))
            codes = torch.stack([h((c3, p2, p1)[(i >= 3) + (i >= 7)]) for i, h in enumerate(self.styles)], 1)
            if self.kind == 'e4e':  # one code w0 and a delta from each later head (all of them: its Inference stage)
                codes = torch.cat([codes[:, :1], codes[:, :1] + codes[:, 1:]], 1)
        return codes.expand(-1, self.n_styles, -1) + self.latent_avg

    def check_fits(self, G):
        """One line naming both when this encoder's W+ is not the generator's."""
        if (self.n_styles, self.w_dim) != (G.num_ws, G.cfg.w_dim):
            raise CheckpointError(f'{self.path}: the encoder gives W+ [{self.n_styles}, {self.w_dim}] but the '
                                  f'{G.cfg.img_resolution} px generator takes [{G.num_ws}, {G.cfg.w_dim}]; use the '
                                  'encoder trained for this generator')


@torch.no_grad()
def encode(encoder, faces):
    """An encoder's W+ codes of aligned faces, or None without one (invert then starts from w_avg)."""
    return None if encoder is None else encoder(faces.to(encoder.latent_avg.device))


def load_encoder(path):
    """An official pSp / e4e .pt (state_dict, opts, latent_avg) -> the frozen Encoder; decoder.* is not read (pass the
    generator's own file to Generator.from_checkpoint, and check the fit with Encoder.check_fits)."""
    what = 'a pSp or e4e checkpoint'
    ck = load(path, what)
    if not isinstance(ck, dict) or not isinstance(ck.get('state_dict'), dict) or not isinstance(ck.get('opts'), dict):
        raise CheckpointError(f'{path}: not {what} (expected a dict with state_dict and opts); pass the .pt that '
                              'pixel2style2pixel or encoder4editing released or trained')
    opts, sd = ck['opts'], ck['state_dict']
    kind = ENCODERS.get(opts.get('encoder_type'))
    if kind is None:
        raise CheckpointError(f"{path}: encoder_type {opts.get('encoder_type')!r} is none of {', '.join(ENCODERS)}")
    if opts.get('input_nc', 3) != 3 or opts.get('label_nc', 0):
        raise CheckpointError(f"{path}: encodes {opts.get('input_nc')}-channel maps (label_nc "
                              f"{opts.get('label_nc', 0)}: sketches or segmentations), not RGB faces")
    size = opts.get('output_size', opts.get('stylegan_size', 1024))  # pSp's name, e4e's name, pSp's old default
    if not isinstance(size, int) or size < 8 or size & (size - 1):
        raise CheckpointError(f'{path}: opts give a generator size of {size!r}, not a power of two')
    with torch.device('meta'):  # shapes only, no init: the file fills every tensor
        E = Encoder(kind, int(math.log2(size)) * 2 - 2, path)
    enc = {k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}
    want = {k: v.shape for k, v in E.state_dict().items() if k != 'latent_avg'}
    missing, extra = [k for k in want if k not in enc], [k for k in enc if k not in want]
    wrong = [k for k in want if k in enc and (not isinstance(enc[k], torch.Tensor) or enc[k].shape != want[k])]
    if missing or extra or wrong:
        why = [f'{len(m)} {w}, e.g. encoder.{m[0]}' for w, m in (('missing', missing), ('unexpected', extra)) if m]
        why += [f'encoder.{k} is {list(enc[k].shape) if isinstance(enc[k], torch.Tensor) else type(enc[k]).__name__}'
                f', not {list(want[k])}' for k in wrong[:1]]
        raise CheckpointError(f"{path}: encoder weights do not fit {opts['encoder_type']} for a {size} px generator "
                              f"({'; '.join(why)})")
    n, avg = E.n_styles, ck.get('latent_avg')
    if not opts.get('start_from_latent_avg'):
        avg = torch.zeros(1, 512)  # the reference adds no latent_avg then, even if the file holds one
    elif not (isinstance(avg, torch.Tensor) and avg.is_floating_point() and avg.numel() in (512, 512 * n)
              and avg.isfinite().all()):
        raise CheckpointError(f'{path}: start_from_latent_avg is set but latent_avg is '
                              f'{list(avg.shape) if isinstance(avg, torch.Tensor) else avg}, not finite [{n}, 512] or '
                              '[512]; use the file as training saved it')
    enc = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in enc.items()}
    E.latent_avg = avg.float().reshape(-1, 512)  # its rows: 1 or n_styles
    E.load_state_dict({**enc, 'latent_avg': E.latent_avg}, assign=True)
    return E.eval().requires_grad_(False)
