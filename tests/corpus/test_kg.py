"""The knowledge graph: curated concepts + SLAKE import, validated on load, with the lookups the QA generator uses."""

import pytest
import yaml

from medlvr.corpus.kg.graph import KGError, build_from_files, load_graph, read_catalog


@pytest.fixture(scope="module")
def kg():
    return load_graph()


def test_every_catalog_label_resolves_to_a_concept(kg):
    labels, modalities = read_catalog()
    assert len(labels) >= 29
    for ds, mapping in labels.items():
        for raw, cid in mapping.items():
            assert kg.resolve(raw, dataset=ds) == cid, (ds, raw)
            assert kg.concept(cid)["name"], cid
    for ds, mod in modalities.items():
        assert kg.kind(kg.resolve(mod)) == "modality", (ds, mod)


def test_raw_spellings_from_different_datasets_meet_in_one_concept(kg):
    nih, vindr, det = (kg.resolve("Effusion", dataset="nih_bbox"), kg.resolve("Pleural effusion", dataset="vindr_cxr"),
                       kg.resolve("Effusion", dataset="chestx_det"))
    assert nih == vindr == det == "kg:pleural_effusion"
    # and without the dataset, by name/synonym only (case-insensitive)
    assert kg.resolve("Effusion") == kg.resolve("pleural EFFUSION") == "kg:pleural_effusion"
    assert kg.resolve("Infiltrate") == kg.resolve("Infiltration") == "kg:infiltration"
    assert kg.resolve("Nodule/Mass") == "kg:lung_nodule"
    assert kg.resolve("haemorrhage") == kg.resolve("hemorrhage") == "kg:hemorrhage"
    # a generic raw label is disambiguated by its dataset
    assert kg.resolve("Mass") == "kg:mass"
    assert kg.resolve("Mass", dataset="nih_bbox") == "kg:lung_mass"
    assert kg.resolve("no such finding") is None


def test_ancestors_siblings_neighbours_on_hand_checked_examples(kg):
    assert kg.ancestors("kg:kidney_tumor")[0] == "kg:kidney_mass"
    assert {"kg:kidney_mass", "kg:tumor", "kg:lesion", "kg:finding"} <= set(kg.ancestors("kg:kidney_tumor"))
    assert "kg:kidney_cyst" in kg.siblings("kg:kidney_tumor")
    assert "kg:kidney_tumor" not in kg.siblings("kg:kidney_tumor")
    assert set(kg.siblings("kg:intraretinal_fluid")) == {"kg:subretinal_fluid"}
    assert set(kg.siblings("kg:red_blood_cell")) == {"kg:white_blood_cell", "kg:platelet"}
    assert set(kg.siblings("kg:left_ventricle")) == {"kg:right_ventricle", "kg:left_atrium", "kg:right_atrium"}
    assert {"kg:consolidation", "kg:atelectasis"} <= set(kg.siblings("kg:infiltration"))
    # generic categories and nested regions are never siblings
    assert "kg:cancer" not in kg.siblings("kg:kidney_tumor")
    assert not {"kg:glioma_tumor_core", "kg:glioma_whole_tumor"} & set(kg.siblings("kg:enhancing_tumor"))
    nb = set(kg.neighbours("kg:optic_cup"))
    assert {"kg:optic_disc", "kg:retina", "kg:fundus_photography"} <= nb
    assert "kg:lung_disease" in kg.neighbours("kg:pneumonia")  # outgoing
    assert "kg:bacterial_pneumonia" in kg.neighbours("kg:pneumonia")  # incoming


def test_organ_system_location_and_differentials(kg):
    assert kg.organ_of("kg:kidney_tumor") == "kg:kidney"
    assert kg.system_of("kg:kidney_tumor") == "kg:urinary_system"
    assert kg.organ_of("kg:enhancing_tumor") == "kg:brain"
    assert kg.organ_of("kg:optic_cup") == "kg:eye"
    assert kg.system_of("kg:pleural_effusion") == "kg:respiratory_system"
    assert kg.system_of("kg:left_ventricle") == "kg:circulatory_system"
    same = kg.same_location("kg:liver_tumor")
    assert {"kg:hepatic_cyst", "kg:hepatic_abscess", "kg:fatty_liver"} <= set(same)
    assert "kg:hepatocellular_carcinoma" not in same and "kg:liver_tumor" not in same  # related: excluded
    assert "kg:kidney_cyst" not in same
    assert "kg:subretinal_fluid" in kg.differentials("kg:pigment_epithelial_detachment")
    assert "kg:pigment_epithelial_detachment" in kg.differentials("kg:subretinal_fluid")  # symmetric
    d = kg.distractors("kg:liver_tumor")
    assert d and not set(d) & kg.related("kg:liver_tumor")
    assert "kg:hepatocellular_carcinoma" not in d  # a descendant is not a wrong answer


def test_component_hierarchies(kg):
    assert kg.targets("kg:optic_cup", "component_of") == ["kg:optic_disc"]
    assert kg.targets("kg:enhancing_tumor", "component_of") == ["kg:glioma_tumor_core"]
    assert kg.targets("kg:glioma_tumor_core", "component_of") == ["kg:glioma_whole_tumor"]
    assert "kg:kidney" in kg._closure("kg:kidney_tumor", "component_of", up=True)


def test_appearance_text_reaches_facts(kg):
    facts = kg.facts("kg:pigment_epithelial_detachment")
    assert any("dome-shaped RPE elevation" in f and "OCT" in f for f in facts)


def test_slake_is_linked_and_its_facts_are_retrievable(kg):
    s = kg.stats()["slake"]
    assert s["diseases_linked"] > 30 and s["organs_linked"] > 20
    assert s["diseases_linked"] + s["diseases_unlinked"] == 302
    facts = kg.facts("kg:lung_cancer")
    assert any(f.startswith("Location of lung cancer") and "Lung" in f for f in facts), facts
    assert any(f.startswith("Symptom of pneumonia") for f in kg.facts("kg:pneumonia"))
    # organ -> system membership from en_organ_rel.csv (Tongue is not curated: it becomes a slake node)
    tongue = kg.resolve("Tongue")
    assert tongue and tongue.startswith("slake:")
    assert "kg:digestive_system" in kg.targets(tongue, "belongs_to_system")
    # a typo fixed by the explicit alias table
    assert "Miocardial Infarction" in kg.concept("kg:myocardial_infarction")["slake_names"]


def test_entity_terms_cover_names_synonyms_and_skip_modalities(kg):
    terms = kg.entity_terms()
    assert terms["pleural effusion"] == terms["effusion"] == "kg:pleural_effusion"
    assert terms["rpe"] == "kg:retinal_pigment_epithelium"
    assert "ct" not in terms and "computed tomography" not in terms
    assert "fissure" not in terms
    assert all(len(t) >= 3 for t in terms)


def test_stats_counts(kg):
    st = kg.stats()
    assert 200 <= st["concepts"] <= 400
    for rel in ("subclass_of", "located_in", "part_of", "belongs_to_system", "visible_on", "appearance_on",
                "differential_with", "component_of"):
        assert st["relations"][rel] > 0, rel


# ---------------------------------------------------------------------- validation on load
def _write(tmp_path, concepts, labels=None):
    (tmp_path / "concepts.yaml").write_text(yaml.safe_dump({"concepts": concepts}))
    cat = tmp_path / "catalog"
    cat.mkdir()
    (cat / "toy.yaml").write_text(yaml.safe_dump({"id": "toy", "modality": "CT",
                                                  "labels": labels or {"tumour": "kg:toy_tumor"}}))
    return tmp_path / "concepts.yaml", cat


GOOD = [
    {"id": "kg:ct", "type": "modality", "name": "CT"},
    {"id": "kg:organ_a", "type": "organ", "name": "organ a"},
    {"id": "kg:finding", "type": "finding", "name": "finding", "generic": True},
    {"id": "kg:toy_tumor", "type": "finding", "name": "toy tumour", "synonyms": ["tumour"],
     "subclass_of": ["kg:finding"], "located_in": ["kg:organ_a"], "visible_on": ["kg:ct"]},
]


def test_small_valid_graph_loads(tmp_path):
    path, cat = _write(tmp_path, GOOD)
    kg = build_from_files(path, cat, with_slake=False)
    assert kg.resolve("tumour", dataset="toy") == "kg:toy_tumor"
    assert kg.organ_of("kg:toy_tumor") == "kg:organ_a"


def test_validation_catches_a_dangling_edge(tmp_path):
    bad = [*GOOD[:3], {**GOOD[3], "located_in": ["kg:nowhere"]}]
    path, cat = _write(tmp_path, bad)
    with pytest.raises(KGError, match="dangling edge.*kg:nowhere"):
        build_from_files(path, cat, with_slake=False)


def test_validation_catches_a_subclass_cycle(tmp_path):
    bad = [*GOOD, {"id": "kg:a", "type": "finding", "name": "a", "subclass_of": ["kg:b"], "generic": True},
           {"id": "kg:b", "type": "finding", "name": "b", "subclass_of": ["kg:a"], "generic": True}]
    path, cat = _write(tmp_path, bad)
    with pytest.raises(KGError, match="subclass_of has a cycle"):
        build_from_files(path, cat, with_slake=False)


def test_validation_catches_a_missing_catalog_concept(tmp_path):
    path, cat = _write(tmp_path, GOOD, labels={"tumour": "kg:toy_tumor", "cyst": "kg:toy_cyst"})
    with pytest.raises(KGError, match="kg:toy_cyst"):
        build_from_files(path, cat, with_slake=False)


def test_validation_catches_duplicates_and_structure(tmp_path):
    cases = {
        "duplicate concept id": [*GOOD, dict(GOOD[1])],
        "names both": [*GOOD, {"id": "kg:organ_b", "type": "organ", "name": "Organ A"}],
        "no subclass_of parent": [*GOOD, {"id": "kg:orphan", "type": "finding", "name": "orphan",
                                          "located_in": ["kg:organ_a"]}],
        "no located_in/part_of": [*GOOD, {"id": "kg:nowhere", "type": "finding", "name": "nowhere",
                                          "subclass_of": ["kg:finding"]}],
    }
    for message, concepts in cases.items():
        sub = tmp_path / message.replace(" ", "_").replace("/", "_")
        sub.mkdir()
        path, cat = _write(sub, concepts)
        with pytest.raises(KGError, match=message):
            build_from_files(path, cat, with_slake=False)


def test_raw_label_resolving_elsewhere_is_an_error(tmp_path):
    other = {"id": "kg:other", "type": "finding", "name": "other", "synonyms": ["blob"],
             "subclass_of": ["kg:finding"], "located_in": ["kg:organ_a"]}
    path, cat = _write(tmp_path, [*GOOD, other], labels={"blob": "kg:toy_tumor"})
    with pytest.raises(KGError, match="resolves to kg:other"):
        build_from_files(path, cat, with_slake=False)

