"""jaxattr's datasets: the TFDS builders, the input pipeline and their helpers.

Importing a builder module registers it with TFDS; `input_pipeline` imports them
all. The package itself imports nothing, so its TensorFlow-free modules (the
synthetic `pedestrians` and `cues` on their `canvas`, `wider_names`, the `images`
checks, the `matlab` readers) load without TensorFlow.
"""
