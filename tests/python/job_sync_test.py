"""gnc.job_sync.decide_job_sync against hand-made shard states: the cases of the C++
client's tests/worker/job_sync_test.cc, one for one (plus one), so that a Python and a
C++ worker that see the same shards decide the same."""

from __future__ import annotations

import unittest

import gnc_testlib

_, UNITTEST_ARGV = gnc_testlib.setup(["gnc.job_sync"])

from gnc.job_sync import ShardJobView, SyncKind, decide_job_sync  # noqa: E402


def live(index: int, job: int, gen: int, step: int, steps=()) -> ShardJobView:
    return ShardJobView(index=index, address=f"127.0.0.1:{7000 + index}", initialized=True,
                        job_id=job, generation=gen, step=step,
                        rewind_steps=list(steps) if steps else [step])


def blank(index: int) -> ShardJobView:
    return ShardJobView(index=index, address=f"127.0.0.1:{7000 + index}")


class JobSyncTest(unittest.TestCase):

    def test_new_job_is_ready(self) -> None:
        d = decide_job_sync([blank(0), blank(1)], 0)
        self.assertEqual(d.kind, SyncKind.READY)
        self.assertEqual(d.job_id, 0)
        # Shard 0 took w0 already, shard 1 not yet: the offer fills it in.
        d = decide_job_sync([live(0, 7, 0, 0), blank(1)], 0)
        self.assertEqual(d.kind, SyncKind.READY)
        self.assertEqual(d.job_id, 7)

    def test_running_job_within_one_step_is_ready(self) -> None:
        d = decide_job_sync([live(0, 7, 3, 100), live(1, 7, 3, 101)], 7)
        self.assertEqual(d.kind, SyncKind.READY)
        self.assertEqual(d.generation, 3)

    def test_blank_shard_in_a_started_job_fails_naming_every_shard(self) -> None:
        for known in (0, 7):
            d = decide_job_sync([live(0, 7, 0, 1002), blank(1)], known)
            self.assertEqual(d.kind, SyncKind.FAIL, known)
            self.assertIn("shard 0 (127.0.0.1:7000) is at step 1002", d.message)
            self.assertIn("shard 1 (127.0.0.1:7001) holds no job", d.message)
        # A worker of a job whose every shard came back blank must not start a new one.
        self.assertEqual(decide_job_sync([blank(0), blank(1)], 7).kind, SyncKind.FAIL)
        # ... while a restarted worker of the same lost job (knowing no id) starts afresh.
        self.assertEqual(decide_job_sync([blank(0), blank(1)], 0).kind, SyncKind.READY)

    def test_different_jobs_or_diverged_fail(self) -> None:
        self.assertEqual(decide_job_sync([live(0, 7, 0, 5), live(1, 8, 0, 5)], 0).kind,
                         SyncKind.FAIL)
        self.assertEqual(decide_job_sync([live(0, 8, 0, 5), live(1, 8, 0, 5)], 7).kind,
                         SyncKind.FAIL)
        bad = live(1, 7, 0, 5)
        bad.diverged = True
        d = decide_job_sync([live(0, 7, 0, 5), bad], 7)
        self.assertEqual(d.kind, SyncKind.FAIL)
        self.assertIn("diverged", d.message)

    def test_restored_shard_pulls_the_others_back_to_its_step(self) -> None:
        # Shard 1 restored its checkpoint of step 100 (generation 2 -> 3); shard 0 ran
        # on to 103 and holds checkpoints of 100 and 90.
        d = decide_job_sync([live(0, 7, 2, 103, [103, 100, 90]), live(1, 7, 3, 100, [100, 90])],
                            7)
        self.assertEqual(d.kind, SyncKind.REWIND)
        self.assertEqual(d.step, 100)
        self.assertEqual(d.generation, 3)
        self.assertEqual(d.shards, [0])
        # Once applied, everyone is at (3, 100): ready.
        d = decide_job_sync([live(0, 7, 3, 100, [100, 90]), live(1, 7, 3, 100, [100, 90])], 7)
        self.assertEqual(d.kind, SyncKind.READY)

    def test_unreachable_target_falls_back_to_the_newest_common_step(self) -> None:
        # Shard 1 drained at step 103 and restored it; shard 0 went on to 104 and has
        # no checkpoint of 103: both go back to 100 in a new generation.
        d = decide_job_sync([live(0, 7, 2, 104, [104, 100, 90]), live(1, 7, 3, 103, [103, 100])],
                            7)
        self.assertEqual(d.kind, SyncKind.REWIND)
        self.assertEqual(d.step, 100)
        self.assertEqual(d.generation, 4)
        self.assertEqual(d.shards, [0, 1])

    def test_two_restored_shards_at_different_steps_rewind_together(self) -> None:
        d = decide_job_sync([live(0, 7, 5, 100, [100, 90]), live(1, 7, 5, 90, [90, 80])], 7)
        self.assertEqual(d.kind, SyncKind.REWIND)
        self.assertEqual(d.step, 90)
        self.assertEqual(d.generation, 6)

    def test_one_generation_two_steps_apart_rewinds(self) -> None:
        # Not among the C++ cases: shards can be at most one step apart, so two steps
        # in one generation (a shard rewound by hand) is a rewind, in a new generation.
        d = decide_job_sync([live(0, 7, 3, 102, [102, 100]), live(1, 7, 3, 100, [100, 90])], 7)
        self.assertEqual(d.kind, SyncKind.REWIND)
        self.assertEqual((d.step, d.generation, d.shards), (100, 4, [0, 1]))

    def test_no_common_step_fails(self) -> None:
        d = decide_job_sync([live(0, 7, 2, 120, [120, 110]), live(1, 7, 3, 100, [100])], 7)
        self.assertEqual(d.kind, SyncKind.FAIL)
        self.assertIn("no common step", d.message)


if __name__ == "__main__":
    gnc_testlib.main(UNITTEST_ARGV)
