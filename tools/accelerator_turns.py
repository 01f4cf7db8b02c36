"""Whose turn it is on the accelerator: which large models live there, and which only visit.

A run uses several large models (the text-to-image pipeline, the CLIP scorer, the captioner, an
inverter's own networks), each in bursts. Where each one sits is decided here and nowhere else, so
"who is on the accelerator now" has one answer:

- by default the pipeline and the scorer are *residents*: loaded onto the accelerator and left there,
  so a turn costs nothing. The captioner, used once per run and the largest of them (BLIP-2 is about
  7 GB in half precision), rests in CPU memory and visits *for its turn* only (issue 11);
- with --low-vram every model rests in CPU memory and at most one of them is on the accelerator at a
  time: a model's turn first sends whichever other model is there home, and afterwards the model
  stays *until needed*, until another model's turn needs the room (a run of CLIP calls pays for one
  move, not one per call).

One `AcceleratorTurns` keeps the turns of one device and is shared by every model and stack of the
process that uses that device (`turns_on`), because the memory it rations is the device's, not a
stack's. A turn taken inside another model's turn (PH2P re-scoring its candidates with CLIP while it
holds the pipeline) sends the outer model home for the inner turn and brings it back after it, so the
outer code finds its model where it left it. Every move is counted and can be recorded, which is how
tests check the order of placements on a machine whose "accelerator" is its CPU.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import ContextManager

import torch

HOME = torch.device("cpu")
"""Where a model rests when it is not on the accelerator."""


class Stay(Enum):
    """How long a model stays on the accelerator."""

    RESIDENT = "resident"
    """Lives there from loading on; its turns move nothing."""
    FOR_TURN = "for turn"
    """Rests at home and goes back as soon as its turn ends."""
    UNTIL_NEEDED = "until needed"
    """Rests at home; after its turn it stays until another model's turn needs the room."""


@dataclass(frozen=True)
class Placement:
    """One recorded move: the model `seat` went to `device` ("cpu" when it went home)."""

    seat: str
    device: str


class Seat:
    """One large model's place in an accelerator's turns: its name, how long it stays, how it moves.

    `bring(device)` puts the model on the accelerator and `send_home()` puts it back in CPU memory;
    for a plain module these are `module.to(...)`, for a pipeline under diffusers' offload hooks they
    are what those hooks need (tools/pipeline_placement.py).
    """

    def __init__(
        self, name: str, *, stay: Stay, bring: Callable[[torch.device], object], send_home: Callable[[], object]
    ):
        self.name = name
        self.stay = stay
        self.bring = bring
        self.send_home = send_home

    @classmethod
    def for_module(cls, name: str, module: torch.nn.Module, *, stay: Stay) -> Seat:
        """The seat of a model that moves whole with `module.to`."""
        return cls(name, stay=stay, bring=lambda device: module.to(device), send_home=lambda: module.to(HOME))

    def __repr__(self) -> str:
        return f"Seat({self.name!r}, {self.stay.value})"


class AcceleratorTurns:
    """The turns on one device: at most one model that is not a resident is there at a time.

    Thread-safe. A turn of a visiting model holds a re-entrant lock for its length, so while one
    thread's model works on the accelerator no other thread can move another model there; residents
    take no lock, which leaves the default placement exactly as fast as it was.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.moves = 0
        """Models moved to or from the device so far (a benchmark figure: each move is a copy)."""
        self._lock = threading.RLock()
        self._holder: weakref.ref[Seat] | None = None
        self._active: list[Seat] = []  # the turns under way, outermost first (all in the lock's thread)
        self._recorders: list[list[Placement]] = []

    def turn(self, seat: Seat) -> ContextManager[None]:
        """While active, `seat`'s model is on this device and no other visiting model is."""
        if seat.stay is Stay.RESIDENT:
            return nullcontext()
        return self._visit(seat)

    @property
    def holder(self) -> str | None:
        """The name of the visiting model on the device now, if any."""
        seat = self._holder() if self._holder is not None else None
        return seat.name if seat is not None else None

    @contextmanager
    def recording(self) -> Iterator[list[Placement]]:
        """Every move made while active, in order, into the list it yields (it starts once a turn
        under way in another thread has ended)."""
        placements: list[Placement] = []
        with self._lock:
            self._recorders.append(placements)
        try:
            yield placements
        finally:
            with self._lock:
                self._recorders.remove(placements)

    def empty(self) -> None:
        """Send the visiting model home, unless a turn is under way (between the phases of a benchmark)."""
        with self._lock:
            if not self._active:
                self._vacate()

    @contextmanager
    def _visit(self, seat: Seat) -> Iterator[None]:
        with self._lock:
            self._active.append(seat)
            try:
                self._occupy(seat)
                yield
            finally:
                self._active.pop()
                if seat.stay is Stay.FOR_TURN and seat not in self._active:
                    self._vacate()
                if self._active:  # an outer turn goes on: its model comes back to where it was
                    self._occupy(self._active[-1])

    def _occupy(self, seat: Seat) -> None:
        current = self._holder() if self._holder is not None else None
        if current is seat:
            return
        self._vacate()
        try:
            seat.bring(self.device)
        except BaseException:
            seat.send_home()  # a move that failed halfway (out of memory) leaves nothing behind
            raise
        self._holder = weakref.ref(seat)
        self._record(seat.name, self.device)

    def _vacate(self) -> None:
        current = self._holder() if self._holder is not None else None
        self._holder = None
        if current is not None:
            current.send_home()
            self._record(current.name, HOME)

    def _record(self, name: str, device: torch.device) -> None:
        self.moves += 1
        placement = Placement(name, str(device))
        for placements in self._recorders:
            placements.append(placement)


_turns_by_device: dict[str, AcceleratorTurns] = {}
_registry_lock = threading.Lock()


def turns_on(device: torch.device | str) -> AcceleratorTurns:
    """The turns of `device`, shared by every model of this process that runs there.

    "cuda" and "cuda:0" (when 0 is the current device) are one accelerator, so they share one set of
    turns; a CPU device gets its own, whose moves are from the CPU to the CPU and cost nothing.
    """
    key = _physical_device(torch.device(device))
    with _registry_lock:
        if key not in _turns_by_device:
            _turns_by_device[key] = AcceleratorTurns(key)
        return _turns_by_device[key]


def _physical_device(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)
