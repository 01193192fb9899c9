"""
Draw from an unlearned generator at chosen settings of the forgetting dial (nanoGPT's sample.py).

    python sample.py runs/obama_1-ode                            # seeds 0-15 at T = 0 and the trained T
    python sample.py runs/obama_1-ode --T 0,0.8,1.6 --seeds 0-7  # a row per T, a column per seed
    python sample.py runs/obama_1-ode --gif                      # the dial from 0 to the trained T, animated
    python sample.py runs/obama_1-ode --people --seeds 0-5       # him and the kept people first, then seeds 0-5
    python sample.py runs/obama runs/biden --T 1.6,1.6           # two runs' adapters composed, each at its dial

Seed N draws z from torch seed N, as train.py's --identity seed:N does (that identity is --seeds N --psi 1).
Writes <run>/samples.png (and samples.gif). A --adapter full run has no dial: its rows are before and after.
Several runs: their vector fields summed (ode_adapter.compose); rows the original, each alone, all together.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data import DataError, grid, save_grid
from helpers import CheckpointError, Defaults, Parser, cli, device, own_line, writable, written
from model import generate, seed_latents
from ode_adapter import check_composable, compose, load_run, run_meta, times


MAX_SEEDS = 1024  # images in one grid


def parse_seeds(spec):
    """'0-3,10' -> [0, 1, 2, 3, 10]; each range checked before it is built (0-9223372036854775806 is not a list)."""
    seeds = []
    for part in spec.split(','):
        a, dash, b = part.partition('-')
        try:
            lo, hi = int(a), int(b if dash else a)  # '5-' is not a range
        except ValueError:
            raise ValueError(f'--seeds {spec}: write seeds and ranges, e.g. 0-15 or 1,5,7') from None
        if not 0 <= lo <= hi < 2 ** 63:
            raise ValueError(f'--seeds {spec}: seeds are integers 0 <= N < 2**63, ranges low-high')
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise ValueError(f'--seeds {spec}: more than {MAX_SEEDS} images in one grid; ask for fewer seeds')
        seeds += range(lo, hi + 1)
    return seeds


def save_gif(frames, path, ms):
    """Pictures [H, W, 3] uint8 -> a looping GIF, the last frame held; written atomically."""
    ims = [Image.fromarray(f) for f in frames]
    with written(path, '.tmp.gif') as tmp:
        ims[0].save(tmp, save_all=True, append_images=ims[1:], duration=[ms] * (len(ims) - 1) + [1500], loop=0)


def composed(args, G, meta, Ts, ws):
    """Several runs' adapters used together (ode_adapter.compose), each at its dial: rows the original, each run
    alone at its dial, then all of them -> (rows, row names, the dial of all together)."""
    metas = [meta] + [run_meta(r) for r in args.run[1:]]
    check_composable(args.run, metas)
    Ts = Ts or [m['adapter']['T'] for m in metas]
    if len(Ts) != len(metas):
        raise ValueError(f'--T {args.T}: give one dial per run ({len(metas)} runs)')
    sds, rows = [m['state_dict'] for m in metas], [generate(G, ws, {'T': 0})]
    for i in tqdm(range(len(sds) + 1), desc='runs'):
        alone = [T if i in (j, len(sds)) else 0.0 for j, T in enumerate(Ts)]  # run i alone; then all
        rows.append(generate(compose(G, sds, alone), ws, {}))
    names = ['original'] + [f'{r} at T = {T}' for r, T in zip(args.run, Ts)] + ['together']
    return rows, names, max(Ts)


def main(argv=None):
    p = Parser(description=__doc__.split('\n\n')[0], formatter_class=Defaults)
    p.add_argument('run', nargs='+', help='a run folder written by train.py; several: their adapters composed')
    p.add_argument('--T', default=None, help='comma-separated integration times (default: 0 and the trained T); with '
                                             'several runs, one dial per run (default: each its trained T)')
    p.add_argument('--seeds', default='0-15', help='seeds and ranges, e.g. 0-15 or 1,5,7')
    p.add_argument('--psi', type=float, default=0.7, help='truncation psi (1: no truncation)')
    p.add_argument('--people', action='store_true', help='first columns: the forgotten latents and the kept people\'s')
    p.add_argument('--gif', action='store_true', help='also animate the dial from 0 to the largest T asked')
    p.add_argument('--frames', type=int, default=None, help='frames of the GIF (default: 24)')
    p.add_argument('--out', default=None, help='output PNG (default <run>/samples.png; the GIF beside it)')
    p.add_argument('--ckpt', default=None, help="the generator, when not at the run's stored path (same weights)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    try:
        dev, seeds = device(args.device), parse_seeds(args.seeds)
        Ts = times(args.T) if args.T else None
        if args.frames is not None and not args.gif:
            raise ValueError(f'--frames {args.frames} is read by --gif only; add --gif (or drop --frames)')
        args.frames = 24 if args.frames is None else args.frames
        if not abs(args.psi) <= 10 or not 2 <= args.frames <= 1000:
            raise ValueError('--psi must be a number in [-10, 10] and --frames from 2 to 1,000')
        if args.out is not None and (Path(args.out).suffix.lower() != '.png' or args.out.endswith('/')):
            raise ValueError(f'--out {args.out or repr(args.out)}: name a .png (the GIF goes beside it)')
        png = Path(args.out or Path(args.run[0]) / 'samples.png')
        if len(Ts or ()) * len(seeds) > 16384 or (args.gif and args.frames * len(seeds) > 65536):
            raise ValueError(f'{len(Ts or ())} rows / {args.frames} frames of {len(seeds)} seeds: more images than a '
                             'picture holds (16,384 a grid, 65,536 a GIF); ask for fewer')
        if len({Path(r).resolve() for r in args.run}) < len(args.run):
            raise ValueError(f'{" ".join(args.run)}: a run given twice would be composed with itself; give each once')
        for f in [png, png.with_suffix('.gif')][:1 + args.gif] if args.out or Path(args.run[0]).is_dir() else []:
            writable(f, '--out')  # found now, not after the grid is drawn
        G_s, G_u, s_kw, meta = load_run(args.run[0], dev, args.ckpt)
        full = meta.get('kind') == 'full'
        if full and Ts:
            raise ValueError(f'{args.run[0]}: a full fine-tune has no dial; drop --T (its rows are before and after)')
        ws = seed_latents(G_s, seeds, args.psi)
        if args.people:  # the forgotten latents and the kept people's first, then the seeds
            ws = torch.cat([meta['ws_u'].to(dev), *[w.to(dev) for w in (meta.get('retain_ws') or {}).values()], ws])
        if len(args.run) > 1:
            rows, Ts, top = composed(args, G_u, meta, Ts, ws)
        elif full:
            rows, Ts = [generate(G_s, ws, s_kw), generate(G_u, ws, {})], ['before', 'after']
        else:
            Ts = Ts or [0.0, meta['adapter']['T']]
            rows = [generate(G_u, ws, {'T': T}) for T in tqdm(Ts, desc='T')]
        save_grid(torch.cat(rows), png, nrow=len(ws))
        print(f'wrote {png}: rows {"" if len(args.run) > 1 else "T = "}{", ".join(map(str, Ts))}; columns '
              f'{"the forgotten and kept latents, then " * args.people}seeds {args.seeds}, psi {args.psi}')
        if args.gif:
            top = top if len(args.run) > 1 else None if full else max(Ts)
            dial = [None] * 2 if full else np.linspace(0, top, args.frames).tolist()
            frames = [grid(rows[i] if full else generate(G_u, ws, {'T': T}), len(ws))
                      for i, T in enumerate(tqdm(dial, desc='gif'))]
            save_gif(frames, png.with_suffix('.gif'), 800 if full else 80)
            print(f'wrote {png.with_suffix(".gif")}: ' + ('before, after' if full else f'T from 0 to {top}'))
    except (CheckpointError, DataError, ValueError, OSError) as e:
        raise SystemExit(f'error: {e}')
    except KeyboardInterrupt:
        print(own_line('interrupted; the files written so far are complete', sys.stdout))
        raise SystemExit(130) from None
    return png


if __name__ == '__main__':
    cli(main)
