"""Readers: one per real source format, each yielding :class:`GuardSample` or :class:`Rejected` per row.

* :mod:`.vltrain`: GuardReasoner-VLTrain as exported for LLaMA-Factory (JSON array or JSON Lines).
* :mod:`.vltest`: GuardReasoner-VLTest benchmark files, with images from the saved image dataset.
* :mod:`.table`: generic JSON Lines / parquet / ``datasets.load_from_disk`` folders, with a column mapping.
* :func:`gr_vl_verl.data.schemas.read_prepared` reads back the parquets this package writes.

Readers stream: JSON one element at a time, parquet one batch at a time. A bad row becomes a ``Rejected``
with a reason; only a file that cannot be read at all raises. Pure Python: no torch, no verl.
"""

from gr_vl_verl.data.readers.common import ExtraKeys, Item, image_bytes, resolve_image_path
from gr_vl_verl.data.readers.json_stream import iter_json_rows
from gr_vl_verl.data.readers.table import FIELDS, parse_mapping, read_table
from gr_vl_verl.data.readers.vltest import BENCHMARK_TASKS, VLTEST_IMAGE_LABELS, VLTestImages, read_benchmark
from gr_vl_verl.data.readers.vltrain import VLTRAIN_SPLITS, read_vltrain, read_vltrain_dir

__all__ = [
    "BENCHMARK_TASKS",
    "FIELDS",
    "ExtraKeys",
    "VLTEST_IMAGE_LABELS",
    "VLTRAIN_SPLITS",
    "Item",
    "VLTestImages",
    "image_bytes",
    "iter_json_rows",
    "parse_mapping",
    "read_benchmark",
    "read_table",
    "read_vltrain",
    "read_vltrain_dir",
    "resolve_image_path",
]
