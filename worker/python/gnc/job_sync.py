"""decide_job_sync: what a client does when it sees the S shards of its job — carry
on, rewind the job to a step every shard holds, or fail — so that no code path ever
trains on a mixed model (DESIGN section 6). The same decision as the C++ client's
DecideJobSync (worker/job_sync.cc), case for case and message for message.

Pure logic, no network: every client that sees the same shards decides the same, and
the shards' Rewind is idempotent by generation, so any number of clients may
coordinate at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class ShardJobView:
    """One shard's JobState as it answered a Join."""

    index: int = 0
    address: str = ""
    initialized: bool = False
    job_id: int = 0
    generation: int = 0
    step: int = 0
    rewind_steps: list[int] = field(default_factory=list)  # newest first
    diverged: bool = False


class SyncKind(enum.Enum):
    READY = 1  # consistent (or a new job that offers will fill in): carry on
    REWIND = 2  # send Rewind(job_id, step, generation) to `shards`, then look again
    FAIL = 3  # the job cannot go on without a mixed model: `message` says why


@dataclass
class SyncDecision:
    kind: SyncKind = SyncKind.READY
    job_id: int = 0  # the job's id, 0 when the job is new
    generation: int = 0  # READY: the job's generation; REWIND: the new one
    step: int = 0  # REWIND: the target step
    shards: list[int] = field(default_factory=list)  # REWIND: indices of the shards to rewind
    message: str = ""  # FAIL


def _describe(s: ShardJobView) -> str:
    if not s.initialized:
        return f"shard {s.index} ({s.address}) holds no job"
    return (f"shard {s.index} ({s.address}) is at step {s.step} of job {s.job_id:x} "
            f"generation {s.generation}{', diverged' if s.diverged else ''}")


def _fail(why: str, shards: Sequence[ShardJobView]) -> SyncDecision:
    return SyncDecision(SyncKind.FAIL, message=f"{why}: " + "; ".join(map(_describe, shards)))


def decide_job_sync(shards: Sequence[ShardJobView], known_job_id: int) -> SyncDecision:
    """The decision for `shards`; known_job_id is the job this client already belongs
    to (0 for a client that has not seen one yet).

      - a diverged shard, shards of different job ids, a job id other than the known
        one, or a blank shard beside a job past its start: FAIL, naming every shard
        and its step;
      - one generation and steps at most one apart (a straggler skip): READY;
      - shards of a newer generation that agree on a step the others can reach:
        finish that rewind (same generation);
      - otherwise: rewind everyone to the newest step every shard holds, in a
        generation above all; FAIL when there is none.
    """
    d = SyncDecision(job_id=known_job_id)
    live: list[ShardJobView] = []
    any_blank = any_started = False
    for s in shards:
        if s.diverged:
            return _fail(f"shard {s.index} diverged (a step made its parameters non-finite)",
                         shards)
        if not s.initialized:
            any_blank = True
            continue
        if s.step > 0 or s.generation > 0:
            any_started = True
        if d.job_id == 0:
            d.job_id = s.job_id
        if s.job_id != d.job_id:
            if known_job_id != 0 and s.job_id != known_job_id:
                why = f"shard {s.index} serves another job than this worker's job {known_job_id:x}"
            else:
                why = "the shards serve different jobs"
            return _fail(why, shards)
        live.append(s)
    if any_blank and (known_job_id != 0 or any_started):
        return _fail(
            "a shard came back without its state (no usable checkpoint) while the job has "
            "started; the job cannot go on without mixing models (restore the shard's "
            "--checkpoint_dir, or start the job again)", shards)
    if not live:
        return d  # a new job: the offers found it
    gen_min = min(s.generation for s in live)
    gen_max = max(s.generation for s in live)
    step_min = min(s.step for s in live)
    step_max = max(s.step for s in live)
    if gen_min == gen_max and step_max - step_min <= 1:
        d.generation = gen_max
        return d
    if gen_min != gen_max:
        # A rewind (or a restore) is under way: finish it if the newest generation
        # agrees on a step that every other shard can reach.
        newest = {s.step for s in live if s.generation == gen_max}
        if len(newest) == 1:
            target = newest.pop()
            others = [s for s in live if s.generation != gen_max]
            if all(target in s.rewind_steps for s in others):
                return SyncDecision(SyncKind.REWIND, job_id=d.job_id, generation=gen_max,
                                    step=target, shards=[s.index for s in others])
    # Rewind everyone to the newest step that every shard holds.
    common = [step for step in live[0].rewind_steps
              if all(step in s.rewind_steps for s in live)]
    if not common:
        return _fail("the shards hold no common step to rewind to", shards)
    return SyncDecision(SyncKind.REWIND, job_id=d.job_id, generation=gen_max + 1,
                        step=max(common), shards=[s.index for s in live])
