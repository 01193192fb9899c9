"""
Forgetting at scale (SUGAR's measure): runs that forgot K = 1, 5, 50 ... identities at once, side by side: how many of
their forgotten identities each judge no longer recognises, how far held-out identities move.

    python evaluate.py --scale runs/k1 runs/k5 runs/k50    # scale.json, scale.png beside the first run
"""
from pathlib import Path

import torch

from data import dlib_available
from helpers import plot, table, write_json
from id_net import DlibCpp, FaceRes
from judges import Judge, Panel, calibrate, frechet_distance, original, stats
from model import seed_latents
from ode_adapter import load_run, run_meta


HELD_SEEDS = 10 ** 6  # --scale's held-out identities: seed:1000000 on, never among the forgotten seed:N of a run


@torch.no_grad()
def scale(runs, args, device, n_held=200):
    """Forgetting and retention as more identities are forgotten at once (SUGAR's measure), one row per run: K, the
    share of its forgotten latents whose image moved past each judge's same-person threshold (judges.calibrate, on the
    original generator) from its image before
    (and, by every judge, farther than two different random samples are from each other: their median; and the share
    whose face the judge no longer finds), how far
    n_held held-out identities (seed:1000000 on, psi 1) move (median, 90th percentile, dlib port; the median of those
    no forgotten latent's image is within the port's threshold of, and the share within each judge's), the descriptors'
    Frechet distance to the original on them, seconds a step -> scale.json and scale.png beside the first run."""
    for run in runs:  # every run folder checked before the first is measured (minutes each)
        run_meta(run)
    rows, faceres = [], FaceRes(args.faceres).to(device) if args.faceres else None
    for run in runs:
        G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
        J = Judge(args, device, G_s.cfg.framing)
        panel = Panel({}, J, DlibCpp(G_s.cfg.framing) if dlib_available() else None, faceres)
        calibrate(panel, G_s, s_kw, args.n)
        ws_h, ws_u = seed_latents(G_s, range(HELD_SEEDS, HELD_SEEDS + n_held)), meta['ws_u'].to(device)
        hb = original(panel, G_s, s_kw, 'held', lambda: panel.drawn(G_s, ws_h, s_kw, 'held-out, before'), ws_h)
        ub = original(panel, G_s, s_kw, 'forgotten', lambda: panel.drawn(G_s, ws_u, s_kw, 'forgotten, before'), ws_u)
        ha, ua = panel.drawn(G_u, ws_h, {}, 'held-out, after'), panel.drawn(G_u, ws_u, {}, 'forgotten, after')
        moved = J.dist(hb[J.name], ha[J.name])
        near = {j: (dist(hb[j][:, None], ub[j][None]) < thr).any(1)  # [n_held]: as one of the forgotten, to judge j
                for j, (dist, thr) in panel.rules.items()}
        r = {'run': str(run), 'K': len(ws_u), 'kind': meta.get('kind'), 'held_moved_median': moved.median().item(),
             'held_moved_p90': moved.quantile(0.9).item(),
             'held_moved_median_far': moved[~near[J.name]].median().item() if (~near[J.name]).any() else float('nan'),
             f'{J.fd_name}_held': frechet_distance(*stats(hb[J.name].cpu()), *stats(ha[J.name].cpu())),
             's_per_step': (meta.get('wall_s') or float('nan')) / max(meta.get('steps') or 1, 1)}
        for j, (dist, thr) in panel.rules.items():
            d = dist(ub[j], ua[j])  # each forgotten latent: its image before to after (NaN: no face found)
            pair = dist(hb[j][: n_held // 2], hb[j][n_held // 2: n_held // 2 * 2])  # two different random samples
            r[f'random_pair_{j}'] = pair.nanmedian().item()
            r[f'forgotten_beyond_random_{j}'] = (d >= r[f'random_pair_{j}']).float().mean().item()
            r[f'forgotten_past_{j}'] = (d >= thr).float().mean().item()  # a face no longer found: not past, its own column
            r[f'held_near_forgotten_{j}'] = near[j].float().mean().item()
            r[f'threshold_{j}'] = thr
            r[f'forgotten_no_face_{j}'] = d.isnan().float().mean().item()
        rows.append(r)
        print(table([r], list(r)))
    out = Path(runs[0]).parent
    write_json(rows, out / 'scale.json')
    kinds = {r['kind']: sorted((q for q in rows if q['kind'] == r['kind']), key=lambda q: q['K']) for r in rows}
    if len({tuple(q['K'] for q in v) for v in kinds.values()}) > 1:  # kinds at different K: the runs as given, one line
        kinds = {'': rows}
    names = {'held_moved_median': 'held-out identities moved (median)',
             f'forgotten_past_{J.name}': 'forgotten past the threshold (share, dlib port)'}
    plot(out / 'scale.png', [r['K'] for r in next(iter(kinds.values()))],  # a line per measure and adapter kind
         {f'{name}{", --adapter " + k if k else ""}': [r[key] for r in v] for k, v in kinds.items() for key, name in names.items()},
         'identities forgotten at once (K)', 'distance / share')
    print(f'wrote {out}/scale.json, {out}/scale.png')
    return rows
