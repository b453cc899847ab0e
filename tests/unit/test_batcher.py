"""The serving batcher: items of concurrent callers gathered per key, cheapest first, within
the item count and the padded-cost budget; a failed batch fails only its own callers."""

from __future__ import annotations

import asyncio

from polymodal.serving.batcher import Batcher, cut


def test_cut_sorts_by_cost_and_keeps_padded_cost_within_budget():
    costs = [1.0, 0.1, 0.2, 0.1, 0.9, 0.15]
    batches = cut(costs, max_items=4, budget=1.0)
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))  # each once
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(costs[i] for i in batch) <= 1.0
    assert batches[0] == [1, 3, 5, 2]  # the cheap texts together, in cost order
    assert cut([50.0, 1.0], max_items=32, budget=32.0) == [[1], [0]]  # dearer than budget: alone


def test_concurrent_callers_share_batches_and_get_their_own_results():
    calls: list[tuple[str, list]] = []

    async def run(key, values):
        calls.append((key, list(values)))
        await asyncio.sleep(0.01)
        return [f"{key}:{v}" for v in values]

    async def main():
        batcher = Batcher(run, max_items=8, budget=8.0, wait_s=0.005)
        results = await asyncio.gather(
            batcher.submit("a", [1, 2]),
            batcher.submit("a", [3]),
            batcher.submit("b", [4]),
            *[batcher.submit("a", [10 + i]) for i in range(10)],
        )
        return results

    results = asyncio.run(main())
    assert results[0] == ["a:1", "a:2"] and results[1] == ["a:3"] and results[2] == ["b:4"]
    assert results[3:] == [[f"a:{10 + i}"] for i in range(10)]
    assert all(len(values) <= 8 for _, values in calls)
    assert sum(len(values) for _, values in calls) == 14
    assert len(calls) < 14  # batched, not one run per item
    assert {key for key, _ in calls} == {"a", "b"}


def test_a_failing_batch_fails_its_callers_only():
    async def run(key, values):
        if "bad" in values:
            raise ValueError("cannot embed")
        return values

    async def main():
        batcher = Batcher(run, max_items=1, budget=1.0)
        ok = batcher.submit("k", ["good"])
        bad = batcher.submit("k", ["bad"])
        return await asyncio.gather(ok, bad, return_exceptions=True), await batcher.submit(
            "k", ["again"]
        )

    (ok, bad), again = asyncio.run(main())
    assert ok == ["good"] and again == ["again"]
    assert isinstance(bad, ValueError) and str(bad) == "cannot embed"


def test_costs_count_tokens_and_pixels():
    import io

    from PIL import Image

    from polymodal.modalities import MODALITIES, Preprocessing

    prep = Preprocessing(["image", "text"], image_size=28, text_max_len=48)
    assert MODALITIES["text"].cost("a" * 12, prep) == 0.25
    assert MODALITIES["text"].cost("a" * 500, prep) == 1.0  # truncated at text_max_len
    # Word pieces are counted, not bytes: [CLS] the cat sat [SEP] is 5 of 48 tokens.
    pieces = Preprocessing(["text"], text_max_len=48, text_tokenizer="minilm")
    assert MODALITIES["text"].cost("the cat sat", pieces) == 5 / 48
    long = "an uncharacteristically long sentence " * 9
    assert MODALITIES["text"].cost(long, pieces) == 1.0  # truncated at text_max_len
    png = io.BytesIO()
    Image.new("L", (280, 56)).save(png, "PNG")
    assert MODALITIES["image"].cost(png.getvalue(), prep) == 20.0  # 280x56 = 20 of 28x28
    Image.new("L", (8, 8)).save(png := io.BytesIO(), "PNG")
    assert MODALITIES["image"].cost(png.getvalue(), prep) == 1.0  # one forward slot at least
