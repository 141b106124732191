"""An updated p-RNN end to end: the features tool writes the rows `update` needs (the
parent's items, then the new ones, in the updated model's order), the update takes them,
and the export of the updated model agrees with PyTorch."""

from __future__ import annotations

import numpy as np

from training.__main__ import main
from training.data.logs import read_events, write_events
from training.data.synthetic import generate_to_dir
from training.export import check_parity, export_model
from training.fit.train import load_model
from training.models.features import main as features_main


def test_the_features_tool_writes_the_rows_an_update_of_a_p_rnn_needs(tmp_path):
    paths = generate_to_dir(tmp_path / "data", n_items=60, n_sessions=240, seed=4, days=4)
    events = read_events(paths["train"])
    cut = events.Time.quantile(0.6)
    later = set(events[events.Time > cut].ItemId.unique()[:3])  # new in the update's clicks
    first = events[(events.Time <= cut) & ~events.ItemId.isin(later)]
    first = first[first.groupby("SessionId").SessionId.transform("size") >= 2]
    write_events(first, tmp_path / "first.tsv")
    write_events(events[events.Time > cut], tmp_path / "new.tsv")
    items = ["--items", str(paths["items"]), "--size", "16", "--batch-size", "64"]
    features_main(
        [*items, "--train", str(tmp_path / "first.tsv"), "--out", str(tmp_path / "f1.npy")]
    )
    params = ["--param", "architecture=feature", "--param", f"features={tmp_path / 'f1.npy'}"]
    params += ["--param", "layers=8", "--param", "n_epochs=1", "--param", "n_sample=16"]
    main(["train", "--train", str(tmp_path / "first.tsv"), "--out", str(tmp_path / "parent")]
         + params + ["--quiet"])  # fmt: skip

    update = ["--model", str(tmp_path / "parent"), "--train", str(tmp_path / "new.tsv")]
    update += ["--min-item-support", "1"]
    features_main([*items, *update, "--out", str(tmp_path / "f2.npy")])
    main(["update", *update, "--features", str(tmp_path / "f2.npy"), "--param", "n_epochs=1"]
         + ["--out", str(tmp_path / "child"), "--quiet"])  # fmt: skip
    parent, child = load_model(tmp_path / "parent"), load_model(tmp_path / "child")
    assert len(child.vocab) > len(parent.vocab) and set(later) <= set(child.vocab.ids)
    assert np.load(tmp_path / "f2.npy").shape[0] == len(child.vocab)
    export_dir = export_model(tmp_path / "child", tmp_path / "export")
    assert check_parity(tmp_path / "child", export_dir, n_sessions=8)["ok"]
