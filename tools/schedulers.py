"""Noise schedulers by the names people use, and the one safe way to get a scheduler to step.

diffusers schedulers keep state between `step` calls: PNDM its `ets` history and counter, the
multistep DPM-Solver its previous model outputs, Euler its step index. Two generations (or two
optimisation steps) that share one scheduler object see each other's history, which either crashes
("backward through the graph a second time") or quietly changes the image. So nothing in arpo steps
`pipeline.scheduler` itself: every generation and every optimisation step asks `fresh_scheduler` for
a new object built from the pipeline's scheduler configuration.
"""

from __future__ import annotations

import copy
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from arpo.core.errors import InvalidInputError
from arpo.core.loop_activity import LOOP_ACTIVITY

if TYPE_CHECKING:  # diffusers is heavy; importing this module must stay cheap for light commands
    from diffusers import DiffusionPipeline
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

# User-facing name -> (diffusers class name, extra configuration). "dpm++" is DPM-Solver++ (2M), the
# common "DPM++ 2M" of other front ends.
SCHEDULER_CLASSES: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # as SD 1.5 ships it; the Runge-Kutta warm-up fails below 4 steps
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
}
SCHEDULER_NAMES = tuple(SCHEDULER_CLASSES)


def scheduler_class(name: str):
    """The diffusers scheduler class for a user-facing name; a one-line error for an unknown one."""
    import diffusers

    key = name.strip().lower()
    if key not in SCHEDULER_CLASSES:
        raise InvalidInputError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULER_NAMES)}")
    return getattr(diffusers, SCHEDULER_CLASSES[key][0])


def replace_scheduler(pipeline: DiffusionPipeline, name: str) -> None:
    """Give `pipeline` the named scheduler, keeping its noise schedule (betas, timestep spacing)."""
    cls = scheduler_class(name)
    _class_name, overrides = SCHEDULER_CLASSES[name.strip().lower()]
    pipeline.scheduler = cls.from_config(pipeline.scheduler.config, **overrides)


def fresh_scheduler(pipeline: DiffusionPipeline) -> SchedulerMixin:
    """A new scheduler of the pipeline's class and configuration, with no history of earlier steps.

    A copy of one never-stepped scheduler made from that configuration: building from the
    configuration validates it against the class signature on every call (~1 ms, once per render),
    where copying the unused one is ~0.1 ms and gives the same object. The copy for the next call is
    made ahead, on a thread of its own while the loop waits on a brain (core/loop_activity.py), so a
    render usually finds one ready.
    """
    template = pipeline.scheduler
    with _SPARES_LOCK:
        unused = _UNUSED_SCHEDULERS.get(template)
        if unused is None:
            unused = _UNUSED_SCHEDULERS[template] = type(template).from_config(template.config)
        spare = _SPARES.pop(template, None)
        wanted = template not in _SPARES_COMING
        if wanted:
            _SPARES_COMING.add(template)
    if wanted:
        _ask_for_spare(template, unused)
    return spare if spare is not None else copy.deepcopy(unused)


def _ask_for_spare(template: SchedulerMixin, unused: SchedulerMixin) -> None:
    """Have the next spare for `template` made ahead; once the interpreter is shutting down (a render
    still running on another thread after the main one ended) the executor takes nothing more, and
    every render copies for itself."""
    try:
        _spare_maker().submit(_make_spare, weakref.ref(template), unused)
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        with _SPARES_LOCK:
            _SPARES_COMING.discard(template)


def _make_spare(template_ref: weakref.ref, unused: SchedulerMixin) -> None:
    """Copy `unused` for the next `fresh_scheduler` call on its template, at a quiet moment of the loop.
    Nothing ever steps `unused`, so copying it beside a render is safe."""
    spare = None
    try:
        LOOP_ACTIVITY.wait_until_quiet()
        spare = copy.deepcopy(unused)
    finally:  # a failed copy leaves the next call to copy for itself, and to ask for a spare again
        template = template_ref()
        if template is not None:
            with _SPARES_LOCK:
                if spare is not None:
                    _SPARES.setdefault(template, spare)
                _SPARES_COMING.discard(template)


def _spare_maker() -> ThreadPoolExecutor:
    global _SPARE_MAKER
    with _SPARES_LOCK:
        if _SPARE_MAKER is None:
            _SPARE_MAKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arpo-spare-scheduler")
        return _SPARE_MAKER


_UNUSED_SCHEDULERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per pipeline scheduler in use, a scheduler built from its configuration and never stepped."""
_SPARES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per pipeline scheduler in use, one copy of its unused scheduler made ahead for the next call."""
_SPARES_COMING: weakref.WeakSet = weakref.WeakSet()
"""Pipeline schedulers whose next spare is being made."""
_SPARES_LOCK = threading.Lock()
_SPARE_MAKER: ThreadPoolExecutor | None = None


def scheduler_name(pipeline: DiffusionPipeline) -> str:
    """The user-facing name of the pipeline's scheduler, or its class name when it has none."""
    class_name = type(pipeline.scheduler).__name__
    for name, (known_class, _overrides) in SCHEDULER_CLASSES.items():
        if known_class == class_name:
            return name
    return class_name


def pipeline_view(pipeline: DiffusionPipeline) -> DiffusionPipeline:
    """The same pipeline (same models, same weights) with a fresh scheduler of its own, for one call.

    A shallow copy: the models are shared, but the scheduler and the attributes a pipeline's call sets
    on itself (guidance scale, step count, interrupt flag) belong to the copy, so concurrent or
    interleaved calls never see each other's denoising state. Setting the scheduler on the copy gives
    it its own configuration dict too; the original is left untouched.
    """
    view = copy.copy(pipeline)
    view.scheduler = fresh_scheduler(pipeline)
    return view
