"""How the test workers report: every rank's result, gathered on rank 0 and pickled.

The test that started the worker under mpiexec reads the file back
(tests/conftest.py puts this folder's parent on the workers' PYTHONPATH).
"""
import pickle


def write_gathered(comm, result, out_path: str) -> None:
    """Rank 0 writes the list of every rank's ``result``, in rank order, to ``out_path``."""
    gathered = comm.gather_obj(result)
    if comm.rank == 0:
        with open(out_path, 'wb') as f:
            pickle.dump(gathered, f)
