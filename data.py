"""
Images in and out: identity photos (loading, checking, aligning, inverting to a latent) and PNG grids.
"""
import os

import numpy as np
import torch
from PIL import Image


def to_uint8(img):
    """[-1, 1] NCHW float -> [N, H, W, 3] uint8, the mapping of NVIDIA's generate.py."""
    return (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images, path, nrow=None):
    """Save a list/tensor of [-1, 1] images [N, 3, H, W] as one PNG grid, written atomically."""
    x = to_uint8(torch.as_tensor(images))
    n, h, w, c = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.zeros((ncol * h, nrow * w, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
    tmp = str(path) + '.tmp.png'
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)
