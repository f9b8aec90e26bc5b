"""The diagram script runs and writes a real PNG of the documented size."""
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "draw_parallel_conv.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# 12 x 5.5 inches at 100 dpi, as promised for README width.
EXPECTED_HEIGHT, EXPECTED_WIDTH = 550, 1200
# The three rank colours must all appear: a blank or mis-coloured drawing fails.
RANK_RGB = [(0xd9, 0x5f, 0x02), (0x1b, 0x9e, 0x77), (0x75, 0x70, 0xb3)]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args],
                          capture_output=True, text=True, timeout=120)


def test_writes_png_of_expected_size_with_rank_colours(tmp_path):
    out = tmp_path / "figure.png"
    result = run_script(str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG_SIGNATURE

    pixels = mpimg.imread(out)
    assert pixels.shape[:2] == (EXPECTED_HEIGHT, EXPECTED_WIDTH)
    rgb = np.round(pixels[..., :3] * 255).astype(int)
    for colour in RANK_RGB:
        matching = np.all(np.abs(rgb - colour) <= 2, axis=-1).sum()
        assert matching > 1000, f"rank colour {colour} covers only {matching} pixels"


def test_unwritable_output_is_one_line_error(tmp_path):
    result = run_script(str(tmp_path / "no-such-dir" / "figure.png"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "cannot write" in result.stderr


def test_non_png_output_is_rejected(tmp_path):
    out = tmp_path / "figure.svg"
    result = run_script(str(out))
    assert result.returncode != 0
    assert "not a .png path" in result.stderr
    assert not out.exists()
