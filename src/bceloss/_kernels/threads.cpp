// The kernels' threads (see threads.hpp).
#include "threads.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define BCELOSS_HAS_FORK 1
#endif

namespace bceloss {

namespace {

// The chunks of one call. Shared with the helpers that joined it, and kept alive by them: a
// helper that wakes after the call has returned still reads the counter (and finds nothing
// left); `context` is only read with a chunk in hand, while the caller waits.
struct Job {
    std::atomic<int64_t> taken{0};
    std::atomic<int64_t> done{0};
    int64_t chunks = 0;
    void (*work)(void*, int64_t) = nullptr;
    void* context = nullptr;
    std::mutex mutex;
    std::condition_variable finished;
};

void take_chunks(Job& job) {
    for (;;) {
        const int64_t chunk = job.taken.fetch_add(1, std::memory_order_relaxed);
        if (chunk >= job.chunks) return;
        job.work(job.context, chunk);
        // release: the chunk's writes are seen by the caller that reads `done` (acquire)
        if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
            {
                std::lock_guard<std::mutex> lock(job.mutex);
            }
            job.finished.notify_all();
        }
    }
}

// Polls `busy` for up to SPIN (a pause between polls), returning early once it is false: long
// enough to catch work that follows at once, too short to hold a core another process needs.
constexpr auto SPIN = std::chrono::microseconds(50);

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

template <class Busy>
void spin_while(Busy busy) {
    const auto until = std::chrono::steady_clock::now() + SPIN;
    while (busy()) {
        for (int i = 0; i < 64; ++i) pause();
        if (std::chrono::steady_clock::now() > until) return;
    }
}

struct Request {
    std::shared_ptr<Job> job;
    int helpers;  // still wanted
};

// Never destroyed: helpers may be blocked on it when the interpreter exits, and a forked
// child leaves its parent's (whose mutex a parent's thread may have held) and makes its own.
struct Pool {
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Request> requests;
    std::atomic<int64_t> posted{0};  // requests ever made (a helper watches it as it waits)
    int sleeping = 0;                // helpers blocked on `wake`
    int started = 0;

    void serve() {
        // the requests made when this helper last took one: any made since, during its
        // chunks or its wait, ends the wait below at once
        int64_t seen = posted.load(std::memory_order_acquire);
        for (;;) {
            // A short wait for the next call before sleeping: a training loop's next loss
            // comes within microseconds, and waking a sleeping thread costs tens of them.
            spin_while([&] { return posted.load(std::memory_order_acquire) == seen; });
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mutex);
                ++sleeping;
                wake.wait(lock, [this] { return !requests.empty(); });
                --sleeping;
                Request& front = requests.front();
                job = front.job;
                if (--front.helpers == 0) requests.pop_front();
                seen = posted.load(std::memory_order_acquire);
            }
            take_chunks(*job);
        }
    }
};

std::atomic<Pool*> pool_of_process{nullptr};

struct HostTeam {
    HostParallel parallel = nullptr;
    HostThreads threads = nullptr;
};
std::atomic<const HostTeam*> host_team{nullptr};
std::atomic<bool> forked{false};

#ifdef BCELOSS_HAS_FORK
void forget_threads_in_child() {
    pool_of_process.store(nullptr);
    host_team.store(nullptr);
    forked.store(true);
}

// registered as the library is loaded: a child forked any time later knows it is one
const bool watching_forks = pthread_atfork(nullptr, nullptr, forget_threads_in_child) == 0;
#endif

void run_job(void* job) { take_chunks(*static_cast<Job*>(job)); }

Pool& pool(int helpers) {
    Pool* p = pool_of_process.load();
    if (p == nullptr) {
        // no lock to create it (a forked child may inherit a lock a parent's thread held)
        Pool* fresh = new Pool();
        if (pool_of_process.compare_exchange_strong(p, fresh)) {
            p = fresh;
        } else {
            delete fresh;  // another thread's pool won
        }
    }
    std::lock_guard<std::mutex> lock(p->mutex);
    for (; p->started < helpers; ++p->started) {
        std::thread([p] { p->serve(); }).detach();
    }
    return *p;
}

}  // namespace

void use_host_team(HostParallel parallel, HostThreads threads) {
    if (forked.load()) return;
    // never freed: a call on another thread may be reading the one it replaces
    const HostTeam* team = parallel != nullptr && threads != nullptr
                               ? new (std::nothrow) HostTeam{parallel, threads}
                               : nullptr;
    host_team.store(team);
}

bool host_team_in_use() { return host_team.load() != nullptr; }

void run_chunks(int team, int64_t chunks, void (*work)(void*, int64_t), void* context,
                bool hosted) {
    int64_t members = std::min<int64_t>(team, chunks);
    const HostTeam* host = hosted ? host_team.load() : nullptr;
    if (host != nullptr) members = std::min<int64_t>(members, host->threads());
    if (members <= 1) {
        for (int64_t chunk = 0; chunk < chunks; ++chunk) work(context, chunk);
        return;
    }
    if (host != nullptr) {  // every member takes chunks from the counter until none are left
        Job job;
        job.chunks = chunks;
        job.work = work;
        job.context = context;
        host->parallel(&run_job, &job, static_cast<unsigned>(members), 0);
        return;
    }
    const int helpers = static_cast<int>(members) - 1;
    // Without memory or a thread to be had, the calling thread computes every chunk.
    std::shared_ptr<Job> job;
    try {
        job = std::make_shared<Job>();
    } catch (const std::bad_alloc&) {
        for (int64_t chunk = 0; chunk < chunks; ++chunk) work(context, chunk);
        return;
    }
    job->chunks = chunks;
    job->work = work;
    job->context = context;
    Pool* found = nullptr;
    int sleeping = 0;
    try {
        found = &pool(helpers);
        std::lock_guard<std::mutex> lock(found->mutex);
        found->requests.push_back(Request{job, helpers});
        found->posted.fetch_add(1, std::memory_order_release);
        sleeping = found->sleeping;
    } catch (const std::exception&) {
        take_chunks(*job);  // not queued: no helper joins
        return;
    }
    Pool& p = *found;
    // helpers still waiting for work see `posted` move; only sleeping ones need waking
    for (int i = 0; i < std::min(helpers, sleeping); ++i) p.wake.notify_one();
    take_chunks(*job);
    {  // helpers that have not woken yet are not needed any more
        std::lock_guard<std::mutex> lock(p.mutex);
        for (auto it = p.requests.begin(); it != p.requests.end(); ++it) {
            if (it->job == job) {
                p.requests.erase(it);
                break;
            }
        }
    }
    // every chunk is taken: wait for those a helper is still computing
    spin_while([&] { return job->done.load(std::memory_order_acquire) != chunks; });
    if (job->done.load(std::memory_order_acquire) != chunks) {
        std::unique_lock<std::mutex> lock(job->mutex);
        job->finished.wait(lock,
                           [&] { return job->done.load(std::memory_order_acquire) == chunks; });
    }
}

}  // namespace bceloss
