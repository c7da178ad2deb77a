"""jaxattr's datasets; importing this package registers every builder with TFDS."""

from jaxattr.data import custom, pa100k, peta, rap2, synthetic, wider  # noqa: F401
