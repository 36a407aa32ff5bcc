"""The command line's one vocabulary: each concept has one flag in every command (the README's table).

Walks every leaf of `cli.COMMANDS`, every field of its config (nested dataclasses included), and fails on a
known synonym of a vocabulary word, a preset name outside its set, an absolute default path, or a field
without a docstring in its `--help`.
"""

import ast
import dataclasses
import inspect
import pathlib
import re
import textwrap
import typing

import pytest
import tyro

from biojepac import cli

SYNONYMS = {
    "train": "screen",
    "data_fpath": "screen",
    "h5ad_fpath": "screen",
    "src_fpath": "screen",
    "dst_fpath": "out",
    "out_fpath": "out",
    "results_dpath": "out_dpath",
    "db_fpath": "db",
    "shard_fpaths": "shards",
    "features_fpath": "features",
    "ntc_name": "control",
    "counts": "requests",
    "state_steps": "steps_scale",
    "fresh": "overwrite",
    "restart": "overwrite",
    "clobber": "overwrite",
    "no_resume": "overwrite",
}
"""Field name -> the vocabulary word to use instead (anywhere in a command, nested configs included)."""
TOP_LEVEL_SYNONYMS = {"n_steps": "steps_scale"}
"""Names allowed inside a nested config but not as a command's own flag."""
MODEL_PRESETS = {"tiny", "cpu-small", "paper", "state_sm", "state", "state_lg"}  # the last three: arc-state's ST sizes (issue 15)
SCREEN_PRESETS = {"tiny", "demo", "realistic"}
POSITIONAL = typing.get_args(tyro.conf.Positional[int])[1]


def leaf_commands(table=cli.COMMANDS, prefix=()):
    for name, entry in table.items():
        if isinstance(entry, dict):
            yield from leaf_commands(entry, prefix + (name,))
        elif entry:
            yield prefix + (name,), entry[1]


LEAVES = list(leaf_commands())


@dataclasses.dataclass(frozen=True)
class Field:
    dotted: str
    """Name as tyro prefixes it (`ooc.target`)."""
    hint: object
    """Resolved annotation (extras kept)."""
    default: object
    """Default value, or `dataclasses.MISSING`."""
    doc: str
    """The field's docstring in the source ('' if none)."""


def field_docstrings(cls: type) -> dict[str, str]:
    """Docstring under each annotated field of a dataclass (and its dataclass bases)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = nxt.value.value
    return docs


def walk_fields(cls: type, prefix: str = "") -> list[Field]:
    hints, docs = typing.get_type_hints(cls, include_extras=True), field_docstrings(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        out.append(Field(prefix + f.name, hints[f.name], default, docs.get(f.name, "").strip()))
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            out += walk_fields(hints[f.name], f"{prefix}{f.name}.")
    return out


def literal_values(hint) -> set:
    if typing.get_origin(hint) is typing.Annotated:
        return literal_values(typing.get_args(hint)[0])
    if typing.get_origin(hint) is typing.Literal:
        return set(typing.get_args(hint))
    return set().union(*(literal_values(a) for a in typing.get_args(hint))) if typing.get_args(hint) else set()


def vocabulary_errors(cls: type) -> list[str]:
    errors = []
    for f in walk_fields(cls):
        name = f.dotted.rsplit(".", 1)[-1]
        if name in SYNONYMS:
            errors.append(f"{f.dotted}: use `{SYNONYMS[name]}`")
        if "." not in f.dotted and name in TOP_LEVEL_SYNONYMS:
            errors.append(f"{f.dotted}: use `{TOP_LEVEL_SYNONYMS[name]}`")
        if name.endswith("preset"):
            allowed = SCREEN_PRESETS if name == "screen_preset" else MODEL_PRESETS
            values = literal_values(f.hint) | ({f.default} if isinstance(f.default, str) else set())
            if not values or not values <= allowed:
                errors.append(f"{f.dotted}: preset values {sorted(values)} not within {sorted(allowed)}")
        defaults = f.default if isinstance(f.default, tuple) else (f.default,)
        for value in defaults:
            if isinstance(value, pathlib.PurePath) and value.is_absolute() or isinstance(value, str) and value.startswith(("/", "~")):
                errors.append(f"{f.dotted}: absolute default path {value!r}")
    return errors


@pytest.mark.parametrize("path,config_ref", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_one_word_per_concept(path, config_ref):
    assert vocabulary_errors(cli._load(config_ref)) == []


def test_the_check_catches_the_old_names():
    """The vocabulary check fails on the flags the commands used to have."""

    @dataclasses.dataclass(frozen=True)
    class Old:
        train: pathlib.Path
        """Training screen."""
        out_fpath: pathlib.Path = pathlib.Path("/home/someone/out.h5ad")
        """Output."""
        preset: typing.Literal["tiny", "demo", "realistic"] = "demo"
        """Screen size."""
        n_steps: int = 10
        """Steps."""

    assert [e.split(":")[0] for e in vocabulary_errors(Old)] == ["train", "out_fpath", "out_fpath", "preset", "n_steps"]


def _plain(text: str) -> str:
    """Help text without the box drawing and line wrapping, for substring checks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("path,config_ref", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_field_is_documented_in_help(path, config_ref, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # fewer wrapped lines; _plain undoes the rest
    with pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    plain = _plain(help_text)
    for f in walk_fields(cli._load(config_ref)):
        assert f.doc, f"{' '.join(path)}: field {f.dotted} has no docstring"
        is_positional = typing.get_origin(f.hint) is typing.Annotated and POSITIONAL in typing.get_args(f.hint)[1:]
        is_group = isinstance(f.hint, type) and dataclasses.is_dataclass(f.hint)  # its docstring heads its group
        if not (is_positional or is_group):
            flag = "--" + f.dotted.replace("_", "-")
            assert re.search(re.escape(flag) + r"[\s,]", help_text), f"{' '.join(path)}: {flag} missing from --help"
        first_words = " ".join(f.doc.split()[:4])
        assert first_words in plain, f"{' '.join(path)}: docstring of {f.dotted} ({first_words!r}...) missing from --help"
