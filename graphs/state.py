"""The ARPO loop's graph state.

State holds plain, msgpack-serializable values only (ids, content hashes, strings, numbers), so every
checkpoint can be restored on resume. Pixels and tensors live in the image store and in the run's
context; the state names them by sha256.
"""

from __future__ import annotations

from typing import TypedDict


class ArpoInput(TypedDict, total=False):
    """What a caller hands the graph to start a run."""

    run_id: str
    """History id of this run; also the checkpoint thread id."""
    reference_sha256: str
    """Content hash of the reference image in the image store."""
    max_steps: int
    """Proposal rounds allowed before the loop stops (the thesis uses 10)."""
    seed: int
    """Noise seed for every generation, so iterations differ only by their prompt."""
    initial_prompt: str
    """Optional starting prompt; when empty the captioner writes P0."""


class ArpoState(ArpoInput, total=False):
    """Working state of one run, updated node by node."""

    prompt: str
    """The current prompt P_t."""
    iteration: int
    """Index t of the current iteration (0 is the initial prompt)."""
    reference_content: str
    """Content description of the reference (enhanced framework), made once per run."""
    reference_style: str
    """Style description of the reference (enhanced framework), made once per run."""
    generated_sha256: str
    """Image generated from the current prompt."""
    clip_t: float
    """CLIP similarity between the reference image and the current prompt as the T2I model sees it."""
    clip_i: float
    """CLIP similarity between the reference image and the image regenerated from the current prompt."""
    differences: str
    """What the comparer found between the reference and the current image."""
    candidates: list[str]
    """Phrases proposed in the current iteration."""
    tried: list[str]
    """Phrases proposed against `tried_against`; not proposed again while the prompt stays the same.
    Once the prompt changes they may come back: a phrase that did not help one prompt may help the next."""
    tried_against: str
    """The prompt `tried` was proposed against."""
    proposal: dict
    """Where the current candidates came from and what hygiene dropped (a storage ProposalRecord dump)."""
    best_prompt: str
    """Prompt whose regenerated image scored the highest CLIP-I so far."""
    best_clip_i: float
    """That prompt's CLIP-I."""
    best_iteration: int
    """Iteration at which the best prompt was generated."""
    stopped_because: str
    """Why the loop ended; set by the node that decides to stop."""
    seconds_spent: float
    """Wall time the run's nodes have taken so far, across resumes (a person's pauses do not count)."""
    refine_with: str
    """The refinement tool the next step runs (set when a round kept nothing, or by a person's reply)."""
    refined_against: str
    """The prompt the last refinement started from: a prompt is refined once before the loop stops."""
    rendered_prompt: str
    """The prompt of the latest render; the current prompt differs from it until it is rendered."""
    # Agent mode (graphs/agent_nodes.py); absent in runs of the fixed loop.
    agent_messages: list[dict]
    """The agent's conversation after the system prompt, as plain chat messages (the opening message,
    then each reply with the answers to its calls), trimmed to what is sent again."""
    agent_turns: int
    """Requests made to the agent so far (bounded per allowed generation)."""
    agent_strikes: int
    """Replies in a row of which nothing could run (no tool call, unknown tools, bad arguments)."""
    agent_ended: str
    """Why the agent stopped driving (it finished, a budget ended, or it gave up and the fixed loop took
    over); empty while it drives."""
    agent_report: list[str]
    """What the agent's last turn did, one line per call (the progress display reads it)."""
    compared_iteration: int
    """The iteration whose render `differences` describes (the agent compares each render once)."""
    judged: list[dict]
    """Every candidate the agent's selections judged against the current render (CandidateRecord
    dumps), so the iteration's record lists them all."""
    # Set by a person in a session (graphs/session_nodes.py); empty in unattended runs.
    feedback: list[str]
    """Notes from the person that the next proposal must address first; consumed by `propose`."""
    pinned: list[str]
    """Phrases the person pinned: kept in the prompt through every edit."""
    banned: list[str]
    """Phrases the person banned: never proposed or kept again."""
    unattended_left: int
    """Iterations still to run before the session asks the person again."""
    turns: int
    """How many replies the person has given (the position of the next one in the history)."""
    next_step: str
    """Where the person's last reply sends the session: compare, generate, review or finish."""


class ArpoRouting(TypedDict, total=False):
    """The part of the state the routers between nodes read (graphs/routing.py): each routed node hands
    its router the state as the node leaves it (graphs/builder.py)."""

    prompt: str
    rendered_prompt: str
    stopped_because: str
    refine_with: str
    next_step: str
    agent_ended: str


class ArpoOutput(TypedDict, total=False):
    """What a finished run returns."""

    run_id: str
    best_prompt: str
    best_clip_i: float
    prompt: str
    stopped_because: str
