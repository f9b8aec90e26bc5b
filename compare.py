"""Compare training runs epoch by epoch: losses, accuracies and time.

    python compare.py RUN [RUN ...] [--plot FILE] [--markdown]

A RUN is a result directory (holding Chainer's LogReport `log` and, from
train.py, `run.json`), a LogReport `log` file, or a text file holding the
table Chainer's PrintReport prints (e.g. a copy of a training's stdout).
"""
import argparse
import bisect
import json
import os
import re
import string
import sys

from job.run_info import RUN_INFO_NAME, read_run_info

METRICS = ("main/loss", "validation/main/loss", "main/accuracy",
           "validation/main/accuracy", "elapsed_time")
LOG_NAME = "log"
# Cursor movements and erasures that PrintReport and ProgressBar write.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MIN_COLUMN_WIDTH = 10
# A name in a PrintReport header: "epoch", "main/loss", "lr", ...
REPORT_KEY = re.compile(r"[A-Za-z_][^\s\[\]%:,]*")


class RunError(Exception):
    """A run that cannot be read; the message names the file and the fault."""


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="compare.py", description="Compare Chainer training runs per epoch.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="result directory, LogReport log file or PrintReport table")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw loss and accuracy against epoch and time")
    parser.add_argument("--markdown", action="store_true",
                        help="print Markdown tables instead of plain text")
    args = parser.parse_args()
    try:
        if len(args.runs) > len(string.ascii_uppercase):
            raise RunError(f"at most {len(string.ascii_uppercase)} runs, got {len(args.runs)}")
        runs = [load_run(path) for path in args.runs]
        if args.plot:  # first, so that a plot that cannot be written is the only output
            plot_runs(runs, args.plot)
        print(format_report(runs, args.markdown), end="")
    except RunError as e:
        sys.stderr.write(f"compare.py: error: {e}\n")
        sys.exit(2)


def load_run(path: str) -> dict:
    """{'label': str, 'epochs': {epoch: entry}} for a directory or file."""
    if os.path.isdir(path):
        log_path = os.path.join(path, LOG_NAME)
        if not os.path.isfile(log_path):
            raise RunError(f"{path}: directory has no '{LOG_NAME}' file; "
                           "give a Chainer result directory or a log file")
        info_dir, name = path, os.path.basename(os.path.normpath(path))
    elif os.path.isfile(path):
        log_path = path
        info_dir, name = os.path.dirname(path) or ".", os.path.basename(path)
    else:
        raise RunError(f"{path}: no such file or directory")
    epochs = entries_by_epoch(read_entries(log_path))
    if not epochs:
        raise RunError(f"{log_path}: no entry with epoch >= 1 "
                       "(the run ended before its first epoch)")
    try:
        info = read_run_info(os.path.join(info_dir, RUN_INFO_NAME))
    except ValueError as e:
        raise RunError(e) from None
    return {"label": run_label(info) if info else name, "epochs": epochs}


def run_label(info: dict) -> str:
    """E.g. '2 proc, exact, synthetic, b64'; with replicas '4 proc (2x2), exact, ...'.

    (2x2): 2 replicas x 2 processes per channel group (--model-parallel);
    runs of one replica, and run.json files older than replicas, say neither.
    A --width other than 1 follows the scheme ('2 proc, exact, width 2, ...');
    VGG16's own width, and run.json files older than --width, say none.
    """
    grid = (f" ({info['replicas']}x{info.get('model_parallel', '?')})"
            if info.get('replicas', 1) > 1 else "")
    width = f", width {info['width']}" if info.get('width', 1) != 1 else ""
    return (f"{info.get('processes', '?')} proc{grid}, {info.get('scheme', '?')}{width}, "
            f"{info.get('dataset', '?')}, b{info.get('batchsize', '?')}")


def read_entries(path: str) -> list[dict]:
    """The entries of a LogReport JSON log or of a PrintReport table."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise RunError(f"{path}: not a text file; expected a LogReport JSON log "
                       "or a PrintReport table") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise RunError(f"{path}: empty log")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        entries = parse_print_report(text)
        if entries is None:
            raise RunError(f"{path}: neither a LogReport JSON log nor a PrintReport table "
                           "(no header line with an 'epoch' column)") from None
        if not entries:
            raise RunError(f"{path}: empty log (PrintReport table without rows)") from None
        return entries
    if entries == []:
        raise RunError(f"{path}: empty log (LogReport list has no entries)")
    if not (isinstance(entries, list) and all(
            isinstance(e, dict) and isinstance(e.get("epoch"), (int, float)) for e in entries)):
        raise RunError(f"{path}: JSON but not a LogReport log "
                       "(expected a list of objects, each with a numeric 'epoch')")
    return entries


def parse_print_report(text: str) -> list[dict] | None:
    """Rows of a PrintReport table as dicts; None if there is no header.

    Cells are found by the header's column start positions, because
    PrintReport leaves a missing value as blank padding: splitting a row on
    whitespace would shift the later values into the wrong columns. Lines
    that are not rows of numbers (progress bar, other output) are skipped.
    """
    columns: list[tuple[int, str]] | None = None
    rows = []
    for line in text.splitlines():
        line = ANSI_ESCAPE.sub("", line)
        words = [(m.start(), m.group()) for m in re.finditer(r"\S+", line)]
        if not words:
            continue
        if is_header(words):
            columns = words  # a later header (a resumed run) replaces the earlier one
        elif columns is not None:
            row = parse_row(words, columns)
            if row is not None and "epoch" in row:
                rows.append(row)
    return None if columns is None else rows


def is_header(words: list[tuple[int, str]]) -> bool:
    # Every word a report key: this rejects the progress bar's
    # "this epoch [#####.....] 50.00%" and its "3 iter, 0 epoch / 2 epochs".
    names = [w for _, w in words]
    return "epoch" in names and all(REPORT_KEY.fullmatch(w) for w in names)


def parse_row(words: list[tuple[int, str]], columns: list[tuple[int, str]]) -> dict | None:
    """One table row as {column: value}, or None if the line is not a row."""
    if not all(is_number(w) for _, w in words):
        return None
    if len(words) == len(columns):
        # No blank cell: pair in order, which also survives a value wider
        # than its column pushing the later ones right.
        return {name: float(w) for (_, name), (_, w) in zip(columns, words)}
    starts = [start for start, _ in columns]
    row = {}
    for start, word in words:
        index = bisect.bisect_right(starts, start) - 1
        if index < 0 or columns[index][1] in row:
            return None
        row[columns[index][1]] = float(word)
    return row


def is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def entries_by_epoch(entries: list[dict]) -> dict[int, dict]:
    """The entry that reports the end of each epoch, by epoch number.

    LogReport's 'epoch' counts *completed* epochs. With a trigger finer than
    an epoch, the entries with epoch == e are the one written when epoch e
    ended, then those written during epoch e + 1. So the end of epoch e (the
    one holding its per-epoch validation) is the first entry with epoch == e,
    not the last. Entries before the first epoch ended (epoch 0) report no
    epoch's end and are left out.
    """
    by_epoch: dict[int, dict] = {}
    for entry in entries:
        epoch = int(entry["epoch"])
        if epoch >= 1 and epoch not in by_epoch:
            by_epoch[epoch] = entry
    return by_epoch


# Layout: one block per metric, rows = epochs, columns = runs and their
# differences to the first run. Runs are named A, B, C... in the columns and
# their full labels ("2 proc, exact, cifar10, b64") listed once above: with
# labels as column titles, or with all metrics side by side, even two runs
# would overflow a 100-column terminal; this way each column is ~10
# characters and up to four runs with their differences fit.
def format_report(runs: list[dict], markdown: bool) -> str:
    names = string.ascii_uppercase[:len(runs)]
    if markdown:
        lines = [f"- {name}: {run['label']}" for name, run in zip(names, runs)]
    else:
        lines = [f"{name} = {run['label']}" for name, run in zip(names, runs)]
    for metric in METRICS:
        if not any(metric in e for run in runs for e in run["epochs"].values()):
            continue
        header, rows = metric_table(runs, names, metric)
        lines.append("")
        if markdown:
            lines += [f"### {metric}", ""] + markdown_table(header, rows)
        else:
            lines += [metric] + text_table(header, rows)
    return "\n".join(lines) + "\n"


def metric_table(runs: list[dict], names: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one metric's block; blank cells where a value is missing."""
    header = ["epoch"]
    for i, name in enumerate(names):
        header += [name] if i == 0 else [name, f"{name}-{names[0]}"]
    digits = 2 if metric == "elapsed_time" else 4
    epochs = sorted(set().union(*(run["epochs"] for run in runs)))
    rows = []
    for epoch in epochs:
        values = [run["epochs"].get(epoch, {}).get(metric) for run in runs]
        row = [str(epoch)]
        for i, value in enumerate(values):
            row.append("" if value is None else f"{value:.{digits}f}")
            if i > 0:
                missing = value is None or values[0] is None
                row.append("" if missing else f"{value - values[0]:+.{digits}f}")
        rows.append(row)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(title)] + [len(row[i]) for row in rows])
              for i, title in enumerate(header)]
    # Value columns share a minimum width so that the blocks line up with
    # each other; the epoch column needs no more than its title.
    widths = widths[:1] + [max(w, MIN_COLUMN_WIDTH) for w in widths[1:]]
    return ["  ".join(cell.rjust(w) for cell, w in zip(cells, widths)).rstrip()
            for cells in [header] + rows]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |"
            for cells in [header, ["---:"] * len(header)] + rows]


def plot_runs(runs: list[dict], path: str) -> None:
    """Loss and accuracy against epoch and elapsed time, 2x2 panels."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for row, quantity in enumerate(("loss", "accuracy")):
        for col, x_key in enumerate(("epoch", "elapsed_time")):
            ax = axes[row][col]
            for i, run in enumerate(runs):
                for prefix, style in (("main/", "-"), ("validation/main/", "--")):
                    xs, ys = plot_points(run, x_key, prefix + quantity)
                    ax.plot(xs, ys, style, color=f"C{i}", marker=".")
            if x_key == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch" if x_key == "epoch" else "elapsed time (s)")
            ax.set_ylabel(quantity)
            ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=f"C{i}", label=run["label"]) for i, run in enumerate(runs)]
    handles += [Line2D([], [], color="black", linestyle="-", label="training"),
                Line2D([], [], color="black", linestyle="--", label="validation")]
    axes[0][0].legend(handles=handles, fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        raise RunError(f"{path}: cannot write the plot ({reason})") from None
    finally:
        plt.close(fig)


def plot_points(run: dict, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of the epochs that have both values."""
    points = [(epoch if x_key == "epoch" else entry.get(x_key), entry.get(y_key))
              for epoch, entry in sorted(run["epochs"].items())]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    return [x for x, _ in points], [y for _, y in points]


if __name__ == "__main__":
    main()
