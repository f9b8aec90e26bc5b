"""job/costs.py: MPICH's algorithms, where groups lie, what a rank keeps, and the step's
parts, on a made-up calibration whose every figure the tests know."""
from job import costs

import math

import pytest

from models.vgg import VGG16_BLOCKS

SECONDS_PER_MULTIPLY_ADD = 1e-10


def made_up_machine(**network) -> costs.Machine:
    """Every block at 1e-10 s a multiply-add forward and twice that backward, on
    either path, one thread; a head of 1 ms an image; an update of 1 ns a value."""
    def table(width):
        return {name: [[rows, k, *(seconds * _work(index, width, rows, k)
                                   for seconds in (SECONDS_PER_MULTIPLY_ADD,
                                                   2 * SECONDS_PER_MULTIPLY_ADD))]
                       for rows in (4, 64) for k in (1, 4)]
                for index, (name, *_) in enumerate(VGG16_BLOCKS)}
    return costs.Machine({
        'machine': 'made up', 'cores': 2,
        'compute': {'1': {'1': {'slices': table(1), 'gathered': table(1)}}},
        'head': {'1': {'1': [[4, 0.004], [64, 0.064]]}},
        'update': {'1': [0.0, 1e-9]},
        'network': {'intra_alpha': 1e-5, 'intra_beta': 1e-10, 'link_alpha': 5e-5,
                    'link_beta': 1e-9, 'rate_share': 0.9, **network},
        'memory': {'fixed_mb': 150.0, 'bytes_per_kept_byte': 1.5, 'layout_factor': 4.0,
                   'filter_factor': 0.5}})


def _work(index: int, width: float, rows: int, k: int) -> float:
    block = costs.blocks(width)[index]
    return costs.multiply_adds(block, rows, costs.split_counts(block.out_channels, k)[0])


@pytest.mark.parametrize('n, p, steps', [
    (100 * 1024, 4, 2),  # under 512 KB, a power of two: recursive doubling
    (1024 * 1024, 4, 3),  # above: a ring
    (60 * 1024, 3, 2),  # under 80 KB, not a power of two: Bruck
    (100 * 1024, 3, 2),  # between 80 and 512 KB, not a power of two: a ring
])
def test_an_all_gather_takes_mpichs_algorithm(n, p, steps):
    assert costs.allgather(n, p) == (steps, (p - 1) / p * n)


def test_all_reduce_small_by_doubling_large_by_rabenseifner():
    assert costs.allreduce(24, 8) == (3, 3 * 24)
    assert costs.allreduce(8e6, 8) == (6, 2 * 7 / 8 * 8e6)
    # Three ranks: a power of two and one folded in and out, n more bytes.
    assert costs.allreduce(8e6, 3) == (2 * 2 + 2, 2 * 2 / 3 * 8e6 + 8e6)
    assert costs.allreduce(8e6, 1) == (0, 0)


def test_groups_on_hosts():
    # 2 hosts x 2: K = 2 keeps each channel group on its host, and both
    # replica groups cross the link at once.
    cluster = costs.Cluster(hosts=2, procs_per_host=2)
    assert costs.channel_group(costs.Layout(2, 2), cluster) == costs.Group(2, 2, 1)
    assert costs.replica_group(costs.Layout(2, 2), cluster) == costs.Group(2, 1, 2)
    # K = 4: one channel group over both hosts; K = 1: one replica group, 2 on each host.
    assert costs.channel_group(costs.Layout(1, 4), cluster).crosses
    replicas = costs.replica_group(costs.Layout(4, 1), cluster)
    assert replicas == costs.Group(4, 2, 1)
    # Each rank sends to 3 others, 2 of them on the other host; 2 ranks a host.
    assert replicas.crossing(300) == pytest.approx(300 * 2 / 3 * 2)
    # A ring crosses each host once; Rabenseifner's all-reduce sends the far
    # ranks the small pieces: half of the even spread's bytes with 2 ranks a host.
    assert replicas.crossing(300, 'ring') == 300
    assert replicas.crossing(300, 'halving') == pytest.approx(300 * 2 / 3)
    one_a_host = costs.Group(4, 1, 1)
    assert one_a_host.crossing(300, 'halving') == one_a_host.crossing(300) == 300


def test_a_rank_keeps_less_per_image_on_the_slices_as_k_grows():
    one, _ = costs.kept_per_image(1, 1, False)
    four, _ = costs.kept_per_image(1, 4, False)
    image = 3 * 32 * 32
    head = 512 + 4 * 512
    # Everything but the image and the head is split into four.
    assert four - image - head == pytest.approx((one - image - head) / 4, rel=0.01)
    # The gathered inputs are whole on every rank.
    assert costs.kept_per_image(1, 1, True)[1] == costs.kept_per_image(1, 4, True)[1] > 0
    assert costs.kept_per_image(1, 4, False)[1] == 0


def test_one_process_computes_what_the_calibration_says_and_exchanges_nothing():
    machine = made_up_machine()
    step, parts = costs.predict_step(machine, costs.Cluster(threads=1), costs.Layout(1, 1), 64)
    forward = sum(_work(i, 1, 64, 1) for i in range(len(VGG16_BLOCKS))) * SECONDS_PER_MULTIPLY_ADD
    assert parts['compute forward'] == pytest.approx(forward)
    assert parts['compute backward'] == pytest.approx(2 * forward)
    assert parts['head'] == pytest.approx(0.064)
    assert parts['update'] == pytest.approx(1e-9 * sum(costs.parameters(1, 1)))
    for name in ('channel gathers', 'second gathers', 'reduce-scatters', 'replica sums',
                 'gradient buckets exposed', 'input'):
        assert parts[name] == 0, name
    assert step == pytest.approx(sum(parts.values()))


def test_between_grid_points_the_rate_is_interpolated_and_outside_held():
    machine = made_up_machine()
    # The made-up rate is the same everywhere: any rows and K give it back.
    for rows, k in ((16, 2), (2, 1), (256, 8)):
        forward, backward = machine.block_seconds(3, 1, 'slices', 1, rows, k)
        assert forward == pytest.approx(_work(3, 1, rows, k) * SECONDS_PER_MULTIPLY_ADD)
        assert backward == pytest.approx(2 * forward)


def test_shared_cores_stretch_the_compute():
    machine = made_up_machine()
    alone = costs.predict_step(machine, costs.Cluster(threads=1), costs.Layout(1, 1), 64)[1]
    four = costs.Cluster(hosts=4, threads=1, cores=2, shared_cores=True, rate=1e9 / 8)
    shared = costs.predict_step(machine, four, costs.Layout(1, 4), 64)[1]
    quarter = costs.predict_step(machine, costs.Cluster(hosts=4, threads=1, cores=2,
                                                        rate=1e9 / 8), costs.Layout(1, 4), 64)[1]
    assert shared['compute forward'] == pytest.approx(2 * quarter['compute forward'])
    assert quarter['compute forward'] < alone['compute forward'] / 3


def test_a_slower_link_slows_the_channel_exchanges_and_the_slices_add_a_gather():
    machine = made_up_machine()
    layout = costs.Layout(1, 2)
    fast = costs.predict_step(machine, costs.Cluster(hosts=2, rate=10e9 / 8), layout, 32)[1]
    slow = costs.predict_step(machine, costs.Cluster(hosts=2, rate=100e6 / 8), layout, 32)[1]
    assert slow['channel gathers'] > 5 * fast['channel gathers']
    # The bytes of a gather over the rate: the share of the rate an exchange gets.
    conv1_1 = costs.blocks(1)[0]
    sent = costs.gathered_bytes(conv1_1, 32, 4) / 2
    assert slow['channel gathers'] > sent / (100e6 / 8 * 0.9)
    kept = costs.predict_step(machine, costs.Cluster(hosts=2, rate=100e6 / 8),
                              costs.Layout(1, 2, keep_gathered=True), 32)[1]
    assert kept['second gathers'] == 0 < slow['second gathers']


def test_gradient_buckets_hide_behind_a_long_backward_pass_but_not_a_short_one():
    machine = made_up_machine()
    slow_link = costs.Cluster(hosts=2, rate=100e6 / 8)
    exposed = costs.predict_step(machine, slow_link, costs.Layout(2, 1), 64)[1]
    # 60 MB of gradients at 90 Mbit/s take seconds; the backward pass, a fraction of that.
    assert exposed['gradient buckets exposed'] > 3
    fast_link = costs.Cluster(hosts=2, rate=100e9 / 8)
    assert costs.predict_step(machine, fast_link, costs.Layout(2, 1), 64)[1][
        'gradient buckets exposed'] < 0.05


def test_buckets_hide_less_where_more_threads_than_cores_take_turns():
    # The same backward pass twice: on a machine twice as slow, with a core to
    # spare; and on this one with 2 threads a core, where the thread that sums
    # the buckets works half the time while the pass runs.
    slow = made_up_machine()
    for points in slow.compute['1']['1']['slices'].values():
        for point in points:
            point[2:] = [2 * seconds for seconds in point[2:]]
    spare = costs.Cluster(hosts=2, rate=1e9 / 8, cores=2)
    crowded = costs.Cluster(hosts=2, rate=1e9 / 8, cores=1, threads=2)
    layout = costs.Layout(2, 1)
    slow_parts = costs.predict_step(slow, spare, layout, 8)[1]
    crowded_parts = costs.predict_step(made_up_machine(), crowded, layout, 8)[1]
    assert crowded_parts['compute backward'] == pytest.approx(slow_parts['compute backward'])
    assert crowded_parts['gradient buckets exposed'] > slow_parts['gradient buckets exposed'] + 0.1


def test_memory_falls_with_k_on_the_slices_and_the_dataset_sits_on_rank_0():
    machine = made_up_machine()
    one = costs.predict_peak_mb(machine, costs.Layout(1, 1), 64)
    four = costs.predict_peak_mb(machine, costs.Layout(1, 4), 64)
    kept_four = costs.predict_peak_mb(machine, costs.Layout(1, 4, keep_gathered=True), 64)
    assert 150 < four < one and four < kept_four
    data = 60_000 * 3076
    assert costs.predict_peak_mb(machine, costs.Layout(1, 4), 64, data_bytes=data) == \
        pytest.approx(four + data / costs.MIB)


def test_fit_memory_finds_the_parameters_it_was_made_with():
    machine = made_up_machine()
    points = []
    for path in ('slices', 'gathered'):
        for batch in (16, 64):
            synthetic = costs.CALIBRATION_RUN_BATCHES * batch * costs.SYNTHETIC_ROW_BYTES
            points.append([path, batch, costs.predict_peak_mb(
                machine, costs.Layout(1, 1, path == 'gathered'), batch, data_bytes=synthetic)])
    fitted = costs.fit_memory(points)
    for key in ('fixed_mb', 'bytes_per_kept_byte', 'layout_factor', 'filter_factor'):
        assert fitted[key] == pytest.approx(machine.memory[key]), key


def test_whole_steps_measured_scale_the_compute_between_their_batches_and_hold_beyond():
    machine = made_up_machine()
    alone = costs.Cluster(threads=1)
    plain = {rows: costs.predict_step(machine, alone, costs.Layout(1, 1), rows)[0]
             for rows in (2, 4, 16, 64, 256)}
    # One-process steps measured at half and at 0.9 of the blocks' sum.
    points = [['slices', 4, 0.5 * plain[4]], ['slices', 64, 0.9 * plain[64]]]
    machine.data['step_factors'] = {'1': costs.fit_step_factors(machine, points, 1)}
    machine = costs.Machine(machine.data)
    for rows, factor in ((2, 0.5), (4, 0.5), (16, 0.7), (64, 0.9), (256, 0.9)):
        step, _ = costs.predict_step(machine, alone, costs.Layout(1, 1), rows)
        assert step == pytest.approx(factor * plain[rows]), rows  # 16: halfway in log(rows)
    # The gathered inputs' path was not measured: as calibrated.
    gathered = costs.Layout(1, 1, True)
    assert costs.predict_step(machine, alone, gathered, 16)[0] == pytest.approx(
        costs.predict_step(made_up_machine(), alone, gathered, 16)[0])


def test_the_committed_calibration_loads_and_predicts_every_layout_of_four_processes():
    machine = costs.Machine.load()
    for k in (1, 2, 4):
        for keep in (False, True):
            step, parts = costs.predict_step(machine, costs.Cluster(procs_per_host=4),
                                             costs.Layout(4 // k, k, keep), 64)
            assert 0 < step < 100 and all(math.isfinite(s) and s >= 0 for s in parts.values())
            assert 100 < costs.predict_peak_mb(machine, costs.Layout(4 // k, k, keep), 64) < 5000
