"""The odd-image corpus (tests/data/odd, made by make_odd.py) replayed through `llava-local chat`: every file either
gets an answer or one line on stderr that names it, with exit status 1; never a traceback, a bomb warning or
gigabytes of memory. The committed files are checked against the generator, so the corpus cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from llava_local.cli import main
from llava_local.preprocess import load_image

ODD = Path(__file__).resolve().parents[1] / "data" / "odd"

# file → the phrase of its one-line error; files not listed here must be answered
REFUSED = {
    "empty.png": "not a readable image",
    "text-named.png": "not a readable image",
    "svg-named.png": "not a readable image",
    "truncated.png": "not a readable image",
    "truncated.jpg": "not a readable image",
    "tall-1x40000.png": "longest side may be 32768",
    "claims-100000x100000.png": "the limit is 67 MP",
    "claims-12000x12000.png": "the limit is 67 MP",
}


def _generator():
    spec = importlib.util.spec_from_file_location("make_odd", ODD / "make_odd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_corpus_is_what_the_generator_writes():
    made = _generator().files()
    on_disk = {p.name for p in ODD.iterdir() if p.name != "make_odd.py" and not p.name.startswith(".")}
    assert on_disk == set(made) and set(REFUSED) < on_disk
    for name, data in made.items():
        assert (ODD / name).read_bytes() == data, name


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_files_get_one_line_naming_them(name, rt_bundle, capsys, recwarn):
    code = main(["chat", str(ODD / name), "--model", str(rt_bundle), "--prompt", "What is this?", "--max-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and name in err and REFUSED[name] in err, err
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_every_other_file_is_answered_in_one_chat(rt_bundle, capsys):
    answered = sorted(p for p in ODD.iterdir() if p.suffix != ".py" and p.name not in REFUSED)
    assert len(answered) >= 10
    code = main(["chat", *map(str, answered), "--model", str(rt_bundle), "--prompt", "What is this?",
                 "--max-tokens", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"images"' in out and out.count('"cached"') == len(answered)


def test_sixteen_bit_grey_keeps_its_range():
    rgb = np.asarray(load_image(ODD / "grey16.png"))
    assert rgb.min() == 0 and rgb.max() >= 250 and (rgb == 255).mean() < 0.01
