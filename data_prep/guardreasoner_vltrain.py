"""GuardReasoner-VLTrain → verl parquets (``sft_train.parquet``, ``rl_train.parquet``).

The folder is the LLaMA-Factory export of ``yueliu1999/GuardReasoner-VLTrain`` (the three split JSONs) with
``image.zip`` and ``text_image.zip`` of ``yueliu1999/GuardReasoner-VLTrain-Image`` unzipped beside them::

    python data_prep/guardreasoner_vltrain.py --data-root ~/data/GuardReasoner-VLTrain --out ~/data/gr_vl

Same options as ``gr-vl prep vltrain`` (``--help``).
"""

import sys

from gr_vl_verl.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "vltrain", *sys.argv[1:]]))
