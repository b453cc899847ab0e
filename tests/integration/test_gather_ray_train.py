"""A real 2-worker Ray Train step with gathered negatives equals one process's step on the
same global batch: the weights after one optimiser step match."""

from __future__ import annotations

import pytest
import torch

from polymodal.config import load_config

pytestmark = pytest.mark.integration
GLOBAL_BATCH = 32


def _step(config: dict, rank: int = 0, world: int = 1, place=lambda model: model) -> dict:
    """One SGD step of this rank's share of the global batch; the model's weights after it."""
    from polymodal.config import config_from_dict
    from polymodal.evaluation.evaluate import decoded_batches
    from polymodal.modalities import Preprocessing
    from polymodal.models.build import build_model
    from polymodal.objectives.joint import joint_loss

    cfg = config_from_dict(config["cfg"])
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=40)
    batch = next(decoded_batches(config["data"], "train", prep, batch_size=GLOBAL_BATCH))
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    local = batch.slice(rows)
    torch.manual_seed(0)
    model = place(build_model(cfg, prep, num_classes=10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, _ = joint_loss(model(local), local, cfg)
    loss.backward()
    opt.step()
    raw = model.module if hasattr(model, "module") else model
    return raw.state_dict()


def _one_step(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    state = _step(config, rank, world, ray.train.torch.prepare_model)
    if rank == 0:
        torch.save(state, config["out"])


def _fit(workers: int, cfg, data, out) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    TorchTrainer(
        _one_step,
        train_loop_config={"cfg": cfg.to_dict(), "data": str(data), "out": str(out)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": 0.5}
        ),
        run_config=ray.train.RunConfig(name=f"step-{workers}", storage_path=str(out.parent)),
    ).fit()
    return torch.load(out, weights_only=True)


def test_two_workers_gather_local_matches_one_worker(ray_cluster, digits_dataset, tmp_path):
    cfg = load_config(
        None,
        [
            "model.embed_dim=16",
            "model.image.width=8",
            "model.image.norm=group",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
            "objective.contrastive.gather=local",
            "objective.weights.classification=1",
        ],
    )
    one = _step({"cfg": cfg.to_dict(), "data": str(digits_dataset)})  # the whole batch, here
    two = _fit(2, cfg, digits_dataset, tmp_path / "two.pt")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The step did something: the temperature moved away from its initial value.
    assert abs(float(one["log_logit_scale"]) - float(torch.tensor(1 / 0.07).log())) > 1e-4
