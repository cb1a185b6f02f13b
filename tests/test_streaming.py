"""Training streams: every rank yields the same number of samples per epoch (else distributed
training deadlocks), and an even split reads each sample exactly once per epoch."""

from __future__ import annotations

import itertools
import json
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


def test_the_order_depends_on_the_seed_not_on_where_the_data_was_read_from(tmp_path):
    """The same images staged from two folders: the shards record each image's path (so their
    content hashes, and names, differ), yet one seed gives one order: a run does not change with
    its data folder."""
    from tests.published_datasets import image

    def staged_from(folder):
        folder.mkdir()
        samples = []
        for i in range(40):
            path = folder / f"{i}.png"
            path.write_bytes(image((i, 2, 3), (4, 4), "PNG"))
            samples.append(RawSample(id=f"s{i}", images=[str(path)],
                                     conversations=[{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]))
        url = str(tmp_path / f"staged-{folder.name}")
        stage_source(samples, url, source_info=SourceInfo(url=str(folder), format="list", fingerprint="t"),
                     shard_samples=10, workers=1, progress=False)
        return ShardSource(url)

    here, there = staged_from(tmp_path / "here"), staged_from(tmp_path / "there")
    assert [s.name for s in here.manifest.shards] != [s.name for s in there.manifest.shards]
    assert _epoch(here, world=2) == _epoch(there, world=2)
    assert [r.id for r in here.iter_samples(seed=3)] == [r.id for r in there.iter_samples(seed=3)]


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


# ----------------------------------------------------------------------------- resume by seeking


class CountingShards(ShardSource):
    """The staged dataset, counting every sample it builds (what "reading a sample" costs)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.built: list[str] = []

    def read_block(self, block, positions):
        samples = super().read_block(block, positions)
        self.built += [s.id for s in samples.values()]
        return samples


def _staged_mixed(tmp_path, n: int, per_shard: int, tag: str) -> str:
    """n samples, every third text-only, with words enough to differ in length."""
    from tests.published_datasets import image

    png = image((1, 2, 3), (4, 4), "PNG")
    samples = [RawSample(id=f"{tag}{i}", images=[png] if i % 3 else [],
                         conversations=[{"from": "human", "value": "q " * (1 + i % 7)}, {"from": "gpt", "value": "a"}])
               for i in range(n)]
    url = str(tmp_path / f"{tag}-{n}-{per_shard}")
    stage_source(samples, url, source_info=SourceInfo(url="memory://t", format="list", fingerprint="t"),
                 shard_samples=per_shard, workers=1, progress=False)
    return url


def _loader(sources, workers: int, resume=None, group=None, rank=0, world=1):
    from vlm_core.train.streaming import StreamLoader

    mixture = StreamingMixture(sources, IdEncoder(), seed=5, group_by_length=group)
    mixture.rank, mixture.world_size = rank, world
    mixture.resume = resume
    return StreamLoader(mixture, batch_size=4, num_workers=workers, collate_fn=lambda items: [i["id"] for i in items])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("group", [None, 4])
def test_resume_at_step_k_yields_the_same_batches_and_reads_nothing_before(tmp_path, workers, group):
    urls = [_staged_mixed(tmp_path, 90, 10, "a"), _staged_mixed(tmp_path, 40, 8, "b")]
    weights = {"a": 1.0, "b": 1.5}
    sources = lambda: {name: (CountingShards(url), weights[name]) for name, url in zip("ab", urls)}

    full = list(_loader(sources(), workers, group=group))
    assert sum(len(b) for b in full) == 90 + 60
    for k in (1, 7, 20):
        first = _loader(sources(), workers, group=group)
        consumed = list(itertools.islice(first, k))
        state = first.state_dict()
        assert consumed == full[:k] and state["batches"] == k
        state = json.loads(json.dumps(state))  # what a checkpoint holds
        fresh = sources()
        resumed = list(_loader(fresh, workers, resume=state, group=group))
        assert resumed == full[k:], f"resume at batch {k}"
        if workers == 0:  # the samples built live in this process
            # Exactly the samples yielded after the checkpoint were built, each once (source b,
            # of weight 1.5, repeats half its samples within the epoch: compare as multisets).
            built = Counter(i for s, _ in fresh.values() for i in s.built)
            assert built == Counter(i for b in resumed for i in b), "a sample consumed before the checkpoint was read again"


def test_grouping_uses_the_length_index_and_keeps_batches_modality_pure(tmp_path):
    url = _staged_mixed(tmp_path, 96, 24, "g")
    modality = {f"g{i}": bool(i % 3) for i in range(96)}
    batches = list(_loader({"g": (ShardSource(url), 1.0)}, 0, group=4))
    pure = sum(len({modality[i] for i in b}) == 1 for b in batches)
    assert pure >= len(batches) - 4  # a mixed batch only where a window's mega-batch is partial
    shuffled = list(_loader({"g": (ShardSource(url), 1.0)}, 0))
    assert sum(len({modality[i] for i in b}) == 1 for b in shuffled) < pure


def test_the_position_is_saved_in_the_checkpoint_and_fits_only_the_same_topology(tmp_path):
    from types import SimpleNamespace

    from vlm_core.train.streaming import load_data_state
    from vlm_core.train.trainer import StreamStateCallback

    source = ShardSource(_staged_mixed(tmp_path, 40, 10, "c"))
    loader = _loader({"c": (source, 1.0)}, 0)
    list(itertools.islice(loader, 3))
    args, state = SimpleNamespace(output_dir=str(tmp_path / "ckpts")), SimpleNamespace(global_step=3)
    StreamStateCallback().on_save(args, state, None, train_dataloader=loader)
    checkpoint = str(tmp_path / "ckpts" / "checkpoint-3")
    same = StreamingMixture({"c": (source, 1.0)}, IdEncoder(), seed=5)
    assert load_data_state(checkpoint, same, workers=0) == loader.state_dict()
    other = StreamingMixture({"c": (source, 1.0)}, IdEncoder(), seed=5)
    other.world_size = 2
    assert load_data_state(checkpoint, other, workers=0) is None
    assert load_data_state(checkpoint, same, workers=2) is None
