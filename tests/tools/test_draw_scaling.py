"""tools/draw_scaling.py: the predicted scaling to 64 hosts, as a table and a plot."""
import os
import subprocess
import sys

from conftest import REPO
from tools.draw_scaling import HOSTS, LINKS, SCALINGS, WIDTHS


def test_draws_the_plot_and_prints_a_row_for_each_scaling_link_and_width(tmp_path):
    png = tmp_path / 'scaling.png'
    done = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'draw_scaling.py'),
                           str(png)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rows = [line for line in done.stdout.splitlines() if line.startswith('| ')][2:]
    assert len(rows) == len(SCALINGS) * len(LINKS) * len(WIDTHS)
    for row in rows:
        cells = row.strip('| ').split(' | ')[3:]
        assert len(cells) == len(HOSTS)
        assert all('img/s' in cell or cell == 'does not fit' for cell in cells)
    # Weak scaling on the fastest link: more hosts, more images a second.
    weak = next(row for row in rows if row.startswith(f'| {SCALINGS[-1][0]} | {LINKS[-1][0]} '
                                                      f'| {WIDTHS[0]} |'))
    rates = [float(cell.split(' img/s')[0]) for cell in weak.strip('| ').split(' | ')[3:]]
    assert rates[1] > rates[0]
