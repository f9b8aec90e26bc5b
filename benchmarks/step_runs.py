"""One run of a step-time configuration: the worker's command and environment, and its result line.

Every run of a configuration is a fresh process (or mpiexec), with
OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set for it, and the
configurations take turns, round after round (a, b1, b2, c, d, e, pt2, pt1, a, ...),
so that load from other programs on a shared machine falls on all of them.

The driver (benchmarks/step_time.py, and benchmarks/two_hosts_traffic.py
across two hosts) starts ``python benchmarks/step_time.py --worker NAME``;
the worker prints one line that starts with RESULT_MARK and holds its
result as JSON (``print_result``), which ``read_result`` reads back.
Only the standard library here: the PyTorch worker runs without numpy.
"""
import argparse
import json
import os
import socket
import subprocess
import sys

from benchmarks.step_configs import REPO, Configuration

RESULT_MARK = 'STEP_TIME_RESULT '
STEP_TIME = os.path.join(REPO, 'benchmarks', 'step_time.py')


def mpiexec_path() -> str:
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    beside_python = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return beside_python if os.path.exists(beside_python) else 'mpiexec'


def worker_command(config: Configuration, args: argparse.Namespace,
                   profile: bool = False) -> list[str]:
    """The worker's command line for one run of ``config`` (without mpiexec)."""
    command = [sys.executable, STEP_TIME, '--worker', config.name,
               '--batchsize', str(args.batchsize), '--steps', str(args.steps),
               '--warmup', str(args.warmup)]
    return command + ['--profile=' + config.name] if profile else command


def worker_env(config: Configuration) -> dict:
    """The environment of a worker: its threads, and for PyTorch's process
    group a port of this machine that is free now."""
    threads = str(config.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, PYTHONPATH=REPO)
    if config.network == 'torch' and config.processes > 1:
        with socket.socket() as probe:
            probe.bind(('127.0.0.1', 0))
            env.setdefault('MASTER_PORT', str(probe.getsockname()[1]))
    return env


def read_result(config: Configuration, returncode: int, stdout: str, stderr: str,
                program: str = 'step_time.py') -> dict:
    """The result line of a finished worker; exits naming ``config`` if it failed."""
    results = [line[len(RESULT_MARK):] for line in stdout.splitlines()
               if line.startswith(RESULT_MARK)]
    if returncode != 0 or not results:
        exit_failed(program, f'configuration {config.name}', returncode, stderr)
    return json.loads(results[-1])


def exit_failed(program: str, what: str, returncode: int, stderr: str) -> None:
    """Exit with one line: ``what`` failed, with its exit code and last line of stderr."""
    last = (stderr.strip().splitlines() or ['no output'])[-1]
    sys.exit(f'{program}: {what} failed (exit {returncode}): {last}')


def run_worker(config: Configuration, args: argparse.Namespace, profile: bool = False) -> dict:
    """One fresh run of ``config``; the result rank 0 prints, plus its stdout."""
    command = worker_command(config, args, profile)
    if config.processes > 1:
        command = [mpiexec_path(), '-n', str(config.processes)] + command
    finished = subprocess.run(command, capture_output=True, text=True, env=worker_env(config),
                              cwd=REPO)
    result = read_result(config, finished.returncode, finished.stdout, finished.stderr)
    result['stdout'] = finished.stdout
    return result


def print_result(result: dict) -> None:
    """The worker's result line, for ``read_result``."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def slowest(every_rank) -> list[float]:
    """Step by step, the largest of the ranks' times."""
    return [max(times) for times in zip(*every_rank)]


def print_profile(profiler) -> None:
    """The functions with the most own time, then the most cumulative time."""
    import pstats
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats('tottime').print_stats(25)
    stats.sort_stats('cumulative').print_stats(40)
