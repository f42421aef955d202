"""pneumolib.data.labels: labels (one row per patient), patient-level splits, batches from the
cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pneumolib.core.augment import AugmentPolicy
from pneumolib.core.loader import EpochBatchSampler, make_loader
from pneumolib.data.labels import (
    COURSE_TRAIN_N,
    RSNA_N,
    CacheStats,
    LabelError,
    load_labels,
    make_splits,
    open_images,
    read_index,
)

HEADER = "patientId,x,y,width,height,Target\n"
CLASS_HEADER = "patientId,class\n"
LABELS = HEADER + ("bbb,10,20,30,40,1\naaa,,,,,0\nbbb,50,60.5,70,80,1\nccc,1,2,3,4,1\nddd,,,,,0\n")
CLASSES = CLASS_HEADER + (
    "bbb,Lung Opacity\n"
    "aaa,Normal\n"
    "bbb,Lung Opacity\n"
    "ccc,Lung Opacity\n"
    "ddd,No Lung Opacity / Not Normal\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- load_labels ----------------------------------------------------------------------------


def test_load_labels_one_row_per_patient_in_csv_order(tmp_path: Path) -> None:
    df = load_labels(write(tmp_path / "labels.csv", LABELS))
    assert list(df.columns) == ["patientId", "target", "class", "boxes"]
    assert df.patientId.tolist() == ["bbb", "aaa", "ccc", "ddd"]  # first appearance
    assert df.target.tolist() == [1, 0, 1, 0]
    assert df.boxes.tolist() == [
        [[10.0, 20.0, 30.0, 40.0], [50.0, 60.5, 70.0, 80.0]],
        [],
        [[1.0, 2.0, 3.0, 4.0]],
        [],
    ]
    assert df["class"].tolist() == ["", "", "", ""]  # no detailed file given


def test_load_labels_joins_detailed_classes(tmp_path: Path) -> None:
    df = load_labels(write(tmp_path / "l.csv", LABELS), write(tmp_path / "c.csv", CLASSES))
    assert df["class"].tolist() == [
        "Lung Opacity",
        "Normal",
        "Lung Opacity",
        "No Lung Opacity / Not Normal",
    ]
    # a detailed file that does not exist leaves the class empty rather than failing
    assert load_labels(tmp_path / "l.csv", tmp_path / "absent.csv")["class"].eq("").all()


@pytest.mark.parametrize(
    "text, line, column",
    [
        ("patientId,x,y,width,height\nbbb,1,2,3,4\n", 1, "Target"),  # missing column
        (HEADER + "bbb,1,2,3,4,1\nbbb,,,,,0\n", 3, "Target"),  # conflicting Target
        (HEADER + "aaa,,,,,0\nbbb,1,2,3,4,0\n", 3, "x"),  # a box on a negative
        (HEADER + "aaa,,,,,0\nbbb,1,2,3,4,1\nccc,1,two,3,4,1\n", 4, "y"),  # unparsable
        (HEADER + "aaa,,,,,0\nbbb,,,,,1\n", 3, "x"),  # positive without a box
        (HEADER + "aaa,,,,,2\n", 2, "Target"),  # not 0/1
        (HEADER + "aaa,1,2,0,4,1\n", 2, "width"),  # empty box
    ],
    ids=[
        "missing-column",
        "conflict",
        "box-on-negative",
        "unparsable",
        "positive-no-box",
        "bad-target",
        "zero-width",
    ],
)
def test_load_labels_errors_name_file_line_column(
    tmp_path: Path, text: str, line: int, column: str
) -> None:
    path = write(tmp_path / "bad_labels.csv", text)
    with pytest.raises(LabelError) as err:
        load_labels(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert f"line {line}" in msg
    assert column in msg


def test_unknown_class_in_detailed_file(tmp_path: Path) -> None:
    labels = write(tmp_path / "l.csv", LABELS)
    classes = write(tmp_path / "c.csv", CLASSES.replace("aaa,Normal", "aaa,Pneumothorax"))
    with pytest.raises(LabelError) as err:
        load_labels(labels, classes)
    msg = str(err.value)
    assert "\n" not in msg and str(classes) in msg
    assert "line 3" in msg and "column class" in msg and "Pneumothorax" in msg


def test_class_contradicting_target_is_refused(tmp_path: Path) -> None:
    labels = write(tmp_path / "l.csv", LABELS)
    classes = write(tmp_path / "c.csv", CLASSES.replace("ccc,Lung Opacity", "ccc,Normal"))
    with pytest.raises(LabelError, match="ccc"):
        load_labels(labels, classes)


def test_missing_label_file(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="not found"):
        load_labels(tmp_path / "nope.csv")


# --- make_splits ----------------------------------------------------------------------------


def synthetic_labels(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per patient with RSNA-like class and view mixes: AP 46%, P(pos|AP) .38, PA .09."""
    rng = np.random.default_rng(seed)
    view = np.where(rng.random(n) < 0.46, "AP", "PA")
    target = (rng.random(n) < np.where(view == "AP", 0.38, 0.09)).astype(int)
    return pd.DataFrame(
        {"patientId": [f"p{i:05d}" for i in range(n)], "target": target, "view": view}
    )


def test_stratified_keeps_class_and_view_proportions() -> None:
    df = synthetic_labels()
    split = make_splits(df, rule="stratified", val_frac=0.15, test_frac=0.15, seed=0)
    assert set(split) == {"train", "val", "test"}
    share = pd.Series(split).value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.01)
    assert share["val"] == pytest.approx(0.15, abs=0.01)
    assert share["test"] == pytest.approx(0.15, abs=0.01)
    pos, ap = df.target.mean(), (df.view == "AP").mean()
    for name in ("train", "val", "test"):
        part = df[split == name]
        assert part.target.mean() == pytest.approx(pos, abs=0.02), name
        assert (part.view == "AP").mean() == pytest.approx(ap, abs=0.02), name
        for v in ("AP", "PA"):  # the positive rate per view holds too
            both = df[df.view == v]
            assert part[part.view == v].target.mean() == pytest.approx(both.target.mean(), abs=0.03)


def test_stratified_is_seeded() -> None:
    df = synthetic_labels(500)
    a = make_splits(df, seed=3)
    np.testing.assert_array_equal(a, make_splits(df, seed=3))
    assert (a != make_splits(df, seed=4)).any()


def test_stratified_without_view_column() -> None:
    df = synthetic_labels(400).drop(columns="view")
    split = make_splits(df, seed=0)
    for name in ("train", "val", "test"):
        assert df[split == name].target.mean() == pytest.approx(df.target.mean(), abs=0.03)


def test_splits_never_share_a_patient(tmp_path: Path) -> None:
    # positives with up to three box rows: the CSV has several rows for one patient
    rng = np.random.default_rng(0)
    lines = [HEADER.strip()]
    for i in range(300):
        if rng.random() < 0.3:
            lines += [f"p{i},{j},{j},10,10,1" for j in range(rng.integers(1, 4))]
        else:
            lines.append(f"p{i},,,,,0")
    path = write(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    labels = load_labels(path)
    assert len(labels) == 300 and labels.patientId.is_unique
    split = dict(zip(labels.patientId, make_splits(labels, seed=1), strict=True))
    rows = pd.read_csv(path)
    rows["split"] = rows.patientId.map(split)
    assert rows.groupby("patientId").split.nunique().max() == 1
    sets = [set(rows.patientId[rows.split == s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_course_split_full_size() -> None:
    df = pd.DataFrame({"patientId": np.arange(RSNA_N).astype(str), "target": 0})
    split = make_splits(df, rule="course")
    assert (split[:COURSE_TRAIN_N] == "train").all()
    assert (split[COURSE_TRAIN_N:] == "val").all()
    assert (split == "val").sum() == RSNA_N - COURSE_TRAIN_N == 2684


@pytest.mark.parametrize("n, n_train", [(100, 90), (60, 54), (1000, 899)])
def test_course_split_scales_for_small_folders(n: int, n_train: int) -> None:
    df = pd.DataFrame({"patientId": np.arange(n).astype(str), "target": 0})
    split = make_splits(df, rule="course", seed=5)
    assert n_train == round(n * COURSE_TRAIN_N / RSNA_N)
    assert split.tolist() == ["train"] * n_train + ["val"] * (n - n_train)


def test_unknown_split_rule() -> None:
    with pytest.raises(ValueError, match="random"):
        make_splits(synthetic_labels(20), rule="random")


# --- batches from the cache -------------------------------------------------------------------


@pytest.fixture(scope="module")
def index(demo_cache: Path) -> pd.DataFrame:
    return read_index(demo_cache)


def batches(loader: torch.utils.data.DataLoader, epoch: int = 0) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def loader(cache: Path, index: pd.DataFrame, **kw) -> torch.utils.data.DataLoader:
    args = {
        "batch_size": 8,
        "out_size": 48,
        "policy": AugmentPolicy(),
        "train": True,
        "seed": 0,
        "workers": 0,
    }
    return make_loader(cache, index, **{**args, **kw})


def test_train_batches_are_uint8_and_seeded(demo_cache: Path, index: pd.DataFrame) -> None:
    a = batches(loader(demo_cache, index))
    assert len(a) == -(-len(index) // 8)
    for b in a:
        assert b["images"].dtype == torch.uint8 and b["images"].shape[1:] == (48, 48)
        assert b["target"].dtype == torch.float32 and b["gain"].shape == b["target"].shape
    again = batches(loader(demo_cache, index))
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(a, again, strict=True))
    assert all(torch.equal(x["position"], y["position"]) for x, y in zip(a, again, strict=True))
    epoch1 = batches(loader(demo_cache, index), epoch=1)
    assert not all(
        torch.equal(x["position"], y["position"]) for x, y in zip(a, epoch1, strict=True)
    )
    other = batches(loader(demo_cache, index, seed=1))
    assert not all(torch.equal(x["images"], y["images"]) for x, y in zip(a, other, strict=True))


@pytest.mark.parametrize("train", [True, False])
def test_lookup_table_batches_give_the_same_model_input(
    demo_cache: Path, index: pd.DataFrame, train: bool
) -> None:
    """`normalise=(mean, std)`: the workers send tables instead of gain/bias, and the trainer's
    batch function turns both into the same input, bit for bit (1 worker vs in-process too)."""
    from pneumolib.core.runtime import to_device_batch

    stats, policy, cpu = CacheStats(0.45, 0.22, 64), AugmentPolicy(), torch.device("cpu")
    plain = batches(loader(demo_cache, index, train=train), epoch=1)
    tables = batches(
        loader(demo_cache, index, train=train, workers=1, normalise=(0.45, 0.22)), epoch=1
    )
    assert len(plain) == len(tables) > 1
    for a, b in zip(plain, tables, strict=True):
        assert "gain" not in b and b["luts"].shape == (len(b["target"]), 256)
        assert b["images"].dtype == torch.uint8
        kw = dict(size=48, policy=policy, stats=stats, train=train, seed=0, channels_last=False)
        xa, xb = to_device_batch(a, cpu, **kw), to_device_batch(b, cpu, **kw)
        assert xb.shape == (len(b["target"]), 1, 48, 48) and torch.equal(xa, xb)


def test_batches_do_not_depend_on_worker_count(demo_cache: Path, index: pd.DataFrame) -> None:
    big = np.zeros((1024, 1024), np.uint8)
    for _ in range(5):  # OpenCV's thread pool busy in this process before the workers fork
        cv2.resize(big, (300, 300), interpolation=cv2.INTER_AREA)
    a = batches(loader(demo_cache, index, workers=0), epoch=2)
    forked = loader(demo_cache, index, workers=2)
    forked.timeout = 60  # a worker stuck on a lock copied from this process fails, not hangs
    b = batches(forked, epoch=2)
    assert len(a) == len(b)
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(a, b, strict=True))


def test_eval_batches_are_the_cache_rows_in_order(demo_cache: Path, index: pd.DataFrame) -> None:
    out = batches(loader(demo_cache, index, train=False, warp_in_worker=False, batch_size=16))
    positions = torch.cat([b["position"] for b in out]).numpy()
    np.testing.assert_array_equal(positions, np.arange(len(index)))
    images = torch.cat([b["images"] for b in out]).numpy()
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, open_images(demo_cache)[index.row.to_numpy()])
    targets = torch.cat([b["target"] for b in out]).numpy()
    np.testing.assert_array_equal(targets, index.target.to_numpy(np.float32))
    assert "gain" not in out[0]


@pytest.mark.parametrize("n", [61, 64])
def test_ddp_ranks_cover_all_positions_once(n: int) -> None:
    targets = (np.arange(n) % 4 == 0).astype(int)
    per_rank = []
    for rank in (0, 1):
        s = EpochBatchSampler(targets, batch_size=8, shuffle=True, seed=3, rank=rank, world=2)
        s.set_epoch(1)
        got = [pos for _, _, pos in s]
        assert len(got) == len(s)
        per_rank.append(np.concatenate(got))
    a, b = per_rank
    assert len(a) == len(b) == -(-n // 2)  # every rank the same number of samples
    assert set(a) | set(b) == set(range(n))
    padding = n % 2
    assert len(a) + len(b) - n == padding
    assert len(set(a) & set(b)) <= padding
    assert len(set(a)) == len(a) and len(set(b)) == len(b)


def test_ddp_loader_shards_the_demo_cache(demo_cache: Path, index: pd.DataFrame) -> None:
    pos = [
        torch.cat([b["position"] for b in batches(loader(demo_cache, index, rank=r, world=2))])
        for r in (0, 1)
    ]
    a, b = (set(p.tolist()) for p in pos)
    assert a | b == set(range(len(index)))
    assert len(a & b) <= len(index) % 2


def test_balanced_sampling_draws_half_positives() -> None:
    targets = (np.random.default_rng(0).random(4000) < 0.1).astype(int)
    s = EpochBatchSampler(targets, batch_size=64, shuffle=True, seed=0, balanced=True)
    drawn = np.concatenate([pos for _, _, pos in s])
    assert len(drawn) == len(targets)
    assert targets[drawn].mean() == pytest.approx(0.5, abs=0.03)
    plain = EpochBatchSampler(targets, batch_size=64, shuffle=True, seed=0)
    assert targets[np.concatenate([pos for _, _, pos in plain])].mean() < 0.15


def test_balanced_loader_on_demo_cache(demo_cache: Path, index: pd.DataFrame) -> None:
    train = index[index.split == "train"].reset_index(drop=True)
    assert train.target.mean() < 0.4
    dl = loader(demo_cache, train, balanced=True)
    drawn = np.concatenate(
        [torch.cat([b["target"] for b in batches(dl, e)]).numpy() for e in range(10)]
    )
    assert drawn.mean() == pytest.approx(0.5, abs=0.1)


def test_with_label_view_is_a_pretext_target() -> None:
    from pneumolib.data.labels import with_label

    index = pd.DataFrame({"target": [1, 0, 0, 1], "view": ["AP", "PA", "AP", "PA"]})
    assert with_label(index, "pneumonia") is index
    view = with_label(index, "view")
    assert view.target.tolist() == [1, 0, 1, 0] and index.target.tolist() == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="unknown label 'sex'"):
        with_label(index, "sex")
    with pytest.raises(ValueError, match="AP or PA"):
        with_label(index.assign(view=["AP", "", "PA", "PA"]), "view")


# --- check_splittable --------------------------------------------------------------------


def _labels(n_pos: int, n_neg: int) -> pd.DataFrame:
    n = n_pos + n_neg
    return pd.DataFrame(
        {"patientId": [f"p{i}" for i in range(n)], "target": [1] * n_pos + [0] * n_neg}
    )


def test_a_split_without_positives_in_val_is_refused_with_what_it_needs():
    from pneumolib.data.labels import SplitError, check_splittable

    with pytest.raises(SplitError) as e:
        check_splittable(_labels(3, 60), rule="stratified", val_frac=0.15, test_frac=0.15, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "0 positives" in msg and "at least 4 positives" in msg
    split = check_splittable(
        _labels(4, 60), rule="stratified", val_frac=0.15, test_frac=0.15, seed=0
    )
    y = _labels(4, 60).target.to_numpy()
    for name in ("train", "val", "test"):
        assert 0 < y[split == name].sum() < (split == name).sum(), name


def test_no_test_split_asked_for_needs_none():
    from pneumolib.data.labels import SplitError, check_splittable

    split = check_splittable(
        _labels(4, 60), rule="stratified", val_frac=0.15, test_frac=0.0, seed=0
    )
    assert "test" not in set(split)
    with pytest.raises(SplitError, match="course"):  # course: val is the end of the CSV
        check_splittable(_labels(20, 40), rule="course")
