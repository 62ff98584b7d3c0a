"""The attention map of one generation as a PNG: where each generated token looked.

Left, the images as the model saw them (resized to the encoder's input); middle, a heatmap with
one row per generated token and one column per image (the share of attention on its k prefix
slots) and one for the text, averaged over the LM's layers (each row sums to 1); right, the
share on all images together, layer by layer. The numbers are `model.attention.AttentionShares`.
"""

from __future__ import annotations

from pathlib import Path


def token_label(index: int, token: str) -> str:
    shown = token.strip() or repr(token)
    return f"{index + 1}. {shown}"


def draw_attention(shares, images, out: str, title: str = "") -> str:
    """Write the picture of `shares` (AttentionShares) beside `images` (PIL, slot order) to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = shares.mean.numpy()
    on_images = shares.per_layer[:, :, :-1].sum(-1).numpy()  # [tokens, layers]
    rows, layers = on_images.shape
    labels = [token_label(i, t) for i, t in enumerate(shares.tokens)]
    height = max(2.6, 0.32 * rows + 1.4)
    fig = plt.figure(figsize=(2.0 + 0.9 * mean.shape[1] + 0.45 * layers + 2.4, height), dpi=100)
    grid = fig.add_gridspec(1, 3, width_ratios=[1.3, 0.9 * mean.shape[1], 0.45 * layers + 0.6], wspace=0.45)
    pictures = grid[0].subgridspec(max(1, len(images)), 1, hspace=0.35)
    for i, img in enumerate(images):
        ax = fig.add_subplot(pictures[i])
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"image {i + 1} ({img.size[0]}x{img.size[1]})", fontsize=8)
        ax.axis("off")

    ax = fig.add_subplot(grid[1])
    ax.imshow(mean, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(mean.shape[1]), shares.columns, fontsize=8, rotation=30, ha="right")
    ax.set_yticks(range(rows), labels, fontsize=8)
    for r in range(rows):
        for c in range(mean.shape[1]):
            ax.text(c, r, f"{mean[r, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if mean[r, c] > 0.6 else "white")
    ax.set_title(f"share of attention, mean of {layers} layers", fontsize=8)

    ax = fig.add_subplot(grid[2])
    im = ax.imshow(on_images, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(layers), [str(layer + 1) for layer in range(layers)], fontsize=8)
    ax.set_yticks(range(rows), [""] * rows)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_title("on all images, per layer", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.08, pad=0.06).ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)
