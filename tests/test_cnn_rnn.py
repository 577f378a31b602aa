"""Tests of the CNN-RNN (targets, beam search, overfitting) and of the BCE baseline."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from cnnrnn.errors import ConfigError, DataError
from cnnrnn.losses import BinaryCrossEntropy, SequenceNLL
from cnnrnn.models.bce import BCEHead, choose_threshold
from cnnrnn.models.cnn_rnn import CNNRNN, IGNORE_INDEX


def seq_loss(model: CNNRNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CNN-RNN's training loss, as the multilabel task computes it."""
    return SequenceNLL(model.aux_bce)(model(x, y), y)


def bce_loss(model: BCEHead, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return BinaryCrossEntropy()(model(x, y), y)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; more only contend with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyEncoder(nn.Module):
    """A stand-in for the VGG-16-style encoder: forward_features (B, 1, H, W) -> (B, 64)."""

    num_features = 64  # 16 channels x 2 x 2 cells: pooling to one cell averages noise images alike

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def cells(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 64) channel-major -> (B, 4, 16), as VGGEncoder.cells."""
        return features.reshape(features.shape[0], 16, 4).transpose(1, 2)


DECODERS = ["paper", "attention"]


def make_model(K: int = 10, seed: int = 0, **kwargs) -> CNNRNN:
    defaults = dict(embed_dim=16, hidden_size=32)
    with torch.random.fork_rng():  # module initialisation takes no generator; leave global RNG
        torch.manual_seed(seed)
        return CNNRNN(TinyEncoder(), num_labels=K, **(defaults | kwargs)).eval()


def make_bce(seed: int) -> BCEHead:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BCEHead(TinyEncoder(), num_labels=10)


def random_label_sets(n: int, K: int, gen: torch.Generator, max_labels: int = 4) -> torch.Tensor:
    """(n, K) multi-hot with 1..max_labels labels each."""
    y = torch.zeros(n, K, dtype=torch.uint8)
    for row in y:
        count = int(torch.randint(1, max_labels + 1, (1,), generator=gen))
        row[torch.randperm(K, generator=gen)[:count]] = 1
    return y


def all_paths(K: int) -> list[tuple[int, ...]]:
    """Every duplicate-free label sequence followed by END (= K)."""
    return [
        (*perm, K)
        for n in range(K + 1)
        for subset in itertools.combinations(range(K), n)
        for perm in itertools.permutations(subset)
    ]


def path_log_probs(model: CNNRNN, features: torch.Tensor, paths: list) -> torch.Tensor:
    """log P(path | image) by teacher forcing: (B, D) features -> (B, len(paths))."""
    B, S, K = features.shape[0], len(paths), model.num_labels
    targets = torch.full((S, K + 1), IGNORE_INDEX)
    for i, p in enumerate(paths):
        targets[i, : len(p)] = torch.tensor(p)
    inputs = torch.cat([torch.full((S, 1), model.START), targets[:, :-1].clamp(min=0)], 1)
    with torch.no_grad():
        lp = model.sequence_log_probs(
            features.repeat_interleave(S, 0), inputs.repeat(B, 1)
        )  # (B*S, K+1, K+1)
    taken = lp.gather(2, targets.repeat(B, 1).clamp(min=0)[..., None])[..., 0]
    return taken.masked_fill(targets.repeat(B, 1) == IGNORE_INDEX, 0).sum(1).view(B, S)


def greedy_reference(model: CNNRNN, features: torch.Tensor) -> tuple[list, torch.Tensor]:
    """Greedy decoding one row at a time through the teacher-forcing path of the model."""
    paths, total = [], []
    for f in features:
        inputs, logp, path = torch.tensor([[model.START]]), 0.0, []
        while not path or path[-1] != model.END:
            with torch.no_grad():
                lp = model.sequence_log_probs(f[None], inputs)[0, -1]
            label = int(lp.argmax())
            path.append(label)
            logp += float(lp[label])
            inputs = torch.cat([inputs, torch.tensor([[label]])], 1)
        paths.append(path)
        total.append(logp)
    return paths, torch.tensor(total)


def decoded_path(row: torch.Tensor) -> list[int]:
    return [int(v) for v in row if v >= 0]


# ---- CNN-RNN: shapes, gradients, targets ---------------------------------------------------


def test_shapes_and_label_embedding():
    model = make_model(K=10)
    assert model.U_l.shape == (12, 16)  # ten labels, END, START
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28, generator=gen)
    y = random_label_sets(5, 10, gen)
    log_probs, targets = model.teacher_forcing(model.encode(x), y)
    T = int(y.sum(1).max()) + 1
    assert targets.shape == (5, T)
    assert log_probs.shape == (5, T, 11)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(5, T), atol=1e-5)
    assert seq_loss(model, x, y).shape == ()
    label_sets, scores = model.predict(x, beam_width=3)
    assert label_sets.shape == scores.shape == (5, 10)
    assert label_sets.dtype == torch.uint8 and scores.dtype == torch.float32


@pytest.mark.parametrize(("order", "aux_bce", "decoder"),
                         [("fixed", 0.0, "paper"), ("pla", 0.0, "paper"), ("fixed", 0.5, "paper"),
                          ("fixed", 0.0, "attention"), ("pla", 0.0, "attention")])
def test_every_parameter_gets_a_gradient(order, aux_bce, decoder):
    model = make_model(order=order, aux_bce=aux_bce, decoder=decoder).train()
    assert (model.aux_head is not None) == (aux_bce > 0)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 28, 28, generator=gen)
    y = random_label_sets(6, 10, gen)
    seq_loss(model, x, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_aux_bce_adds_the_weighted_per_label_bce_of_the_semantic_head():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 28, 28, generator=gen)
    y = random_label_sets(6, 10, gen)
    plain, aux = make_model(seed=4), make_model(seed=4, aux_bce=0.3)
    features = aux.encode(x)
    logits = aux.aux_head(features)
    by_hand = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(seq_loss(aux, x, y), seq_loss(plain, x, y) + 0.3 * by_hand, atol=1e-6)
    # decoding ignores the semantic head
    assert torch.equal(aux.predict(x, beam_width=2)[0], plain.predict(x, beam_width=2)[0])
    with pytest.raises(ConfigError, match="aux_bce is a loss weight >= 0"):
        make_model(aux_bce=-1.0)


def teacher_forced(n: int, seed: int):
    """n random images and label sets, a model, and its teacher-forced output on them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = random_label_sets(n, 10, gen)
    model = make_model(seed=seed)
    return x, y, model, model(x, y)


def test_label_smoothing_spreads_the_target_over_the_symbols_still_allowed():
    x, y, model, out = teacher_forced(4, seed=11)
    eps = 0.2
    smoothed = SequenceNLL(label_smoothing=eps)(out, y)
    by_hand, n = 0.0, 0
    for b in range(4):
        for t in range(out.targets.shape[1]):
            target = int(out.targets[b, t])
            if target == IGNORE_INDEX:
                continue
            lp = out.log_probs[b, t]
            allowed = torch.isfinite(lp)  # labels not yet emitted, and END
            assert int(allowed.sum()) == 11 - t  # t labels emitted before step t
            by_hand += (1 - eps) * -lp[target] + eps * -lp[allowed].mean()
            n += 1
    assert torch.allclose(smoothed, by_hand / n, atol=1e-6)
    assert torch.allclose(SequenceNLL(label_smoothing=0.0)(out, y), seq_loss(model, x, y))
    assert smoothed > SequenceNLL()(out, y) * (1 - eps)


def test_set_target_scores_every_true_label_not_yet_emitted():
    x, y, model, out = teacher_forced(5, seed=12)
    loss = SequenceNLL(step_target="set")(out, y)
    by_hand, n = 0.0, 0
    for b in range(5):
        order = [int(t) for t in out.targets[b] if t != IGNORE_INDEX]  # labels, then END
        assert order[-1] == 10 and sorted(order[:-1]) == y[b].nonzero().flatten().tolist()
        for t, target in enumerate(order):
            rest = order[t:-1] if target != 10 else [10]  # still to emit, else END
            by_hand += -torch.logsumexp(out.log_probs[b, t, rest], 0)
            n += 1
    assert torch.allclose(loss, by_hand / n, atol=1e-6)
    # the set target is never above the next-label one: a sum holds the next label's P
    assert loss <= SequenceNLL()(out, y) + 1e-6
    loss.backward()  # and it trains
    assert model.U_l.grad is not None and torch.isfinite(model.U_l.grad).all()
    with pytest.raises(ConfigError, match="step_target"):
        SequenceNLL(step_target="bag")
    with pytest.raises(ConfigError, match="do not combine"):
        SequenceNLL(label_smoothing=0.1, step_target="set")


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode():
    model = make_model(freeze_encoder=True).train()
    assert not model.encoder.training and model.lstm.training
    gen = torch.Generator().manual_seed(2)
    y = random_label_sets(4, 10, gen)
    seq_loss(model, torch.rand(4, 1, 28, 28, generator=gen), y).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.U_l.grad is not None


def test_target_sequences_follow_the_priority_and_pad():
    K = 5
    y = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    END, PAD = K, IGNORE_INDEX
    identity = make_model(K=K)
    assert identity.target_sequences(y).tolist() == [
        [0, 2, 4, END],
        [1, END, PAD, PAD],
        [END, PAD, PAD, PAD],
    ]
    reversed_order = make_model(K=K, label_priority=[4, 3, 2, 1, 0])
    assert reversed_order.target_sequences(y)[0].tolist() == [4, 2, 0, END]
    mixed = make_model(K=K, label_priority=[2, 0, 4, 1, 3])
    assert mixed.target_sequences(y)[0].tolist() == [2, 0, 4, END]


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="exactly once"):
        make_model(K=3, label_priority=[0, 0, 1])
    with pytest.raises(ConfigError, match="unknown label order"):
        make_model(K=3, order="random")
    with pytest.raises(ConfigError, match="beam width"):
        make_model(K=3).decode(torch.zeros(2, 64), beam_width=0)
    with pytest.raises(DataError, match=r"shape \(B, 3\)"):
        make_model(K=3).target_sequences(torch.ones(2, 4))


def test_pla_targets_are_a_permutation_of_the_true_labels_then_end():
    K = 10
    model = make_model(K=K, order="pla", seed=3)
    gen = torch.Generator().manual_seed(3)
    y = random_label_sets(32, K, gen, max_labels=6)
    features = model.encode(torch.rand(32, 1, 28, 28, generator=gen))
    targets = model.pla_target_sequences(features, y)
    orders = set()
    for row, labels in zip(targets.tolist(), y, strict=True):
        n = int(labels.sum())
        assert sorted(row[:n]) == labels.nonzero().flatten().tolist()
        assert row[n] == K and all(v == IGNORE_INDEX for v in row[n + 1 :])
        orders.add(tuple(row[:n]))
    # the order comes from the model, not from the label ids
    assert any(list(o) != sorted(o) for o in orders)
    # and it is the model's ranking: the first target is the best-scored true label
    first_step = model.sequence_log_probs(features, torch.full((32, 1), model.START))[:, 0, :K]
    expected = first_step.masked_fill(y == 0, float("-inf")).argmax(1)
    assert torch.equal(targets[:, 0], expected)


# ---- CNN-RNN: the attention decoder and label dropout ---------------------------------------


def test_attention_weighs_the_cells_and_the_image_term_is_their_weighted_sum():
    model = make_model(decoder="attention", seed=8)
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(5, 64, generator=gen)
    inputs = torch.tensor([[model.START, 3, 1, 7]] * 5)
    weights = model.attention_weights(features, inputs)  # (B, T, G)
    assert weights.shape == (5, 4, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(5, 4), atol=1e-6)
    assert (weights > 0).all()
    # the step's image term is U_I^x applied to the attended mixture of the cells
    o, _ = model.lstm(model.U_l[inputs])
    image, w = model.attend(o, model.image_context(features))
    cells = model.encoder.cells(features)  # (B, G, C)
    assert torch.allclose(image, model.U_I_x(w @ cells), atol=1e-5)
    # and the weights depend on the step: different previous labels, different cells
    assert not torch.allclose(weights[:, 0], weights[:, 1])
    # the cells are the encoder's 2x2 map, row-major: channel c of cell i is feature c*4 + i
    assert torch.equal(cells[:, 2, 5], features[:, 5 * 4 + 2])


def test_attention_follows_the_cell_that_holds_the_label():
    """Cells filled by hand: with W_c reading a cell's 'label channel', a trained-by-hand
    attention picks the cell whose content matches what the query asks for."""
    model = make_model(decoder="attention", seed=9, attention_dim=1)
    with torch.no_grad():
        model.att_cells.weight.zero_()
        model.att_cells.weight[0, 3] = 10.0  # energy grows with channel 3 of the cell
        model.att_query.weight.zero_()
        model.att_query.bias.zero_()
        model.att_v.weight.fill_(10.0)  # energies 10 tanh(10 c_3): 10 against 0
    cells = torch.zeros(2, 4, 16)
    cells[0, 2, 3] = 1.0  # mosaic 0: cell 2 holds the feature
    cells[1, 0, 3] = 1.0  # mosaic 1: cell 0
    features = cells.transpose(1, 2).reshape(2, 64)  # back to channel-major
    w = model.attention_weights(features, torch.tensor([[model.START]] * 2))[:, 0]
    assert w.argmax(1).tolist() == [2, 0] and (w.max(1).values > 0.9).all()


def test_label_dropout_drops_previous_labels_only_in_training():
    model = make_model(label_dropout=0.5, seed=10)
    inputs = torch.tensor([[model.START] + [1, 2, 3, 4] * 50])  # (1, 201)
    assert torch.equal(model.eval()._embed_inputs(inputs), model.U_l[inputs])
    w = model.train()._embed_inputs(inputs)[0]
    dropped = (w == 0).all(1)
    assert not dropped[0]  # START is never dropped
    assert 0.35 < dropped[1:].float().mean() < 0.65
    kept = ~dropped
    assert torch.equal(w[kept], model.U_l[inputs[0]][kept])
    with pytest.raises(ConfigError, match="label_dropout"):
        make_model(label_dropout=1.0)
    with pytest.raises(ConfigError, match="unknown decoder"):
        make_model(decoder="transformer")
    with pytest.raises(ConfigError, match="no attention"):
        make_model().attention_weights(torch.zeros(1, 64), inputs)


# ---- CNN-RNN: beam search ------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("K", [3, 4])
def test_wide_beam_equals_exhaustive_search(K, decoder):
    model = make_model(K=K, seed=K, decoder=decoder)
    features = torch.randn(6, 64, generator=torch.Generator().manual_seed(K)) * 3
    paths = all_paths(K)
    logp = path_log_probs(model, features, paths)  # (B, S)
    # the masked softmax makes the duplicate-free paths a probability distribution
    assert torch.allclose(logp.exp().sum(1), torch.ones(6), atol=1e-5)
    # a width that keeps every extension at every step makes the search exhaustive
    width = max(math.perm(K, t) * (K + 1 - t) for t in range(K + 1))
    decoded = model.decode(features, beam_width=width)
    best = logp.argmax(1)
    for b in range(6):
        assert tuple(decoded_path(decoded.paths[b, 0])) == paths[best[b]]
    assert torch.allclose(decoded.log_probs[:, 0], logp.max(1).values, atol=1e-5)
    top5 = logp.topk(5, dim=1).values
    assert torch.allclose(decoded.log_probs[:, :5], top5, atol=1e-5)


@pytest.mark.parametrize("decoder", DECODERS)
def test_greedy_equals_beam_width_one(decoder):
    model = make_model(K=10, seed=5, decoder=decoder)
    features = torch.randn(16, 64, generator=torch.Generator().manual_seed(5)) * 3
    ref_paths, ref_logp = greedy_reference(model, features)
    decoded = model.decode(features, beam_width=1)
    assert [decoded_path(row) for row in decoded.paths[:, 0]] == ref_paths
    assert torch.allclose(decoded.log_probs[:, 0], ref_logp, atol=1e-5)


@pytest.mark.parametrize("beam_width", [1, 3, 7])
def test_decoded_paths_never_repeat_a_label(beam_width):
    K = 10
    model = make_model(K=K, seed=6)
    with torch.no_grad():  # favour long paths: make END unlikely
        model.U_l[K] -= 3 * model.U_l[:K].mean(0)
    features = torch.randn(64, 64, generator=torch.Generator().manual_seed(6))
    decoded = model.decode(features, beam_width)
    lengths = []
    for image_paths, image_logp in zip(decoded.paths, decoded.log_probs, strict=True):
        for path, logp in zip(image_paths, image_logp, strict=True):
            if torch.isfinite(logp):
                labels = decoded_path(path)
                assert labels[-1] == K and len(set(labels)) == len(labels)
                lengths.append(len(labels))
    assert max(lengths) >= 5  # the check saw long paths
    # scores rank emitted labels above the others, and a 0.5 threshold gives the decoded sets
    sets = decoded.label_sets.bool()
    assert torch.equal(decoded.scores > 0.5, sets)
    assert torch.all((decoded.scores >= 0) & (decoded.scores <= 1))


@pytest.mark.parametrize(("order", "decoder", "step_target"),
                         [("fixed", "paper", "next"), ("pla", "paper", "next"),
                          ("fixed", "attention", "next"), ("pla", "paper", "set")])
def test_decoder_overfits_a_few_images(order, decoder, step_target):
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    y = random_label_sets(8, 10, gen, max_labels=4)
    model = make_model(K=10, seed=7, order=order, label_priority=list(reversed(range(10))),
                       decoder=decoder)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=3e-3)  # the paper's optimizer
    model.train()
    for _ in range(400):  # exact match after about 150 (fixed) and 230 (pla) steps
        optimizer.zero_grad()
        loss = SequenceNLL(step_target=step_target)(model(x, y), y)
        loss.backward()
        optimizer.step()
    model.eval()
    for width in (1, 3):
        label_sets, _ = model.predict(x, beam_width=width)
        assert torch.equal(label_sets, y), (order, width, loss.item())


# ---- BCE baseline --------------------------------------------------------------------------


def test_bce_shapes_and_gradients():
    model = make_bce(seed=0)
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(4, 1, 28, 28, generator=gen)
    y = random_label_sets(4, 10, gen)
    assert model(x).shape == (4, 10)
    bce_loss(model, x, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    label_sets, scores = model.predict(x, threshold=0.5)
    assert label_sets.shape == scores.shape == (4, 10) and label_sets.dtype == torch.uint8
    assert torch.equal(label_sets.bool(), scores >= 0.5)
    with pytest.raises(DataError, match="multi-hot"):
        bce_loss(model, x, y[:, :3])


def test_bce_overfits_a_few_images():
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    y = random_label_sets(8, 10, gen)
    model = make_bce(seed=9)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        bce_loss(model, x, y).backward()
        optimizer.step()
    label_sets, _ = model.predict(x, threshold=0.5)
    assert torch.equal(label_sets, y)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_maximises_micro_f1_against_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(40, 6, generator=gen) < 0.3).to(torch.uint8)
    # noisy scores, rounded so that ties occur
    scores = ((y + torch.randn(40, 6, generator=gen) * 0.6).sigmoid() * 20).round() / 20

    def micro_f1(threshold: float) -> float:
        predicted = (scores >= threshold).numpy()
        return f1_score(y.numpy(), predicted, average="micro", zero_division=0)

    candidates = torch.cat([scores.unique(), torch.tensor([1.5])]).tolist()
    best = max(micro_f1(t) for t in candidates)
    chosen = choose_threshold(scores, y)
    assert micro_f1(chosen) == pytest.approx(best)
    assert chosen not in candidates  # it falls between two scores


def test_threshold_without_true_labels_predicts_nothing():
    scores = torch.tensor([[0.2, 0.9], [0.4, 0.1]])
    chosen = choose_threshold(scores, torch.zeros(2, 2))
    assert not (scores >= chosen).any()
