"""compare.py, run as a command on logs written by a real Chainer Trainer."""
import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job.run_info import write_run_info

COMPARE = str(Path(__file__).resolve().parents[1] / "compare.py")
METRICS = ("main/loss", "validation/main/loss", "main/accuracy",
           "validation/main/accuracy", "elapsed_time")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The two first rows of the single-process table published with the original
# example, as PrintReport printed them.
PUBLISHED_TABLE = """\
epoch       main/loss   validation/main/loss  main/accuracy  validation/main/accuracy  elapsed_time
1           2.34159     1.90463               0.1743         0.2582                    29.2918
2           1.79195     1.69903               0.30636        0.3696                    57.64
"""


def train_toy(out: Path, epochs: int, lr: float, eval_every: int = 1,
              log_every: tuple = (1, "epoch"), n_samples: int = 64) -> Path:
    """Train a linear classifier with Chainer's Trainer; return its result directory.

    Writes the LogReport `log` and, as `stdout.txt`, what PrintReport and
    ProgressBar print (escape sequences included).
    """
    import chainer
    import chainer.links as L
    from chainer import training
    from chainer.training import extensions

    rng = np.random.RandomState(0)
    x = rng.randn(n_samples, 4).astype(np.float32)
    t = (x[:, 0] > x[:, 1]).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
    train = chainer.datasets.TupleDataset(x, t)
    valid = chainer.datasets.TupleDataset(x[:32], t[:32])
    model = L.Classifier(L.Linear(4, 3, initialW=chainer.initializers.Normal(0.1, rng=rng)))
    optimizer = chainer.optimizers.SGD(lr=lr)
    optimizer.setup(model)
    train_iter = chainer.iterators.SerialIterator(train, 16, shuffle=False)
    valid_iter = chainer.iterators.SerialIterator(valid, 16, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer)
    trainer = training.Trainer(updater, (epochs, "epoch"), out=str(out))
    trainer.extend(extensions.Evaluator(valid_iter, model), trigger=(eval_every, "epoch"))
    trainer.extend(extensions.LogReport(trigger=log_every))
    # Chainer 7's ProgressBar ignores its `out` and writes to the sys.stdout
    # of when it was made, hence the redirection: the file then holds what
    # `python train.py > stdout.txt` would.
    with open(out / "stdout.txt", "w") as stdout, contextlib.redirect_stdout(stdout):
        trainer.extend(extensions.PrintReport(["epoch"] + list(METRICS), out=stdout))
        trainer.extend(extensions.ProgressBar(update_interval=1))
        trainer.run()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, kwargs in {
        "long": dict(epochs=3, lr=0.1),
        # Validation every second epoch: epoch 1 has no validation values.
        "short": dict(epochs=2, lr=0.05, eval_every=2),
        # 100 samples in batches of 16: epochs end inside a batch (at
        # iterations 7, 13, 19, 25, 32), and the log has an entry every 2
        # iterations, several per epoch.
        "fine": dict(epochs=5, lr=0.1, log_every=(2, "iteration"), n_samples=100),
    }.items():
        (root / name).mkdir()
        made[name] = train_toy(root / name, **kwargs)
    return made


def read_log(run_dir: Path) -> list:
    with open(run_dir / "log") as f:
        return json.load(f)


def run_compare(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, COMPARE, *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def compare_ok(*args) -> str:
    result = run_compare(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def parse_text(output: str) -> tuple[dict, dict]:
    """Legend {name: label} and {metric: {epoch: {column: cell}}} from the plain table.

    A cell belongs to the column whose title ends where it ends: the table is
    right-aligned, so a cell that ends anywhere else fails the test.
    """
    legend, tables = {}, {}
    blocks = output.split("\n\n")
    for line in blocks[0].splitlines():
        name, label = line.split(" = ", 1)
        legend[name] = label
    for block in blocks[1:]:
        metric, header, *rows = block.strip("\n").splitlines()
        title_ends = {m.end(): m.group() for m in re.finditer(r"\S+", header)}
        table = {}
        for row in rows:
            cells = {}
            for m in re.finditer(r"\S+", row):
                assert m.end() in title_ends, f"misaligned cell {m.group()!r} in {row!r}"
                cells[title_ends[m.end()]] = m.group()
            table[int(cells.pop("epoch"))] = cells
        tables[metric] = table
    return legend, tables


def parse_markdown(output: str) -> tuple[dict, dict]:
    """The same as parse_text, from the Markdown output; checks the table shape."""
    legend, tables = {}, {}
    blocks = output.split("\n\n")
    for line in blocks[0].splitlines():
        name, label = line.removeprefix("- ").split(": ", 1)
        legend[name] = label
    for heading, table_text in zip(blocks[1::2], blocks[2::2]):
        assert heading.startswith("### ")
        lines = table_text.strip("\n").splitlines()
        assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
        header, separator, *rows = [line[2:-2].split(" | ") for line in lines]
        assert separator == ["---:"] * len(header)
        table = {}
        for row in rows:
            assert len(row) == len(header)
            cells = {title: cell.strip() for title, cell in zip(header, row) if cell.strip()}
            table[int(cells.pop("epoch"))] = cells
        tables[heading.removeprefix("### ")] = table
    return legend, tables


def expected_cells(logs: list, metric: str) -> dict:
    """{epoch: {column: cell}} computed straight from LogReport logs with one entry per epoch."""
    digits = 2 if metric == "elapsed_time" else 4
    names = "ABCDEFGH"[:len(logs)]
    by_epoch = [{entry["epoch"]: entry for entry in log} for log in logs]
    table = {}
    for epoch in sorted(set().union(*by_epoch)):
        values = [entries.get(epoch, {}).get(metric) for entries in by_epoch]
        cells = {}
        for name, value in zip(names, values):
            if value is not None:
                cells[name] = f"{value:.{digits}f}"
                if name != "A" and values[0] is not None:
                    cells[f"{name}-A"] = f"{value - values[0]:+.{digits}f}"
        table[epoch] = cells
    return table


def test_numbers_and_differences_follow_the_logs(runs):
    logs = [read_log(runs["long"]), read_log(runs["short"])]
    assert [len(log) for log in logs] == [3, 2]  # one entry per epoch
    _, tables = parse_text(compare_ok(runs["long"], runs["short"]))
    assert list(tables) == list(METRICS)
    for metric in METRICS:
        assert tables[metric] == expected_cells(logs, metric), metric


def test_runs_of_different_length_are_aligned_by_epoch(runs):
    _, tables = parse_text(compare_ok(runs["short"], runs["long"]))
    loss = tables["main/loss"]
    assert sorted(loss) == [1, 2, 3]
    assert set(loss[2]) == {"A", "B", "B-A"}
    assert set(loss[3]) == {"B"}  # the short run stopped after epoch 2
    # The short run validated only at epoch 2.
    assert set(tables["validation/main/loss"][1]) == {"B"}


def test_markdown_holds_the_same_cells_as_the_text_table(runs):
    args = (runs["long"], runs["short"], runs["fine"])
    legend, tables = parse_markdown(compare_ok(*args, "--markdown"))
    assert (legend, tables) == parse_text(compare_ok(*args))
    assert list(tables) == list(METRICS)


def test_print_report_table_gives_the_numbers_of_the_log(runs):
    for run in ("long", "short"):
        table_text = (runs[run] / "stdout.txt").read_text()
        assert "\x1b[J" in table_text and "this epoch [" in table_text  # progress bar to skip
        _, from_log = parse_text(compare_ok(runs[run] / "log"))
        _, from_table = parse_text(compare_ok(runs[run] / "stdout.txt"))
        assert from_table.keys() == from_log.keys()
        for metric in METRICS:
            assert from_table[metric].keys() == from_log[metric].keys()
            for epoch, cells in from_log[metric].items():
                # PrintReport prints 6 significant digits, the table shows 4 (2) decimals.
                assert from_table[metric][epoch].keys() == cells.keys()
                tolerance = 0.011 if metric == "elapsed_time" else 1.1e-4
                for column, cell in cells.items():
                    assert float(from_table[metric][epoch][column]) == pytest.approx(
                        float(cell), abs=tolerance)


def test_published_table(tmp_path):
    (tmp_path / "published.txt").write_text(PUBLISHED_TABLE)
    (tmp_path / "log").write_text(json.dumps([
        {"epoch": 1, "validation/main/loss": 2.0, "elapsed_time": 30.0},
        {"epoch": 2, "validation/main/loss": 1.5, "elapsed_time": 60.0}]))
    legend, tables = parse_text(compare_ok(tmp_path / "published.txt", tmp_path / "log"))
    assert legend == {"A": "published.txt", "B": "log"}
    assert tables["main/loss"][1] == {"A": "2.3416"}
    assert tables["validation/main/loss"] == {
        1: {"A": "1.9046", "B": "2.0000", "B-A": "+0.0954"},
        2: {"A": "1.6990", "B": "1.5000", "B-A": "-0.1990"}}
    assert tables["validation/main/accuracy"] == {1: {"A": "0.2582"}, 2: {"A": "0.3696"}}
    assert tables["elapsed_time"] == {1: {"A": "29.29", "B": "30.00", "B-A": "+0.71"},
                                      2: {"A": "57.64", "B": "60.00", "B-A": "+2.36"}}


def test_finer_log_trigger_takes_the_entry_that_ends_each_epoch(runs):
    log = read_log(runs["fine"])
    assert len(log) > 2 * 5  # several entries per epoch
    # Validation runs once per epoch, so the entries holding it are the ones
    # written at the end of each epoch.
    ends = [entry for entry in log if "validation/main/loss" in entry]
    assert [entry["epoch"] for entry in ends] == [1, 2, 3, 4, 5]
    _, tables = parse_text(compare_ok(runs["fine"]))
    for metric in METRICS:
        assert tables[metric] == expected_cells([ends], metric), metric


def test_fits_in_100_columns_with_four_runs(runs):
    output = compare_ok(runs["long"], runs["short"], runs["fine"], runs["long"])
    assert max(len(line) for line in output.splitlines()) <= 100


def test_plot_is_a_png(runs, tmp_path):
    import matplotlib.image

    plot = tmp_path / "runs.png"
    compare_ok(runs["long"], runs["short"] / "stdout.txt", "--plot", plot)
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    height, width, _ = matplotlib.image.imread(plot).shape
    assert height > 300 and width > 300


def test_label_from_run_json(runs, tmp_path):
    run_dir = tmp_path / "np2"
    shutil.copytree(runs["long"], run_dir)
    write_run_info(str(run_dir), {"processes": 2, "scheme": "exact",
                                  "dataset": "synthetic", "batchsize": 16})
    legend, _ = parse_text(compare_ok(run_dir, run_dir / "log", runs["short"]))
    assert legend == {"A": "2 proc, exact, synthetic, b16",
                      "B": "2 proc, exact, synthetic, b16",
                      "C": "short"}


def test_label_names_replicas_and_channel_group_size(runs, tmp_path):
    # Replicas of channel groups (train.py --model-parallel) are named; one
    # replica is labelled as before the option existed.
    grids = {"hybrid": {"replicas": 2, "model_parallel": 2},
             "one_replica": {"replicas": 1, "model_parallel": 4}}
    for name, grid in grids.items():
        shutil.copytree(runs["long"], tmp_path / name)
        write_run_info(str(tmp_path / name), {"processes": 4, "scheme": "exact",
                                               "dataset": "synthetic", "batchsize": 16, **grid})
    legend, _ = parse_text(compare_ok(tmp_path / "hybrid", tmp_path / "one_replica"))
    assert legend == {"A": "4 proc (2x2), exact, synthetic, b16",
                      "B": "4 proc, exact, synthetic, b16"}


def test_label_names_a_width_other_than_vgg16s(runs, tmp_path):
    # train.py --width: 2 is named; 1, VGG16's, is labelled as before the flag existed.
    for width in (1, 2):
        shutil.copytree(runs["long"], tmp_path / f"w{width}")
        write_run_info(str(tmp_path / f"w{width}"), {"processes": 2, "scheme": "exact",
                                                     "width": width, "dataset": "synthetic",
                                                     "batchsize": 16})
    legend, _ = parse_text(compare_ok(tmp_path / "w2", tmp_path / "w1"))
    assert legend == {"A": "2 proc, exact, width 2, synthetic, b16",
                      "B": "2 proc, exact, synthetic, b16"}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_run, fault", [
    (lambda d: d / "nowhere", "no such file or directory"),
    (lambda d: write(d / "log", ""), "empty log"),
    (lambda d: write(d / "log", "[]"), "empty log"),
    (lambda d: write(d / "notes.txt", "loss went down\n"), "neither a LogReport"),
    (lambda d: write(d / "log", '{"epoch": 1}'), "JSON but not a LogReport log"),
    (lambda d: write(d / "log", '[{"epoch": null}]'), "JSON but not a LogReport log"),
    (lambda d: write(d / "log", '[{"epoch": 0, "iteration": 5}]'), "no entry with epoch >= 1"),
    (lambda d: write(d / "table.txt", "epoch  main/loss\n"), "empty log"),
    (lambda d: d, "has no 'log' file"),
    (lambda d: (write(d / "log", '[{"epoch": 1}]'), write(d / "run.json", "{"), d)[-1],
     "run.json: not valid JSON"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, make_run, fault, runs):
    # The error line starts with the path given, or a file inside it.
    path = make_run(tmp_path)
    result = run_compare(runs["long"], path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"compare.py: error: {path}")
    assert fault in lines[0]
