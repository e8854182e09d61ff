// The kernels' threads: a pool of helpers that sleep while there is no work.
//
// A call is cut into chunks of blocks; the calling thread and `team - 1` helpers each take
// the next chunk from a shared counter as they come free, so a thread the system holds up (a
// shared machine) delays a chunk or two, not a fixed share. The caller waits only for chunks
// a helper has taken, never for a helper that has not started. Helpers block on a condition
// variable between calls (they never spin against other processes), and a forked child starts
// its own when it first needs them: a DataLoader worker or a multiprocessing pool computes a
// loss like any process.
#pragma once

#include <cstdint>

namespace bceloss {

// Calls work(context, chunk) once for every chunk in 0 .. chunks, on the calling thread and on
// up to team - 1 helper threads, and returns when every call has returned.
void run_chunks(int team, int64_t chunks, void (*work)(void* context, int64_t chunk),
                void* context);

}  // namespace bceloss
