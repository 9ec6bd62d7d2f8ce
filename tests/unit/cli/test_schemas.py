"""``eventplatform schemas``: export the contract, and refuse a change that breaks it."""

import json

from eventplatform.cli.main import main


def test_schemas_out_writes_one_schema_per_event_type(tmp_path, capsys):
    assert main(["schemas", "domain", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Product.Created.v1.schema.json",
        "Product.Discontinued.v1.schema.json",
        "Product.PriceChanged.v1.schema.json",
        "Product.Renamed.v1.schema.json",
    ]
    assert "wrote" in capsys.readouterr().out


def test_schemas_check_passes_on_the_schemas_it_wrote(tmp_path, capsys):
    main(["schemas", "domain", "--out", str(tmp_path)])
    assert main(["schemas", "domain", "--check", str(tmp_path)]) == 0
    assert "compatible with" in capsys.readouterr().out


def test_schemas_check_fails_naming_a_field_the_code_no_longer_has(tmp_path, capsys):
    main(["schemas", "domain", "--out", str(tmp_path)])
    published = tmp_path / "Product.Renamed.v1.schema.json"
    schema = json.loads(published.read_text())
    schema["properties"]["colour"] = {"type": "string"}  # published once, gone from the code
    published.write_text(json.dumps(schema))
    assert main(["schemas", "domain", "--check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "BREAKING: Product.Renamed v1: field 'colour' was removed or renamed" in out
    assert "1 breaking change(s)" in out


def test_schemas_of_a_target_without_event_classes_is_a_configuration_error(tmp_path, capsys):
    assert main(["schemas", "projections", "--out", str(tmp_path)]) == 2
    assert "holds no event classes" in capsys.readouterr().err


def test_schemas_check_of_a_missing_directory_says_to_export_first(tmp_path, capsys):
    assert main(["schemas", "domain", "--check", str(tmp_path / "nope")]) == 2
    assert "export with --out first" in capsys.readouterr().err
