"""Training streams: every rank yields the same number of samples per epoch (else distributed
training deadlocks), and an even split reads each sample exactly once per epoch."""

from __future__ import annotations

from collections import Counter

import pytest

from operators.staging import stage_source
from vlm_core.data.shards import ShardSource, SourceInfo
from vlm_core.data.types import RawSample
from vlm_core.train.streaming import StreamingMixture


class IdEncoder:
    """Stands in for SampleEncoder: what is under test is who reads which sample."""

    strict = False

    def encode(self, raw, dataset_name, dataset_index):
        return {"id": raw.id, "dataset": dataset_name}


def _staged(tmp_path, n: int, per_shard: int) -> ShardSource:
    samples = [RawSample(id=f"s{i}", images=[], conversations=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])
               for i in range(n)]
    url = str(tmp_path / f"staged-{n}-{per_shard}")
    info = SourceInfo(url="memory://test", format="llava_jsonl", fingerprint="test")
    stage_source(samples, url, source_info=info, shard_samples=per_shard, workers=1, progress=False)
    return ShardSource(url)


def _epoch(source, world: int, epoch: int = 0) -> list[list[str]]:
    per_rank = []
    for rank in range(world):
        mixture = StreamingMixture({"d": (source, 1.0)}, IdEncoder(), seed=1)
        mixture.rank, mixture.world_size = rank, world
        mixture.set_epoch(epoch)
        per_rank.append([item["id"] for item in mixture])
        assert len(per_rank[-1]) == len(mixture)
    return per_rank


def test_even_split_reads_each_sample_once(tmp_path):
    ranks = _epoch(_staged(tmp_path, 80, 10), world=2)
    assert Counter(i for r in ranks for i in r) == Counter(f"s{i}" for i in range(80))
    assert ranks != _epoch(_staged(tmp_path, 80, 10), world=2, epoch=1)


def test_uneven_shards_still_give_every_rank_the_same_number_of_steps(tmp_path):
    ranks = _epoch(_staged(tmp_path, 70, 10), world=2)  # 7 shards over 2 ranks
    assert [len(r) for r in ranks] == [35, 35]
    seen = Counter(i for r in ranks for i in r)
    assert len(seen) >= 60  # at most the surplus half-shard is left for a later epoch


def test_fewer_shards_than_consumers_is_a_clear_error(tmp_path):
    source = _staged(tmp_path, 10, 10)  # one shard, two ranks
    mixture = StreamingMixture({"d": (source, 1.0)}, IdEncoder(), seed=0)
    mixture.rank, mixture.world_size = 1, 2
    with pytest.raises(RuntimeError, match="fewer shards than ranks"):
        list(mixture)


def test_the_trainers_epoch_reaches_the_stream(tmp_path):
    from vlm_core.train.streaming import StreamLoader

    mixture = StreamingMixture({"d": (_staged(tmp_path, 40, 10), 1.0)}, IdEncoder(), seed=3)
    loader = StreamLoader(mixture, batch_size=8, collate_fn=lambda items: [i["id"] for i in items])
    first = [i for batch in loader for i in batch]
    loader.set_epoch(1)  # what the Trainer calls at each epoch
    second = [i for batch in loader for i in batch]
    assert sorted(first) == sorted(second) and first != second
