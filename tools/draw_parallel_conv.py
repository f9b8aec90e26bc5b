"""Draw the explanatory diagram of channel-parallel convolution.

Usage: python tools/draw_parallel_conv.py [OUTPUT.png]   (default parallel-conv.png)

The picture follows one convolution layer over N = 3 processes: the replicated
input, each rank's contiguous slice of filters, the output slices, the
all-gather along the channel axis and the next layer that consumes the full
tensor. Channel counts come from the partition rule of the design (restated
here), so the uneven split (8 channels -> 3, 3, 2) is computed, not typed in.
"""
import argparse
import sys

import matplotlib

matplotlib.use("Agg")  # headless: CI and `make figure` have no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Polygon

N_PROCS = 3
IN_CHANNELS = 4
OUT_CHANNELS = 8

# 12 x 5.5 inches at 100 dpi = 1200 x 550 px, legible at README width. The
# axes span the whole figure with one data unit per inch, so every coordinate
# below is in inches from the bottom-left corner.
FIG_SIZE = (12.0, 5.5)
DPI = 100

RANK_COLOURS = ("#d95f02", "#1b9e77", "#7570b3")
REPLICATED_COLOUR = "#bdbdbd"
GATHER_FILL = "#f2f2f2"
EDGE_COLOUR = "#333333"
TEXT_COLOUR = "#222222"

# Horizontal centre of each stage, and vertical centre of each rank's lane.
COLUMN_X = {"input": 1.2, "filters": 3.1, "slice": 4.95, "gather": 6.85,
            "full": 8.5, "next": 10.75}
GATHER_WIDTH = 1.3
NEXT_BOX_SIZE = (2.1, 0.62)
LANE_Y = (3.85, 2.60, 1.35)

SLAB_HEIGHT = 0.62
SLAB_STEP = 0.14
# Oblique offset of a slab's far edge: each channel looks like a thin sheet
# seen from the side, so the channel axis runs left to right.
SLAB_SKEW = (0.26, 0.16)
KERNEL_HEIGHT, KERNEL_STEP, KERNEL_SKEW = 0.34, 0.065, (0.14, 0.09)
KERNEL_GAP = 0.10
CAPTION_DROP = 0.55  # from a lane's centre down to the caption under a tensor


def channel_partition(channels: int, n_procs: int) -> list[tuple[int, int]]:
    """(offset, count) per rank: contiguous, the first C % N ranks get one more."""
    counts = [channels // n_procs + (1 if r < channels % n_procs else 0)
              for r in range(n_procs)]
    offsets = [sum(counts[:r]) for r in range(n_procs)]
    return list(zip(offsets, counts))


def owner_of_channel(channel: int, parts: list[tuple[int, int]]) -> int:
    """Rank whose slice contains `channel`."""
    return next(r for r, (offset, count) in enumerate(parts)
                if offset <= channel < offset + count)


def tensor_width(n_channels: int, step: float, skew: tuple[float, float]) -> float:
    return (n_channels - 1) * step + skew[0]


def draw_tensor(ax: Axes, x_centre: float, y_centre: float, colours: list[str],
                step: float = SLAB_STEP, height: float = SLAB_HEIGHT,
                skew: tuple[float, float] = SLAB_SKEW) -> tuple[float, float]:
    """A stack of slabs, one per channel, centred on (x_centre, y_centre).

    Returns the x extent (left, right) so callers can attach arrows.
    """
    left = x_centre - tensor_width(len(colours), step, skew) / 2
    bottom = y_centre - (height + skew[1]) / 2
    sx, sy = skew
    # Back to front: the leftmost channel is nearest the viewer, so draw it last.
    for i in reversed(range(len(colours))):
        x = left + i * step
        corners = [(x, bottom), (x + sx, bottom + sy),
                   (x + sx, bottom + sy + height), (x, bottom + height)]
        ax.add_patch(Polygon(corners, closed=True, facecolor=colours[i],
                             edgecolor=EDGE_COLOUR, linewidth=0.8))
    return left, left + tensor_width(len(colours), step, skew)


def filters_width(n_filters: int) -> float:
    kernel_width = tensor_width(IN_CHANNELS, KERNEL_STEP, KERNEL_SKEW)
    return n_filters * kernel_width + (n_filters - 1) * KERNEL_GAP


def draw_filters(ax: Axes, x_centre: float, y_centre: float, n_filters: int,
                 colour: str) -> tuple[float, float]:
    """`n_filters` small kernels side by side, each spanning every input channel."""
    kernel_width = tensor_width(IN_CHANNELS, KERNEL_STEP, KERNEL_SKEW)
    total_width = filters_width(n_filters)
    left = x_centre - total_width / 2
    for k in range(n_filters):
        draw_tensor(ax, left + k * (kernel_width + KERNEL_GAP) + kernel_width / 2, y_centre,
                    [colour] * IN_CHANNELS, step=KERNEL_STEP, height=KERNEL_HEIGHT,
                    skew=KERNEL_SKEW)
    return left, left + total_width


def draw_arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float],
               colour: str = EDGE_COLOUR, dashed: bool = False) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=13,
                                 color=colour, linewidth=1.4,
                                 linestyle="--" if dashed else "-",
                                 shrinkA=0, shrinkB=0))


def draw_rounded_box(ax: Axes, centre: tuple[float, float], size: tuple[float, float],
                     colour: str, alpha: float = 1.0) -> None:
    """Rounded box for operations, as opposed to tensors."""
    (x, y), (width, height) = centre, size
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.02,rounding_size=0.1",
                                facecolor=colour, edgecolor=EDGE_COLOUR,
                                linewidth=0.8, alpha=alpha))


def label(ax: Axes, x: float, y: float, text: str, size: float = 9.5, **kwargs) -> None:
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=TEXT_COLOUR,
            **kwargs)


def draw_titles(ax: Axes, parts: list[tuple[int, int]]) -> None:
    label(ax, FIG_SIZE[0] / 2, 5.27, f"Channel-parallel convolution (N = {N_PROCS} processes)",
          size=15, fontweight="bold")
    counts = ", ".join(str(count) for _, count in parts)
    label(ax, FIG_SIZE[0] / 2, 4.98,
          f"{OUT_CHANNELS} output channels over {N_PROCS} ranks: rank r owns "
          f"C//N + (1 if r < C%N else 0) contiguous channels \u2192 {counts}", size=10.5)
    headers = {
        "input": "1. full input x\n(replicated)",
        "filters": "2. own filter slice\nW[off_r : off_r + c_r]",
        "slice": "3. own output slice\n(c_r channels)",
        "gather": "4. all-gather\nalong channels",
        "full": "full output\n(every rank)",
        "next": "5. next layer\nuses all channels",
    }
    for column, text in headers.items():
        label(ax, COLUMN_X[column], 4.6, text, size=10.5, fontweight="bold")


def draw_lane(ax: Axes, rank: int, parts: list[tuple[int, int]]) -> None:
    """Everything rank `rank` holds and computes, left to right."""
    y = LANE_Y[rank]
    caption_y = y - CAPTION_DROP
    colour = RANK_COLOURS[rank]
    offset, count = parts[rank]
    ax.text(0.12, y, f"rank {rank}", ha="left", va="center", fontsize=11,
            fontweight="bold", color=colour)

    _, input_right = draw_tensor(ax, COLUMN_X["input"], y, [REPLICATED_COLOUR] * IN_CHANNELS)
    label(ax, COLUMN_X["input"], caption_y, f"{IN_CHANNELS} channels")

    filters_left, filters_right = draw_filters(ax, COLUMN_X["filters"], y, count, colour)
    # The convolution sign sits at the same x on every lane, halfway to the
    # widest filter group, even where this rank has fewer filters.
    widest_left = COLUMN_X["filters"] - filters_width(max(c for _, c in parts)) / 2
    label(ax, (input_right + widest_left) / 2, y, "\u229b", size=16)
    label(ax, COLUMN_X["filters"], caption_y,
          f"W[{offset}:{offset + count}]: {count} filters \u00d7 {IN_CHANNELS} in-ch")

    slice_left, slice_right = draw_tensor(ax, COLUMN_X["slice"], y, [colour] * count)
    draw_arrow(ax, (filters_right + 0.12, y), (slice_left - 0.1, y))
    label(ax, COLUMN_X["slice"], caption_y - 0.05,
          "BN \u00b7 ReLU \u00b7 dropout \u00b7 pool\n(per channel, on the slice)", size=9)

    gather_left = COLUMN_X["gather"] - GATHER_WIDTH / 2
    gather_right = COLUMN_X["gather"] + GATHER_WIDTH / 2
    draw_arrow(ax, (slice_right + 0.08, y), (gather_left, y), colour=colour)

    full_colours = [RANK_COLOURS[owner_of_channel(c, parts)] for c in range(OUT_CHANNELS)]
    full_left, full_right = draw_tensor(ax, COLUMN_X["full"], y, full_colours, step=0.11)
    draw_arrow(ax, (gather_right, y), (full_left - 0.06, y))
    label(ax, COLUMN_X["full"], caption_y, f"{OUT_CHANNELS} channels")

    next_left = COLUMN_X["next"] - NEXT_BOX_SIZE[0] / 2
    draw_arrow(ax, (full_right + 0.1, y), (next_left - 0.08, y))
    draw_rounded_box(ax, (COLUMN_X["next"], y), NEXT_BOX_SIZE, colour, alpha=0.35)
    label(ax, COLUMN_X["next"], y,
          f"next parallel conv:\nown filters \u00d7 all {OUT_CHANNELS} in-ch")


def draw_gather(ax: Axes) -> None:
    """The all-gather as a band in which every rank's slice reaches every rank."""
    top, bottom = LANE_Y[0] + 0.5, LANE_Y[-1] - 0.5
    draw_rounded_box(ax, (COLUMN_X["gather"], (top + bottom) / 2),
                     (GATHER_WIDTH, top - bottom), GATHER_FILL)
    inset = GATHER_WIDTH / 2 - 0.08
    for source, source_y in enumerate(LANE_Y):
        for dest_y in LANE_Y:
            ax.plot([COLUMN_X["gather"] - inset, COLUMN_X["gather"] + inset],
                    [source_y, dest_y], color=RANK_COLOURS[source], linewidth=1.6,
                    alpha=0.85)


def draw_backward_notes(ax: Axes) -> None:
    """Dashed arrows pointing back: what the gather's backward does, by consumer."""
    notes = [
        "backward: reduce-scatter of partial input gradients"
        "   (gather \u2192 next parallel conv, as drawn)",
        "backward: keep own slice, no communication"
        "   (gather after the last conv \u2192 replicated FC head)",
    ]
    for row, text in enumerate(notes):
        y = 0.42 - row * 0.30
        draw_arrow(ax, (4.85, y), (4.3, y), dashed=True)
        ax.text(4.95, y, text, ha="left", va="center", fontsize=9.5, color=TEXT_COLOUR)


def draw_legend(ax: Axes) -> None:
    handles = [Patch(facecolor=c, edgecolor=EDGE_COLOUR, label=f"rank {r}")
               for r, c in enumerate(RANK_COLOURS)]
    handles.append(Patch(facecolor=REPLICATED_COLOUR, edgecolor=EDGE_COLOUR,
                         label="replicated (same on all ranks)"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.005, 0.005),
              ncol=2, fontsize=9.5, frameon=False, handlelength=1.4)


def draw_figure(path: str) -> None:
    """Render the whole diagram to the PNG file `path`."""
    parts = channel_partition(OUT_CHANNELS, N_PROCS)
    fig = plt.figure(figsize=FIG_SIZE)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, FIG_SIZE[0])
    ax.set_ylim(0, FIG_SIZE[1])
    ax.set_axis_off()

    draw_titles(ax, parts)
    draw_gather(ax)
    for rank in range(N_PROCS):
        draw_lane(ax, rank, parts)
    draw_backward_notes(ax)
    draw_legend(ax)
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="parallel-conv.png",
                        help="PNG file to write (default: parallel-conv.png)")
    args = parser.parse_args(argv)
    # matplotlib picks the format from the suffix; this tool promises a PNG.
    if not args.output.lower().endswith(".png"):
        print(f"error: {args.output} is not a .png path; pass e.g. parallel-conv.png",
              file=sys.stderr)
        return 1
    try:
        draw_figure(args.output)
    except OSError as err:
        print(f"error: cannot write {args.output}: {err.strerror}; "
              "pass a writable path as the only argument", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
