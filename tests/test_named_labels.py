"""Named labels in the trainer (trainer/training/labels.py): a layout that labels wells by name (RxRx3-core's gene or
compound, RxRx2's soluble factor) gets a vocabulary from the site table, a treatment given at several doses is a
class per dose, every site's class id goes to the loader, and the vocabulary travels in the checkpoint."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cellio
from cellio.errors import ConfigError
from trainer.training.labels import ClassMap, class_names, dose_column


def _rxrx3_sites() -> pd.DataFrame:
    """A site table in RxRx3-core's vocabulary: two genes (guides are replicates), a compound at two doses, another
    at one, both control kinds, and a treatment row whose label is empty (no class)."""
    rows = [("GENE2", "CRISPR", "GENE2_guide_1", np.nan), ("GENE2", "CRISPR", "GENE2_guide_2", np.nan),
            ("GENE1", "CRISPR", "GENE1_guide_1", np.nan), ("Cpd-B", "COMPOUND", "Cpd-B", 0.25),
            ("Cpd-B", "COMPOUND", "Cpd-B", 10.0), ("Cpd-A", "COMPOUND", "Cpd-A", 0.0025),
            ("EMPTY_control", "CRISPR", "EMPTY_control", np.nan), ("CRISPR_control", "COMPOUND", "CRISPR_control",
                                                                   np.nan), ("", "CRISPR", "", np.nan)]
    frame = pd.DataFrame(rows, columns=["perturbation", "perturbation_type", "treatment", "concentration"])
    frame["well_type"] = ["treatment"] * 6 + ["empty_control", "crispr_control", "treatment"]
    frame["dataset"] = "train"
    frame["gene"] = frame["perturbation"].where(frame["perturbation_type"] == "CRISPR", "")
    frame["SMILES"] = ""
    frame.attrs["layout"] = cellio.get_layout("rxrx3-core")
    return frame


def test_the_vocabulary_is_the_sorted_treatments_at_their_doses_then_the_controls():
    sites = _rxrx3_sites()
    assert dose_column(sites) == "concentration"  # numeric, and varies within Cpd-B
    cm = ClassMap.from_sites(sites, include_controls=True)
    assert cm.names == ("Cpd-A @ 0.0025", "Cpd-B @ 0.25", "Cpd-B @ 10", "GENE1", "GENE2",
                        "CRISPR_control", "EMPTY_control")
    assert cm.classes == tuple(range(7)) and cm.columns == ("perturbation", "concentration")
    # each row's id is its name's position; the unlabelled treatment row has none
    assert cm.row_ids(sites).tolist() == [4, 4, 3, 1, 2, 0, 6, 5, -1]
    assert cm.loader_labels(sites, np.array([2, 5, 8])) == {2: 3, 5: 0, 8: -1}
    assert [cm.name(i) for i in (0, 6)] == ["Cpd-A @ 0.0025", "EMPTY_control"]
    assert ClassMap.from_dict(cm.to_dict()) == cm  # what a checkpoint records
    # without the controls as classes, they have no id (the loader then yields -1: not trained on)
    treat = ClassMap.from_sites(sites, include_controls=False)
    assert treat.names == cm.names[:5] and treat.row_ids(sites)[6:].tolist() == [-1, -1, -1]


def test_dose_column_none_pools_a_compounds_doses_and_a_bad_column_names_the_key():
    sites = _rxrx3_sites()
    pooled = ClassMap.from_sites(sites, include_controls=False, dose="none")
    assert pooled.names == ("Cpd-A", "Cpd-B", "GENE1", "GENE2") and pooled.columns == ("perturbation",)
    assert pooled.row_ids(sites)[[3, 4]].tolist() == [1, 1]
    for bad in ("dose", "treatment"):  # absent; not numeric
        with pytest.raises(ConfigError, match=rf"data.dose_column='{bad}'.*numeric column.*'concentration'"):
            ClassMap.from_sites(sites, include_controls=False, dose=bad)
    # a dose that never varies within a label is no dose: the label alone
    one = sites[sites["perturbation"] != "Cpd-B"].copy()
    one.attrs = sites.attrs
    assert dose_column(one) is None
    assert ClassMap.from_sites(one, include_controls=False).names == ("Cpd-A", "GENE1", "GENE2")


def test_rxrx2_untreated_wells_keep_their_empty_label_as_the_control_class():
    sites = pd.DataFrame({"treatment": ["TNF-alpha", "TNF-alpha", "IL-6", ""], "treatment_conc": [0.1, 1.0, 0.1, np.nan],
                          "well_type": ["treatment"] * 3 + ["untreated"], "dataset": "train"})
    sites.attrs["layout"] = cellio.get_layout("rxrx2")
    cm = ClassMap.from_sites(sites, include_controls=True)
    assert cm.names == ("IL-6 @ 0.1", "TNF-alpha @ 0.1", "TNF-alpha @ 1", "")
    assert class_names(sites, cm.columns).tolist() == list(np.array(cm.names)[[1, 2, 0, 3]])


def test_class_id_labels_are_unchanged():
    # RxRx1's sirna: the raw id is the label, no vocabulary, no dose, the checkpoint's dict as before
    sites = pd.DataFrame({"sirna": pd.array([5, 2, 1138, pd.NA], dtype="Int64"), "dataset": "train",
                          "well_type": ["treatment", "treatment", "negative_control", "treatment"]})
    cm = ClassMap.from_sites(sites, include_controls=True, dose="auto")
    assert cm.classes == (2, 5, 1138) and cm.names is None and cm.to_dict() == {"classes": [2, 5, 1138]}
    assert cm.row_ids(sites).tolist() == [5, 2, 1138, -1] and cm.loader_labels(sites, np.arange(4)) is None
    assert dose_column(sites, "concentration") is None and cm.name(5) == 5


def test_a_named_class_map_is_checked():
    with pytest.raises(ConfigError, match="unique"):
        ClassMap((0, 1), ("A", "A"), ("perturbation",))
    with pytest.raises(ConfigError, match="positions 0..1"):
        ClassMap((0, 2), ("A", "B"), ("perturbation",))
    with pytest.raises(ConfigError, match="columns"):
        ClassMap((0,), ("A",))
