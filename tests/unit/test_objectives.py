import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.batch import Batch, ModelOutput
from polymodal.config import ConfigError, load_config
from polymodal.objectives.classification import classification_loss, classified
from polymodal.objectives.contrastive import CONTRASTIVE
from polymodal.objectives.joint import joint_loss
from polymodal.objectives.pairwise import info_nce, multi_contrastive, sigmoid_loss
from polymodal.objectives.reconstruction import mean_error as reconstruction_mean


def test_info_nce_matches_hand_computed_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = torch.tensor(2.0)
    # logits = s * a @ b.T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    for gather in ("local", "full", "none"):  # identical in a single process
        assert float(info_nce(a, b, s, gather)) == pytest.approx(expected, rel=1e-6)


def test_info_nce_rejects_unknown_gather():
    with pytest.raises(ValueError, match="gather"):
        info_nce(torch.eye(2), torch.eye(2), torch.tensor(1.0), "all")


def test_info_nce_low_for_aligned_high_for_shuffled():
    x = F.normalize(torch.randn(32, 16), dim=-1)
    aligned = info_nce(x, x, torch.tensor(50.0))
    shuffled = info_nce(x, x[torch.randperm(32)], torch.tensor(50.0))
    assert float(aligned) < 0.01 < float(shuffled)


def test_multi_contrastive_sums_every_pair_with_weights():
    emb = {m: F.normalize(torch.randn(8, 4), dim=-1) for m in ("image", "text", "audio")}
    s = torch.tensor(10.0)
    total, pairs = multi_contrastive(emb, s, pair_weights={"text-image": 2.0})
    assert set(pairs) == {"image-text", "image-audio", "text-audio"}
    expected = 2 * pairs["image-text"] + pairs["image-audio"] + pairs["text-audio"]
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


def test_valid_and_keys_are_keywords_of_both_pair_losses():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(5, 4), dim=-1)
    b = F.normalize(torch.randn(5, 4), dim=-1)
    s, bias = torch.tensor(4.0), torch.tensor(-1.0)
    valid = torch.tensor([True, True, True, True, False])
    for loss in (
        lambda **kw: info_nce(a, b, s, **kw),
        lambda **kw: sigmoid_loss(a, b, s, bias, chunk_size=2, **kw),
    ):
        dropped = loss(valid=valid)
        assert float(dropped) != pytest.approx(float(loss()))
        keyed = loss(keys=torch.tensor([0, 0, 1, 2, 3]))
        assert float(keyed) != pytest.approx(float(loss()))
    # a dropped row is as if it were not in the batch
    kept = info_nce(a[:4], b[:4], s)
    assert float(info_nce(a, b, s, valid=valid)) == pytest.approx(float(kept), rel=1e-6)
    kept = sigmoid_loss(a[:4], b[:4], s, bias)
    assert float(sigmoid_loss(a, b, s, bias, valid=valid)) == pytest.approx(float(kept), rel=1e-6)


def test_batch_from_decoded_dict_and_slices():
    d = {
        "image": torch.rand(4, 1, 2, 2),
        "image_present": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "image_hash": torch.arange(4),
        "text": torch.randint(1, 9, (4, 3)),
        "text_present": torch.ones(4),
        "label": torch.tensor([0, -1, 1, 2]),
    }
    batch = Batch.from_dict(d)
    assert batch.modalities == ["image", "text"] and batch.size == 4
    assert batch.inputs["text"] is d["text"] and batch.present["image"] is d["image_present"]
    assert set(batch.hashes) == {"image"} and batch.sample is None
    part = Batch.from_dict({**d, "sample": torch.arange(10, 14)}).slice(slice(1, 3))
    assert part.size == 2 and part.sample.tolist() == [11, 12]
    assert part.present["image"].tolist() == [0.0, 1.0] and part.hashes["image"].tolist() == [1, 2]
    assert torch.equal(part.inputs["image"], d["image"][1:3])
    moved = batch.to("cpu")
    assert torch.equal(moved.label, batch.label) and moved.modalities == batch.modalities


def test_reconstruction_values():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.ones(2, 1, 2, 2)
    target[1] = 3.0
    # row 0 error 1, row 1 error 9; the second row is missing, so only row 0 counts.
    assert float(reconstruction_mean("image", pred, target, torch.tensor([1.0, 0.0]))) == 1.0
    assert float(reconstruction_mean("image", pred, target, torch.tensor([1.0, 1.0]))) == 5.0
    logits = torch.full((1, 3, 257), -1e4)
    logits[0, 0, 5] = logits[0, 1, 7] = 0.0  # predicts bytes 5, 7 perfectly
    ids = torch.tensor([[5, 7, 0]])
    assert float(reconstruction_mean("text", logits, ids, torch.ones(1))) == pytest.approx(
        0.0, abs=1e-4
    )
    logits[0, 1] = 0.0  # uniform over 257 at position 1
    value = float(reconstruction_mean("text", logits, ids, torch.ones(1)))
    assert value == pytest.approx(math.log(257) / 2, rel=1e-4)


def test_classification_ignores_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(classification_loss(logits, torch.tensor([0, -1]))) == pytest.approx(expected)
    assert float(classification_loss(logits, torch.tensor([-1, -1]))) == 0.0


def test_classification_ignores_rows_without_a_classified_modality():
    # Row 1 is labelled but holds no image (a speech source's row): nothing to classify.
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 0])
    present = {"image": torch.tensor([1.0, 0.0]), "audio": torch.tensor([0.0, 1.0])}
    rows = classified(labels, present, ["image"])
    assert rows.tolist() == [True, False]
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(classification_loss(logits, labels, rows=rows)) == pytest.approx(expected)
    assert classified(labels, present, ["image", "audio"]).tolist() == [True, True]


def test_joint_loss_is_the_weighted_sum_and_logs_every_term():
    cfg = load_config(
        None,
        [
            "objective.weights.contrastive=0.5",
            "objective.weights.reconstruction=2",
            "objective.weights.classification=3",
        ],
    )
    emb = {m: F.normalize(torch.randn(4, 8), dim=-1) for m in ("image", "text")}
    batch = Batch(
        inputs={"image": torch.rand(4, 1, 2, 2), "text": torch.randint(1, 9, (4, 3))},
        present={"image": torch.ones(4), "text": torch.ones(4)},
        label=torch.tensor([0, 1, 0, 1]),
    )
    outputs = ModelOutput(
        embeddings=emb,
        present=batch.present,
        logit_scale=torch.tensor(5.0),
        reconstructions={"image": torch.rand(4, 1, 2, 2), "text": torch.randn(4, 3, 257)},
        class_logits=torch.randn(4, 2),
    )
    total, logs = joint_loss(outputs, batch, cfg)
    expected = 0.5 * logs["contrastive"] + 2 * logs["reconstruction"] + 3 * logs["classification"]
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert {"contrastive/image-text", "reconstruction/image", "reconstruction/text"} <= set(logs)
    assert float(logs["reconstruction"]) == pytest.approx(
        float(logs["reconstruction/image"] + logs["reconstruction/text"])
    )


def test_uncertainty_weighting_formula_and_learning_on_digits():
    """Kendall et al.: sum of 1/2 (exp(-s) L + s); on real digits the learned s_i move."""
    from sklearn.datasets import load_digits

    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model

    cfg = load_config(
        None,
        [
            "objective.weighting=uncertainty",
            "objective.weights.reconstruction=1",
            "objective.weights.classification=1",
            "model.image.width=8",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
        ],
    )
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=16)
    torch.manual_seed(0)
    model = build_model(cfg, prep, num_classes=10)
    assert set(model.loss_log_vars) == {"contrastive", "reconstruction", "classification"}
    digits = load_digits()
    n = 128
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    batch = Batch(
        inputs={
            "image": torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32)[:, None],
            "text": torch.tensor(
                [list(f"a digit {names[y]}".encode().ljust(16, b"\0")) for y in digits.target[:n]]
            ),
        },
        present={"image": torch.ones(n), "text": torch.ones(n)},
        label=torch.tensor(digits.target[:n]),
    )
    with torch.no_grad():
        model.loss_log_vars["classification"].fill_(1.0)
        total, logs = joint_loss(model(batch), batch, cfg)
    s = {"contrastive": 0.0, "reconstruction": 0.0, "classification": 1.0}
    expected = sum(0.5 * (math.exp(-s[t]) * float(logs[t]) + s[t]) for t in s)
    assert float(total) == pytest.approx(expected, rel=1e-5)

    before = {t: float(p) for t, p in model.loss_log_vars.items()}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        loss, _ = joint_loss(model(batch), batch, cfg)
        loss.backward()
        opt.step()
    after = {t: float(p) for t, p in model.loss_log_vars.items()}
    assert all(abs(after[t] - before[t]) > 0.1 for t in s), (before, after)


def test_matryoshka_averages_the_loss_over_renormalised_prefixes():
    cfg = load_config(None, ["model.embed_dim=8", "objective.contrastive.matryoshka_dims=[2,4]"])
    torch.manual_seed(0)
    emb = {m: F.normalize(torch.randn(6, 8), dim=-1) for m in ("image", "text")}
    batch = Batch(
        inputs={}, present={"image": torch.ones(6), "text": torch.ones(6)}, label=torch.zeros(6)
    )
    outputs = ModelOutput(embeddings=emb, present=batch.present, logit_scale=torch.tensor(5.0))
    loss, logs = CONTRASTIVE.loss(outputs, batch, CONTRASTIVE.settings(cfg), None)
    scale = torch.tensor(5.0)
    per_size = [
        info_nce(*(F.normalize(emb[m][:, :d], dim=-1) for m in ("image", "text")), scale)
        for d in (8, 2, 4)
    ]
    assert float(loss) == pytest.approx(float(sum(per_size) / 3), rel=1e-5)
    assert float(logs["dim2"]) == pytest.approx(float(per_size[1]), rel=1e-5)
    with pytest.raises(ConfigError, match="matryoshka_dims.*embed_dim \\(8\\)"):
        load_config(None, ["model.embed_dim=8", "objective.contrastive.matryoshka_dims=[8]"])
