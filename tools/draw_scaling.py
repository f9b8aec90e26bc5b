"""Predicted scaling past this machine, on paper: 1 to 64 hosts, three links, three widths.

    python tools/draw_scaling.py docs/scaling.png          # the plot, and the table on stdout

Every figure is a PREDICTION of job/costs.py with the committed calibration
(job/calibration.json: hosts like the 2-core VM of CI, 2 processes of one
thread each), not a measurement. For each number of hosts, link and width,
it takes the layout (D x K, path) that job/costs.py predicts fastest among
those whose processes fit a host's memory (HOST_MEMORY), and prints its
step, its images a second and what limits it (the largest part of the
step). Strong scaling keeps the global batch (256, 1024); weak scaling
gives each replica 64 images, so the global batch grows with D.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from job import costs  # noqa: I001  (job first: BLAS threads and compat, as everywhere)

from tools.plan import layouts

HOSTS = (1, 2, 4, 8, 16, 32, 64)
# (name, bytes a second, seconds a message): the latencies are assumptions.
LINKS = (('1 Gbit/s, 50 us', 1e9 / 8, 50e-6), ('10 Gbit/s, 20 us', 10e9 / 8, 20e-6),
         ('100 Gbit/s, 5 us', 100e9 / 8, 5e-6))
WIDTHS = (1, 4, 8)
PROCS_PER_HOST = 2
HOST_MEMORY = 24 * 2 ** 30  # this VM's
CIFAR_BYTES = 60_000 * costs.ROW_BYTES
SCALINGS = (('strong, batch 256', 256, None), ('strong, batch 1024', 1024, None),
            ('weak, 64 a replica', None, 64))
# What limits a step: the parts grouped.
LIMITS = {'compute': ('compute forward', 'compute backward', 'head', 'update'),
          'channel exchanges': ('channel gathers', 'second gathers', 'reduce-scatters'),
          'replica sums': ('replica sums',), 'gradient all-reduce': ('gradient buckets exposed',),
          'input': ('input',)}


def best(machine: costs.Machine, hosts: int, link: tuple, width: float, batch: int | None,
         per_replica: int | None) -> dict | None:
    """The fastest layout that fits, as images a second; None if none fits."""
    _, rate, latency = link
    cluster = costs.Cluster(hosts, PROCS_PER_HOST, 1, machine.data['cores'], False,
                            rate if hosts > 1 else None, latency if hosts > 1 else 0.0)
    found = None
    for layout in layouts(cluster.processes, batch or per_replica * cluster.processes, width):
        global_batch = batch or per_replica * layout.replicas
        if global_batch % layout.replicas:
            continue
        first = costs.predict_peak_mb(machine, layout, global_batch, width, CIFAR_BYTES)
        others = costs.predict_peak_mb(machine, layout, global_batch, width)
        if (first + (PROCS_PER_HOST - 1) * others) * costs.MIB > HOST_MEMORY:
            continue
        step, parts = costs.predict_step(machine, cluster, layout, global_batch, width)
        rate_images = global_batch / step
        if found is None or rate_images > found['images_per_second']:
            limit = max(LIMITS, key=lambda name: sum(parts[p] for p in LIMITS[name]))
            found = {'layout': layout, 'step': step, 'images_per_second': rate_images,
                     'batch': global_batch, 'limit': limit, 'peak_mb': max(first, others)}
    return found


def table(machine: costs.Machine) -> dict:
    """{(scaling, link, width): [best(...) for each of HOSTS]}."""
    return {(scaling, link[0], width): [best(machine, hosts, link, width, batch, per_replica)
                                        for hosts in HOSTS]
            for scaling, batch, per_replica in SCALINGS for link in LINKS for width in WIDTHS}


def print_markdown(rows: dict) -> None:
    print('PREDICTIONS of job/costs.py, not measurements: the fastest layout that fits, as '
          'images a second, D x K, path (s: slices, g: gathered), and the largest part of '
          'its step\n')
    print('| scaling | link | width | ' + ' | '.join(f'{h} hosts' for h in HOSTS) + ' |')
    print('| --- | --- | ---: |' + ' ---: |' * len(HOSTS))
    for (scaling, link, width), found in rows.items():
        cells = ['does not fit' if f is None else
                 f'{f["images_per_second"]:.0f} img/s, {f["layout"].replicas}x'
                 f'{f["layout"].channel_ranks}{"g" if f["layout"].keep_gathered else "s"}, '
                 f'{f["limit"]}' for f in found]
        print(f'| {scaling} | {link} | {width} | ' + ' | '.join(cells) + ' |')


def draw(rows: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(len(SCALINGS), len(WIDTHS), figsize=(13, 10), sharex=True)
    for i, (scaling, _, _) in enumerate(SCALINGS):
        for j, width in enumerate(WIDTHS):
            axis = axes[i][j]
            for link in LINKS:
                found = rows[scaling, link[0], width]
                points = [(h, f['images_per_second']) for h, f in zip(HOSTS, found) if f]
                if points:
                    axis.plot(*zip(*points), marker='o', label=link[0])
            axis.set_xscale('log', base=2)
            axis.set_yscale('log')
            axis.set_title(f'{scaling}, width {width}', fontsize=10)
            axis.grid(True, which='both', alpha=0.3)
            if i == len(SCALINGS) - 1:
                axis.set_xlabel('hosts (2 processes each)')
            if j == 0:
                axis.set_ylabel('images a second')
    axes[0][0].legend(fontsize=8)
    figure.suptitle('PREDICTED training throughput of VGG16 (job/costs.py, hosts like the '
                    '2-core VM of CI); not measured')
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('png', help='where to draw the plot')
    parser.add_argument('--calibration', default=costs.DEFAULT_CALIBRATION)
    args = parser.parse_args(argv)
    rows = table(costs.Machine.load(args.calibration))
    print_markdown(rows)
    draw(rows, args.png)


if __name__ == '__main__':
    main()
