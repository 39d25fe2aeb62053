from pathlib import Path

from snnrun.reference import simulation_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_generated_from_the_schema():
    text = README.read_text()
    start = text.index("<!-- reference:simulate:start -->\n") + len("<!-- reference:simulate:start -->\n")
    end = text.index("<!-- reference:simulate:end -->")
    assert text[start:end] == simulation_reference(), "run: python -m snnrun.reference, paste into README.md"


def test_readme_gives_the_two_setup_commands():
    text = README.read_text()
    assert "make test" in text and "make simulate" in text
