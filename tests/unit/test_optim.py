import pytest
import torch

from polymodal.config import load_config
from polymodal.train.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_norms_and_temperature():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    model.log_logit_scale = torch.nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer(model, load_config(None).optim)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 3])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    sched = build_scheduler(opt, load_config(None).optim, total_steps=50)
    assert sched.get_last_lr()[0] < load_config(None).optim.lr  # starts in warm-up
