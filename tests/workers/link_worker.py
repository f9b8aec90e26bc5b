"""Bytes between two of tools/hosts.py's hosts over plain TCP, without MPI.

    link_worker.py receive PORT              take one connection, read it to its end
    link_worker.py send HOST PORT BYTES      print the seconds to send BYTES to HOST
    link_worker.py reach HOST PORT           print whether HOST answers on its link

``send`` retries until the receiver listens, and counts until the receiver
has read everything and closed (not until the bytes sit in a buffer).
``reach`` connects to a port where nothing listens: an answer (refused)
means HOST is reachable, silence for a second that it is not.
"""
import socket
import sys
import time

CHUNK = 1 << 16


def receive(port: int) -> None:
    with socket.create_server(('', port)) as server:
        connection, _ = server.accept()
        with connection:
            while connection.recv(CHUNK):
                pass


def send(host: str, port: int, size: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=30)
            break
        except ConnectionRefusedError:  # the receiver is not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with connection:
        start = time.monotonic()
        connection.sendall(bytes(size))
        connection.shutdown(socket.SHUT_WR)
        connection.recv(1)  # b'' once the receiver read the end and closed
        print(time.monotonic() - start)


def reach(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=1).close()
        print('reached')
    except ConnectionRefusedError:
        print('reached')
    except OSError:  # timed out, or no route while the link is down
        print('unreachable')


if __name__ == '__main__':
    action, *arguments = sys.argv[1:]
    {'receive': receive, 'send': send, 'reach': reach}[action](
        *(int(a) if a.isdigit() else a for a in arguments))
