from models.partition import split_counts, split_range


def test_counts_cover_all_channels_and_differ_by_at_most_one():
    for channels in (3, 64, 512):
        for size in range(1, 65):
            counts = split_counts(channels, size)
            assert sum(counts) == channels
            assert max(counts) - min(counts) <= 1
            assert counts == sorted(counts, reverse=True)


def test_uneven_split_of_64_over_3():
    assert split_counts(64, 3) == [22, 21, 21]
    assert [split_range(64, 3, r) for r in range(3)] == [(0, 22), (22, 43), (43, 64)]


def test_ranges_are_contiguous():
    ranges = [split_range(10, 4, r) for r in range(4)]
    assert ranges == [(0, 3), (3, 6), (6, 8), (8, 10)]
