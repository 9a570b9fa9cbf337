"""The R-SFT dataset: verl's ``MultiTurnSFTDataset`` whose rows all carry ``multi_modal_inputs``.

verl 0.9.1's SFT collate (``verl/utils/dataset/dataset_utils.py``, ``SFTTensorCollator.collate_variable_batch``)
takes the union of a batch's keys and reads each key from the batch's *first* row
(``if isinstance(batch[0][key], torch.Tensor):``). ``MultiTurnSFTDataset`` adds ``multi_modal_inputs`` to image
rows only, so a batch of the guard's mixed data whose first row is text-only stops R-SFT with
``KeyError: 'multi_modal_inputs'``. Here a text-only row carries ``multi_modal_inputs=None``, which verl's engine
already accepts for a text row ("Mixed pure text and multi-modal dataset", ``verl/utils/model.py``,
``extract_multi_modal_inputs``).

``gr_vl_sft.yaml`` selects it through verl's own switch, ``data.custom_cls``, which ``sft_trainer`` honours
(``create_sft_dataset``), so no verl code is changed.
"""

from __future__ import annotations

from typing import Any

from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

#: The key image rows have and text-only rows lack.
MULTI_MODAL_KEY = "multi_modal_inputs"


class GuardSFTDataset(MultiTurnSFTDataset):
    """``MultiTurnSFTDataset`` with ``multi_modal_inputs`` (None for a text-only row) in every row."""

    def __getitem__(self, item: int) -> dict[str, Any]:
        row = super().__getitem__(item)
        row.setdefault(MULTI_MODAL_KEY, None)
        return row
