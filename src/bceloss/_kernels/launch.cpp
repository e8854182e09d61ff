// The fused kernel's planned call on the kernels' threads (launch.hpp).
#include "launch.hpp"

#include <cmath>

#include "threads.hpp"

namespace bceloss {
namespace {

template <class F>
struct Chunks {
    const Call<F>* call;
    int64_t chunks;
};

template <class F>
void run_chunk(void* context, int64_t chunk) {
    const Chunks<F>& c = *static_cast<const Chunks<F>*>(context);
    const int64_t blocks = c.call->blocks;
    run_blocks(*c.call, chunk * blocks / c.chunks, (chunk + 1) * blocks / c.chunks);
}

template <class F>
void launch_in(const Arguments& a) {
    Call<F> call{};
    const bool terms = a.sums != nullptr || a.out.data != nullptr || a.grad > 0;
    call.segment =
        terms ? segment_for<F>(static_cast<Kind>(a.kind), a.grad, a.w.data != nullptr,
                               a.kind == 2 ? a.has_alpha != 0 : a.p.data != nullptr,
                               a.smooth_keep == 1.0 && a.smooth_add == 0.0 && std::isnan(a.ignore))
              : nullptr;
    call.x = a.x;
    call.y = a.y;
    call.w = a.w;
    call.p = a.p;
    call.wd = a.wd;
    call.keep = a.keep;
    call.options = Options<F>{static_cast<F>(a.divisor),
                              {static_cast<F>(a.smooth_keep), static_cast<F>(a.smooth_add)},
                              static_cast<F>(a.ignore),
                              static_cast<F>(a.alpha),
                              a.gamma};
    call.out = a.out;
    call.gx = a.gx;
    call.gy = a.gy;
    call.sums = a.sums;
    call.wsums = a.wsums;
    call.starts = a.starts;
    call.blocks = a.blocks;
    call.outside = a.outside;
    Chunks<F> chunks{&call, a.chunks};
    run_chunks(a.team, a.chunks, &run_chunk<F>, &chunks, a.hosted);
}

}  // namespace

void launch(const Arguments& a, bool compute64) {
    if (compute64) {
        launch_in<double>(a);
    } else {
        launch_in<float>(a);
    }
}

}  // namespace bceloss
