// The kernels' threads: a pool of helpers that sleep while there is no work.
//
// A call is cut into chunks of blocks; the calling thread and `team - 1` helpers each take
// the next chunk from a shared counter as they come free, so a thread the system holds up (a
// shared machine) delays a chunk or two, not a fixed share. The caller waits only for chunks
// a helper has taken, never for a helper that has not started. Helpers block on a condition
// variable between calls (they never spin against other processes), and a forked child starts
// its own when it first needs them: a DataLoader worker or a multiprocessing pool computes a
// loss like any process.
//
// A host framework's threads may serve instead (`use_host_team`): a call from PyTorch runs its
// chunks on PyTorch's own OpenMP team, whose workers spin for a while after each of PyTorch's
// parallel operations; helpers of ours beside them would share the cores with spinning threads.
// Its members take chunks from the same counter, but the call returns once every member has
// joined (the runtime's barrier), as PyTorch's own operations do. A team is no larger than
// the host's own (a DataLoader's worker sets PyTorch's to 1), and never used in a process
// forked after this library was loaded: an OpenMP runtime's threads are not the child's
// (PyTorch's own parallel operations hang there), so such a child uses helpers of its own.
#pragma once

#include <cstdint>

namespace bceloss {

// Calls work(context, chunk) once for every chunk in 0 .. chunks, on the calling thread and on
// up to team - 1 helper threads (the host's team's where `hosted` and one is in use), and
// returns when every call has returned.
void run_chunks(int team, int64_t chunks, void (*work)(void* context, int64_t chunk), void* context,
                bool hosted);

// An OpenMP runtime's GOMP_parallel: runs fn(data) on a team of `threads` (the calling thread
// among them) and returns when every one has returned.
using HostParallel = void (*)(void (*fn)(void* data), void* data, unsigned threads, unsigned flags);
// An OpenMP runtime's omp_get_max_threads: the size of the team its next region would have.
using HostThreads = int (*)();

// The host's team for hosted calls in this process (nullptr: the helpers); ignored in a
// process forked since this library was loaded.
void use_host_team(HostParallel parallel, HostThreads threads);

// Whether hosted calls run on the host's team in this process.
bool host_team_in_use();

}  // namespace bceloss
