"""benchmarks/memory.py: its arithmetic on made-up runs, what it skips, and one tiny real run."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import memory
from conftest import REPO, mpi_env

# Made up, of the size issue 28 measured: 1 and 2 processes at batch 64 and 256.
PEAKS = {(1, 1, 64): [1064.0], (1, 1, 256): [2614.0],
         (2, 1, 64): [749.0, 729.0], (2, 1, 256): [1831.0, 1810.0]}


def test_per_image_and_fixed_parts_from_the_largest_rank():
    one, two = memory.summarize(PEAKS)
    assert (one['processes'], two['processes']) == (1, 2)
    assert one['per_image_mb'] == pytest.approx((2614 - 1064) / 192)
    assert one['fixed_mb'] == pytest.approx(1064 - 64 * (2614 - 1064) / 192)
    assert one['per_image_vs_1_process'] == 1
    assert two['per_image_mb'] == pytest.approx((1831 - 749) / 192)
    assert two['fixed_mb'] == pytest.approx(749 - 64 * (1831 - 749) / 192)
    assert two['per_image_vs_1_process'] == pytest.approx((1831 - 749) / (2614 - 1064))
    # peak = fixed + per image x batch, at both batches
    for n, batch in ((1, 64), (1, 256), (2, 64), (2, 256)):
        row = one if n == 1 else two
        assert row['fixed_mb'] + row['per_image_mb'] * batch == pytest.approx(
            max(PEAKS[n, 1, batch]))


def test_table_shows_every_rank_and_why_a_job_did_not_run():
    peaks = {**PEAKS, (1, 4, 64): None}
    table = memory.format_table(peaks, {(1, 4, 64): 'skipped: too big'},
                                memory.summarize(peaks))
    assert '| 2 | 1 | 256 | 1831 1810 |' in table
    assert '| 1 | 4 | 64 | skipped: too big |' in table
    assert '| 1 | 1 | 8.07 | 547 | 1.00 |' in table
    assert '| 2 | 1 | 5.64 | 388 | 0.70 |' in table


def test_estimates_err_on_the_high_side():
    per_image_2, fixed_2 = memory.fit(PEAKS, 2, 1)
    per_image_1, fixed_1 = memory.fit(PEAKS, 1, 1)
    assert memory.estimate_mb({}, 1, 1, 64) is None  # nothing to go by: run it
    # One run alone: all of it scaled with the batch.
    assert memory.estimate_mb({(1, 1, 64): [1000.0]}, 1, 1, 256) == 4000
    # More processes: the fit of the most processes below.
    assert memory.estimate_mb(PEAKS, 4, 1, 256) == pytest.approx(fixed_2 + per_image_2 * 256)
    # This job at a smaller batch: its peak plus the images added.
    with_four = {**PEAKS, (4, 1, 64): [589.0, 570.0, 567.0, 567.0]}
    assert memory.estimate_mb(with_four, 4, 1, 256) == pytest.approx(589 + per_image_2 * 192)
    # Wider: the fixed part grows as W**2, the per-image part as W.
    assert memory.estimate_mb(PEAKS, 1, 4, 64) == pytest.approx(
        fixed_1 * 16 + per_image_1 * 4 * 64)


FOUR_PROCESSES = {(4, 1, 64): [589.0, 570.0, 567.0, 567.0]}


def test_runs_what_fits_and_says_why_not_the_rest(monkeypatch):
    ran = []

    def made_up_job(processes, width, batch, keep_gathered):
        ran.append((processes, width, batch))
        return {**PEAKS, **FOUR_PROCESSES}.get((processes, width, batch), [100.0]), {}

    monkeypatch.setattr(memory, 'run_job', made_up_job)
    # 4 processes at batch 256: 589 MB + 192 images x 5.64 MB (2 processes') per rank,
    # 4 x 1671 MB in all; W = 4 at 1 process, batch 64: 16 x 547.3 + 4 x 64 x 8.07 MB.
    peaks, notes, _ = memory.measure([1, 2, 4], [64, 256], [1, 4], limit_mb=6000)
    assert ran == [(1, 1, 64), (1, 1, 256), (2, 1, 64), (2, 1, 256), (4, 1, 64)]
    assert notes[4, 1, 256] == 'skipped: estimated 4 x 1671 MB, over the 6000 MB available'
    assert peaks[4, 1, 256] is None
    for n in (1, 2, 4):
        for b in (64, 256):
            assert notes[n, 4, b].startswith(f'skipped: estimated {n} x ')
    assert notes[1, 4, 64] == 'skipped: estimated 1 x 10824 MB, over the 6000 MB available'


def test_with_room_runs_every_job_and_passes_the_width_and_the_path(monkeypatch):
    ran = []

    def made_up_job(n, w, b, keep_gathered):
        ran.append((n, w, b, keep_gathered))
        return [100.0 * w] * n, {}

    monkeypatch.setattr(memory, 'run_job', made_up_job)
    peaks, notes, _ = memory.measure([1, 2], [64, 256], [1, 4], limit_mb=1e9, keep_gathered=True)
    assert len(ran) == 8 and not notes and all(keep for *_, keep in ran)
    assert peaks[2, 4, 256] == [400.0, 400.0]


def test_runs_tiny_and_reads_each_ranks_peak(tmp_path):
    written = tmp_path / 'memory.json'
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'memory.py'), '--processes', '1',
         '--batches', '8', '16', '--widths', '1', '--json', str(written)],
        capture_output=True, text=True, timeout=300, env=mpi_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(written.read_text())
    peaks = {run['batch']: run['peak_mb'] for run in results['runs']}
    assert sorted(peaks) == [8, 16] and all(len(p) == 1 and p[0] > 100 for p in peaks.values())
    (part,) = results['parts']
    assert part['per_image_mb'] == pytest.approx((peaks[16][0] - peaks[8][0]) / 8)
    assert part['per_image_vs_1_process'] == 1
    assert f"| 1 | 1 | 16 | {peaks[16][0]:.0f} |" in result.stdout


def test_stages_show_each_ranks_peak_rising():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, 'benchmarks', 'memory_stages.py'),
         '--batchsize', '1', '--steps', '1'],
        capture_output=True, text=True, timeout=300, env=mpi_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(' | ') for line in result.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == [
        "| train.py's libraries", '| MPI and the data (rank 0)',
        '| the network and its optimizer', '| training step 1, batch 1',
        '| evaluation, batch 64']
    peaks = [float(row[1]) for row in rows]
    assert peaks == sorted(peaks) and peaks[0] > 100
    rises = [float(row[2].rstrip(' |')) for row in rows]
    assert sum(rises) == pytest.approx(peaks[-1], abs=len(rows))  # each rounded
