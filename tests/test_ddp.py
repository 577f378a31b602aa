"""A training step works with the model wrapped in DistributedDataParallel, for every model family.

DDP wraps the model: its gradient all-reduce runs only when the step calls the wrapper itself,
`ddp(...)`, whose forward prepares the reducer for the backward pass. `cnnrnn.train.training_step`
calls the model only as `model(*task.model_inputs(x, y))`, so a wrapped model trains the same way;
a step that called anything else (`model.module.encode`, `model.module.forward`, a task method
taking the bare model) would still compute the right gradients on one process, but would skip
the all-reduce and let the processes of a real multi-process run drift apart.

So, on a world of size 1 (gloo, CPU), each family takes one step twice from the same weights and
the same RNG state (dropout): once bare, once as a deep copy wrapped in DDP. The losses and every
trainable parameter's gradient must agree, a frozen encoder must get no gradient in either, and a
communication hook on the DDP model must see every trainable element all-reduced in that step:
the one check that tells a step through DDP from one that goes around it (see the control test).
"""

# No `from __future__ import annotations`: DDP's register_comm_hook compares the hook's annotations
# with dist.GradBucket and torch.futures.Future[torch.Tensor] themselves, not with strings.
import contextlib
import copy
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cnnrnn.config import TrainConfig, load_config
from cnnrnn.tasks import Task, get_task
from cnnrnn.train import training_step

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

BATCH = 6
SEED = 0
STEP_SEED = 1234  # torch.manual_seed before each step: both runs draw the same dropout masks

ML_SMALL = {"model.encoder_width": 0.0625, "model.hidden_size": 16, "model.embed_dim": 16}
BCE_SMALL = {"model.encoder_width": 0.0625}


@dataclass(frozen=True)
class Family:
    """One model family and the small config it is tested with."""

    id: str
    task: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)


FAMILIES = [
    Family("single-label-rnn", "single-label", "rnn",
           {"model.hidden_size": 16, "model.dropout": 0.2}),
    Family("single-label-lstm", "single-label", "lstm",
           {"model.hidden_size": 16, "model.dropout": 0.2}),
    Family("single-label-gru", "single-label", "gru",
           {"model.hidden_size": 16, "model.dropout": 0.2}),
    Family("single-label-cnn", "single-label", "cnn", {"model.channels": 4, "model.hidden": 16}),
    Family("single-label-vgg16", "single-label", "vgg16", {"model.width": 0.0625}),
    Family("multilabel-cnn-rnn-frequency", "multilabel", "cnn-rnn",
           {**ML_SMALL, "multilabel.order": "frequency"}),
    Family("multilabel-cnn-rnn-pla", "multilabel", "cnn-rnn",
           {**ML_SMALL, "multilabel.order": "pla"}),
    Family("multilabel-cnn-rnn-aux-bce", "multilabel", "cnn-rnn",
           {**ML_SMALL, "model.aux_bce": 0.5}),
    Family("multilabel-cnn-rnn-frozen-encoder", "multilabel", "cnn-rnn",
           {**ML_SMALL, "multilabel.finetune_encoder": False}),
    Family("multilabel-bce", "multilabel", "bce", BCE_SMALL),
    Family("multilabel-bce-frozen-encoder", "multilabel", "bce",
           {**BCE_SMALL, "multilabel.finetune_encoder": False}),
]
BY_ID = {f.id: f for f in FAMILIES}
AUTOCAST_FAMILIES = [BY_ID["single-label-cnn"], BY_ID["multilabel-cnn-rnn-frequency"]]


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; more only contend with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A gloo process group of one process (rank 0) on this machine, for the whole module."""
    if dist.is_initialized():  # someone else's group: use it, leave it to them
        assert dist.get_world_size() == 1, "these tests expect a world of size 1"
        yield
        return
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---- helpers ---------------------------------------------------------------------------------

def make_config(family: Family) -> TrainConfig:
    return load_config(family.task, family.model, overrides=family.overrides)


def build(family: Family) -> tuple[Task, TrainConfig, nn.Module, nn.Module]:
    """The task, config, a freshly initialised model in train mode and its criterion."""
    task, cfg = get_task(family.task), make_config(family)
    torch.manual_seed(SEED)
    model = task.build(cfg, None).train()  # multilabel: a bare model, fresh encoder, no data
    return task, cfg, model, task.criterion(cfg)


def random_batch(task_name: str, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-label: (B, 1, 28, 28) float and classes (B,); multilabel: (B, 1, 56, 56) float and
    (B, 10) uint8 multi-hot label sets with 1 to 4 labels each."""
    g = torch.Generator().manual_seed(seed)
    if task_name == "single-label":
        return torch.randn(BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH,),
                                                                         generator=g)
    x = torch.randn(BATCH, 1, 56, 56, generator=g)
    y = torch.zeros(BATCH, 10, dtype=torch.uint8)
    for row in y:
        count = int(torch.randint(1, 5, (1,), generator=g))
        row[torch.randperm(10, generator=g)[:count]] = 1
    return x, y


@dataclass
class AllReduceCounter:
    """What DDP's reducer all-reduced: the state of `counting_allreduce_hook`."""

    elements: int = 0
    params: list[torch.Tensor] = field(default_factory=list)


def counting_allreduce_hook(state: AllReduceCounter, bucket: dist.GradBucket
                            ) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook that records each bucket it all-reduces, then does what the
    default hook does (the mean over the world), so the gradients are DDP's own."""
    state.elements += bucket.buffer().numel()
    state.params.extend(bucket.parameters())
    tensor = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap(model: nn.Module) -> tuple[DDP, AllReduceCounter]:
    """A deep copy of `model` in DDP (CPU, the default process group) with a counting hook."""
    ddp = DDP(copy.deepcopy(model))
    counter = AllReduceCounter()
    ddp.register_comm_hook(state=counter, hook=counting_allreduce_hook)
    return ddp.train(), counter


def step(task: Task, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor,
         bf16: bool = False) -> torch.Tensor:
    """One training step's loss, backward done, from a fixed RNG state."""
    torch.manual_seed(STEP_SEED)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        loss, _ = training_step(task, model, criterion, x, y)
    loss.backward()
    return loss.detach()


def trainable_elements(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def compare_gradients(plain: nn.Module, wrapped: nn.Module, rtol: float, atol: float) -> None:
    """Every trainable parameter has the same gradient in both; a frozen one has none in both."""
    a, b = dict(plain.named_parameters()), dict(wrapped.named_parameters())
    assert a.keys() == b.keys()
    for name, p in a.items():
        q = b[name]
        assert p.requires_grad == q.requires_grad, name
        if not p.requires_grad:
            assert p.grad is None and q.grad is None, f"frozen {name} got a gradient"
            continue
        assert q.grad is not None, f"{name} got no gradient through DDP"
        assert p.grad is not None, f"{name} got no gradient without DDP"
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=lambda m, n=name:
                                   f"gradient of {n}: {m}")


def assert_all_reduced(counter: AllReduceCounter, model: nn.Module) -> None:
    """DDP's reducer all-reduced every trainable element, each parameter once."""
    assert counter.elements == trainable_elements(model), (
        f"DDP all-reduced {counter.elements} gradient elements of "
        f"{trainable_elements(model)} trainable ones")
    reduced = sorted(id(p) for p in counter.params)
    assert reduced == sorted(id(p) for p in model.parameters() if p.requires_grad)


# ---- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_ddp_step_matches_plain_step(process_group: None, family: Family) -> None:
    task, cfg, model, criterion = build(family)
    ddp, counter = wrap(model)
    x, y = random_batch(family.task)

    plain_loss = step(task, model, criterion, x, y)
    ddp_loss = step(task, ddp, criterion, x, y)

    assert torch.isfinite(plain_loss)
    torch.testing.assert_close(ddp_loss, plain_loss, rtol=1e-6, atol=1e-6)
    compare_gradients(model, ddp.module, rtol=1e-6, atol=1e-6)
    assert_all_reduced(counter, ddp.module)
    if not getattr(cfg.task_options, "finetune_encoder", True):  # the multilabel frozen ones
        encoder = ddp.module.encoder
        assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
        assert trainable_elements(ddp.module) < sum(p.numel() for p in ddp.module.parameters())


@pytest.mark.parametrize("family", AUTOCAST_FAMILIES, ids=[f.id for f in AUTOCAST_FAMILIES])
def test_ddp_step_matches_plain_step_under_bf16_autocast(process_group: None,
                                                        family: Family) -> None:
    task, _, model, criterion = build(family)
    ddp, counter = wrap(model)
    x, y = random_batch(family.task, seed=1)

    plain_loss = step(task, model, criterion, x, y, bf16=True)
    ddp_loss = step(task, ddp, criterion, x, y, bf16=True)

    assert plain_loss.dtype == torch.float32  # the criteria compute the loss in fp32
    torch.testing.assert_close(ddp_loss, plain_loss, rtol=0, atol=0)
    compare_gradients(model, ddp.module, rtol=1e-3, atol=1e-5)
    assert_all_reduced(counter, ddp.module)


@pytest.mark.parametrize("family", [BY_ID["single-label-cnn"], BY_ID["multilabel-cnn-rnn-pla"]],
                         ids=["single-label-cnn", "multilabel-cnn-rnn-pla"])
def test_control_a_step_around_ddp_gets_equal_gradients_but_no_all_reduce(
        process_group: None, family: Family) -> None:
    """A step that calls the wrapped module (`ddp.module(...)`, as one calling e.g.
    `model.module.encode` would) instead of `ddp(...)`: on one process its loss and gradients
    cannot tell it from a right one, but nothing is all-reduced. The all-reduce count is what
    tells the two apart, which is why the tests above assert it."""
    task, _, model, criterion = build(family)
    ddp, counter = wrap(model)
    x, y = random_batch(family.task)

    plain_loss = step(task, model, criterion, x, y)
    bypass_loss = step(task, ddp.module, criterion, x, y)  # around DDP's forward

    torch.testing.assert_close(bypass_loss, plain_loss, rtol=1e-6, atol=1e-6)
    compare_gradients(model, ddp.module, rtol=1e-6, atol=1e-6)
    assert counter.elements == 0 and not counter.params
