"""A model's answer accuracy per question type (a dataset whose manifest lists
`question_types`, its row ids ending with each row's type: builtin:shapes-vqa), and the rows
with their predictions for the report's grid."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from polymodal.batch import Batch
from polymodal.data.dataset import iter_tables
from polymodal.data.decode import decode_columns
from polymodal.data.format import Manifest, read_columns
from polymodal.modalities import Preprocessing
from polymodal.models.joint import JointModel


@torch.no_grad()
def answered_rows(
    model: JointModel, path: str, split: str, prep: Preprocessing, manifest: Manifest,
    limit: int | None = None, device: torch.device | str = "cpu",
) -> list[dict]:  # fmt: skip
    """{id, text, image (bytes), label, answer} of the split's rows (the first `limit`): the
    fusion head's answer, or the classifier's in a model without one."""
    model.eval()
    columns = read_columns(path, manifest, prep.modalities, with_negatives=False)
    out: list[dict] = []
    for table in iter_tables(path, split, ["id", *columns], 256, manifest):
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        arrays, dropped = decode_columns(
            {k: v for k, v in cols.items() if k != "id"}, prep, True, manifest.num_labels
        )
        batch = Batch.from_dict({k: torch.from_numpy(v) for k, v in arrays.items()}).to(device)
        out_ = model(batch)
        logits = out_.fusion_logits if out_.fusion_logits is not None else out_.class_logits
        assert logits is not None, "the model has neither a fusion nor a classifier head"
        answers = logits.argmax(-1).cpu().tolist()
        bad = {i for i, _ in dropped}  # bad rows are left out, as evaluation leaves them
        kept = [i for i in range(len(cols["id"])) if i not in bad]
        for i, answer in zip(kept, answers):
            out.append({**{k: cols[k][i] for k in cols}, "answer": answer})
            if limit is not None and len(out) == limit:
                return out
    return out


def accuracy_by_type(rows: list[dict], conditions: Sequence[str] = ()) -> dict[str, float]:
    """val/answer_accuracy/<type>: the share of each question type's rows answered right; with
    the manifest's `conditions` (ids ending `-<condition>-<type>`), also per condition and per
    condition and type (CLEVR-CoGenT's seen / held_out)."""
    right: defaultdict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row.get("label") is not None and row["label"] >= 0:
            *_, held, kind = row["id"].rsplit("-", 2)
            ok = row["answer"] == row["label"]
            keys = [kind, *((held, f"{held}/{kind}") if held in conditions else ())]
            for key in keys:
                right[key].append(ok)
    return {f"val/answer_accuracy/{k}": sum(r) / len(r) for k, r in sorted(right.items())}
