#include "worker/job_sync.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace gnc {
namespace {

std::string Describe(const ShardJobView& s) {
  if (!s.initialized) return absl::StrCat("shard ", s.index, " (", s.address, ") holds no job");
  return absl::StrCat("shard ", s.index, " (", s.address, ") is at step ", s.step,
                      " of job ", absl::Hex(s.job_id), " generation ", s.generation,
                      s.diverged ? ", diverged" : "");
}

std::string DescribeAll(const std::vector<ShardJobView>& shards) {
  std::vector<std::string> parts;
  for (const ShardJobView& s : shards) parts.push_back(Describe(s));
  return absl::StrJoin(parts, "; ");
}

SyncDecision Fail(std::string why, const std::vector<ShardJobView>& shards) {
  SyncDecision d;
  d.kind = SyncDecision::Kind::kFail;
  d.message = absl::StrCat(why, ": ", DescribeAll(shards));
  return d;
}

bool Holds(const ShardJobView& s, int64_t step) {
  return std::find(s.rewind_steps.begin(), s.rewind_steps.end(), step) != s.rewind_steps.end();
}

}  // namespace

SyncDecision DecideJobSync(const std::vector<ShardJobView>& shards, uint64_t known_job_id) {
  SyncDecision d;
  d.job_id = known_job_id;
  std::vector<const ShardJobView*> live;
  bool any_blank = false, any_started = false;
  for (const ShardJobView& s : shards) {
    if (s.diverged) {
      return Fail(absl::StrCat("shard ", s.index,
                               " diverged (a step made its parameters non-finite)"),
                  shards);
    }
    if (!s.initialized) {
      any_blank = true;
      continue;
    }
    if (s.step > 0 || s.generation > 0) any_started = true;
    if (d.job_id == 0) d.job_id = s.job_id;
    if (s.job_id != d.job_id) {
      return Fail(known_job_id != 0 && s.job_id != known_job_id
                      ? absl::StrCat("shard ", s.index, " serves another job than this "
                                     "worker's job ", absl::Hex(known_job_id))
                      : std::string("the shards serve different jobs"),
                  shards);
    }
    live.push_back(&s);
  }
  if (any_blank && (known_job_id != 0 || any_started)) {
    return Fail(
        "a shard came back without its state (no usable checkpoint) while the job has "
        "started; the job cannot go on without mixing models (restore the shard's "
        "--checkpoint_dir, or start the job again)",
        shards);
  }
  if (live.empty()) return d;  // a new job: the offers found it
  int64_t gen_min = live[0]->generation, gen_max = gen_min;
  int64_t step_min = live[0]->step, step_max = step_min;
  for (const ShardJobView* s : live) {
    gen_min = std::min(gen_min, s->generation);
    gen_max = std::max(gen_max, s->generation);
    step_min = std::min(step_min, s->step);
    step_max = std::max(step_max, s->step);
  }
  if (gen_min == gen_max && step_max - step_min <= 1) {
    d.generation = gen_max;
    return d;
  }
  if (gen_min != gen_max) {
    // A rewind (or a restore) is under way: finish it if the newest generation agrees
    // on a step that every other shard can reach.
    int64_t target = -1;
    bool agree = true;
    for (const ShardJobView* s : live) {
      if (s->generation != gen_max) continue;
      if (target >= 0 && s->step != target) agree = false;
      target = s->step;
    }
    if (agree) {
      SyncDecision r;
      r.kind = SyncDecision::Kind::kRewind;
      r.job_id = d.job_id;
      r.generation = gen_max;
      r.step = target;
      bool reachable = true;
      for (const ShardJobView* s : live) {
        if (s->generation == gen_max) continue;
        if (!Holds(*s, target)) reachable = false;
        r.shards.push_back(s->index);
      }
      if (reachable) return r;
    }
  }
  // Rewind everyone to the newest step that every shard holds.
  std::vector<int64_t> common = live[0]->rewind_steps;
  for (const ShardJobView* s : live) {
    std::vector<int64_t> keep;
    for (int64_t step : common) {
      if (Holds(*s, step)) keep.push_back(step);
    }
    common = std::move(keep);
  }
  if (common.empty()) {
    return Fail("the shards hold no common step to rewind to", shards);
  }
  SyncDecision r;
  r.kind = SyncDecision::Kind::kRewind;
  r.job_id = d.job_id;
  r.generation = gen_max + 1;
  r.step = *std::max_element(common.begin(), common.end());
  for (const ShardJobView* s : live) r.shards.push_back(s->index);
  return r;
}

}  // namespace gnc
