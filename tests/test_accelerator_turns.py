"""AcceleratorTurns on its own: the order of moves it orders, for each way a model can stay.

The seats here move nothing: each records where it was told to go, so the tests read the policy's
decisions directly, and a check inside `bring` sees the device the moment a model arrives.
"""

import gc
import threading
import time

import pytest
import torch

from arpo.tools.accelerator_turns import HOME, AcceleratorTurns, Placement, Seat, Stay, turns_on

DEVICE = "cpu:0"  # a device of its own, told apart from HOME ("cpu") by name


class Room:
    """Where each recorded seat is, and a check that no two visitors are on the device at once."""

    def __init__(self):
        self.where: dict[str, str] = {}
        self.crowded: list[tuple[str, ...]] = []

    def seat(self, name: str, stay: Stay = Stay.UNTIL_NEEDED) -> Seat:
        self.where[name] = str(HOME)

        def bring(device):
            self.where[name] = str(device)
            on_device = tuple(other for other, place in self.where.items() if place == str(device))
            if len(on_device) > 1:
                self.crowded.append(on_device)

        def send_home():
            self.where[name] = str(HOME)

        return Seat(name, stay=stay, bring=bring, send_home=send_home)


@pytest.fixture
def room():
    return Room()


@pytest.fixture
def turns():
    return AcceleratorTurns(DEVICE)


def test_a_model_stays_until_another_needs_the_room(room, turns):
    clip, pipeline = room.seat("clip"), room.seat("pipeline")
    with turns.recording() as moves:
        for _ in range(3):
            with turns.turn(clip):
                assert room.where["clip"] == DEVICE
        with turns.turn(pipeline):
            assert room.where == {"clip": "cpu", "pipeline": DEVICE}
    # Three CLIP calls in a row cost one move; the pipeline's turn first sends CLIP home.
    assert moves == [Placement("clip", DEVICE), Placement("clip", "cpu"), Placement("pipeline", DEVICE)]
    assert turns.holder == "pipeline" and room.crowded == []


def test_a_visitor_for_its_turn_leaves_when_it_ends(room, turns):
    captioner = room.seat("captioner", Stay.FOR_TURN)
    with turns.recording() as moves:
        with turns.turn(captioner):
            assert room.where["captioner"] == DEVICE
        assert room.where["captioner"] == "cpu" and turns.holder is None
    assert moves == [Placement("captioner", DEVICE), Placement("captioner", "cpu")]


def test_residents_never_move_and_take_no_lock(room, turns):
    resident = room.seat("pipeline", Stay.RESIDENT)
    started = threading.Event()

    def hold_the_device():
        with turns.turn(room.seat("captioner")):
            started.set()
            time.sleep(0.5)

    with turns.recording() as moves:
        holder = threading.Thread(target=hold_the_device)
        holder.start()
        started.wait()
        began = time.perf_counter()
        with turns.turn(resident):
            waited = time.perf_counter() - began
        holder.join()
    assert [move.seat for move in moves] == ["captioner"]  # turns never move a resident
    assert room.where["pipeline"] == "cpu"
    assert waited < 0.25  # a resident's turn does not wait for a visitor's


def test_an_inner_turn_sends_the_outer_model_home_and_brings_it_back(room, turns):
    pipeline, clip = room.seat("whole pipeline"), room.seat("clip")
    with turns.recording() as moves:
        with turns.turn(pipeline):
            with turns.turn(clip):  # PH2P re-scoring its candidates while it holds the pipeline
                assert room.where == {"whole pipeline": "cpu", "clip": DEVICE}
            assert room.where == {"whole pipeline": DEVICE, "clip": "cpu"}
            with turns.turn(pipeline):  # the same model again: nothing moves
                pass
    assert [(move.seat, move.device) for move in moves] == [
        ("whole pipeline", DEVICE), ("whole pipeline", "cpu"), ("clip", DEVICE), ("clip", "cpu"),
        ("whole pipeline", DEVICE),
    ]
    assert room.crowded == []


def test_a_failed_move_leaves_the_model_home_and_the_device_free(room, turns):
    other = room.seat("clip")
    with turns.turn(other):
        pass

    def out_of_memory(device):
        room.where["captioner"] = str(device)
        raise RuntimeError("CUDA out of memory")

    captioner = room.seat("captioner")
    failing = Seat("captioner", stay=Stay.UNTIL_NEEDED, bring=out_of_memory, send_home=captioner.send_home)
    with pytest.raises(RuntimeError, match="out of memory"), turns.turn(failing):
        pass
    assert room.where == {"clip": "cpu", "captioner": "cpu"} and turns.holder is None


def test_an_error_inside_a_turn_still_restores_the_outer_turn(room, turns):
    pipeline, clip = room.seat("pipeline"), room.seat("clip")
    with turns.turn(pipeline):
        with pytest.raises(ValueError), turns.turn(clip):
            raise ValueError("bad image")
        assert room.where["pipeline"] == DEVICE and turns.holder == "pipeline"


def test_threads_never_have_two_visitors_on_the_device(room, turns):
    seats = [room.seat(name) for name in ("clip", "pipeline", "captioner", "regressor")]
    errors = []

    def work(seat):
        try:
            for _ in range(25):
                with turns.turn(seat):
                    assert room.where[seat.name] == DEVICE
                    time.sleep(0.0005)
                    assert room.where[seat.name] == DEVICE  # nobody moved it away mid-turn
        except AssertionError as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seat,)) for seat in seats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and room.crowded == []
    assert sum(place == DEVICE for place in room.where.values()) == 1


def test_emptying_sends_the_lingering_model_home(room, turns):
    clip = room.seat("clip")
    with turns.turn(clip):
        turns.empty()  # not while its turn is under way
        assert room.where["clip"] == DEVICE
    turns.empty()
    assert room.where["clip"] == "cpu" and turns.holder is None


def test_a_dropped_model_is_not_kept_alive_by_its_last_turn(turns):
    module = torch.nn.Linear(4, 4)
    seat = Seat.for_module("dropped", module, stay=Stay.UNTIL_NEEDED)
    with turns.turn(seat):
        pass
    assert turns.holder == "dropped"
    del seat, module
    gc.collect()
    assert turns.holder is None


def test_one_set_of_turns_per_device_for_the_whole_process():
    assert turns_on("cpu") is turns_on(torch.device("cpu"))
    assert turns_on("cpu") is not turns_on("cpu:0")
    assert turns_on("meta").device == torch.device("meta")


def test_a_module_seat_moves_the_module_itself():
    module = torch.nn.Linear(2, 2).to(torch.float64)
    seat = Seat.for_module("linear", module, stay=Stay.UNTIL_NEEDED)
    turns = AcceleratorTurns("meta")  # moving to meta really changes where the parameters are
    with turns.turn(seat):
        assert module.weight.device.type == "meta"
    assert turns.holder == "linear"
