"""Each rank's peak memory over processes x batch x width, split into per-image and fixed parts.

    python benchmarks/memory.py                         # 1/2/4 processes x batch 64/256 x W 1/4
    python benchmarks/memory.py --widths 1 --json memory.json
    python benchmarks/memory.py --widths 1 --keep-gathered   # train.py's faster path

Each combination is one fresh job, one BLAS thread per rank:

    mpiexec -n N python train.py --dataset synthetic --train-size 2B --test-size 64
        -b B -e 1 --out TMP [--width W] [--keep-gathered]

and its peaks are read back from TMP/run.json (``peak_memory_mb``, each
rank's peak resident memory, job/memory.py). For each process count and
width, with b1 < b2 the smallest and largest batch and peak the largest
over ranks (the rank that runs out first):

    per image = (peak(b2) - peak(b1)) / (b2 - b1),  fixed = peak(b1) - b1 x per image

so that peak = fixed + per image x batch, and the per-image part is set
against one process's. ``--width W`` is passed only for W != 1. A combination whose
job, estimated on the high side from the runs before it, would need more
than the memory available now is skipped, and the table says so.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.step_runs import exit_failed, mpiexec_path  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN = str(REPO / 'train.py')
TEST_SIZE = 64
# Of the memory available, what a job may take: the rest is for the machine's other work.
SHARE_OF_AVAILABLE = 0.9

Key = tuple[int, int, int]  # (processes, width, batch)
# Each rank's peak MB of each job, None where it was not run.
Peaks = dict[Key, list[float] | None]


def meminfo_mb(field: str = 'MemAvailable') -> float:
    """A field of /proc/meminfo (MemAvailable, MemTotal), in MB (2**20 bytes)."""
    with open('/proc/meminfo') as meminfo:
        for line in meminfo:
            if line.startswith(f'{field}:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'no {field} in /proc/meminfo')


def run_job(processes: int, width: int, batch: int,
            keep_gathered: bool = False) -> tuple[list[float], dict]:
    """Each rank's peak MB of one job, and its run.json."""
    with tempfile.TemporaryDirectory(prefix='memory-') as tmp:
        out = os.path.join(tmp, 'result')
        command = [mpiexec_path(), '-n', str(processes), sys.executable, TRAIN,
                   '--dataset', 'synthetic', '--train-size', str(2 * batch),
                   '--test-size', str(TEST_SIZE), '-b', str(batch), '-e', '1', '--out', out]
        if width != 1:
            command += ['--width', str(width)]
        # The path is given, not left to the model: the slices unless told.
        command.append('--keep-gathered' if keep_gathered else '--slices')
        env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
                   MKL_NUM_THREADS='1')
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
        if done.returncode != 0:
            exit_failed('memory.py', f'{processes} processes, W {width}, batch {batch}',
                        done.returncode, done.stderr)
        with open(os.path.join(out, 'run.json')) as f:
            info = json.load(f)
    return info['peak_memory_mb'], info


def fit(peaks: Peaks, processes: int, width: int) -> tuple[float, float] | None:
    """(per image, fixed) MB of ``processes`` at ``width`` from its measured batches, or None."""
    batches = sorted(b for (n, w, b), p in peaks.items()
                     if (n, w) == (processes, width) and p is not None)
    if len(batches) < 2:
        return None
    b1, b2 = batches[0], batches[-1]
    low, high = max(peaks[processes, width, b1]), max(peaks[processes, width, b2])
    per_image = (high - low) / (b2 - b1)
    return per_image, low - b1 * per_image


def estimate_mb(peaks: Peaks, processes: int, width: int,
                batch: int) -> float | None:
    """One rank's peak for a job not run yet, from smaller ones, on the high side; None: no clue.

    A rank's peak falls as processes are added, so a fit of fewer processes
    overestimates; at a larger width the activations (per image) grow as W
    and the parameters (in the fixed part) as W**2, so the fixed part is
    scaled by W**2. With no fit, a smaller run is scaled as if all of it
    grew with the batch and with W**2.
    """
    measured = {k: max(p) for k, p in peaks.items() if p is not None}
    smaller = [(n, w, b) for n, w, b in measured if n <= processes and w <= width and b <= batch]
    if not smaller:
        return None
    fits = {(n, w): fit(peaks, n, w) for n, w, _ in smaller}
    fits = {k: f for k, f in fits.items() if f is not None}
    if not fits:
        n, w, b = max(smaller, key=lambda k: (k[1], k[0], k[2]))
        return measured[n, w, b] * (batch / b) * (width / w) ** 2
    n, w = max(fits, key=lambda k: (k[1], k[0]))
    per_image, fixed = fits[n, w]
    per_image, scale = max(per_image, 0.0), width / w
    same = [b for n2, w2, b in smaller if (n2, w2) == (processes, width)]
    if same:  # this job at a smaller batch: only the images added are estimated
        return measured[processes, width, max(same)] + per_image * scale * (batch - max(same))
    return max(fixed, 0.0) * scale ** 2 + per_image * scale * batch


def summarize(peaks: Peaks) -> list[dict]:
    """Per process count and width: per image and fixed MB, and per image against 1 process."""
    rows = []
    for n, w in sorted({(n, w) for n, w, _ in peaks}, key=lambda k: (k[1], k[0])):
        found = fit(peaks, n, w)
        if found is None:
            continue
        one = fit(peaks, 1, w)
        ratio = found[0] / one[0] if one and one[0] > 0 else None
        rows.append({'processes': n, 'width': w, 'per_image_mb': found[0],
                     'fixed_mb': found[1], 'per_image_vs_1_process': ratio})
    return rows


def format_table(peaks: Peaks, notes: dict[Key, str],
                 summary: list[dict]) -> str:
    """The runs (each rank's peak, or why not run) and the per-image and fixed parts."""
    lines = ['| processes | W | batch | peak MB, rank 0, 1, ... |', '| ---: | ---: | ---: | --- |']
    for n, w, b in sorted(peaks, key=lambda k: (k[1], k[0], k[2])):
        shown = (' '.join(f'{p:.0f}' for p in peaks[n, w, b]) if peaks[n, w, b] is not None
                 else notes[n, w, b])
        lines.append(f'| {n} | {w} | {b} | {shown} |')
    lines += ['', '| processes | W | per image MB | fixed MB | per image / 1 process\'s |',
              '| ---: | ---: | ---: | ---: | ---: |']
    for row in summary:
        ratio = row['per_image_vs_1_process']
        lines.append(f"| {row['processes']} | {row['width']} | {row['per_image_mb']:.2f} | "
                     f"{row['fixed_mb']:.0f} | {'' if ratio is None else f'{ratio:.2f}'} |")
    return '\n'.join(lines) + '\n'


def measure(processes: list[int], batches: list[int], widths: list[int],
            limit_mb: float | None, keep_gathered: bool = False) -> tuple[dict, dict, dict]:
    """Run every combination that can run: (peaks, notes on those not run, a run.json)."""
    peaks: Peaks = {}
    notes: dict[Key, str] = {}
    info: dict = {}
    for w in sorted(widths):
        for n in sorted(processes):
            for b in sorted(batches):
                key = (n, w, b)
                estimate = estimate_mb(peaks, n, w, b)
                limit = meminfo_mb() * SHARE_OF_AVAILABLE if limit_mb is None else limit_mb
                if estimate is not None and n * estimate > limit:
                    peaks[key] = None
                    notes[key] = (f'skipped: estimated {n} x {estimate:.0f} MB, '
                                  f'over the {limit:.0f} MB available')
                else:
                    started = time.monotonic()
                    peaks[key], info = run_job(n, w, b, keep_gathered)
                    print(f'processes {n}, W {w}, batch {b}: '
                          f'{" ".join(f"{p:.0f}" for p in peaks[key])} MB '
                          f'({time.monotonic() - started:.0f} s)', file=sys.stderr, flush=True)
                if peaks[key] is None:
                    print(f'processes {n}, W {w}, batch {b}: {notes[key]}', file=sys.stderr,
                          flush=True)
    return peaks, notes, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='memory.py', description=__doc__.split('\n')[0])
    parser.add_argument('--processes', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--batches', type=int, nargs='+', default=[64, 256])
    parser.add_argument('--widths', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--limit-mb', type=float,
                        help='memory a job may take (default: 0.9 of MemAvailable, read '
                             'before each job)')
    parser.add_argument('--keep-gathered', action='store_true',
                        help="pass train.py's --keep-gathered to every job")
    parser.add_argument('--json', metavar='FILE', help='also write the results as JSON')
    args = parser.parse_args(argv)
    peaks, notes, info = measure(args.processes, args.batches, args.widths, args.limit_mb,
                                 args.keep_gathered)
    summary = summarize(peaks)
    print(format_table(peaks, notes, summary), end='')
    if info:
        print(f"\n{info['machine']['cpu']}, {info['machine']['logical_cores']} cores, "
              f"{meminfo_mb('MemTotal') / 1024:.1f} GB memory; "
              f"Python {info['versions']['python']}, numpy {info['versions']['numpy']}, "
              f"{time.strftime('%Y-%m-%d')}"
              f"{'; --keep-gathered' if args.keep_gathered else ''}")
    if args.json:
        runs = [{'processes': n, 'width': w, 'batch': b, 'peak_mb': p, 'note': notes.get((n, w, b))}
                for (n, w, b), p in peaks.items()]
        with open(args.json, 'w') as f:
            json.dump({'runs': runs, 'parts': summary, 'keep_gathered': args.keep_gathered,
                       'machine': info.get('machine'),
                       'versions': info.get('versions'), 'date': time.strftime('%Y-%m-%d')},
                      f, indent=2)
            f.write('\n')


if __name__ == '__main__':
    main()
