"""The shared command-line options: each option group of `arpo.core.settings` as Typer flags.

A command that starts runs declares the groups it takes as parameters,

    @with_option_groups
    def invert(image: Path, models: ModelOptions, brains: BrainOptions, loop: LoopOptions, ...):

and Typer sees one flag per field of each group (`clip_model` is `--clip-model`, its help the field's
description), so the ~25 flags that choose models and brains are written once for every command, with
the same names, help and precedence everywhere (`ArpoSettings.run_config`).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel

from arpo.core.settings import OPTION_GROUPS, ArpoSettings, BrainOptions, HistoryOptions, LoopOptions, ModelOptions

if TYPE_CHECKING:
    from arpo.storage.history import History

HELP_PANELS = {ModelOptions: "Models", BrainOptions: "Brains", LoopOptions: "Loop", HistoryOptions: "History"}
"""Where `--help` lists each group's flags."""

Out = Annotated[Optional[Path], typer.Option(help="Also write the images and result.json into this folder.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
RAY_HELP = (
    "Run the work on a Ray cluster: local (start one on this machine), auto (the cluster this machine "
    "belongs to) or a head's ADDRESS. Workers pull the work from a queue in --db, so on several machines "
    "use a shared PostgreSQL --db and a shared --images folder (pip install \"arpo[ray]\")."
)
InitPrompt = Annotated[Optional[str], typer.Option("--init-prompt", help="Start from this prompt instead of a caption.")]


def with_option_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` as Typer should see it: every parameter typed as an option group is replaced by one
    flag per field of the group, and the command is called with the group built from those flags (a
    bad value is one InvalidInputError naming its flag)."""
    hints = typing.get_type_hints(command, include_extras=True)
    groups: dict[str, type[BaseModel]] = {}
    parameters: list[inspect.Parameter] = []
    for parameter in inspect.signature(command).parameters.values():
        annotation = hints.get(parameter.name, parameter.annotation)
        if annotation in OPTION_GROUPS:
            groups[parameter.name] = annotation
            panel = HELP_PANELS.get(annotation)
            parameters += [_flag(name, field, panel) for name, field in annotation.model_fields.items()]
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
    _refuse_clashes(command, parameters)

    @functools.wraps(command)
    def with_groups(**given: Any) -> Any:
        for name, group in groups.items():
            given[name] = group.chosen(**{field: given.pop(field) for field in group.model_fields})
        return command(**given)

    with_groups.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_groups.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return with_groups


def open_history(settings: ArpoSettings, store: HistoryOptions) -> History:
    """The history the `--db` and `--images` flags (else ARPO_DB, ARPO_IMAGES, else the defaults) name."""
    from arpo.storage.history import History

    where = settings.history_location(store)
    return History.open(where.db, where.images)


def single_flag(group: type[BaseModel], name: str) -> Any:
    """One field of an option group as a parameter annotation, for a command that takes only that flag
    of the group (`arpo eval-set` renders references, so of the models it takes only the generator's)."""
    return _flag(name, group.model_fields[name]).annotation


def _flag(name: str, field: Any, panel: str | None = None) -> inspect.Parameter:
    """One field of an option group as a keyword parameter Typer turns into `--field-name`."""
    option = typer.Option(f"--{name.replace('_', '-')}", help=field.description, show_default=False, rich_help_panel=panel)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[_cli_type(field.annotation)], option]
    )


def _cli_type(annotation: Any) -> type:
    """The plain type Typer parses a field as: its int, float or str (choices are checked by the group,
    so that an unknown name gets the same one-line error everywhere)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation


def _refuse_clashes(command: Callable[..., Any], parameters: list[inspect.Parameter]) -> None:
    names = [parameter.name for parameter in parameters]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"{command.__name__}: option groups and parameters share the names {', '.join(twice)}")


# The model flags a command may take one by one (`arpo eval-set` renders references and loads nothing else).
Models = single_flag(ModelOptions, "models")
Device = single_flag(ModelOptions, "device")
Scheduler = single_flag(ModelOptions, "scheduler")
Dtype = single_flag(ModelOptions, "dtype")
