"""
The teacher the built-in generator learns from: a DCGAN that draws many different synthetic people at 64 px, the
weights of PyPI's `gan-face-generate==1.1.1` (MIT; trained on DigiFace-1M, non-commercial research use only).

Written here from its description; the package is never imported (it pulls torchvision and wandb at import), only
its weights file is read, with weights_only=True, straight from the wheel or from the extracted weights.tar:

    pip download --no-deps gan-face-generate==1.1.1 -d .whl
"""
import glob
import io
import os
import zipfile

import torch
import torch.nn as nn

from helpers import CheckpointError, ROOT

Z_DIM = 100
WEIGHTS = 'gan_face_generate/weights.tar'  # the weights' path inside the wheel


def default_path():
    """The wheel in .whl/ (where the pretraining notes download it), or None."""
    found = sorted(glob.glob(str(ROOT / '.whl' / 'gan_face_generate-1.1.1-*.whl')))
    return found[0] if found else None


class Teacher(nn.Module):
    """z [N, 100] -> images [N, 3, 64, 64] in [-1, 1]: five transposed 4x4 convolutions (no bias), BatchNorm + ReLU
    between them (run in eval mode: running statistics), tanh at the end."""

    def __init__(self):
        super().__init__()
        layers, chans = [], [Z_DIM, 512, 256, 128, 64, 3]
        for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=1 if i == 0 else 2, padding=0 if i == 0 else 1, bias=False))
            layers += [nn.BatchNorm2d(cout), nn.ReLU(True)] if i < 4 else [nn.Tanh()]
        self.main = nn.Sequential(*layers)  # keys main.{0,3,6,9,12} (convs) and main.{1,4,7,10} (BatchNorms)

    def forward(self, z):
        return self.main(z[:, :, None, None])


def load_teacher(path=None):
    """The teacher in eval mode with frozen weights, from the wheel (.whl) or weights.tar; a clear error without it."""
    path = path or default_path()
    if path is None or not os.path.isfile(path):
        raise CheckpointError(f'{path or ".whl/"}: no teacher weights; download them with '
                              f'`pip download --no-deps gan-face-generate==1.1.1 -d .whl`')
    try:
        if zipfile.is_zipfile(path) and path.endswith('.whl'):
            with zipfile.ZipFile(path) as whl:
                src = io.BytesIO(whl.read(WEIGHTS))
        else:
            src = path
        sd = torch.load(src, map_location='cpu', weights_only=True)['netG_state_dict']
        T = Teacher()
        T.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f'{path}: not the gan-face-generate 1.1.1 wheel or its weights.tar ({type(e).__name__})') from None
    return T.eval().requires_grad_(False)


# where the teacher draws the eye centres and the mouth centre, in units of the image side (dlib's 68 landmarks on
# its samples; many-people-teacher.md): tighter than FFHQ's crop. Photos are aligned onto these points.
FRAMING = ((0.358, 0.478), (0.658, 0.473), (0.506, 0.833))
