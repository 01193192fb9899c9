"""
Every number the README quotes about training, from the runs docs/make.sh makes: the mean over training seeds
0 and 1 with each seed in brackets, and the fresh seed 2 with whether it lands within the two seeds' range.

    python docs/numbers.py runs/docs > docs/numbers.md
"""
import json
import sys
from pathlib import Path

R = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/docs')
SPREAD, FRESH = (0, 1), 2
PEOPLE = ('biden', 'collins', 'hopper')
TALLY = []  # for each number: does the fresh seed land within the spread?


def read(run, name='metrics.json'):
    return json.loads((R / run / name).read_text())


def pct(v):
    return f'{100 * v:.1f}%'


def num(v):
    return f'{v:.3f}'


def secs(v):
    return f'{v:.0f}'


def cells(variant, get, fmt, fresh=True, name='metrics.json'):
    """'mean (s0 / s1)' over the spread seeds, then the fresh seed's value and whether it lies in their range."""
    vals = [get(read(f'{variant}-s{s}', name)) for s in SPREAD]
    out = [f'{fmt(sum(vals) / len(vals))} ({" / ".join(fmt(v) for v in vals)})']
    if fresh:
        v = get(read(f'{variant}-s{FRESH}', name))
        inside = min(vals) <= v <= max(vals) or fmt(v) in {fmt(min(vals)), fmt(max(vals))}
        out.append(f'{fmt(v)} {"in" if inside else "**out**"}')
        TALLY.append(inside)
    return out


def table(head, rows):
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows]) + '\n'


def leak(judge, key, who=None):
    return lambda m: m['leak']['1'][judge][key] if who is None else m['leak']['1'][judge][key][who]


# the main table: the paper's method (--forget latent) and person mode (the default) side by side
before = read('person-s0')
MAIN = [  # label, before (the original generator), how to read it, format
    ('leak: samples showing Obama, dlib port', pct(before['leak_dlib_before']), lambda m: m['leak_dlib_after'], pct),
    ('leak, dlib C++ pipeline', pct(before['leak_dlib_cpp_before']), lambda m: m['leak_dlib_cpp_after'], pct),
    ('samples that showed Obama still Obama (port)', '100%', leak('dlib', 'leak_went', 'obama'), pct),
    ('... now Biden (port)', '0%', leak('dlib', 'leak_went', 'biden'), pct),
    ('... now nobody known (port)', '0%', leak('dlib', 'leak_went', 'nobody'), pct),
    ('forgotten latent moved (its image before to after)', '0', lambda m: m['ID'], num),
    ('forgotten latent\'s image to `obama_1`', num(before['ID_photo_before']), lambda m: m['ID_photo_after'], num),
    ('held-out photos\' latents to the held-out photos', num(before['ID_heldout_photo_before']),
     lambda m: m['ID_heldout_photo_after'], num),
    *[(f'{p.title()}\'s latent to his/her photo', num(before[f'retain_{p}_photo_before']),
       (lambda p: lambda m: m[f'retain_{p}_photo_after'])(p), num) for p in PEOPLE],
    ('kept people moved (mean of the three)', '0', lambda m: m['retain_people'], num),
    *[(f'samples recognised as {p.title()} (C++)', pct(before[f'share_dlib_cpp_{p}_before']),
       (lambda p: lambda m: m[f'share_dlib_cpp_{p}_after'])(p), pct) for p in PEOPLE],
    ('faces detected (C++)', pct(before['leak']['1']['dlib_cpp']['face_before']), lambda m: m['face_after'], pct),
    ('random samples moved (psi 1)', '0', lambda m: m['retain_random'], num),
    ('FD_dlib_pre (descriptor Frechet distance to the original)', '0', lambda m: m['FD_dlib_pre'], num),
    *[(f're-projection of obama_{i + 1}: distance to the photo', num(before['reproject_before'][i]),
       (lambda i: lambda m: m['reproject_after'][i])(i), num) for i in range(3)],
    ('training time (s, the steps only)', '', lambda m: m['train_wall_s'], secs),
]
print('# The numbers behind the README\n')
print(f'Made by `docs/make.sh` (`python docs/numbers.py {R}`). Each cell: the mean over training seeds '
      f'{" and ".join(map(str, SPREAD))} (each seed in brackets), then the fresh seed {FRESH} and whether it lies '
      'within the two seeds\' range, at the precision shown ("in"), or not ("**out**"). 500 fresh samples, '
      'evaluation seed 1; dlib distances (same person < 0.6).\n')
print('## The paper\'s method and person mode\n')
rows = [[label, b, *cells('latent', get, fmt), *cells('person', get, fmt)] for label, b, get, fmt in MAIN]
print(table(['', 'before', 'paper\'s method (`--forget latent`, 500 steps)', 'seed 2',
             'person mode (default, 300 steps)', 'seed 2'], rows))

# the dial: person mode over T
print('## The dial (person mode, `evaluate.py --sweep`)\n')
Ts = [s['T'] for s in read('person-s0', 'sweep.json')]
DIAL = [('leak, port', 'leak_dlib_after', pct), ('leak, C++', 'leak_dlib_cpp_after', pct),
        ('forgotten latent\'s image to `obama_1`', 'ID_photo_after', num), ('kept people moved', 'retain_people', num)]
rows = [[f'{T:g}', *[', fresh '.join(cells('person', (lambda i, k: lambda s: s[i][k])(i, key), fmt, name='sweep.json'))
                     for _, key, fmt in DIAL]] for i, T in enumerate(Ts)]
print(table(['T', *[label for label, _, _ in DIAL]], rows))

# the three ablations next to the default
print('## Ablations (`docs/make.sh`)\n')
ABL = [('leak, port', lambda m: m['leak_dlib_after'], pct), ('leak, C++', lambda m: m['leak_dlib_cpp_after'], pct),
       ('forgotten latent moved', lambda m: m['ID'], num), ('kept people moved', lambda m: m['retain_people'], num),
       ('random samples moved', lambda m: m['retain_random'], num), ('FD_dlib_pre', lambda m: m['FD_dlib_pre'], num),
       ('train time (s)', lambda m: m['train_wall_s'], secs)]
VARIANTS = [('the default (Euler, trajectory consistency, LeakyReLU)', 'person'), ('RK4 (`--solver rk4`)', 'rk4'),
            ('trajectory consistency off (`--w_tc 0`)', 'no-tc'), ('tanh hidden units (the patch)', 'tanh')]
rows = [[name, *[', fresh '.join(cells(v, get, fmt)) for _, get, fmt in ABL]] for name, v in VARIANTS]
print(table(['run', *[label for label, _, _ in ABL]], rows))
print(f'Seed {FRESH} lands within the two seeds\' range for {sum(TALLY)} of {len(TALLY)} numbers.')
