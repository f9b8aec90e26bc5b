"""run_info: what train.py records about a run in run.json."""
import argparse
import importlib.util
import json
import os
import platform
import socket
import stat

import chainer
import mpi4py
import numpy
import pytest
from mpi4py import MPI

from job.run_info import collect_run_info, read_run_info, write_run_info


def train_args(**overrides) -> argparse.Namespace:
    settings = dict(dataset="synthetic", train_size=256, test_size=None, batchsize=64,
                    learnrate=0.05, epoch=3, seed=7, gpu=False, out="result", resume=None,
                    keep_gathered=False)
    settings.update(overrides)
    return argparse.Namespace(**settings)


def test_records_settings_versions_and_machine():
    info = collect_run_info(train_args(), n_processes=2, scheme="exact")
    assert {k: v for k, v in info.items() if k not in ("versions", "machine")} == {
        "processes": 2, "replicas": 1, "model_parallel": 2, "model_parallel_auto": None,
        "scheme": "exact", "width": 1, "keep_gathered": False, "dataset": "synthetic",
        "train_size": 256, "test_size": None, "batchsize": 64, "learnrate": 0.05, "epoch": 3,
        "seed": 7, "gpu": False}
    assert info["versions"] == {
        "python": platform.python_version(),
        "chainer": chainer.__version__,
        "numpy": numpy.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
    }
    assert info["versions"]["mpi"]  # the library names itself, e.g. "MPICH Version: 4.x"
    machine = info["machine"]
    assert set(machine) == {"cpu", "logical_cores", "hostname", "gpu_name"}
    assert machine["cpu"]
    assert machine["logical_cores"] == os.cpu_count()
    assert machine["hostname"] == socket.gethostname()
    assert machine["gpu_name"] is None  # no GPU used


def test_records_replicas_of_channel_groups():
    info = collect_run_info(train_args(), n_processes=6, scheme="exact", model_parallel=2)
    assert (info["processes"], info["replicas"], info["model_parallel"]) == (6, 3, 2)


def test_records_the_width():
    info = collect_run_info(train_args(width=2), n_processes=2, scheme="grouped")
    assert info["width"] == 2


def test_records_keep_gathered():
    assert collect_run_info(train_args(keep_gathered=True), 2, "exact")["keep_gathered"] is True


def test_records_what_chose_the_channel_group_size():
    auto = {"seconds_per_step": {1: 0.5, 2: 0.75}, "startup_seconds": 9.0}
    info = collect_run_info(train_args(), n_processes=2, scheme="exact", model_parallel=1,
                            auto=auto)
    assert info["model_parallel_auto"] == auto


def test_cpu_model_is_the_one_linux_reports():
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    info = collect_run_info(train_args(), n_processes=1, scheme="grouped")
    assert info["machine"]["cpu"] == models[0]


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="scheme"):
        collect_run_info(train_args(), n_processes=1, scheme="channel")


def test_round_trip(tmp_path):
    info = collect_run_info(train_args(test_size=128), n_processes=4, scheme="grouped")
    path = write_run_info(str(tmp_path / "result"), info)
    assert path == str(tmp_path / "result" / "run.json")
    assert read_run_info(path) == info
    with open(path) as f:
        assert json.load(f) == info  # plain JSON, readable without run_info
    assert os.stat(path).st_mode & stat.S_IROTH  # readable by whoever reads the results


def test_write_leaves_no_temporary_file(tmp_path):
    write_run_info(str(tmp_path), {"processes": 1})
    write_run_info(str(tmp_path), {"processes": 2})  # replaces the first
    assert os.listdir(tmp_path) == ["run.json"]
    assert read_run_info(str(tmp_path / "run.json")) == {"processes": 2}


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    write_run_info(str(tmp_path), {"processes": 1})
    with pytest.raises(TypeError):  # json cannot encode an object
        write_run_info(str(tmp_path), {"processes": object()})
    assert os.listdir(tmp_path) == ["run.json"]
    assert read_run_info(str(tmp_path / "run.json")) == {"processes": 1}


def test_read_missing_is_none_and_malformed_is_an_error(tmp_path):
    assert read_run_info(str(tmp_path / "run.json")) is None
    (tmp_path / "run.json").write_text("{\"processes\": 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_info(str(tmp_path / "run.json"))
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_run_info(str(tmp_path / "run.json"))


def test_gpu_run_names_the_gpu_when_cupy_can():
    info = collect_run_info(train_args(gpu=True), n_processes=1, scheme="exact")
    assert info["gpu"] is True
    if importlib.util.find_spec("cupy") is None:
        assert info["machine"]["gpu_name"] is None
    else:
        assert isinstance(info["machine"]["gpu_name"], str) and info["machine"]["gpu_name"]
