from pathlib import Path

from snnrun.reference import splice

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_generated_from_the_schema():
    text = README.read_text()
    assert splice(text) == text, "run: python -m snnrun.reference --write"


def test_readme_gives_the_two_setup_commands():
    text = README.read_text()
    assert "make test" in text and "make train" in text
