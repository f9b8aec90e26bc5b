"""benchmarks/scaling.py: a configuration's prediction beside its measurement, and the
same measurements predicted again by the model without running them."""
from job import costs

import json
import os
import subprocess
import sys

from conftest import REPO

SCALING = os.path.join(REPO, 'benchmarks', 'scaling.py')


def test_one_configuration_is_measured_and_predicted_again(tmp_path):
    out = tmp_path / 'scaling.json'
    done = subprocess.run([sys.executable, SCALING, '--only', '1h-1p-K1-s-b32', '--rounds', '1',
                           '--steps', '3', '--out', str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(out.read_text())
    assert result['config']['name'] == '1h-1p-K1-s-b32'
    assert result['cluster']['hosts'] == 1 and result['cluster']['rate'] is None
    # Rank 0 held the synthetic set: 3 training batches and one test batch.
    assert result['data_bytes'] == 4 * 32 * costs.SYNTHETIC_ROW_BYTES
    assert result['measured_step'] > 0 and result['predicted_step'] > 0
    assert result['measured_peak_mb'][0] > 100  # the libraries alone are more
    assert '1h-1p-K1-s-b32' in done.stdout and 'median error' in done.stdout

    # Another calibration's prediction of the same run: compute twice as slow.
    machine = costs.Machine.load()
    for path in machine.compute.values():
        for widths in path.values():
            for blocks in widths.values():
                for points in blocks.values():
                    for point in points:
                        point[2:] = [2 * seconds for seconds in point[2:]]
    slower = tmp_path / 'slower.json'
    slower.write_text(json.dumps(machine.data))
    again = [subprocess.run([sys.executable, SCALING, '--predict-again', str(out), *flags],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
             for flags in ((), ('--calibration', str(slower)))]
    assert all(done.returncode == 0 for done in again), [done.stderr for done in again]
    committed, doubled = (float(done.stdout.splitlines()[1].split()[1]) for done in again)
    assert abs(committed - result['predicted_step']) < 0.01 * committed
    assert doubled > committed * 1.5
