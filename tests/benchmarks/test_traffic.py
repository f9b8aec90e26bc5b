"""benchmarks/traffic.py: the bytes a step sends, against VGG16's shapes counted here again."""
import pytest

from benchmarks import traffic
from reference_vgg import CHANNELS, NAMES, POOL_AFTER

VGG16_PARAMETERS_10_CLASSES = 14_987_200


def gathered_bytes_per_row() -> list[int]:
    """Each block's output, pooled where it pools, for one image, float32."""
    sizes, side = [], 32
    for name, channels in zip(NAMES, CHANNELS):
        side //= 2 if name in POOL_AFTER else 1
        sizes.append(4 * channels * side * side)
    return sizes


def test_parameters_are_vgg16s():
    assert sum(traffic.parameters()) == VGG16_PARAMETERS_10_CLASSES


def test_gathered_tensors_of_a_batch_of_64():
    assert [4 * v for v in traffic.gathered_values(64)] == [
        64 * b for b in gathered_bytes_per_row()]
    assert 46.7e6 < 4 * sum(traffic.gathered_values(64)) < 46.9e6


@pytest.mark.parametrize('replicas, channel_ranks', [(1, 2), (2, 2), (4, 1), (1, 1), (3, 4)])
@pytest.mark.parametrize('keep_gathered, per_gather', [(False, 3), (True, 2)])
def test_bytes_per_process_follow_the_formulas(replicas, channel_ranks, keep_gathered,
                                               per_gather):
    sizes = gathered_bytes_per_row()
    rows = 64 / replicas
    # Forward gathers, backward gathers again (unless kept) and reduce-scatters,
    # but into the head.
    channel = ((channel_ranks - 1) / channel_ranks
               * (per_gather * sum(sizes[:-1]) + sizes[-1]) * rows)
    assert traffic.channel_bytes(64, replicas, channel_ranks, keep_gathered) == pytest.approx(
        channel)
    conv, head = traffic.parameters()
    gradient = 2 * (replicas - 1) / replicas * 4 * (conv / channel_ranks + head)
    assert traffic.gradient_bytes(replicas, channel_ranks) == pytest.approx(gradient)


def test_messages_of_replicas():
    # 4 MB buckets of float32 gradients, K = 1: the head with conv5_3
    # (10.5 MB), conv5_2, conv5_1, conv4_3, conv4_2 (9.4 MB each), conv4_1
    # (4.7 MB), conv3_3 with conv3_2 (4.7 MB), the rest (2.2 MB); batch
    # normalization's 2 per layer (14 layers), the rows and the loss.
    assert traffic.gradient_buckets(1) == 8
    assert traffic.messages(2, 1) == (0, 8 + 28 + 2)
    # Channel exchanges only, with one replica: 12 gathered tensors feed a
    # convolution, gathered twice and reduce-scattered (with --keep-gathered
    # once), and one feeds the head.
    assert traffic.messages(1, 2) == (37, 0)
    assert traffic.messages(1, 2, keep_gathered=True) == (25, 0)


def test_between_nodes_only_the_gradients_unless_a_group_spans_them():
    per_node = 8
    assert traffic.between_nodes(64, 2, 8, per_node) == 8 * traffic.gradient_bytes(2, 8)
    assert traffic.between_nodes(64, 1, 16, per_node) == traffic.channel_bytes(64, 1, 16)


def test_report_lists_every_grid_that_keeps_groups_in_nodes(capsys):
    traffic.main(['--nodes', '2', '--per-node', '2'])
    lines = capsys.readouterr().out.splitlines()
    grids = [line.split()[0:3] for line in lines if line.endswith(' ms')]
    assert grids == [['4', 'x', '1'], ['2', 'x', '2'], ['1', 'x', '4']]


@pytest.mark.parametrize('replicas, channel_ranks, ours, multi_node', [
    # 4 x 1: rank 0 keeps its quarter and scatters three; every row is an
    # image's 3072 bytes and a 4-byte label. The multi-node iterator sent
    # the 32 images as float32 (12,288 bytes) with float32 labels to 3 ranks.
    (4, 1, 3 * 8 * 3076, 3 * 32 * 12292),
    # 2 x 2: half the batch to the other replica, then each replica's 16
    # rows to its second rank.
    (2, 2, 16 * 3076 + 2 * 16 * 3076, 3 * 32 * 12292),
    # 1 x 4: the whole batch to each of the 3 other ranks of the group.
    (1, 4, 3 * 32 * 3076, 3 * 32 * 12292),
    (1, 1, 0, 0),
])
def test_input_bytes_of_a_batch_of_32(replicas, channel_ranks, ours, multi_node):
    assert traffic.input_bytes(32, replicas, channel_ranks) == pytest.approx((ours, multi_node))
