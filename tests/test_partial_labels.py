"""Partially labelled data: the record file, the MTPSL importer, readers that skip unlabelled files, the batch's
``labelled`` masks, losses and meters over the labelled samples only, and the synthetic one / random settings."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from taskprompter.cli import main
from taskprompter.config import load_config
from taskprompter.data import build_dataset, collate, to_tensors
from taskprompter.data.partial import (
    import_mtpsl,
    labelled_counts,
    load_mtpsl_file,
    read_labelled_tasks,
    record_path,
    write_labelled_tasks,
)
from taskprompter.data.transforms import train_transform
from taskprompter.engine.distributed import Dist
from taskprompter.engine.evaluate import evaluate, format_table, reader_options
from taskprompter.errors import ConfigError, DataError
from taskprompter.losses import MultiTaskLoss

NYUD_TRAIN = ["000000", "000001", "000002", "000003"]  # the shared synthetic tree's train split


@pytest.fixture
def nyud(synthetic_nyud_root, tmp_path):
    """A writable copy of the shared synthetic NYUD tree (train 000000..000003, val 000004..000005)."""
    return shutil.copytree(synthetic_nyud_root, tmp_path / "NYUDv2")


# ------------------------------------------------------------------------------------------------- the record


def test_record_round_trip_and_counts(tmp_path):
    path = write_labelled_tasks(tmp_path / "r.json", {"train": {"a": ["normals", "semseg"], "b": []}})
    data = json.loads(path.read_text())
    assert data["format"] == "taskprompter.labelled_tasks" and data["version"] == 1
    assert data["splits"]["train"] == {"a": ["semseg", "normals"], "b": []}  # canonical task order
    record = read_labelled_tasks(path)
    assert record == {"train": {"a": frozenset({"semseg", "normals"}), "b": frozenset()}}
    assert labelled_counts(record["train"], ["semseg", "depth", "normals"]) == {"semseg": 1, "depth": 0, "normals": 1}


def test_record_errors_name_the_file_id_and_task(nyud):
    path = record_path(nyud)
    full = {i: ["semseg"] for i in NYUD_TRAIN}
    write_labelled_tasks(path, {"train": {i: full[i] for i in NYUD_TRAIN[:2]}})
    with pytest.raises(DataError, match=rf"{path}.*'train'.*missing '000002', '000003'"):
        build_dataset("nyud", nyud, "train", None)
    write_labelled_tasks(path, {"train": {**full, "000003": ["semseg", "human_parts"]}})  # not a NYUD task
    with pytest.raises(DataError, match=rf"{path}.*id '000003'.*'human_parts'"):
        build_dataset("nyud", nyud, "train", None)
    write_labelled_tasks(path, {"train": {**full, "999999": ["depth"]}})
    with pytest.raises(DataError, match=rf"{path}.*no id '999999'"):
        build_dataset("nyud", nyud, "train", None)
    path.write_text(json.dumps({"format": "something else", "version": 1, "splits": {}}))
    with pytest.raises(DataError, match=rf"{path}.*not a labelled-tasks record"):
        build_dataset("nyud", nyud, "train", None)
    path.write_text(json.dumps({"format": "taskprompter.labelled_tasks", "version": 1,
                                "splits": {"train": {"000000": "semseg"}}}))
    with pytest.raises(DataError, match=rf"{path}.*id '000000'.*list of task names"):
        build_dataset("nyud", nyud, "train", None)
    assert build_dataset("nyud", nyud, "train", None, options={"labelled_tasks": "all"}).labelled is None
    write_labelled_tasks(path, {"train": full})
    assert build_dataset("nyud", nyud, "train", None).labelled["000001"] == {"semseg"}
    assert build_dataset("nyud", nyud, "val", None).labelled is None  # a split not listed is fully labelled


# ------------------------------------------------------------------------------------------------- the importer


def test_mtpsl_labels_weights_matrix_rows_are_the_split_ids(nyud, tmp_path, capsys):
    weights = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    source = tmp_path / "onelabel.pth"
    torch.save({"labels_weights": weights}, source)  # MTPSL data/nyuv2_settings/onelabel.pth
    argv = ["labelled-tasks", "import", "--from", "mtpsl", str(source), "--root", str(nyud), "--format", "nyud"]
    assert main(argv) == 0
    assert read_labelled_tasks(record_path(nyud))["train"] == {
        "000000": {"semseg"}, "000001": {"depth"}, "000002": {"normals"}, "000003": {"semseg", "depth"}}
    assert main(argv) == 2  # the split exists: replacing it needs --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    assert main(["labelled-tasks", "show", "--root", str(nyud), "--format", "nyud"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images" in out and "semseg 2, depth 2, normals 1, edge 0" in out
    torch.save({"labels_weights": weights[:3]}, source)  # one row short
    with pytest.raises(DataError, match="3 rows .* 4 ids"):
        import_mtpsl(load_mtpsl_file(source), ids=NYUD_TRAIN, columns=["semseg", "depth", "normals"],
                     source=str(source))


def test_mtpsl_pascal_dicts_by_image_name_and_by_task(tmp_path):
    ids = ["2008_000002", "2008_000003", "2008_000007"]
    columns = ["semseg", "human_parts", "sal", "normals", "edge"]
    by_name = tmp_path / "new_onelabel.pth"  # {img_name: flags}, DiffusionMTL line data/ssl_mapping/pascal/
    torch.save({ids[0]: torch.tensor([0, 0, 1, 0, 0]), ids[1]: torch.tensor([1, 0, 0, 0, 1]),
                ids[2]: torch.tensor([0, 1, 0, 0, 0])}, by_name)
    expected = {ids[0]: {"sal"}, ids[1]: {"semseg", "edge"}, ids[2]: {"human_parts"}}
    assert import_mtpsl(load_mtpsl_file(by_name), ids=ids, columns=columns, source="f") == expected
    by_task = tmp_path / "onelabel.npy"  # {task: image names}, a pickled dict
    np.save(by_task, np.array({"sal": [ids[0]], "semseg": [ids[1]], "edge": [ids[1]], "human_parts": [ids[2]],
                               "normals": []}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="--allow-pickle"):
        load_mtpsl_file(by_task)
    assert import_mtpsl(load_mtpsl_file(by_task, allow_pickle=True), ids=ids, columns=columns, source="f") == expected
    torch.save({ids[0]: torch.tensor([0, 0, 1, 0])}, by_name)  # four flags for five columns
    with pytest.raises(DataError, match="image '2008_000002'.*4 task flags.*5 tasks"):
        import_mtpsl(load_mtpsl_file(by_name), ids=ids, columns=columns, source="f")


# ------------------------------------------------------------------------------------------------- readers


def test_reader_never_opens_the_files_of_unlabelled_tasks(nyud):
    record = {"000000": ["semseg"], "000001": ["depth", "normals"], "000002": [], "000003": ["edge"]}
    write_labelled_tasks(record_path(nyud), {"train": record})
    kept = {"semseg": "segmentation/{}.png", "depth": "depth/{}.npy", "normals": "normals/{}.png",
            "edge": "edge/{}.png"}
    for sid, tasks in record.items():
        for task, pattern in kept.items():
            if task not in tasks:
                (nyud / pattern.format(sid)).unlink()  # an unlabelled task's file may not exist
    ds = build_dataset("nyud", nyud, "train", None)
    assert all(ds.check_headers(i) == [] and ds.problems(i) == [] for i in range(len(ds)))
    for i, sid in enumerate(ds.ids):
        raw = ds.load_raw(i)
        assert raw["labelled"] == {t: t in record[sid] for t in ds.tasks}
        hw = raw["image"].shape[:2]
        for task in set(ds.tasks) - set(record[sid]):  # filled with the task's "no label" value
            fill = {"semseg": 255, "edge": 255, "depth": 0.0, "normals": 0.0}[task]
            assert (raw[task] == fill).all() and raw[task].shape[:2] == hw, (sid, task)
    assert (ds.load_raw(1)["depth"] > 0).any()  # a labelled task is read
    (nyud / "depth" / "000001.npy").unlink()
    with pytest.raises(DataError, match="000001.npy"):
        ds.load_raw(1)
    # the flags go through the training transform unchanged, as bool tensors
    ds = build_dataset("nyud", nyud, "train", ["semseg", "edge"], transform=train_transform((32, 32), ["semseg"]))
    sample = ds.get(0, np.random.default_rng(0))
    assert sample["labelled"] == {"semseg": torch.tensor(True), "edge": torch.tensor(False)}
    assert (sample["edge"] == 255).all() and sample["labelled"]["edge"].dtype == torch.bool


def test_pascal_reader_skips_the_context_mat_of_unlabelled_normals_and_edge(synthetic_pascal_root, tmp_path):
    root = shutil.copytree(synthetic_pascal_root, tmp_path / "PASCALContext")
    ids = (root / "ImageSets" / "Context" / "train.txt").read_text().split()
    write_labelled_tasks(record_path(root), {"train": {i: ["semseg"] for i in ids}})
    for folder in ("pascal-context/trainval", "human_parts", "normals_distill", "sal_distill"):
        shutil.rmtree(root / folder)  # LabelMap (edge, normals mask), parts, normals, saliency: none labelled
    ds = build_dataset("pascal_context", root, "train", None)
    assert ds.check_headers(0) == [] and ds.problems(0) == []
    raw = ds.load_raw(0)
    assert (raw["normals"] == 0).all() and (raw["human_parts"] == 255).all() and (raw["sal"] == 255).all()


def test_cityscapes3d_disparity_fill_is_minus_one_and_3ddet_is_refused(tmp_path):
    from taskprompter.data.synthetic import generate

    root = generate(tmp_path / "Cityscapes", format="cityscapes3d", num=3, size=(32, 64), split_ratio=2 / 3)
    ids = build_dataset("cityscapes3d", root, "train", ["semseg"], options={"drop_empty": False}).ids
    write_labelled_tasks(record_path(root), {"train": {ids[0]: ["semseg", "3ddet"], ids[1]: ["depth", "3ddet"]}})
    ds = build_dataset("cityscapes3d", root, "train", ["semseg", "depth"], options={"drop_empty": False})
    assert (ds.load_raw(0)["depth"] == -1.0).all()  # -1 is invalid disparity, 0 a valid one
    write_labelled_tasks(record_path(root), {"train": {ids[0]: ["semseg", "3ddet"], ids[1]: ["depth"]}})
    with pytest.raises(DataError, match="3ddet cannot be partially labelled.*no objects"):
        build_dataset("cityscapes3d", root, "train", ["semseg", "3ddet"], options={"drop_empty": False})


def test_collate_stacks_the_labelled_flags_into_bool_masks():
    samples = [to_tensors({"semseg": np.zeros((2, 2), np.int64), "labelled": {"semseg": s, "depth": d}})
               for s, d in ((True, False), (False, False), (True, True))]
    batch = collate(samples)
    assert set(batch["labelled"]) == {"semseg", "depth"}
    assert batch["labelled"]["semseg"].dtype == torch.bool and batch["labelled"]["semseg"].shape == (3,)
    assert batch["labelled"]["semseg"].tolist() == [True, False, True]
    assert batch["labelled"]["depth"].tolist() == [False, False, True]


# ------------------------------------------------------------------------------------------------- losses

DENSE = {"semseg": 5, "depth": 1, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}


def _batch(seed: int, mask: list[bool], *, b: int = 4, h: int = 8, w: int = 10) -> tuple[dict, dict]:
    """Random outputs (at half the label size) and a batch whose unlabelled samples hold valid-looking labels: a
    loss that counted them would differ."""
    g = torch.Generator().manual_seed(seed)
    outputs = {t: torch.randn(b, c, h // 2, w // 2, generator=g, requires_grad=True) for t, c in DENSE.items()}
    batch = {t: torch.randint(0, c, (b, h, w), generator=g) for t, c in DENSE.items() if c > 1 and t != "sal"}
    batch["sal"] = torch.randint(0, 2, (b, h, w), generator=g)
    batch["edge"] = torch.randint(0, 2, (b, h, w), generator=g)
    batch["depth"] = torch.rand(b, 1, h, w, generator=g) * 5
    batch["normals"] = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    batch["labelled"] = {t: torch.tensor(mask) for t in DENSE}
    return outputs, batch


def _sub(outputs: dict, batch: dict, mask: list[bool]) -> tuple[dict, dict]:
    m = torch.tensor(mask)
    return {t: v[m] for t, v in outputs.items()}, {t: v[m] for t, v in batch.items() if t != "labelled"}


@pytest.mark.parametrize("zero_valid", [False, True])
def test_loss_of_a_mixed_batch_is_exactly_that_of_its_labelled_sub_batch(zero_valid):
    crit = MultiTaskLoss(list(DENSE), zero_depth_valid=zero_valid)
    mask = [True, False, True, False]
    outputs, batch = _batch(0, mask)
    if zero_valid:
        batch["depth"][1] = 0.0  # a valid disparity in an unlabelled sample: must not count
    mixed = crit(outputs, batch)  # local statistics
    alone = crit(*_sub(outputs, batch, mask))
    for task in DENSE:
        assert torch.equal(mixed[task], alone[task]), task  # bit for bit, not approximately
    mixed["total"].backward()
    for task in DENSE:
        assert outputs[task].grad[~torch.tensor(mask)].abs().sum() == 0, task  # unlabelled samples get no gradient
    # global statistics summed over two micro-batches, as train.loss_normalization=global computes them
    mask2 = [False, True, True, True]
    outputs2, batch2 = _batch(1, mask2)
    stats = {t: crit.batch_stats(batch)[t] + crit.batch_stats(batch2)[t] for t in DENSE}
    subs = [_sub(outputs, batch, mask), _sub(outputs2, batch2, mask2)]
    ref = {t: crit.batch_stats(subs[0][1])[t] + crit.batch_stats(subs[1][1])[t] for t in DENSE}
    assert all(torch.equal(stats[t], ref[t]) for t in DENSE)
    for (out, b), (sub_out, sub_b) in zip(((outputs, batch), (outputs2, batch2)), subs):
        got, want = crit(out, b, stats), crit(sub_out, sub_b, ref)
        assert all(torch.equal(got[t], want[t]) for t in DENSE)


def test_a_batch_without_labelled_samples_gives_exactly_zero():
    crit = MultiTaskLoss(list(DENSE))
    outputs, batch = _batch(2, [False] * 4)
    losses = crit(outputs, batch)
    assert all(losses[t].item() == 0.0 for t in DENSE) and losses["total"].item() == 0.0
    assert all(v.sum() == 0 for t, v in crit.batch_stats(batch).items() if t != "sal")
    losses["total"].backward()  # a graph through every output (DDP: no unused head), with zero gradient
    assert all(outputs[t].grad is not None and outputs[t].grad.abs().sum() == 0 for t in DENSE)


# ------------------------------------------------------------------------------------------------- evaluation


class _Lookup(torch.nn.Module):
    """Outputs stored per sample; the image's first value says which sample it is."""

    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        index = images[:, 0, 0, 0].long()
        return {t: v[index] for t, v in self.outputs.items()}


def test_evaluation_counts_only_the_labelled_samples_of_each_task():
    def onehot(labels):  # (2, 2) class ids -> (40, 2, 2) logits
        return torch.nn.functional.one_hot(torch.tensor(labels), 40).permute(2, 0, 1).float()

    pred_sem = [[[1, 1], [2, 2]], [[0, 0], [0, 0]], [[1, 1], [2, 2]]]
    true_sem = [[[1, 1], [2, 2]], [[3, 3], [3, 3]], [[1, 2], [1, 2]]]  # sample 1's labels are not its own
    true_depth = [5.0, 2.0, 4.0]  # sample 0's depth is not labelled
    labelled = [{"semseg": True, "depth": False, "normals": False}, {"semseg": False, "depth": True, "normals": False},
                {"semseg": True, "depth": True, "normals": False}]
    samples = [{"image": torch.full((3, 2, 2), float(i)), "semseg": torch.tensor(true_sem[i]),
                "depth": torch.full((1, 2, 2), true_depth[i]), "normals": torch.zeros(3, 2, 2),
                "meta": {"id": str(i)}, "labelled": {t: torch.tensor(v) for t, v in labelled[i].items()}}
               for i in range(3)]
    model = _Lookup({"semseg": torch.stack([onehot(p) for p in pred_sem]), "depth": torch.ones(3, 1, 2, 2),
                     "normals": torch.ones(3, 3, 2, 2)})
    dist = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="no sample of the split is labelled for normals"):
        results = evaluate(model, samples, tasks={"semseg": 40, "depth": 1, "normals": 3}, dataset_format="nyud",
                           dist=dist, batch_size=2)
    # semseg on samples 0 and 2: 6 of 8 pixels right; classes 1 and 2 each tp 3 of (tp+fp+fn) 5 -> mIoU 1.2/40
    assert results["semseg"]["pixel_acc"] == pytest.approx(75.0) and results["semseg"]["mIoU"] == pytest.approx(3.0)
    # depth on samples 1 and 2: errors 1 and 3 on 4 pixels each
    assert results["depth"]["rmse"] == pytest.approx(math.sqrt((4 * 1 + 4 * 9) / 8))
    assert results["semseg"]["num_samples"] == 2 and results["depth"]["num_samples"] == 2
    assert results["normals"]["num_samples"] == 0 and math.isnan(results["normals"]["mean"])
    table = format_table(results)
    assert "no labelled sample" in table and "(n 2)" in table and "num_samples" not in table


def test_fully_labelled_evaluation_reports_every_sample():
    samples = [{"image": torch.full((3, 2, 2), float(i)), "depth": torch.full((1, 2, 2), 2.0), "meta": {"id": str(i)},
                "labelled": {"depth": torch.tensor(True)}} for i in range(3)]
    dist = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = evaluate(_Lookup({"depth": torch.ones(3, 1, 2, 2)}), samples, tasks={"depth": 1},
                           dataset_format="nyud", dist=dist, batch_size=2)
    assert results["depth"]["num_samples"] == 3 and results["depth"]["rmse"] == pytest.approx(1.0)
    assert "(n " not in format_table(results)


# ------------------------------------------------------------------------------------------------- config, synth


def test_config_labelled_tasks_reaches_the_readers(nyud):
    write_labelled_tasks(record_path(nyud), {"train": {i: ["depth"] for i in NYUD_TRAIN}})
    sets = ["data.format=nyud", f"data.root={nyud}", "data.tasks=[semseg, depth]"]
    cfg = load_config(None, sets)
    assert cfg.data.labelled_tasks == "auto" and reader_options(cfg)["labelled_tasks"] == "auto"
    ds = build_dataset("nyud", nyud, "train", ["semseg", "depth"], options=reader_options(cfg))  # as train.py does
    assert ds.labelled is not None and ds.load_raw(0)["labelled"] == {"semseg": False, "depth": True}
    cfg = load_config(None, [*sets, "data.labelled_tasks=all"])
    assert build_dataset("nyud", nyud, "train", None, options=reader_options(cfg)).labelled is None
    other = write_labelled_tasks(nyud / "mine.json", {"train": {i: ["semseg"] for i in NYUD_TRAIN}})
    cfg = load_config(None, [*sets, f"data.labelled_tasks={other}"])
    assert build_dataset("nyud", nyud, "train", None, options=reader_options(cfg)).labelled["000000"] == {"semseg"}
    with pytest.raises(ConfigError, match="data.labelled_tasks instead"):
        reader_options(load_config(None, [*sets, "data.reader_options.labelled_tasks=all"]))


def test_check_data_prints_the_record_summary(nyud, capsys):
    write_labelled_tasks(record_path(nyud), {"train": {i: ["depth"] for i in NYUD_TRAIN}})
    shutil.rmtree(nyud / "normals")  # no train image is labelled for normals or edge: their files may go
    for sid in NYUD_TRAIN:
        (nyud / "edge" / f"{sid}.png").unlink()
    assert main(["check-data", "--format", "nyud", "--root", str(nyud), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "partial labels" in out and "train: 4 images" in out and "depth 4" in out and "semseg 0" in out


@pytest.mark.parametrize("setting", ["one", "random"])
def test_synth_partial_labels(setting, tmp_path):
    root = tmp_path / "n"
    argv = ["synth", "--format", "nyud", "--out", str(root), "--num", "12", "--size", "16", "24",
            "--split-ratio", "0.75", "--partial-labels", setting, "--partial-seed", "3"]
    assert main(argv) == 0
    train = (root / "gt_sets" / "train.txt").read_text().split()
    record = read_labelled_tasks(record_path(root))
    assert list(record) == ["train"] and sorted(record["train"]) == sorted(train)  # val stays fully labelled
    per_image = [len(v) for v in record["train"].values()]
    counts = labelled_counts(record["train"], ["semseg", "depth", "normals", "edge"])
    if setting == "one":
        assert per_image == [1] * len(train) and max(counts.values()) - min(counts.values()) <= 1
    else:
        assert min(per_image) >= 1 and max(per_image) > 1
    assert all((root / "depth" / f"{i}.npy").is_file() for i in train)  # every label file is written
    assert build_dataset("nyud", root, "train", None, options={"labelled_tasks": "all"}).labelled is None
    again = tmp_path / "m"
    assert main([*argv[:4], str(again), *argv[5:]]) == 0
    assert read_labelled_tasks(record_path(again)) == record  # a function of the seed
