"""Bad input to train.py: one line on stderr, a non-zero exit, nothing lost."""
import os

import pytest

from cifar_files import Cifar, code_runners
from conftest import check_clean_failure, check_earlier_run_kept, mpi_env, run_mpi

QUICK = ['--dataset', 'synthetic', '--train-size', '32', '--test-size', '16',
         '--batchsize', '16', '--epoch', '1']


# Each bad flag and the words its one line must hold. check_args refuses
# them all, the same way on every rank, before anything is read or written.
BAD_FLAGS = [
    (['--dataset', 'mnist'], ['mnist', 'cifar10']),
    (['--batchsize', '0'], ['--batchsize']),
    (['--epoch', '-1'], ['--epoch']),
    (['--learnrate', '0'], ['--learnrate']),
    (['--frequency', '0'], ['--frequency']),
    (['--frequency', '-2'], ['--frequency']),
    (['--train-size', '8'], ['--train-size', 'batch']),
    (['--evaluate', 'model.npz', '--resume', 'snapshot_epoch_1'], ['--evaluate', '--resume']),
    # Replicas of channel groups: K must divide the 2 processes, be at most
    # the narrowest layer's 64 channels, and leave a batch that the
    # replicas share evenly; and replicas run on CPU only.
    (['--model-parallel', '0'], ['--model-parallel', 'greater than 0']),
    (['--model-parallel', '3'], ['--model-parallel 3', 'does not divide', '1 or 2']),
    (['--model-parallel', '65'], ['--model-parallel 65', 'narrowest layer', '64']),
    (['--model-parallel', '1', '--batchsize', '15'],
     ['--batchsize 15', '2 replicas', 'multiple of 2']),
    (['--model-parallel', '1', '--gpu'], ['--gpu', '2 replicas', 'CPU only']),
    (['--width', '0'], ['--width', 'multiple of 1/64 greater than 0', 'got 0']),
    (['--timeout', '0'], ['--timeout', 'seconds greater than 0', 'got 0']),
    (['--timeout', '-5'], ['--timeout', 'got -5']),
    (['--timeout', 'nan'], ['--timeout', 'got nan']),
    (['--model-parallel', 'auto', '--evaluate', 'model.npz'],
     ['--model-parallel auto', '--evaluate', 'number of processes']),
]
# Through real mpiexec, one of each kind: a flag's value, the grid of
# replicas and a number that is no number.
END_TO_END = [BAD_FLAGS[0], BAD_FLAGS[9], BAD_FLAGS[-2]]


@pytest.mark.parametrize('flags, words', BAD_FLAGS)
def test_bad_flag_is_refused_in_one_line_naming_it(flags, words):
    # train.py prints the message after "train.py: error: " (run_checked).
    from job.arguments import check_args, parse_args
    from job.errors import UsageError
    with pytest.raises(UsageError) as refused:
        check_args(parse_args(QUICK + flags), 2)
    message = str(refused.value)
    assert '\n' not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize('flags, words', END_TO_END)
def test_bad_flag_fails_in_one_line(flags, words, earlier_out):
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), *QUICK, *flags, check=False,
                     timeout=60)
    check_clean_failure(result, *words)
    check_earlier_run_kept(earlier_out)


def test_more_processes_than_channels_are_refused():
    # Starting 65 processes is too heavy for a test: check_args is what
    # train.py runs first on every rank (run through mpiexec just above).
    from job.arguments import check_args, parse_args
    from job.errors import UsageError
    args = parse_args(QUICK)
    check_args(args, 64)
    with pytest.raises(UsageError,
                       match='^65 processes, but the narrowest layer has only 64 channels'):
        check_args(args, 65)
    # Replicas of groups of at most 64 run on more.
    check_args(parse_args(QUICK + ['--model-parallel', '64']), 128)
    # --width 2 doubles the narrowest layer.
    check_args(parse_args(QUICK + ['--width', '2']), 128)
    with pytest.raises(UsageError, match=r'^129 processes, but the narrowest layer has only '
                                         r'128 channels \(--width 2\) to split: run at most 128'):
        check_args(parse_args(QUICK + ['--width', '2']), 129)


@pytest.mark.parametrize('value', ['-1', '0', '0.1', '1.01', 'nan'])
def test_width_that_leaves_a_layer_fractional_channels_is_refused(value):
    # 64 x W must be whole: 0.1 would give conv1_1 6.4 channels.
    from job.arguments import check_args, parse_args
    from job.errors import UsageError
    with pytest.raises(UsageError, match=r'^--width must be a multiple of 1/64 greater than 0, '
                                         r'so that every layer has whole channels \(such as '
                                         rf'0.125, 1 or 2\), got {value}$'):
        check_args(parse_args(QUICK + ['--width', value]), 2)


@pytest.mark.parametrize('value, channels', [('0.125', 8), ('1.5', 96), ('2', 128)])
def test_width_below_1_or_between_whole_numbers_runs(value, channels):
    # What the narrowest layer then has to split: 8 channels for at most 8 processes.
    from job.arguments import check_args, parse_args
    from job.errors import UsageError
    check_args(parse_args(QUICK + ['--width', value]), channels)
    with pytest.raises(UsageError, match=f'narrowest layer has only {channels} channels'):
        check_args(parse_args(QUICK + ['--width', value]), channels + 1)


@pytest.mark.parametrize('value', ['two', '1/8'])
def test_width_that_is_no_number_is_argparses_error(value, capsys):
    # As for every number flag: argparse's usage and its one error line, exit code 2.
    from job.arguments import parse_args
    with pytest.raises(SystemExit) as exit:
        parse_args(QUICK + ['--width', value])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    # The program's name is pytest's here, train.py's when train.py runs.
    assert error.endswith(f": error: argument --width: invalid width value: '{value}'")


@pytest.mark.parametrize('flags, processes, sizes', [
    ([], 4, [1, 2, 4]),
    # 3 replicas of 16 rows do not split evenly, 6 do not either.
    (['--batchsize', '16'], 6, [3, 6]),
    # Replicas run on CPU only.
    (['--gpu'], 4, [4]),
    # Groups of 3 or 6 cannot split the grouped network's 64 input channels.
    (['--conv', 'grouped', '--batchsize', '12'], 6, [1, 2]),
    # At --width 3 they can: 192.
    (['--conv', 'grouped', '--batchsize', '12', '--width', '3'], 6, [1, 2, 3, 6]),
    # Groups of at most 64 processes.
    (['--batchsize', '128', '--train-size', '128'], 128, [1, 2, 4, 8, 16, 32, 64]),
])
def test_auto_tries_every_k_the_run_allows(flags, processes, sizes):
    from job import arguments
    args = arguments.parse_args(QUICK + flags + ['--model-parallel', 'auto'])
    arguments.check_args(args, processes)
    assert arguments.channel_group_sizes(args, processes) == sizes
    # A number is that number; no flag, all processes.
    assert arguments.channel_group_sizes(arguments.parse_args(QUICK), processes) == [processes]


def test_missing_dataset_root_names_the_file(tmp_path, earlier_out):
    result = run_mpi(2, 'train.py', '--out', str(earlier_out),
                     '--dataset-root', str(tmp_path / 'nowhere'), check=False, timeout=60)
    check_clean_failure(result, 'cifar-10-python.tar.gz')
    check_earlier_run_kept(earlier_out)


@pytest.fixture(scope='module')
def cifar_tarball(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp('cifar') / 'cifar-10-python.tar.gz'
    return open(Cifar('cifar10', n_train=40, n_test=16, seed=5).write_tarball(path), 'rb').read()


def truncate(content: bytes) -> bytes:
    return content[:len(content) // 2]


def flip_middle_bytes(content: bytes) -> bytes:
    middle = len(content) // 2
    return content[:middle] + bytes(b ^ 0xFF for b in content[middle:middle + 16]) \
        + content[middle + 16:]


@pytest.mark.parametrize('damage', [truncate, flip_middle_bytes])
def test_damaged_dataset_tarball_fails_in_one_line(damage, cifar_tarball, tmp_path, earlier_out):
    root = tmp_path / 'data'
    root.mkdir()
    tarball = root / 'cifar-10-python.tar.gz'
    tarball.write_bytes(damage(cifar_tarball))
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), '--dataset-root', str(root),
                     '--batchsize', '16', '--epoch', '1', check=False, timeout=60)
    check_clean_failure(result, str(tarball), 're-download')
    check_earlier_run_kept(earlier_out)


@pytest.mark.parametrize('runner', list(code_runners('')))
def test_dataset_that_would_run_code_fails_in_one_line(runner, marker, tmp_path, earlier_out):
    """A batch carrying os.system and the like: refused, nothing run on any rank."""
    cifar = Cifar('cifar10', n_train=40, n_test=16, seed=5)
    cifar.add_entry('data_batch_1', b'extra', code_runners(str(marker))[runner])
    root = tmp_path / 'data'
    root.mkdir()
    tarball = cifar.write_tarball(root / cifar.archive)
    env = mpi_env()
    # Where the ranks could import the marker module from, were it asked for.
    env['PYTHONPATH'] += os.pathsep + str(marker.parent)
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), '--dataset-root', str(root),
                     '--batchsize', '16', '--epoch', '1', check=False, timeout=60, env=env)
    check_clean_failure(result, f'{tarball} member cifar-10-batches-py/data_batch_1',
                        f'tries to load {runner},', 're-download')
    assert not marker.exists()
    check_earlier_run_kept(earlier_out)


@pytest.mark.parametrize('flag', ['--resume', '--evaluate'])
@pytest.mark.parametrize('content', [None, b'not an npz file'])
def test_bad_resume_or_evaluate_file_fails_in_one_line(flag, content, tmp_path, earlier_out):
    saved = tmp_path / 'saved.npz'
    if content is not None:
        saved.write_bytes(content)
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), *QUICK, flag, str(saved),
                     check=False, timeout=60)
    check_clean_failure(result, flag, str(saved))
    check_earlier_run_kept(earlier_out)


def test_malformed_fault_variable_fails_in_one_line(earlier_out):
    result = run_mpi(2, 'train.py', '--out', str(earlier_out), *QUICK, check=False, timeout=60,
                     env=mpi_env(PARALLEL_CONV_FAULT='1:first:raise'))
    check_clean_failure(result, 'PARALLEL_CONV_FAULT', 'RANK:ITERATION:ACTION')
    check_earlier_run_kept(earlier_out)


def test_unwritable_out_fails_in_one_line(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('a file, not a directory')
    result = run_mpi(2, 'train.py', '--out', str(blocker / 'out'), *QUICK,
                     check=False, timeout=60)
    check_clean_failure(result, '--out')
    assert blocker.read_text() == 'a file, not a directory'
