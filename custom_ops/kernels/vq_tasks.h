// Task plumbing shared by the kernel drivers (vq_kernel.cc, vq_gather.cc): splitting work
// into independent tasks and running them through a TaskRunner. Internal to the kernels.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>

#include "vq_kernel.h"

namespace onnxvq::kernels::detail {

// Shape-only tuning (changing them never changes results).
inline constexpr size_t kMinTaskWork = size_t{1} << 15;  // ~inner-loop steps worth one task
inline constexpr size_t kMaxTasks = 64;                  // more tasks than this only adds overhead

inline size_t ceil_div(size_t a, size_t b) { return a / b + (a % b != 0); }

// Runs body(i) for i < num_tasks through the runner. Exceptions thrown by a task are
// caught on the worker (they must not cross the runner's C boundary) and the first one is
// rethrown here after all tasks finished.
template <typename Body>
void run_tasks(const TaskRunner& runner, size_t num_tasks, const Body& body) {
  if (num_tasks == 0) return;
  if (num_tasks == 1 || runner.run == nullptr) {
    for (size_t i = 0; i < num_tasks; ++i) body(i);
    return;
  }
  struct Shared {
    const Body* body;
    std::mutex mutex;
    std::exception_ptr error;
  } shared{&body, {}, nullptr};
  TaskRunner::TaskFn trampoline = [](void* data, size_t i) {
    auto* s = static_cast<Shared*>(data);
    try {
      (*s->body)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(s->mutex);
      if (!s->error) s->error = std::current_exception();
    }
  };
  runner.run(runner.runner_context, trampoline, num_tasks, &shared);
  if (shared.error) std::rethrow_exception(shared.error);
}

inline size_t task_count(double total_work) {
  const double tasks = total_work / static_cast<double>(kMinTaskWork);
  if (tasks <= 1.0) return 1;
  return tasks >= static_cast<double>(kMaxTasks) ? kMaxTasks : static_cast<size_t>(tasks);
}

// `total` items cut into `count` contiguous blocks of `size` items (the last may be short).
struct Blocks {
  size_t total, size, count;
  static Blocks split(size_t total, size_t parts) {
    parts = std::max<size_t>(1, std::min(parts, total));
    const size_t size = std::max<size_t>(1, ceil_div(total, parts));
    return {total, size, ceil_div(total, size)};
  }
  size_t begin(size_t i) const { return i * size; }
  size_t end(size_t i) const { return std::min(total, (i + 1) * size); }
};

/// Codes (t, r, s0 .. s0+count) of the problem's stream (any format) into out[0 .. count).
inline void unpack_codes_of_row(const VQProblem& p, const KernelTable& k, size_t t, size_t r,
                                size_t s0, size_t count, uint8_t* out) {
  if (p.format_version == 2) {  // fast-scan blocks: one nibble per 16-byte group
    const size_t block = r / kFastScanBlockRows, lane = r % kFastScanBlockRows;
    const unsigned shift = lane < 16 ? 0 : 4;
    const uint8_t* group =
        p.codes + ((block * p.T + t) * p.S + s0) * kFastScanGroupBytes + lane % 16;
    for (size_t i = 0; i < count; ++i)
      out[i] = static_cast<uint8_t>((group[i * kFastScanGroupBytes] >> shift) & 0x0fu);
    return;
  }
  if (p.format_version == 3) {  // byte-scan blocks: one byte per 64-byte entry
    const size_t block = r / kByteScanBlockRows;
    const uint8_t* entry = p.codes + ((block * p.T + t) * p.S + s0) * kByteScanBlockRows + r % kByteScanBlockRows;
    for (size_t i = 0; i < count; ++i) out[i] = entry[i * kByteScanBlockRows];
    return;
  }
  const uint64_t first = (static_cast<uint64_t>(t) * p.rows() + r) * p.S + s0;
  k.unpack_codes(p.codes, first, count, p.bits, out);
}

}  // namespace onnxvq::kernels::detail
