import pytest
import torch

from polymodal.evaluation.retrieval import class_recall_at_k, recall_at_k


def test_recall_hand_made_case():
    # 3 queries, 3 gallery items on the unit circle; keys all distinct.
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = torch.tensor(
        [
            [1.0, 0.0],  # nearest g0 (its partner): hit@1
            [1.0, 0.1],  # nearest g0, then g1 (partner): hit@2
            [0.0, 1.0],
        ]
    )  # order g1, then g0/g2 tie... partner g2 is last: hit@3
    q = torch.nn.functional.normalize(q, dim=-1)
    keys = torch.tensor([10, 11, 12])
    r = recall_at_k(q, g, keys, ks=[1, 2, 3], chunk_size=2)
    assert r[1] == pytest.approx(1 / 3)
    assert r[2] == pytest.approx(2 / 3)
    assert r[3] == pytest.approx(1.0)


def test_identical_content_counts_as_a_hit():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Items 0 and 1 have the same content (same key): retrieving either is correct for both.
    keys = torch.tensor([7, 7, 8])
    assert recall_at_k(q, g, keys, ks=[1])[1] == 1.0
    distinct = torch.tensor([7, 9, 8])
    assert recall_at_k(q, g, distinct, ks=[1])[1] < 1.0


def test_duplicates_do_not_fill_the_top_k():
    # 4 copies of caption A, 1 of caption B; query 0 prefers A but its partner is B.
    g = torch.tensor([[1.0, 0.0]] * 4 + [[0.6, 0.8]])
    keys = torch.tensor([1, 1, 1, 1, 2])
    q = torch.tensor([[1.0, 0.0]] * 4 + [[1.0, 0.0]])
    r = recall_at_k(q, g, keys, ks=[1, 2])
    assert r[1] == pytest.approx(4 / 5)  # the B query's top-1 is A
    assert r[2] == 1.0  # top-2 over distinct captions is {A, B}, not two copies of A


def test_chunking_does_not_change_the_result():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    g = torch.nn.functional.normalize(q + 0.5 * torch.randn(50, 8), dim=-1)
    keys = torch.arange(50)
    full = recall_at_k(q, g, keys, ks=[1, 5, 10], chunk_size=1000)
    chunked = recall_at_k(q, g, keys, ks=[1, 5, 10], chunk_size=7)
    assert full == chunked


def test_class_recall_counts_any_item_of_the_query_class():
    # Images 0-2 of classes 0, 0, 1; the gallery is one recording per class (keys 5, 5, 6).
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.1], [0.9, 0.0], [1.0, 0.2]])  # image 2 ranks class 0 first
    q = torch.nn.functional.normalize(q, dim=-1)
    keys, labels = torch.tensor([5, 5, 6]), torch.tensor([0, 0, 1])
    r = class_recall_at_k(q, g, keys, labels, ks=[1, 2])
    assert r[1] == pytest.approx(2 / 3) and r[2] == 1.0
    # Another recording of the right class is a hit too, where instance recall misses it.
    other = torch.tensor([5, 7, 6])
    assert class_recall_at_k(q, g, other, labels, ks=[1])[1] == pytest.approx(2 / 3)
    assert recall_at_k(q, g, other, ks=[1])[1] == pytest.approx(1 / 3)
