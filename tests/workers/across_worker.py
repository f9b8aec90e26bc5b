"""An all-reduce of argv[1] float64 values; rank 0 prints, as JSON, each
rank's host name and the smallest and largest value of its sum."""
import json
import socket
import sys

import numpy
from mpi4py import MPI

comm = MPI.COMM_WORLD
total = numpy.empty(int(sys.argv[1]))
comm.Allreduce(numpy.full(total.size, comm.rank + 1.0), total)
found = comm.gather([socket.gethostname(), total.min(), total.max()])
if comm.rank == 0:
    print(json.dumps(found), flush=True)
