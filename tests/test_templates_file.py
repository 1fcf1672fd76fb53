"""``data.templates`` given as a file: text or JSON, validated, held in the config as templates."""

from __future__ import annotations

import json

import pytest

from benchmark.config import (
    ConfigError,
    build_run_config,
    model_defaults,
    parse_set,
    to_dict,
)
from datamodules.base import DataError
from datamodules.datamodule import DataConfig
from datamodules.folder import FolderDataModule
from datamodules.templates_file import MAX_LENGTH, read_templates


def test_text_file_one_template_per_line(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("# my templates\n\nFind {caption}\n   Show me {caption} please  \n# the end\n")
    assert read_templates(path) == ("Find {caption}", "Show me {caption} please")
    assert DataConfig(templates=str(path)).templates == ("Find {caption}", "Show me {caption} please")


def test_json_list_or_object(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(["Find {caption}", "Look for {caption}"]))
    assert read_templates(path) == ("Find {caption}", "Look for {caption}")
    path.write_text(json.dumps({"templates": ["A photo of {caption}"]}))
    assert read_templates(path) == ("A photo of {caption}",)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("t.txt", "Find {caption}\nno field here\n", "t.txt: line 2: .*must contain '{caption}'"),
        ("t.txt", "Find {caption} {x\n", "line 1: .*malformed"),
        ("t.txt", "Find {caption} {0}\n", "line 1: .*plain names"),
        ("t.txt", "# only a comment\n\n", "holds no template"),
        ("t.txt", "x{caption}" + "y" * MAX_LENGTH + "\n", f"at most {MAX_LENGTH}"),
        ("t.json", '["Find {caption}", 3]', r"templates\[1\]: expected a string"),
        ("t.json", '{"templates": "Find {caption}"}', "expected a JSON list"),
        ("t.json", '["Find {caption}",', "not valid JSON"),
    ],
)
def test_bad_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_templates(path)


def test_missing_or_binary_file(tmp_path):
    with pytest.raises(DataError, match="templates file not found"):
        read_templates(tmp_path / "nope.txt")
    (tmp_path / "b.txt").write_bytes(b"Find {caption}\n\xff\n")
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        read_templates(tmp_path / "b.txt")


def test_run_config_holds_the_templates_not_the_path(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("Find {caption}\n")
    cfg = build_run_config(model_defaults("clip"), {"dataset": "folder"}, parse_set([f"data.templates={path}"]))
    assert cfg.data.templates == ("Find {caption}",)
    assert to_dict(cfg)["data"]["templates"] == ["Find {caption}"]  # what the result file and the hash hold
    before = cfg.config_hash()
    path.write_text("Look for {caption}\n")
    again = build_run_config(model_defaults("clip"), {"dataset": "folder"}, parse_set([f"data.templates={path}"]))
    assert again.config_hash() != before and again.training_hash() != cfg.training_hash()
    path.write_text("no caption\n")
    with pytest.raises(ConfigError, match="templates.txt: line 1"):
        build_run_config(model_defaults("clip"), parse_set([f"data.templates={path}"]))
    # a list keeps working as before
    assert build_run_config(model_defaults("clip"), parse_set(['data.templates=["A {caption}"]'])).data.templates == (
        "A {caption}",
    )


def test_fields_the_folder_dataset_does_not_offer_are_refused(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("Find the {modality} image of {caption}\n")
    with pytest.raises(DataError, match=r"field \{modality\} is not offered by dataset 'folder'"):
        FolderDataModule(DataConfig(root=str(tmp_path), templates=str(path)))
