"""Bad input to train.py: one line on stderr, a non-zero exit, nothing lost."""
import pytest
from conftest import run_mpi

QUICK = ['--dataset', 'synthetic', '--train-size', '32', '--test-size', '16',
         '--batchsize', '16', '--epoch', '1']


def check_clean_failure(result, *expected_words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('train.py: error')
    for word in expected_words:
        assert word in lines[0], lines[0]
    assert 'Traceback' not in result.stderr + result.stdout


@pytest.mark.parametrize('flags, words', [
    (['--dataset', 'mnist'], ['mnist', 'cifar10']),
    (['--batchsize', '0'], ['--batchsize']),
    (['--epoch', '-1'], ['--epoch']),
    (['--learnrate', '0'], ['--learnrate']),
    (['--frequency', '0'], ['--frequency']),
    (['--frequency', '-2'], ['--frequency']),
    (['--train-size', '8'], ['--train-size', 'batch']),
    (['--gpu'], ['--gpu']),
])
def test_bad_flag_fails_in_one_line(flags, words, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'log').write_text('earlier run')
    result = run_mpi(2, 'train.py', '--out', str(out), *QUICK, *flags, check=False,
                     timeout=60)
    check_clean_failure(result, *words)
    assert (out / 'log').read_text() == 'earlier run'


def test_missing_dataset_root_names_the_file(tmp_path):
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'),
                     '--dataset-root', str(tmp_path / 'nowhere'), check=False, timeout=60)
    check_clean_failure(result, 'cifar-10-python.tar.gz')


@pytest.mark.parametrize('content', [None, b'not a snapshot'])
def test_bad_resume_file_fails_in_one_line(content, tmp_path):
    snapshot = tmp_path / 'snapshot_epoch_1'
    if content is not None:
        snapshot.write_bytes(content)
    result = run_mpi(2, 'train.py', '--out', str(tmp_path / 'out'), *QUICK,
                     '--resume', str(snapshot), check=False, timeout=60)
    check_clean_failure(result, '--resume')


def test_unwritable_out_fails_in_one_line(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('a file, not a directory')
    result = run_mpi(2, 'train.py', '--out', str(blocker / 'out'), *QUICK,
                     check=False, timeout=60)
    check_clean_failure(result, '--out')
