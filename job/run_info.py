"""What a training run was: settings, software versions and machine.

train.py writes this as run.json in its output directory so that a result
directory says by itself how it was produced; compare.py labels runs with it.
"""
import argparse
import json
import os
import platform
import socket
import tempfile

RUN_INFO_NAME = "run.json"
SCHEMES = ("exact", "grouped", "plain")


def collect_run_info(args: argparse.Namespace, n_processes: int, scheme: str,
                     model_parallel: int | None = None, auto: dict | None = None) -> dict:
    """Settings of this run from train.py's arguments, plus versions and machine.

    ``model_parallel``: the processes per channel group, K (default: all);
    the run has N / K replicas of it. ``auto``: with --model-parallel auto,
    what chose K: the seconds per step of each K tried and the start-up
    seconds the trials took.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    gpu = bool(args.gpu)
    model_parallel = n_processes if model_parallel is None else model_parallel
    return {
        "processes": n_processes,
        "replicas": n_processes // model_parallel,
        "model_parallel": model_parallel,
        "model_parallel_auto": auto,
        "scheme": scheme,
        # benchmarks/train_plain.py has no --width: its VGG16 is VGG16's width, 1.
        "width": getattr(args, "width", 1),
        # Nor --keep-gathered: its convolutions keep their inputs, as Chainer's do.
        "keep_gathered": getattr(args, "keep_gathered", True),
        "dataset": args.dataset,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "batchsize": args.batchsize,
        "learnrate": args.learnrate,
        "epoch": args.epoch,
        "seed": args.seed,
        "gpu": gpu,
        "versions": _versions(),
        "machine": _machine(gpu),
    }


def write_run_info(out_dir: str, info: dict) -> str:
    """Write info as <out_dir>/run.json and return its path.

    Written to a temporary file in the same directory, then renamed over the
    target, so a reader never sees a half-written run.json.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RUN_INFO_NAME)
    write_json(path, info)
    return path


def write_json(path: str, data) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same
    directory and a rename: a reader sees the whole file or none."""
    directory, name = os.path.split(path)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{name}.", dir=directory or ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        # mkstemp creates the file readable by its owner only; these files
        # are meant to be read by whoever reads the results.
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def read_run_info(path: str) -> dict | None:
    """The run info stored at path, or None if there is no such file.

    Raises ValueError if the file exists but is not a JSON object.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(info).__name__}")
    return info


def _versions() -> dict:
    # Imported here, not at module level: reading a run.json (compare.py)
    # should not need chainer or MPI.
    import chainer
    import mpi4py
    import numpy
    from mpi4py import MPI

    return {
        "python": platform.python_version(),
        "chainer": chainer.__version__,
        "numpy": numpy.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
    }


def _machine(gpu: bool) -> dict:
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "hostname": socket.gethostname(),
        "gpu_name": _gpu_name() if gpu else None,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass  # not Linux: fall through to what platform knows
    return platform.processor()


def _gpu_name() -> str | None:
    try:
        import cupy
        device = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
    except (ImportError, RuntimeError):
        # No cupy, or cupy without a usable CUDA runtime.
        return None
    return name.decode() if isinstance(name, bytes) else name
