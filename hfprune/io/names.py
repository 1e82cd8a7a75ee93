"""File names of the on-disk formats hfprune writes, in one place: writers, loaders and format detection read them here.

Kept apart from the code that uses them (a leaf module, importing nothing), so that a format's encoder
(`hfprune.sparsity.compressed`) and the loader dispatch (`hfprune.io.formats`) can both name the files without
importing each other.
"""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# hfprune-sparse (`hfprune.save_compressed`): bitmask + packed non-zeros; the manifest marks the folder.
SPARSE_FORMAT = "hfprune-sparse"
SPARSE_MANIFEST_NAME = "hfprune_sparse.json"
SPARSE_WEIGHTS_NAME = "model.sparse.safetensors"

# Every output folder hfprune writes carries this file: a later write may replace such a folder, never another one.
OUTPUT_MARKER_NAME = "hfprune_output.json"
