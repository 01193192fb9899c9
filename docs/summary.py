"""
The spread tables of one person (person mode: him, everyone else; the dial; the variants), from the runs
docs/make.sh makes: mean +- standard deviation over training seeds 0, 1 and 2, and a fresh seed 3 checked against
the 95% prediction interval those three give for one more run (mean +- t_0.975,2 * sd * sqrt(1 + 1/3), at the
precision shown). Then the paper's table (ode / residual / full on the forgotten latent), each seed that has run.

    python docs/summary.py runs/docs > docs/numbers.md
"""
import functools
import json
import math
import sys
from pathlib import Path
from statistics import mean, stdev

from scipy import stats

R = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/docs')
SPREAD, FRESH = (0, 1, 2), 3
PEOPLE = ('biden', 'collins', 'hopper')
TALLY = []  # for each number: does the fresh seed land within the prediction interval?


@functools.cache
def read(run, name='metrics.json'):
    return json.loads((R / run / name).read_text())


class Fmt:
    """How a number is shown: scale, decimals, unit."""
    def __init__(self, scale, digits, unit=''):
        self.scale, self.digits, self.unit = scale, digits, unit

    def __call__(self, v):
        return f'{round(v * self.scale, self.digits):.{self.digits}f}'

    def full(self, v):
        return self(v) + self.unit


pct, num, secs = Fmt(100, 1, '%'), Fmt(1, 3), Fmt(1, 0)


def cells(variant, get, fmt, name='metrics.json'):
    """['mean +- sd' over the spread seeds, the fresh seed's value and whether it lies in their prediction interval].
    A None (a judge that found no face) is left out of the mean and said; the fresh seed's then has no interval."""
    got = [get(read(f'{variant}-s{s}', name)) for s in SPREAD]
    vals, lost = [v for v in got if v is not None], [str(s) for s, v in zip(SPREAD, got) if v is None]
    no_face = f' (no face on seed {", ".join(lost)})' if lost else ''
    v = get(read(f'{variant}-s{FRESH}', name))
    if len(vals) < 2:
        return [f'{", ".join(fmt.full(x) for x in vals)}{no_face}', 'no face' if v is None else fmt.full(v)]
    n = len(vals)
    mean = sum(vals) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in vals) / (n - 1))
    if v is None:
        return [f'{fmt(mean)} +- {fmt(sd)}{fmt.unit}{no_face}', 'no face']
    half = stats.t.ppf(0.975, n - 1) * sd * math.sqrt(1 + 1 / n)
    inside = float(fmt(mean - half)) <= float(fmt(v)) <= float(fmt(mean + half))
    TALLY.append(inside)
    return [f'{fmt(mean)} +- {fmt(sd)}{fmt.unit}{no_face}', f'{fmt(v)}{fmt.unit} {"in" if inside else "**out**"}']


def table(head, rows):
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows]) + '\n'


def key(*path):
    """A reader of one number: key('leak', '1', 'dlib') is m['leak']['1']['dlib'] of a metrics.json m."""
    return lambda m: functools.reduce(lambda d, k: d[k], path, m)


def runs(variant, name='metrics.json'):
    """The training seeds of a variant that have run (their file written)."""
    return [s for s in (*SPREAD, FRESH) if (R / f'{variant}-s{s}' / name).exists()]


def exists(variant, name='metrics.json'):
    return len(runs(variant, name)) == len(SPREAD) + 1


JUDGES = ('dlib', 'dlib_cpp', 'faceres')


def judged(get, fmt):
    """One row read by each judge: 'port / C++ / FaceRes' cells of cells()."""
    parts = [cells('person', lambda m, j=j: get(m, j), fmt) for j in JUDGES]
    return [' / '.join(p[0] for p in parts), ' / '.join(p[1] for p in parts)]


def seeds_with(test):
    """How many of the four training seeds pass test(metrics)."""
    n = sum(bool(test(read(f'person-s{s}'))) for s in (*SPREAD, FRESH))
    return [f'{n} of {len(SPREAD) + 1} seeds', '']


both = lambda f: ' / '.join(f(j) for j in JUDGES)  # noqa: E731
b = read('person-s0')  # "before" is the original generator: the same on every run
him = 'obama'
held = [n for n in b['latents_who']['dlib'] if n not in (him, *PEOPLE)]  # his held-out photos' rows
hood = lambda kind, k: (lambda m, j: m['neighbourhood'][kind][j][k])  # noqa: E731
floor = lambda m, j: m[f'floor_{j}_dist']  # noqa: E731
HIM = [  # label, before, cells
    ('his latent: called him, by port / C++ / FaceRes', both(lambda j: b['latents_who'][j][him][0]),
     seeds_with(lambda m: all(m['latents_who'][j][him][1] != him for j in JUDGES))),
    ('... its distance to his nearest photo over the judge\'s floor (>= 1: as far as people who never were him)',
     both(lambda j: num(b['latents_dist'][j][him][0] / b[f'floor_{j}_dist'])),
     judged(lambda m, j: m['latents_dist'][j][him][1] / floor(m, j), num)),
    ('latents of his held-out photos (' + ', '.join(held) + '): called him by port / C++ / FaceRes; after: seeds where no judge does',
     both(lambda j: str(sum(b['latents_who'][j][h][0] == him for h in held))) + ' of each',
     seeds_with(lambda m: not any(m['latents_who'][j][h][1] == him for j in JUDGES for h in held))),
    ('... their distance to his nearest photo over the floor (mean)',
     both(lambda j: num(sum(b['latents_dist'][j][h][0] for h in held) / len(held) / b[f'floor_{j}_dist'])),
     judged(lambda m, j: sum(m['latents_dist'][j][h][1] for h in held) / len(held) / floor(m, j), num)),
    *[(f'his neighbourhood, {label}: called him', both(lambda j, k=kind: pct(b['neighbourhood'][k][j]['called_before'])),
       judged(hood(kind, 'called_after'), pct)) for kind, label in (
        ('mixed', 'fine styles mixed'), ('moved_0.1', 'moved 0.1 in W'), ('moved_0.2', 'moved 0.2 in W'))],
    *[(f'... {label}: distance to his nearest photo over the floor',
       both(lambda j, k=kind: num(b['neighbourhood'][k][j]['dist_before'] / b[f'floor_{j}_dist'])),
       judged(lambda m, j, k=kind: m['neighbourhood'][k][j]['dist_after'] / floor(m, j), num)) for kind, label in (
        ('mixed', 'mixed'), ('moved_0.1', 'moved 0.1'))],
    ('his former samples: of {searched} fresh samples the port\'s 0.6 flagged / each judge calls him'.format(
        **b['former']), f"{b['former']['found']} / " + both(lambda j: str(b['former'][j]['n'])), ['', '']),
    ('his held-out photos\' latents moved (port, image before to after)', '0', cells('person', key('ID_others'), num)),
    ('his latent\'s image to his held-out photos (port)', num(b['ID_heldout_photo_before']),
     cells('person', key('ID_heldout_photo_after'), num)),
]
OTHERS = [
    ('of 500 random samples that never showed him, called themselves after, port / C++ / FaceRes', '100%',
     judged(lambda m, j: m[f'others_{j}_themselves'], pct)),
    *[(f'{p.title()}\'s latent still {p.title()} after (seeds, port / C++ / FaceRes)',
       both(lambda j, p=p: b['latents_who'][j][p][0]),
       [both(lambda j, p=p: str(sum(read(f'person-s{s}')['latents_who'][j][p][1] == p for s in (*SPREAD, FRESH))))
        + f' of {len(SPREAD) + 1}', '']) for p in PEOPLE],
    ('kept people\'s latents moved (port distance, image before to after)', '0', cells('person', key('retain_people'), num)),
    ('random samples moved (port, psi 1)', '0', cells('person', key('retain_random'), num)),
    ('FD_dlib_pre (port descriptors\' Frechet distance to the original\'s)', '0', cells('person', key('FD_dlib_pre'), num)),
    ('samples with a face (C++)', pct.full(b['leak']['1']['dlib_cpp']['face_before']), cells('person', key('face_after'), pct)),
    ('training steps (2 CPU cores, s)', '', cells('person', key('train_wall_s'), secs)),
]
print('# Spread over training seeds\n')
print(f'Made by `docs/make.sh` (`python docs/summary.py {R}`). Each number: the mean +- standard deviation over '
      f'training seeds {", ".join(map(str, SPREAD))}, then the fresh seed {FRESH} and whether it lies within the 95% '
      'prediction interval of those runs for one more run, at the precision shown ("in"), or not ("**out**"). 500 '
      'fresh samples (psi 0.7), evaluation seed 1; each judge\'s same-person threshold by the rule on the original '
      'generator (' + ', '.join(f'{j} {t}' for j, t in b['thresholds'].items()) + '), its floor the mean distance '
      'to his nearest photo of the samples that never showed him. Each run\'s own numbers: '
      f'`{R}/person-s*/metrics.json`.\n')
print('## He becomes someone else (the default, person mode)\n')
print(table(['', 'before', 'after, seeds 0-2', f'seed {FRESH}'], [[lb, bf, *c] for lb, bf, c in HIM]))
print('## Everyone else stays\n')
print(table(['', 'before', 'after, seeds 0-2', f'seed {FRESH}'], [[lb, bf, *c] for lb, bf, c in OTHERS]))

if exists('person', 'sweep.json'):  # the dial: person mode over T, every judge, his latent and his held-out latents
    print('## The dial (person mode, `evaluate.py --sweep`)\n')
    Ts = [s['T'] for s in read('person-s0', 'sweep.json')]

    def over(names):  # the latents' mean distance to his nearest photo over the judge's floor; None: a face not found
        def get(m, i, j):
            d = [m[i]['latents_dist'][j][n][1] for n in names]
            return None if None in d else mean(d) / m[0][f'floor_{j}_dist']
        return get
    DIAL = [('his latent to his photos', ' / floor', over([him]), num),  # name, the rest of its label, reader, format
            ('his held-out latents (mean)', ' / floor', over(held), num),
            ('random samples themselves', '', lambda m, i, j: m[i][f'others_{j}_themselves'], pct)]
    for name, rest, get, fmt in DIAL:
        rows = [[f'{T:g} (before)', *[fmt.full(get(read('person-s0', 'sweep.json'), i, j)) for j in JUDGES]] if T == 0 else
                [f'{T:g}', *[f'; seed {FRESH}: '.join(cells('person', lambda m, i=i, j=j: get(m, i, j), fmt, name='sweep.json'))
                             for j in JUDGES]] for i, T in enumerate(Ts)]
        print(f'{name}{rest}:\n')
        print(table(['T', 'port', 'C++', 'FaceRes'], rows))
    def up(get, j):  # seeds on which no value is below the one at the T before it; a face not found counts as farther
        far = lambda m, i: math.inf if get(m, i, j) is None else get(m, i, j)  # noqa: E731
        return sum(all(far(m, i + 1) >= far(m, i) for i in range(len(Ts) - 1))
                   for m in (read(f'person-s{s}', 'sweep.json') for s in (*SPREAD, FRESH)))
    print('Monotone over T (no value below the one at the T before it; ties allowed; a face the judge no longer finds '
          'counts as farther than any), of the four training seeds: ' + '; '.join(
        f'{name}: ' + both(lambda j: str(up(get, j))) for name, _, get, _ in DIAL[:2]) + ' (port / C++ / FaceRes).\n')

ABL = [('his latent moved (port)', 'ID', num), ('kept people moved', 'retain_people', num),
       ('random samples moved', 'retain_random', num), ('FD_dlib_pre', 'FD_dlib_pre', num),
       ('train time (s)', 'train_wall_s', secs)]
VARIANTS = [('the default (person mode)', 'person'), ('the paper\'s method (`--forget latent`)', 'latent'),
            ('RK4 (`--solver rk4`)', 'rk4'), ('trajectory consistency off (`--w_tc 0`)', 'no-tc'),
            ('tanh hidden units (the patch)', 'tanh')]
if any(exists(v) for _, v in VARIANTS[1:]):
    print('## Variants (`docs/make.sh`)\n')
    rows = [[name, *[f'; seed {FRESH}: '.join(cells(v, key(k), fmt)) for _, k, fmt in ABL]]
            for name, v in VARIANTS if exists(v)]
    print(table(['run', *[label for label, _, _ in ABL]], rows))
PAPER = [('ode (the paper\'s method, `@config/paper.txt`)', 'latent'), ('residual (`@config/residual.txt`)', 'residual'),
         ('full fine-tune (GUIDE, `@config/guide.txt`)', 'full'), ('for comparison: the default (person mode)', 'person')]
COLS = [('ID: his latent moved (port)', key('ID'), num), ('ID_others: his held-out latents moved', key('ID_others'), num),
        ('FD_dlib_pre', key('FD_dlib_pre'), num), ('kept people moved', key('retain_people'), num),
        ('random samples moved', key('retain_random'), num),
        (f'{", ".join([him, *held])} him to port, C++, FaceRes',
         lambda m: ' '.join(''.join('x' if m['latents_who'][j][n][1] == him else '-' for j in JUDGES) for n in [him, *held]), None),
        ('Biden, Collins, Hopper themselves, port / C++ / FaceRes (of 3)',
         lambda m: both(lambda j: str(sum(m['latents_who'][j][p][1] == p for p in PEOPLE))), None),
        ('others themselves, port / C++ / FaceRes (%)', lambda m: both(lambda j: pct(m[f'others_{j}_themselves'])), None),
        ('steps, train time (s)', lambda m: f"{m['steps']}, {secs(m['train_wall_s'])}", None)]
if any(runs(v) for _, v in PAPER[:3]):  # the paper's table: each seed that has run, and the mean +- sd of those
    print('## The paper\'s table (`--forget latent`: the forgotten latent alone, each adapter at its default)\n')
    print('x: the judge still calls that latent him after training (his latent, then each held-out latent), -: it '
          'does not. Each row one training seed; "mean" over the seeds above it.\n')
    rows = []
    for name, v in PAPER:
        ms = []
        for s in runs(v):
            ms.append(m := read(f'{v}-s{s}'))
            rows.append([name if len(ms) == 1 else '', str(s), *[get(m) if fmt is None else fmt(get(m)) for _, get, fmt in COLS]])
        if len(ms) > 1:
            rows.append(['', 'mean', *[f'{fmt(mean(x := [get(m) for m in ms]))} +- {fmt(stdev(x))}' if fmt else ''
                                       for _, get, fmt in COLS]])
    print(table(['adapter', 'seed', *[c for c, _, _ in COLS]], rows))
print(f'Seed {FRESH} lands within the prediction interval for {sum(TALLY)} of {len(TALLY)} numbers.')
