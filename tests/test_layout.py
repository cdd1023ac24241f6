"""DatasetLayout: RxRx1 as its instance, the dict form (JSON round trip, unknown / missing keys refused by name),
validation of every field, and the layouts of the next data sets expressed without changing the class."""
from __future__ import annotations

import json

import pytest

from cellio.datasets.layout import (Channel, ControlGroup, DatasetLayout, IdFormats, Perturbations, PlateGeometry,
                                    row_label)
from cellio.datasets.rxrx1.layout import RXRX1
from cellio.errors import LayoutError


def _round_trip(layout: DatasetLayout) -> DatasetLayout:
    return DatasetLayout.from_dict(json.loads(json.dumps(layout.to_dict())))


def test_rxrx1_is_a_layout_with_the_rxrx1_facts():
    lay = RXRX1
    assert lay.name == "rxrx1" and lay.version == 1 and lay.pixel_dtype == "uint8" and lay.site_shape == (512, 512)
    assert lay.n_channels == 6 and lay.channel_keys == ("w1", "w2", "w3", "w4", "w5", "w6")
    assert lay.channel_names[0] == "Hoechst" and lay.channel_names[-1] == "WGA"
    assert lay.path_columns[2] == "path_w3" and lay.pixel_std_columns[5] == "pixel_std_w6"
    assert len(lay.wells) == 308 and lay.wells[:2] == ("B02", "B03") and lay.wells[-1] == "O23"
    assert (lay.plate.rows, lay.plate.columns) == (16, 24) and lay.sites_per_well == 2
    p = lay.perturbations
    assert p.label_column == "sirna" and p.n_treatments == 1108
    assert p.well_types == ("treatment", "negative_control", "positive_control")
    assert p.control("negative_control").labels == (1138,) and p.control("positive_control").labels[-1] == 1137
    assert lay.cell_types == ("HEPG2", "HUVEC", "RPE", "U2OS") and lay.splits == ("train", "test")
    assert lay.hidden_test_labels and lay.ids.well_id(experiment="HUVEC-07", plate=3, well="B03") == "HUVEC-07_3_B03"
    assert [c.color for _, c in lay.composite][0] == (19, 0, 249) and lay.max_value == 255
    assert lay.channel_index("MitoTracker") == 4 == lay.channel_index("w5")
    with pytest.raises(LayoutError, match="'DNA'.*Hoechst"):
        lay.channel_index("DNA")


def test_the_dict_form_round_trips_through_json():
    d = RXRX1.to_dict()
    assert d["layout_format"] == "1.0" and d["name"] == "rxrx1"
    assert d["site_shape"] == [512, 512] and d["channels"][0] == {"name": "Hoechst", "key": "w1",
                                                                   "color": [19, 0, 249], "display_range": [0, 51]}
    back = _round_trip(RXRX1)
    assert back == RXRX1 and hash(back) == hash(RXRX1)
    assert isinstance(back.channels, tuple) and isinstance(back.plate.used_columns, tuple)
    assert back.replace(site_shape=(17, 11)).site_shape == (17, 11) and RXRX1.site_shape == (512, 512)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(colour="red"), r"DatasetLayout: unknown keys \['colour'\]"),
    (lambda d: d.pop("channels"), r"DatasetLayout: missing keys \['channels'\]"),
    (lambda d: d["plate"].update(wells=3), r"DatasetLayout.plate: unknown keys \['wells'\]"),
    (lambda d: d["perturbations"]["controls"][0].pop("labels"),
     r"DatasetLayout.perturbations.controls\[0\]: missing keys \['labels'\]"),
    (lambda d: d.update(layout_format="2.0"), r"layout_format: expected 1.x .*found '2.0'"),
    (lambda d: d.pop("layout_format"), r"layout_format: expected 1.x .*found None"),
    (lambda d: d.update(pixel_dtype="float32"), r"pixel_dtype: expected one of \['uint8', 'uint16'\], found 'float32'"),
    (lambda d: d.update(site_shape=[0, 5]), r"site_shape height: expected a positive integer, found 0"),
    (lambda d: d["plate"].update(used_rows=["B", "Q"]), r"used_rows: expected row labels of a 16-row plate \(A..P\)"),
    (lambda d: d["channels"][1].update(name="Hoechst"), r"channel names: expected distinct values, found \['Hoechst'\]"),
    (lambda d: d["channels"][0].update(display_range=[0, 300]), r"display_range: expected values within 0..255"),
    (lambda d: d.update(splits=["train"]), r"hidden_test_labels: expected a 'test' split"),
    (lambda d: d["perturbations"]["controls"][0].update(labels=[7]), r"control labels outside the treatments"),
    (lambda d: d["ids"].update(well="{experiment}_{row}"), r"IdFormats.well: expected a template naming fields"),
])
def test_bad_dicts_are_refused_by_name(edit, match):
    d = json.loads(json.dumps(RXRX1.to_dict()))
    edit(d)
    with pytest.raises(LayoutError, match=match):
        DatasetLayout.from_dict(d)


def test_row_labels_run_past_z():
    assert [row_label(i) for i in (0, 25, 26, 31)] == ["A", "Z", "AA", "AF"]
    assert PlateGeometry(8, 12).wells[-1] == "H12" and len(PlateGeometry(8, 12).wells) == 96


def _channels(names: list[str], colours: bool = True, top: int = 4000) -> tuple[Channel, ...]:
    return tuple(Channel(n, n, (255, 255, 255) if colours else None, (0, top) if colours else None) for n in names)


NEXT = {
    # JUMP cpg0016: 5 fluorescence + 3 brightfield channels, 16-bit 1080^2 TIFFs, 9 fields, all 384 wells, compounds
    "jump": DatasetLayout(
        name="jump-cpg0016", version=1,
        channels=_channels(["DNA", "ER", "RNA", "AGP", "Mito"]) + _channels(
            ["Brightfield", "Brightfield_H", "Brightfield_L"], colours=False),
        pixel_dtype="uint16", site_shape=(1080, 1080), sites_per_well=9, plate=PlateGeometry(16, 24),
        perturbations=Perturbations("Metadata_JCP2022", 116_000, label_kind="str",
                                    controls=(ControlGroup("negcon", ("JCP2022_033924",)),),
                                    well_type_column="Metadata_pert_type", treatment_well_type="trt"),
        cell_types=("U2OS",), splits=("all",),
        ids=IdFormats(well="{plate}_{well}", site="{plate}_{well}_{site}")),
    # RxRx3-core: 1,536-well plates (rows A..AF), one site, genes and compounds at concentrations
    "rxrx3": DatasetLayout(
        name="rxrx3-core", version=1, channels=_channels([f"w{c}" for c in range(1, 7)], top=200), pixel_dtype="uint8",
        site_shape=(512, 512), sites_per_well=1, plate=PlateGeometry(32, 48),
        perturbations=Perturbations("treatment", 736 + 1674, label_kind="str",
                                    controls=(ControlGroup("empty_control", ("EMPTY_control",)),
                                              ControlGroup("crispr_control", ("CRISPR_control",))),
                                    columns=("gene", "concentration", "perturbation_type")),
        cell_types=("HUVEC",), splits=("all",)),
    # an OME-Zarr HCS plate of a 96-well geometry, 2 channels
    "ome": DatasetLayout(
        name="ome-zarr", version=1, channels=_channels(["c0", "c1"]), pixel_dtype="uint16", site_shape=(53, 70),
        sites_per_well=2, plate=PlateGeometry(8, 12), perturbations=Perturbations("condition", 3, label_kind="str"),
        cell_types=("unknown",)),
    # RxRx2: 1024^2 sites, up to 4 per well, soluble factors x concentrations
    "rxrx2": DatasetLayout(
        name="rxrx2", version=1, channels=RXRX1.channels, pixel_dtype="uint8", site_shape=(1024, 1024),
        sites_per_well=4, plate=PlateGeometry(32, 48), perturbations=Perturbations(
            "treatment", 434, label_kind="str", columns=("treatment_conc",)),
        cell_types=("HUVEC",), splits=("all",)),
}


@pytest.mark.parametrize("name", sorted(NEXT))
def test_the_next_data_sets_are_new_instances(name):
    lay = NEXT[name]
    assert _round_trip(lay) == lay
    if name == "rxrx3":
        assert len(lay.wells) == 1536 and lay.wells[-1] == "AF48" and "AA15" in lay.wells
    if name == "jump":
        assert lay.n_channels == 8 and lay.max_value == 65535 and len(lay.composite) == 5 and len(lay.wells) == 384


def test_a_channel_shown_in_the_composite_has_both_colour_and_range():
    with pytest.raises(LayoutError, match="color and display_range both set"):
        Channel("DNA", "DNA", (0, 0, 255), None)
    with pytest.raises(LayoutError, match=r"Channel.key: expected letters"):
        Channel("DNA", "ch 1")


def test_the_registry_names_each_data_set_once(tmp_path, monkeypatch, tiny_raw):
    import cellio
    from cellio.datasets import DatasetReader, find_dataset, get_dataset, list_datasets, register_dataset, registry

    assert cellio.get_layout("rxrx1") is RXRX1 and "rxrx1" in cellio.list_datasets()
    assert get_dataset("rxrx1").source_kind == "rxrx1-png"
    with pytest.raises(LayoutError, match=r"data set 'no-such-set' is unknown; expected one of \['rxrx1', 'rxrx2', "
                                          r"'rxrx3-core'"):
        get_dataset("no-such-set")
    assert find_dataset(tiny_raw).name == "rxrx1" and find_dataset(tmp_path) is None
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # registrations below end with the test
    ome = DatasetReader(NEXT["ome"], "ome-zarr", read_sites=lambda p: None, is_raw_dir=lambda p: False,
                        raw_description="an OME-Zarr plate")
    register_dataset(ome)
    assert get_dataset("ome-zarr") is ome and list_datasets()[0] == "ome-zarr" and "rxrx1" in list_datasets()
    with pytest.raises(LayoutError, match="'ome-zarr' is already registered"):
        register_dataset(ome)
    with pytest.raises(LayoutError, match="'rxrx1' is already registered"):
        register_dataset(get_dataset("rxrx1"))
