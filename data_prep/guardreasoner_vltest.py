"""GuardReasoner-VLTest benchmark files → ``eval.parquet`` (benchmark, tasks, labels, prompt, images).

``--benchmark-dir`` holds the ``<Benchmark>.json`` files; HarmImageTest / SPA_VL_Eval images come from
``yueliu1999/GuardReasoner-VLTest`` saved locally with ``datasets.save_to_disk`` (``--image-dataset``)::

    python data_prep/guardreasoner_vltest.py --benchmark-dir data/benchmark --image-dataset data/vltest \
        --out ~/data/gr_vl

Same options as ``gr-vl prep vltest`` (``--help``).
"""

import sys

from gr_vl_verl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "vltest", *sys.argv[1:]]))
