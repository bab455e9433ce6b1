"""prep's offline packs (`prep tokenize --pack N`) as the packed items NeMo AutoModel's THD packer
makes (`packed_sequence.pack_dataset`), for configs that skip its loader-side packing:

    dataset:   {_target_: loaders.automodel.ChatDataset, path_or_dataset_id: OUT, prepacked: true}
    packed_sequence: {packed_sequence_size: N, prepacked: true}
    dataloader: {collate_fn: nemo_automodel.components.datasets.utils.packed_sequence_thd_collater}

Each of prep's packs is one item: its samples, each packaged as AutoModel packages a sample
(shifted `input_ids` / `labels`), joined, with `position_ids` restarting per sample, `seq_lens`,
and the pack padded to the pack size as AutoModel pads a pack (`input_ids` with the pad id,
`labels` -100, `position_ids` counting on, the padding counted in the last `seq_lens_padded`).
numpy + torch only.
"""

from __future__ import annotations

import numpy as np
import torch

from loaders.automodel_sft import IGNORE, SFTItems, package


class PrepackedItems(torch.utils.data.Dataset):
    """The packs of a packed prep SFT output, each as one AutoModel THD packed item."""

    def __init__(self, items: SFTItems, packed_sequence_size: int | None = None):
        packing = items.manifest["stats"].get("packing")
        if not packing:
            raise ValueError(f"{items.manifest['_dir']}: prepacked needs an output made with prep tokenize --pack N")
        if items.rows != range(int(items.shard_starts[-1])):
            raise ValueError("prepacked: split slices select samples, not packs; slice before packing (or drop the slice)")
        if items.options["seq_length"] or items.options["padding"] == "max_length":
            raise ValueError("prepacked: seq_length / padding apply to samples; the packs are prep's (--pack, --max-length)")
        self.items, self.size = items, packed_sequence_size or packing["capacity"]
        if self.size < packing["capacity"] - 1:
            raise ValueError(f"packed_sequence_size {self.size}: prep's packs hold up to {packing['capacity']} tokens "
                             f"(each sample one fewer once shifted); ask for at least {packing['capacity'] - 1}")
        # (shard, first sequence, end sequence) of every pack, in order
        self.packs = [(s, int(d[k]), int(d[k + 1])) for s, t in enumerate(items.tokens)
                      for d in [np.asarray(t.document_indices)] for k in range(len(d) - 1)]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> dict:
        shard, first, end = self.packs[i]
        tokens, masks = self.items.tokens[shard], self.items.masks[shard]
        o = self.items.options
        input_ids, labels, position_ids, seq_lens = [], [], [], []
        for j in range(first, end):
            sample = package(np.asarray(tokens[j]), np.asarray(masks[j]), self.items.pad, self.items.eos, None,
                             "do_not_pad", o["truncation"], False)
            input_ids += sample["input_ids"]
            labels += sample["labels"]
            position_ids += [x % self.size for x in range(len(sample["input_ids"]))]
            seq_lens.append(len(sample["input_ids"]))
        padding = self.size - len(input_ids)
        if padding < 0:
            raise ValueError(f"pack {i} holds {len(input_ids)} tokens, more than packed_sequence_size {self.size}")
        last = position_ids[-1] if position_ids else -1
        padded = list(seq_lens)
        if padding and padded:
            padded[-1] += padding
        return {"input_ids": input_ids + [self.items.pad] * padding, "labels": labels + [IGNORE] * padding,
                "position_ids": position_ids + [min(max(p, 0), self.size - 1) for p in range(last + 1, last + padding + 1)],
                "seq_lens": seq_lens, "seq_lens_padded": padded}
