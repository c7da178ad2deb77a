"""Figures of trained models: attention overlays and attention grids.

Shared by `jaxattr.predict`, the demo and the experiments. Figures are drawn with
matplotlib's object API on the Agg canvas (no pyplot, no global backend, no
display), so they can be made from any thread or process.

Attention masks are drawn the same way everywhere: the [h, w] mask of one attribute
is upsampled bilinearly (half-pixel centres) to the image, divided by its maximum
(a spatial softmax sums to 1, so its raw values shrink with the grid size) and laid
over the image with a colour map, transparent where the mask is low.
"""

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

CMAP = 'jet'
TRUTH = {1: 'yes', 0: 'no', -1: '?'}


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear upsampling of one [h, w] mask to [height, width], scaled to max 1.

  Args:
    mask: float [h, w].
    height: output height.
    width: output width.

  Returns:
    float32 [height, width] in [0, 1] (all zeros for an all-zero mask).
  """
  mask = np.asarray(mask, np.float32)
  up = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.BILINEAR))
  peak = float(up.max())
  return up / peak if peak > 0 else np.zeros_like(up)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """An image with a mask drawn over it in the colour map.

  The opacity grows with the mask, so the image shows through where the model does
  not look and the peak is unmistakable.

  Args:
    image: uint8 [H, W, 3].
    mask: float [h, w] (any grid; upsampled to the image).
    alpha: opacity at the mask's peak.

  Returns:
    uint8 [H, W, 3].
  """
  image = np.asarray(image)
  height, width = image.shape[:2]
  m = upsample_mask(mask, height, width)
  colour = colormaps[CMAP](m)[..., :3] * 255.0
  weight = (alpha * m)[..., None]
  # Dim the image a little so the colours read on bright backgrounds too.
  base = image.astype(np.float32) * 0.8
  return np.clip(base * (1 - weight) + colour * weight + 0.5, 0, 255).astype(np.uint8)


def _to_png(fig: Figure, dpi: int) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=dpi, facecolor='white')
  return buf.getvalue()


def _clean(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def _levels(masks_by_level) -> list[tuple[str, np.ndarray]]:
  if isinstance(masks_by_level, Mapping):
    return [(str(k), np.asarray(v)) for k, v in masks_by_level.items()]
  return [(str(i), np.asarray(v)) for i, v in enumerate(masks_by_level)]


def attention_figure(
  image: np.ndarray,
  masks_by_level: Mapping[int | str, np.ndarray] | Sequence[np.ndarray],
  probs: np.ndarray,
  names: Sequence[str],
  top_k: int = 3,
  *,
  thresholds: np.ndarray | float = 0.5,
  title: str = '',
  cell_inches: float = 2.2,
  dpi: int = 100,
) -> bytes:
  """One image, its probabilities, and the masks of its top attributes at every level.

  Layout: the probabilities of all attributes as bars (the decided ones coloured,
  each threshold a tick), the input image, then one column per top attribute
  (highest probability first) with one row per attention level.

  Args:
    image: uint8 [H, W, 3], the crop the model saw (any size; masks are upsampled).
    masks_by_level: {level: float [h, w, C]} (or a sequence of them), e.g. the
      spatial softmax `a` of each attention level.
    probs: float [C].
    names: the C attribute names.
    top_k: how many attributes to draw masks for.
    thresholds: decision thresholds (scalar or [C]).
    title: a title for the whole figure (e.g. the file name).
    cell_inches: height of one mask cell.
    dpi: resolution.

  Returns:
    The PNG bytes.
  """
  image = np.asarray(image)
  probs = np.asarray(probs, np.float64)
  thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), probs.shape)
  levels = _levels(masks_by_level)
  num_classes = len(names)
  if probs.shape != (num_classes,):
    raise ValueError(f'probs has shape {probs.shape}, expected ({num_classes},).')
  # A primary-only model (no attention levels) has no masks: bars and image only.
  top = np.argsort(-probs, kind='stable')[: max(0, min(top_k, num_classes))] if levels else []
  height, width = image.shape[:2]
  rows = max(1, len(levels))
  cell_w = max(cell_inches * width / height, 1.8)  # Room for the column titles.
  bars_w, image_w = 2.8, max(cell_inches * rows * width / height, cell_w)
  fig_h = max(rows * cell_inches, 0.2 * num_classes + 0.8) + (0.5 if title else 0.2)
  widths = [bars_w, image_w] + [cell_w] * len(top)
  fig = Figure(figsize=(sum(widths) + 0.3, fig_h))
  grid = fig.add_gridspec(rows, len(widths), width_ratios=widths, wspace=0.08, hspace=0.12)

  ax = fig.add_subplot(grid[:, 0])
  order = np.arange(num_classes)[::-1]  # First attribute at the top.
  decided = probs > thresholds
  ax.barh(
    np.arange(num_classes),
    probs[order],
    color=np.where(decided[order], '#d95f02', '#9e9e9e'),
    height=0.7,
  )
  ax.scatter(thresholds[order], np.arange(num_classes), marker='|', color='black', s=60, lw=1)
  ax.set_yticks(np.arange(num_classes), [names[i] for i in order], fontsize=8)
  ax.set_xlim(0, 1)
  ax.set_ylim(-0.6, num_classes - 0.4)
  ax.tick_params(axis='x', labelsize=7)
  ax.set_xlabel('probability (| = threshold)', fontsize=8)
  for y, c in enumerate(order):
    ax.text(min(probs[c], 0.78) + 0.02, y, f'{probs[c]:.2f}', va='center', fontsize=7)

  ax = fig.add_subplot(grid[:, 1])
  ax.imshow(image)
  ax.set_title(f'input {width}x{height}', fontsize=9)
  _clean(ax)

  for col, c in enumerate(top):
    for row, (level, masks) in enumerate(levels):
      ax = fig.add_subplot(grid[row, 2 + col])
      ax.imshow(overlay(image, masks[..., c]))
      _clean(ax)
      if row == 0:
        mark = ' ✓' if decided[c] else ''
        ax.set_title(f'{names[c]}{mark}\np = {probs[c]:.3f}', fontsize=9)
      if col == 0:
        h, w = masks.shape[:2]
        ax.set_ylabel(f'level {level}\n{h}x{w} mask', fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.subplots_adjust(left=0.02 + 1.0 / sum(widths), right=0.99, bottom=0.1, top=0.85)
  return _to_png(fig, dpi)


def attention_grid(
  images: Sequence[np.ndarray],
  masks: np.ndarray | Sequence[np.ndarray],
  probs: np.ndarray,
  labels: np.ndarray,
  names: Sequence[str],
  attributes: Sequence[str],
  path: str | Path,
  *,
  level_names: Sequence[str] | None = None,
  threshold: float = 0.5,
  cell_inches: float = 1.6,
  dpi: int = 100,
) -> Path:
  """A grid of attention masks: rows = images, columns = chosen attributes.

  Each cell is the image with that attribute's mask upsampled and overlaid, titled
  with the attribute, the probability and the ground truth (green when the decision
  `p > threshold` is right, red when wrong, black when the label is unknown).

  Args:
    images: N uint8 [H, W, 3] images (sizes may differ).
    masks: float [N, h, w, C] of one attention level, or a sequence of such
      arrays (one per level: each image then gets one row per level).
    probs: float [N, C].
    labels: int [N, C] with 1 / 0 / -1 (unknown).
    names: the C attribute names.
    attributes: the names of the columns (e.g. frequent and rare attributes).
    path: where the PNG goes.
    level_names: row labels of the levels (default '0', '1', ...).
    threshold: decision threshold for the colour of the titles.
    cell_inches: height of one cell.
    dpi: resolution.

  Returns:
    `path`.
  """
  per_level = [np.asarray(masks)] if isinstance(masks, np.ndarray) else list(map(np.asarray, masks))
  level_names = list(level_names or [str(i) for i in range(len(per_level))])
  probs, labels = np.asarray(probs), np.asarray(labels)
  columns = [list(names).index(a) for a in attributes]
  n = len(images)
  rows = [(i, lv) for i in range(n) for lv in range(len(per_level))]
  aspect = np.mean([im.shape[1] / im.shape[0] for im in images]) if n else 1.0
  cell_w = max(cell_inches * aspect, 1.25)
  fig = Figure(figsize=(cell_w * len(columns) + 0.4, (cell_inches + 0.45) * len(rows) + 0.2))
  grid = fig.add_gridspec(len(rows), max(1, len(columns)), wspace=0.05, hspace=0.35)
  for r, (i, lv) in enumerate(rows):
    for col, c in enumerate(columns):
      ax = fig.add_subplot(grid[r, col])
      ax.imshow(overlay(images[i], per_level[lv][i, ..., c]))
      _clean(ax)
      truth = int(labels[i, c])
      p = float(probs[i, c])
      colour = 'black' if truth < 0 else ('green' if (p > threshold) == (truth == 1) else 'red')
      ax.set_title(f'{names[c]}\np={p:.2f} gt={TRUTH[truth]}', fontsize=7, color=colour)
      if col == 0:
        label = f'#{i}' + (f' L{level_names[lv]}' if len(per_level) > 1 else '')
        ax.set_ylabel(label, fontsize=7)
  fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=1 - 0.5 / fig.get_figheight())
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(_to_png(fig, dpi))
  return path
